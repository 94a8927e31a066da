"""Loader lifecycle on real BPF: survival of the loader's exit, idempotent re-attach, detach,
pin verification, clear errors for missing interfaces and bad entries, lost events, and the
event reader feeding an asyncio queue.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from services.datapath.bpflayout import EntryError
from services.datapath.flowevents import FlowEventReader, RawFlowEvent, Verdict
from services.datapath.policybpf import BpfPolicyMaps
from services.datapath.policylayout import PolicyCapacities
from services.datapath.policyloader import (
    AttachError,
    PinMismatchError,
    PolicyLoader,
    attachments,
    detach_all,
)
from services.datapath.policymap import (
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
)
from tests.datapath.policy_bpf.conftest import SMALL, Lab, netns_socket, tcp, udp
from tests.datapath.policy_bpf.test_enforce import EP_IDS, IDS, INGRESS, configure

pytestmark = pytest.mark.bpf
REPO = Path(__file__).resolve().parents[3]


def prog_ids(lab: Lab, ifname: str) -> dict[str, list[int]]:
    """Program ids of every filter on each clsact hook, as tc(8) reports them."""
    out = {}
    for hook in ("ingress", "egress"):
        text = subprocess.run(
            ["tc", "-n", lab.node, "filter", "show", "dev", ifname, hook],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        out[hook] = [int(m) for m in re.findall(r" id (\d+)", text)]
    return out


def test_attachment_survives_loader_exit_and_reattach_replaces(
    maps: BpfPolicyMaps, lab: Lab, loader: PolicyLoader
) -> None:
    srv = lab.pods["srv"]
    before = prog_ids(lab, srv.lxc)
    assert all(len(ids) == 1 for ids in before.values()), before
    script = "tests.datapath.policy_bpf.attach_once"
    proc = subprocess.run(
        [sys.executable, "-m", script, str(lab.pin_root), lab.node, srv.lxc],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"attached {srv.ifindex}"
    after = prog_ids(lab, srv.lxc)
    # Replaced, not added: still one filter per hook, now holding the exited process's programs.
    assert all(len(ids) == 1 for ids in after.values()), after
    assert after["ingress"] != before["ingress"] and after["egress"] != before["egress"]
    hooks = [(a.hook, a.name) for a in attachments(lab.node) if a.ifindex == srv.ifindex]
    assert sorted(hooks) == [
        ("egress", "weir-policy-to-endpoint"),
        ("ingress", "weir-policy-from-endpoint"),
    ]
    # The orphaned programs enforce with the pinned maps this process writes.
    configure(maps, lab, {"srv": INGRESS})
    cli = lab.pods["cli"]
    assert tcp(cli, srv.ip, 8080) == "timeout"
    maps.update_policy([PolicyKey(EP_IDS["srv"], Direction.INGRESS, 6, IDS["cli"], 8080, 16)])
    assert tcp(cli, srv.ip, 8080) == f"{srv.ip}:8080"
    # Put this process's program back for the other tests (again a replace).
    loader.attach(srv.ifindex, lab.node)
    assert all(len(ids) == 1 for ids in prog_ids(lab, srv.lxc).values())


def test_detach_all_removes_only_weir_filters_then_reattach(
    maps: BpfPolicyMaps, lab: Lab, loader: PolicyLoader
) -> None:
    configure(maps, lab, {"srv": INGRESS})
    srv, cli = lab.pods["srv"], lab.pods["cli"]
    assert tcp(cli, srv.ip, 8080) == "timeout"
    found = detach_all(lab.node)
    assert found == sorted(p.ifindex for p in lab.pods.values())
    assert attachments(lab.node) == []
    assert tcp(cli, srv.ip, 8080) == f"{srv.ip}:8080"  # nothing enforces any more
    assert detach_all(lab.node) == []  # idempotent
    for pod in lab.pods.values():
        loader.attach(pod.lxc, lab.node)
    assert len(attachments(lab.node)) == 2 * len(lab.pods)
    assert tcp(cli, srv.ip, 8081) == "timeout"


def test_missing_interface_or_namespace_is_a_clear_error(lab: Lab, loader: PolicyLoader) -> None:
    with pytest.raises(AttachError, match=r"interface 'lxcnope' in netns .*no such interface"):
        loader.attach("lxcnope", lab.node)
    with pytest.raises(AttachError, match=r"interface 99999 in netns .*no such interface"):
        loader.attach(99999, lab.node)
    with pytest.raises(AttachError, match="network namespace 'weir-no-such-ns' does not exist"):
        loader.attach("lxcnope", "weir-no-such-ns")
    assert not Path("/run/netns/weir-no-such-ns").exists()


def test_pin_mismatch_is_refused_before_compiling(lab: Lab, loader: PolicyLoader) -> None:
    other = PolicyCapacities(endpoints=128, ipcache=256, rules=1024, ct=1024, events_bytes=1 << 16)
    with pytest.raises(PinMismatchError) as info:
        PolicyLoader(lab.pin_root, other).load()
    text = str(info.value)
    assert "policy_endpoints" in text
    assert "max_entries is 64, this build needs 128" in text
    bigger_ring = PolicyCapacities(64, 256, 1024, 1024, events_bytes=1 << 17)
    with pytest.raises(PinMismatchError, match="policy_events: max_entries is 65536"):
        PolicyLoader(lab.pin_root, bigger_ring).load()


def test_bad_entries_name_map_entry_and_field(maps: BpfPolicyMaps) -> None:
    with pytest.raises(EntryError, match=r"^policy: .*field port: 9001 has bits beyond its /15"):
        maps.update_policy([PolicyKey(1, Direction.INGRESS, 6, 5, 9001, 15)])
    with pytest.raises(EntryError, match=r"^policy: .*field port_prefix_len: 17 is not in 0\.\.16"):
        maps.update_policy([PolicyKey(1, Direction.INGRESS, 6, 5, 0, 17)])
    with pytest.raises(EntryError, match=r"^policy: .*a port needs a protocol"):
        maps.update_policy([PolicyKey(1, Direction.INGRESS, 0, 5, 80, 16)])
    with pytest.raises(EntryError, match=r"^ipcache: .*field cidr: '10\.0\.0\.1/8'.*host bits"):
        maps.update_ipcache({CidrKey("10.0.0.1/8"): 5})
    with pytest.raises(EntryError, match=r"^ipcache: .*field identity"):
        maps.update_ipcache({CidrKey("10.0.0.0/8"): -1})
    with pytest.raises(EntryError, match=r"^endpoints: .*field identity"):
        maps.update_endpoints({EndpointKey(3): EndpointValue(1, 1 << 32)})
    assert maps.dump().policy == set() and maps.dump().ipcache == {}


def test_lost_events_are_counted_and_the_rest_decode(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    configure(maps, lab, {"srv": INGRESS})
    capacity = SMALL.events_bytes // 64  # 56-byte records: fewer than this fit
    lost_before = events.lost
    srv = lab.pods["srv"]
    with netns_socket(lab.pods["cli"].netns, socket.SOCK_DGRAM) as s:
        for _ in range(capacity + 200):  # a denied flow makes no CT entry: every one drops
            s.sendto(b"x", (srv.ip, 8080))
    got = events.drain()
    assert events.lost > lost_before
    assert len(got) >= capacity // 2
    assert all(e.verdict in (Verdict.DROPPED, Verdict.FORWARDED) for e in got)
    assert events.malformed == 0
    assert maps.counters()["events_lost"] == events.lost


async def test_pump_feeds_an_asyncio_queue(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    configure(maps, lab, {"srv": INGRESS})
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[RawFlowEvent] = asyncio.Queue()
    stop = threading.Event()

    def sink(event: RawFlowEvent) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    pump = asyncio.create_task(asyncio.to_thread(events.pump, sink, stop, interval=0.05))
    try:
        srv = lab.pods["srv"]
        answer = await asyncio.to_thread(udp, lab.pods["ext"], srv.ip, 9005)
        assert answer == "timeout"
        async with asyncio.timeout(3):
            while True:
                event = await queue.get()
                if event.verdict == Verdict.DROPPED:
                    break
        assert (event.src_identity, event.dst_identity, event.dport) == (
            IDS["ext"],
            IDS["srv"],
            9005,
        )
    finally:
        stop.set()
        await pump
    assert EndpointFlags.ENFORCE_INGRESS in maps.dump().endpoints[EndpointKey(srv.ifindex)].flags
