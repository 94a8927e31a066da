"""Table tests of the pure parts of the inspect commands: lag, fill, rows, states, formatting,
and the choice of NATS URL and pin directory."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from contracts.subjects import STREAM_IDENTITY, STREAM_K8S
from contracts.v1 import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    K8sEvent,
    MapFill,
    NodeStatus,
    Op,
    Service,
    ServicePort,
)
from services.datapath.lbmap import FrontendValue, InlineBackend, LBMapState, ServiceKey
from services.ops import bpf_view, identity_view, output, status_view, svc_view, target

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("applied", "last", "want"),
    [(10, 10, 0), (7, 10, 3), (12, 10, 0), (None, 10, None), (0, 0, 0)],
)
def test_lag(applied: int | None, last: int, want: int | None) -> None:
    assert status_view.lag(applied, last) == want


@pytest.mark.parametrize(
    ("entries", "capacity", "want"), [(0, 10, 0.0), (1, 8, 12.5), (1, 3, 33.3), (5, 0, 0.0)]
)
def test_fill_percent(entries: int, capacity: int, want: float) -> None:
    assert status_view.fill_percent(entries, capacity) == want


def node(name: str, applied: dict[str, int], age: float) -> NodeStatus:
    return NodeStatus(
        node=name,
        applied=applied,
        maps={"services": MapFill(entries=1, capacity=4)},
        time=NOW - timedelta(seconds=age),
    )


def test_report_convergence_and_per_stream_lag() -> None:
    statuses = [
        node("b", {STREAM_K8S: 9, STREAM_IDENTITY: 4}, 2.5),
        node("a", {STREAM_K8S: 10}, 0),
    ]
    last = {STREAM_K8S: 10, STREAM_IDENTITY: 5}
    doc = status_view.report(
        nats_url="nats://x:1",
        statuses=statuses,
        last=last,
        now=NOW,
        identities=3,
        services=2,
        errors=[],
        streams=[],
        problems=[],
    )
    a, b = doc["nodes"]
    assert (a["node"], a["k8s_lag"], a["lag"]) == ("a", 0, {STREAM_IDENTITY: None, STREAM_K8S: 0})
    assert (b["k8s_lag"], b["lag"][STREAM_IDENTITY], b["age_seconds"]) == (1, 1, 2.5)
    assert a["maps"]["services"] == {"entries": 1, "capacity": 4, "percent": 25.0}
    assert doc["converged"] is False and doc["lagging_nodes"] == ["b"]
    caught_up = status_view.report(
        nats_url="",
        statuses=[statuses[1]],
        last={STREAM_K8S: 10},
        now=NOW,
        identities=None,
        services=0,
        errors=[],
        streams=[],
        problems=[],
    )
    assert caught_up["converged"] is True
    empty = status_view.report(
        nats_url="",
        statuses=[],
        last={},
        now=NOW,
        identities=None,
        services=0,
        errors=[],
        streams=[],
        problems=[],
    )
    assert empty["converged"] is False  # no node reported: nothing is known to be converged


def ev(kind: str, name: str, obj: Any, op: Op = Op.UPSERT, ns: str = "ns") -> K8sEvent:
    return K8sEvent(
        kind=kind,
        op=op,
        namespace=ns,
        name=name,
        uid="u",
        resource_version="1",
        observed_at=NOW,
        producer="t",
        object=obj if op is Op.UPSERT else None,
    )


def endpoint(ip: str, ready: bool, serving: bool | None = None) -> Endpoint:
    serving = ready if serving is None else serving
    cond = EndpointConditions(ready=ready, serving=serving, terminating=not ready)
    return Endpoint(addresses=[ip], conditions=cond)


SVC = Service(
    cluster_ips=["10.96.0.1"],
    external_ips=["192.0.2.1"],
    ports=[
        ServicePort(name="http", port=80, target_port="web", node_port=30080),
        ServicePort(name="dns", port=53, protocol="UDP", target_port=5353),
    ],
)


def slice_(name: str, svc: str, eps: list[Endpoint], ports: list[EndpointPort]) -> Any:
    return EndpointSlice(address_type="IPv4", service_name=svc, endpoints=eps, ports=ports)


def test_live_drops_tombstones_and_counts_endpoints_once() -> None:
    http, dns = (
        EndpointPort(name="http", port=8080),
        EndpointPort(name="dns", port=5353, protocol="UDP"),
    )
    events = [
        ev("service", "web", SVC),
        ev("service", "old", SVC),
        ev("service", "old", None, Op.DELETE),
        ev(
            "endpointslice",
            "web-1",
            slice_(
                "web-1",
                "web",
                [endpoint("10.0.0.1", True), endpoint("10.0.0.2", False)],
                [http, dns],
            ),
        ),
        ev(
            "endpointslice",
            "web-2",
            slice_("web-2", "web", [endpoint("10.0.0.1", True)], [http, dns]),
        ),
        ev("endpointslice", "other", slice_("other", "db", [endpoint("10.0.0.9", True)], [])),
    ]
    services = svc_view.live(events, Service)
    slices = svc_view.live(events, EndpointSlice)
    assert set(services) == {("ns", "web")}
    (row,) = svc_view.service_rows(services, slices)
    assert (row["ready_endpoints"], row["endpoints"]) == (1, 2)  # 10.0.0.1 is in both slices
    assert row["ports"] == ["http:80/TCP->web :30080", "dns:53/UDP->5353"]
    assert svc_view.service_rows(services, slices, "elsewhere") == []
    detail = svc_view.service_detail(("ns", "web"), SVC, slices)
    http_port, dns_port = detail["port_details"]
    assert http_port["frontends"] == ["10.96.0.1:80/TCP", "192.0.2.1:80/TCP"]
    assert [(b["address"], b["ready"]) for b in http_port["backends"]] == [
        ("10.0.0.1:8080", True),
        ("10.0.0.2:8080", False),
    ]
    assert dns_port["backends"][0]["address"] == "10.0.0.1:5353"
    assert detail["endpointslices"] == ["web-1", "web-2"]


def test_named_target_port_without_slice_ports_is_a_problem() -> None:
    slices = {("ns", "s"): slice_("s", "web", [endpoint("10.0.0.1", True)], [])}
    detail = svc_view.service_detail(("ns", "web"), SVC, slices)
    assert detail["port_details"][0]["backends"] == []
    assert any("targetPort 'web' is named" in p for p in detail["problems"])


@pytest.mark.parametrize(
    ("text", "want"),
    [("a/b", ("a", "b")), ("b", ("default", "b")), ("/b", None), ("a/", None), ("a/b/c", None)],
)
def test_parse_ref(text: str, want: tuple[str, str] | None) -> None:
    if want is None:
        with pytest.raises(ValueError, match="expected NAMESPACE/NAME"):
            svc_view.parse_ref(text)
    else:
        assert svc_view.parse_ref(text) == want


class E(NamedTuple):
    key: str
    value: bytes
    revision: int = 1


def test_identity_states() -> None:
    entries = [
        E("id.300", b'["k8s:app=a"]'),
        E("labels.h300", b"300"),
        E("ref.300.alloc_2adone", b""),
        E("id.301", b'["k8s:app=b"]'),
        E("labels.h301", b"301"),
        E("id.302", b'["k8s:app=c"]'),
        E("labels.h302", b"gc:302:1700000000.5"),
        E("id.303", b'["k8s:app=d"]'),
        E("id.304", b'["z", "a"]'),
        E("labels.bad", b"x"),
    ]
    rows, problems = identity_view.identity_rows(entries)
    by_id = {r["id"]: r for r in rows}
    assert [identity_view.state(by_id[i]) for i in (300, 301, 302, 303)] == [
        "in-use",
        "unused",
        "dying",
        "orphaned",
    ]
    assert by_id[300]["refs"] == ["alloc*done"]  # owner tokens are unescaped (_2a is '*')
    assert by_id[300]["labels"] == ["k8s:app=a"] and by_id[300]["digest"] == "h300"
    assert by_id[304]["labels"] is None
    assert [p.split(":")[0] for p in problems] == ["KV key id.304", "KV key labels.bad"]
    reserved = identity_view.reserved_rows()
    assert (
        reserved[1]["labels"] == ["reserved:host"]
        and identity_view.state(reserved[1]) == "reserved"
    )


def test_identity_ref_owner_is_unescaped() -> None:
    rows, _ = identity_view.identity_rows(
        [E("id.300", b"[]"), E("labels.h", b"300"), E("ref.300.alloc_2eone", b"")]
    )
    assert rows[0]["refs"] == ["alloc.one"]


@pytest.mark.parametrize(
    ("text", "ok"), [("0", True), ("65535", True), ("65536", False), ("-1", False), ("x", False)]
)
def test_parse_identity(text: str, ok: bool) -> None:
    if ok:
        assert identity_view.parse_identity(text) == int(text)
    else:
        with pytest.raises(ValueError, match=f"identity '{text}'"):
            identity_view.parse_identity(text)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (None, "-"),
        (True, "yes"),
        (1.25, "1.2"),
        ([], "-"),
        (["a", 1], "a, 1"),
        ({"k": 2}, "k=2"),
        (7, "7"),
    ],
)
def test_cell(value: Any, want: str) -> None:
    assert output.cell(value) == want


@pytest.mark.parametrize(
    ("seconds", "want"),
    [(None, "-"), (-3, "0s"), (59.9, "59s"), (61, "1m01s"), (7260, "2h01m"), (90000, "1d01h")],
)
def test_age(seconds: float | None, want: str) -> None:
    assert output.age(seconds) == want


@pytest.mark.parametrize(
    ("n", "want"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 20, "3.0 MiB")]
)
def test_size(n: int, want: str) -> None:
    assert output.size(n) == want


SB = target.SandboxInfo(
    id="s1", nats_url="nats://127.0.0.1:5000", pin_dirs={"node1": Path("/p/n1")}
)


@pytest.mark.parametrize(
    ("explicit", "sandbox", "want"),
    [
        ("nats://h:1", SB, ("nats://h:1", "--nats")),
        (None, SB, ("nats://127.0.0.1:5000", "sandbox s1")),
        (None, None, ("nats://127.0.0.1:4222", "default")),
        (None, target.SandboxInfo(id="s2", nats_url=""), ("nats://127.0.0.1:4222", "default")),
    ],
)
def test_choose_nats_url(
    explicit: str | None, sandbox: target.SandboxInfo | None, want: tuple[str, str]
) -> None:
    assert target.choose_nats_url(explicit, sandbox) == want


def test_choose_pin_dir_and_sandbox_files() -> None:
    assert target.choose_pin_dir("node1", "/x", SB) == Path("/x")
    assert target.choose_pin_dir("node1", None, SB) == Path("/p/n1")
    assert target.choose_pin_dir("node2", None, SB) == Path("/sys/fs/bpf/weir/node2")
    info = target.sandbox_info(
        {
            "id": "s3",
            "nats_url": "nats://a:1",
            "nodes": [{"name": "node1"}, {"name": "n2", "pin_dir": "/q"}, "junk"],
        },
        {"bpffs_root": "/b", "nodes": ["node1"]},
    )
    assert info.pin_dirs == {"node1": Path("/b/weir-s3/node1"), "n2": Path("/q")}


def test_running_sandbox_needs_a_live_supervisor(tmp_path: Path) -> None:
    (tmp_path / "current").write_text("s4\n")
    (tmp_path / "s4").mkdir()
    status = {"id": "s4", "supervisor_pid": os.getpid(), "nats_url": "nats://a:1"}
    (tmp_path / "s4" / "status.json").write_text(json.dumps(status))
    found = target.running_sandbox(tmp_path)
    assert found is not None and found.nats_url == "nats://a:1"
    status["supervisor_pid"] = 2**22 + 1  # above pid_max: never a live process
    (tmp_path / "s4" / "status.json").write_text(json.dumps(status))
    assert target.running_sandbox(tmp_path) is None
    (tmp_path / "s4" / "status.json").write_text("{not json")
    assert target.running_sandbox(tmp_path) is None


FLOW_LOSS = "flows: 17 events lost in the datapath, 2 dropped, 0 malformed"  # policyworker's line


def busy_node(name: str, errors: list[str]) -> NodeStatus:
    fills = {
        "policy_rules": (14, 262144),
        "sk_revnat": (12, 65536),
        "services": (250000, 262144),
        "policy_endpoints": (3, 4096),
        "backends": (99999, 131072),
        "revnat": (4, 65536),
        "affinity": (0, 65536),
        "policy_ipcache": (9, 262144),
    }
    return NodeStatus(
        node=name,
        applied={STREAM_K8S: 10, STREAM_IDENTITY: 3},
        maps={k: MapFill(entries=e, capacity=c) for k, (e, c) in fills.items()},
        program_versions={"sock_lb": "v1", "policy": "v1"},
        errors=errors,
        time=NOW,
    )


def test_maps_cell_orders_lb_then_policy_and_shows_only_high_fill() -> None:
    row = status_view.node_row(busy_node("n1", []), last={STREAM_K8S: 10}, now=NOW)
    assert status_view.maps_cell(row["maps"]).splitlines() == [
        "services 250000/262144 95%",
        "backends 99999/131072 76%",
        "revnat 4/65536",
        "affinity 0/65536",
        "sk_revnat 12/65536",
        "endpoints 3/4096",
        "ipcache 9/262144",
        "rules 14/262144",
    ]
    assert status_view.programs_cell(row["programs"]) == "policy v1\nsock_lb v1"


@pytest.mark.parametrize(
    ("errors", "want", "cell"),
    [
        ([], None, "-"),
        (["service a/b: bad"], None, "errors 1"),
        (
            ["x", FLOW_LOSS],
            {"lost": 17, "dropped": 2, "malformed": 0},
            "errors 2\nlost 17\ndropped 2",
        ),
        (
            ["flows: 0 events lost in the datapath, 0 dropped, 3 malformed"],
            {"lost": 0, "dropped": 0, "malformed": 3},
            "errors 1\nmalformed 3",
        ),
    ],
)
def test_flow_loss(errors: list[str], want: dict[str, int] | None, cell: str) -> None:
    row = status_view.node_row(busy_node("n1", errors), last={STREAM_K8S: 10}, now=NOW)
    assert row["flows"] == want
    assert status_view.issues_cell(row["errors"], row["flows"]) == cell


def test_status_table_fits_100_columns() -> None:
    from rich.console import Console  # noqa: PLC0415

    from services.ops.inspect_cli import render_status  # noqa: PLC0415

    doc = status_view.report(
        nats_url="nats://127.0.0.1:4222",
        statuses=[busy_node("sandbox-node-1", [FLOW_LOSS]), busy_node("sandbox-node-2", [])],
        last={STREAM_K8S: 12, STREAM_IDENTITY: 3},
        now=NOW,
        identities=5,
        services=3,
        errors=[],
        streams=[],
        problems=[],
    )
    console = Console(width=100, record=True)
    render_status(doc, console)
    text = console.export_text()
    nodes_table = text.split("services: 3")[0]
    assert max(len(line.rstrip()) for line in nodes_table.splitlines()) <= 100
    # every map cell is on one line (no wrapping inside a cell): 8 maps per node
    assert nodes_table.count("services 250000/262144 95%") == 2
    assert nodes_table.count("rules 14/262144") == 2
    assert "lost 17" in nodes_table and "sandbox-node-1" in nodes_table


def test_frontend_rows_show_inline_backends_or_slots() -> None:
    state = LBMapState()
    inline = (InlineBackend(3, "10.244.1.3", 8080), InlineBackend(4, "10.244.1.4", 8080))
    state.frontends[ServiceKey("10.96.0.2", 80, 6)] = FrontendValue(2, 5, inline=inline)
    state.frontends[ServiceKey("10.96.0.1", 53, 17)] = FrontendValue(9, 4)
    rows = bpf_view.frontend_rows(state)
    assert [(r["frontend"], r["picks_from"]) for r in rows] == [
        ("10.96.0.1:53/UDP", "slots"),
        ("10.96.0.2:80/TCP", "10.244.1.3:8080 10.244.1.4:8080"),
    ]
    assert rows[1]["inline"] == [
        {"backend_id": 3, "backend": "10.244.1.3:8080"},
        {"backend_id": 4, "backend": "10.244.1.4:8080"},
    ]
