"""Table tests of endpoint selection and frontend derivation (kube-proxy topology_test.go style).

Objects are built from raw Kubernetes JSON through ``contracts.v1.from_k8s`` so the tests use
the same defaulting (nil ready = ready, and so on) as the live pipeline.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.v1 import EndpointSlice, Service, from_k8s
from services.datapath.frontend import Backend, BackendAddr, Frontend
from services.datapath.lbmap import PROTO_TCP, PROTO_UDP, BackendState, ServiceFlags
from services.datapath.model import (
    Candidate,
    DesiredState,
    _backends,
    select_endpoints,
    service_frontends,
)

NODE = "node-a"
A = BackendState.ACTIVE
T = BackendState.TERMINATING


def ep(ip: str, *, ready: bool = True, serving: bool | None = None, term: bool = False,
       node: str | None = NODE) -> Candidate:  # fmt: skip
    return Candidate(ip, 80, ready, ready if serving is None else serving, term, node)


SELECT_CASES: list[tuple[str, list[Candidate], bool, bool, list[tuple[str, BackendState]]]] = [
    ("no endpoints", [], False, False, []),
    ("ready only", [ep("10.0.0.1"), ep("10.0.0.2", node="node-b")], False, False,
     [("10.0.0.1", A), ("10.0.0.2", A)]),
    ("not ready dropped", [ep("10.0.0.1"), ep("10.0.0.2", ready=False)], False, False,
     [("10.0.0.1", A)]),
    ("ready wins over terminating", [ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True,
     term=True)], False, False, [("10.0.0.1", A)]),
    ("fallback to serving terminating",
     [ep("10.0.0.1", ready=False, serving=True, term=True),
      ep("10.0.0.2", ready=False, serving=False, term=True),
      ep("10.0.0.3", ready=False, serving=False)], False, False, [("10.0.0.1", T)]),
    ("publishNotReadyAddresses: all ready", [ep("10.0.0.1", ready=False, serving=False)],
     False, True, [("10.0.0.1", A)]),
    ("local: only this node", [ep("10.0.0.1"), ep("10.0.0.2", node="node-b")], True, False,
     [("10.0.0.1", A)]),
    ("local: none here refuses, no remote fallback", [ep("10.0.0.2", node="node-b")], True,
     False, []),
    ("local: endpoint without node is not local", [ep("10.0.0.2", node=None)], True, False, []),
    ("local: falls back to local terminating, not remote ready",
     [ep("10.0.0.1", ready=False, serving=True, term=True), ep("10.0.0.2", node="node-b")],
     True, False, [("10.0.0.1", T)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "cands", "local", "pnr", "want"), SELECT_CASES,
                         ids=[c[0] for c in SELECT_CASES])  # fmt: skip
def test_select_endpoints(
    name: str,
    cands: list[Candidate],
    local: bool,
    pnr: bool,
    want: list[tuple[str, BackendState]],
) -> None:
    got = select_endpoints(cands, node=NODE, local_only=local, publish_not_ready=pnr)
    assert [(c.ip, s) for c, s in got] == want, name


def svc(**spec: Any) -> Service:
    spec.setdefault("clusterIP", "10.96.0.10")
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    raw = {"metadata": {"name": "web", "namespace": "default"}, "spec": spec}
    if "lb" in spec:
        raw["status"] = {"loadBalancer": {"ingress": [{"ip": spec.pop("lb")}]}}
    out = from_k8s("service", raw)
    assert isinstance(out, Service)
    return out


def endpoint(
    ip: str,
    node: str = NODE,
    ready: bool | None = True,
    terminating: bool | None = None,
    serving: bool | None = None,
) -> dict[str, Any]:
    cond: dict[str, Any] = {}
    if ready is not None:
        cond["ready"] = ready
    if terminating is not None:
        cond["terminating"] = terminating
    if serving is not None:
        cond["serving"] = serving
    return {"addresses": [ip], "conditions": cond, "nodeName": node}


def eps(name: str, endpoints: list[dict[str, Any]], ports: list[dict[str, Any]] | None = None,
        service: str = "web", address_type: str = "IPv4") -> tuple[str, EndpointSlice]:  # fmt: skip
    raw = {
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
    }  # fmt: skip
    out = from_k8s("endpointslice", raw)
    assert isinstance(out, EndpointSlice)
    return name, out


def summary(out: dict[Frontend, Any]) -> dict[str, tuple[list[str], str, int]]:
    return {
        str(fe): (
            [f"{b.addr.ip}:{b.addr.port}{'' if b.state == A else '~T'}" for b in spec.backends],
            "|".join(f.name or "" for f in ServiceFlags if f and spec.flags & f) or "-",
            spec.affinity_timeout,
        )
        for fe, spec in sorted(out.items())
    }


FRONTEND_CASES: list[tuple[str, Service, list[tuple[str, EndpointSlice]], dict[str, Any]]] = [
    ("clusterIP with ready endpoints", svc(), [eps("web-1", [endpoint("10.1.0.1"),
     endpoint("10.1.0.2", node="node-b")])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080", "10.1.0.2:8080"], "-", 0)}),
    ("no slices: frontend refuses", svc(), [], {"10.96.0.10:80/TCP": ([], "-", 0)}),
    ("headless: nothing", svc(clusterIP="None"), [eps("web-1", [endpoint("10.1.0.1")])], {}),
    ("ExternalName: nothing", svc(type="ExternalName", externalName="example.com", clusterIP=""),
     [], {}),
    ("dedupe across slices, ready copy wins", svc(),
     [eps("web-1", [endpoint("10.1.0.1", ready=False, serving=False)]),
      eps("web-2", [endpoint("10.1.0.1"), endpoint("10.1.0.3")])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080", "10.1.0.3:8080"], "-", 0)}),
    ("dedupe across slices, serving copy wins over a not serving one", svc(),
     [eps("web-1", [endpoint("10.1.0.1", ready=False, serving=False, terminating=True)]),
      eps("web-2", [endpoint("10.1.0.1", ready=False, serving=True, terminating=True)])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080~T"], "-", 0)}),
    ("named target port resolved via slice port", svc(ports=[{"name": "http", "port": 80,
     "targetPort": "web"}]), [eps("web-1", [endpoint("10.1.0.1")], ports=[{"name": "http",
     "port": 9090}])], {"10.96.0.10:80/TCP": (["10.1.0.1:9090"], "-", 0)}),
    ("slice port of another name is not used", svc(), [eps("web-1", [endpoint("10.1.0.1")],
     ports=[{"name": "metrics", "port": 9100}])], {"10.96.0.10:80/TCP": ([], "-", 0)}),
    ("numeric target port for a slice without ports", svc(), [eps("web-1",
     [endpoint("10.1.0.1")], ports=[])], {"10.96.0.10:80/TCP": (["10.1.0.1:8080"], "-", 0)}),
    ("two ports, two protocols", svc(ports=[{"name": "dns", "port": 53, "protocol": "UDP",
     "targetPort": 5353}, {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5353}]),
     [eps("web-1", [endpoint("10.1.0.1")], ports=[{"name": "dns", "port": 5353, "protocol": "UDP"},
      {"name": "dns-tcp", "port": 5353, "protocol": "TCP"}])],
     {"10.96.0.10:53/TCP": (["10.1.0.1:5353"], "-", 0),
      "10.96.0.10:53/UDP": (["10.1.0.1:5353"], "-", 0)}),
    ("internalTrafficPolicy Local", svc(internalTrafficPolicy="Local"),
     [eps("web-1", [endpoint("10.1.0.1", node="node-b"), endpoint("10.1.0.2")])],
     {"10.96.0.10:80/TCP": (["10.1.0.2:8080"], "LOCAL_ONLY", 0)}),
    ("internalTrafficPolicy Local, nothing local: refuse", svc(internalTrafficPolicy="Local"),
     [eps("web-1", [endpoint("10.1.0.1", node="node-b")])],
     {"10.96.0.10:80/TCP": ([], "LOCAL_ONLY", 0)}),
    ("externalTrafficPolicy Local applies to external and LB IPs only",
     svc(type="LoadBalancer", externalIPs=["192.0.2.10"], lb="198.51.100.7",
         externalTrafficPolicy="Local"),
     [eps("web-1", [endpoint("10.1.0.1", node="node-b"), endpoint("10.1.0.2")])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080", "10.1.0.2:8080"], "-", 0),
      "192.0.2.10:80/TCP": (["10.1.0.2:8080"], "LOCAL_ONLY", 0),
      "198.51.100.7:80/TCP": (["10.1.0.2:8080"], "LOCAL_ONLY", 0)}),
    ("terminating fallback marks state", svc(), [eps("web-1", [endpoint("10.1.0.1", ready=False,
     serving=True, terminating=True)])], {"10.96.0.10:80/TCP": (["10.1.0.1:8080~T"], "-", 0)}),
    ("publishNotReadyAddresses", svc(publishNotReadyAddresses=True), [eps("web-1",
     [endpoint("10.1.0.1", ready=False)])], {"10.96.0.10:80/TCP": (["10.1.0.1:8080"], "-", 0)}),
    ("ClientIP affinity with timeout", svc(sessionAffinity="ClientIP", sessionAffinityConfig={
     "clientIP": {"timeoutSeconds": 60}}), [eps("web-1", [endpoint("10.1.0.1")])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080"], "SESSION_AFFINITY", 60)}),
    ("ClientIP affinity and internalTrafficPolicy Local", svc(sessionAffinity="ClientIP",
     internalTrafficPolicy="Local"), [eps("web-1", [endpoint("10.1.0.1")])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080"], "SESSION_AFFINITY|LOCAL_ONLY", 10800)}),
    ("ClientIP affinity default timeout", svc(sessionAffinity="ClientIP"), [],
     {"10.96.0.10:80/TCP": ([], "SESSION_AFFINITY", 10800)}),
    ("IPv6 cluster IP and slices are not programmed", svc(clusterIP="fd00::10",
     clusterIPs=["fd00::10"]), [eps("web-1", [endpoint("fd00:1::1")], address_type="IPv6")], {}),
    ("dual stack: only the IPv4 VIP", svc(clusterIPs=["10.96.0.10", "fd00::10"]),
     [eps("web-1", [endpoint("10.1.0.1")])],
     {"10.96.0.10:80/TCP": (["10.1.0.1:8080"], "-", 0)}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "service", "slices", "want"), FRONTEND_CASES,
                         ids=[c[0] for c in FRONTEND_CASES])  # fmt: skip
def test_service_frontends(
    name: str, service: Service, slices: list[tuple[str, EndpointSlice]], want: dict[str, Any]
) -> None:
    out, errors = service_frontends(("default", "web"), service, slices, NODE)
    assert summary(out) == want, name
    assert errors == []
    for fe in out:
        assert fe.proto in (PROTO_TCP, PROTO_UDP)


def test_named_target_port_without_slice_ports_is_reported() -> None:
    service = svc(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    out, errors = service_frontends(
        ("default", "web"), service, [eps("web-1", [endpoint("10.1.0.1")], ports=[])], NODE
    )
    assert summary(out) == {"10.96.0.10:80/TCP": ([], "-", 0)}
    assert len(errors) == 1
    assert "default/web" in errors[0] and "targetPort" in errors[0] and "web-1" in errors[0]


def test_desired_state_incremental_and_deletes() -> None:
    ds = DesiredState(NODE)
    ds.upsert_service("default", "web", svc())
    assert {str(f) for f in ds.flush()} == {"10.96.0.10:80/TCP"}
    assert ds.flush() == set()
    name, es = eps("web-1", [endpoint("10.1.0.1")])
    ds.upsert_slice("default", name, es)
    changed = ds.flush()
    assert {str(f) for f in changed} == {"10.96.0.10:80/TCP"}
    (spec,) = ds.frontends.values()
    assert [b.addr.ip for b in spec.backends] == ["10.1.0.1"]
    ds.delete_slice("default", name)
    ds.flush()
    (spec,) = ds.frontends.values()
    assert spec.backends == ()
    ds.delete_service("default", "web")
    assert {str(f) for f in ds.flush()} == {"10.96.0.10:80/TCP"}
    assert ds.frontends == {}


def test_desired_state_conflicting_vip_first_service_wins() -> None:
    ds = DesiredState(NODE)
    ds.upsert_service("default", "web", svc())
    ds.upsert_service("default", "alpha", svc(ports=[{"name": "http", "port": 80,
                                                      "targetPort": 9999}]))  # fmt: skip
    ds.flush()
    (spec,) = ds.frontends.values()
    assert spec.service == "default/alpha"
    problems = ds.problems()
    assert len(problems) == 1 and "default/web" in problems[0] and "default/alpha" in problems[0]
    ds.delete_service("default", "alpha")
    ds.flush()
    (spec,) = ds.frontends.values()
    assert spec.service == "default/web"
    assert ds.problems() == []


def test_contested_frontends_follow_churn_like_a_model_built_from_scratch() -> None:
    """problems() reads the frontends the model keeps as contested (not every claim): after any
    sequence of upserts and deletes they equal those of a model built from the survivors."""
    rng = random.Random(6)
    names = [f"s{i}" for i in range(8)]
    vips = ["10.96.0.10", "10.96.0.11", "10.96.0.12"]
    ds = DesiredState(NODE)
    seen_contested = seen_clear = False
    for _ in range(300):
        name = rng.choice(names)
        if rng.random() < 0.3:
            ds.delete_service("default", name)
        else:
            ds.upsert_service("default", name, svc(clusterIP=rng.choice(vips)))
        ds.flush()
        fresh = DesiredState(NODE)
        for (ns, n), view in ds.services.items():
            fresh.upsert_service(ns, n, view)
        fresh.flush()
        assert ds.problems() == fresh.problems()
        assert ds.frontends == fresh.frontends
        seen_contested |= bool(fresh.problems())
        seen_clear |= len(ds.services) > 0 and not fresh.problems()
    assert seen_contested and seen_clear  # both states were exercised


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            Candidate,
            ip=st.sampled_from([f"10.1.0.{i}" for i in range(6)]),
            port=st.just(8080),
            ready=st.booleans(),
            serving=st.booleans(),
            terminating=st.booleans(),
            node_name=st.sampled_from([NODE, "node-b", None]),
        ),
        max_size=6,
        unique_by=lambda c: c.ip,
    ),
    st.booleans(),
    st.booleans(),
)
def test_frontend_backends_are_the_selected_endpoints(
    cands: list[Candidate], local: bool, pnr: bool
) -> None:
    """service_frontends builds its backends in one pass (_backends): the same as
    select_endpoints, the table-tested rule."""
    cands.sort()
    chosen = select_endpoints(cands, node=NODE, local_only=local, publish_not_ready=pnr)
    want = tuple(Backend(BackendAddr(c.ip, c.port, PROTO_TCP), state) for c, state in chosen)
    got = _backends(cands, PROTO_TCP, node=NODE, local_only=local, publish_not_ready=pnr)
    assert got == want


def test_flush_skips_frontends_whose_spec_did_not_change() -> None:
    """A touched service whose frontends come out the same (a slice republished with a new
    resourceVersion, a label change) reports nothing to write; a real change still does."""
    ds = DesiredState(NODE)
    ds.upsert_service("default", "web", svc())
    name, es = eps("web-1", [endpoint("10.1.0.1")])
    ds.upsert_slice("default", name, es)
    assert {str(f) for f in ds.flush()} == {"10.96.0.10:80/TCP"}
    before = dict(ds.frontends)
    ds.upsert_slice("default", name, es)  # same endpoints again
    ds.upsert_service("default", "web", svc())
    assert ds.flush() == set()
    assert ds.frontends == before
    assert ds.counts() == {"services": 1, "frontends": 1, "backends": 1}
    ds.upsert_slice("default", name, eps("web-1", [endpoint("10.1.0.2")])[1])
    assert {str(f) for f in ds.flush()} == {"10.96.0.10:80/TCP"}
    (spec,) = ds.frontends.values()
    assert [b.addr.ip for b in spec.backends] == ["10.1.0.2"]
    assert ds.counts() == {"services": 1, "frontends": 1, "backends": 1}


def test_a_slice_that_changes_service_moves_its_backends() -> None:
    """Re-upserting a slice for the same service only replaces it; one that now names another
    service leaves the first (which loses the backends) and joins the second."""
    ds = DesiredState(NODE)
    ds.upsert_service("default", "web", svc())
    ds.upsert_service("default", "api", svc(clusterIP="10.96.0.11"))
    name, es = eps("s-1", [endpoint("10.1.0.1")])
    ds.upsert_slice("default", name, es)
    ds.flush()
    ds.upsert_slice("default", name, eps("s-1", [endpoint("10.1.0.2")])[1])
    assert {str(f) for f in ds.flush()} == {"10.96.0.10:80/TCP"}
    assert ds.slices_of(("default", "web")) and not ds.slices_of(("default", "api"))
    ds.upsert_slice("default", name, eps("s-1", [endpoint("10.1.0.2")], service="api")[1])
    assert {str(f) for f in ds.flush()} == {"10.96.0.10:80/TCP", "10.96.0.11:80/TCP"}
    backends = {str(fe): [b.addr.ip for b in s.backends] for fe, s in ds.frontends.items()}
    assert backends == {"10.96.0.10:80/TCP": [], "10.96.0.11:80/TCP": ["10.1.0.2"]}
    assert not ds.slices_of(("default", "web"))
    ds.delete_slice("default", name)
    assert {str(f) for f in ds.flush()} == {"10.96.0.11:80/TCP"}
    assert ds.counts() == {"services": 2, "frontends": 2, "backends": 0}
