"""bpf/policy.c on real veths: default allow, default deny, allow rules, conntrack, CIDRs, events.

Every connection outcome is also asked of ``fakepolicymaps.decide`` on the kernel maps' dump:
the Python model of the datapath and the datapath must agree on every new flow.
"""

from __future__ import annotations

import pytest

from services.datapath.fakepolicymaps import Packet, decide
from services.datapath.flowevents import (
    DROP_POLICY_DENIED,
    FlowEventReader,
    ObservationPoint,
    RawFlowEvent,
    Verdict,
)
from services.datapath.policybpf import BpfPolicyMaps
from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    CIDR_IDENTITY_BASE,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyMaps,
    port_range_prefixes,
)
from tests.datapath.policy_bpf.conftest import SMALL, Lab, Pod, ping, tcp, udp, wait_events

pytestmark = pytest.mark.bpf

TCP, UDP = 6, 17
IDS = {"srv": 1000, "cli": 1001, "ext": 1002}
EP_IDS = {"srv": 11, "cli": 12, "ext": 13}
INGRESS, EGRESS = EndpointFlags.ENFORCE_INGRESS, EndpointFlags.ENFORCE_EGRESS
SYN = 0x02


def configure(
    maps: PolicyMaps,
    lab: Lab,
    flags: dict[str, EndpointFlags],
    *,
    pod_ips: bool = True,
) -> None:
    maps.update_endpoints(
        {
            EndpointKey(pod.ifindex): EndpointValue(
                EP_IDS[role], IDS[role], flags.get(role, EndpointFlags.NONE)
            )
            for role, pod in lab.pods.items()
        }
    )
    if pod_ips:
        maps.update_ipcache({CidrKey(f"{p.ip}/32"): IDS[r] for r, p in lab.pods.items()})


def rule(
    pod: str, direction: Direction, proto: int, peer: int, port: int = 0, plen: int = 0
) -> PolicyKey:
    return PolicyKey(EP_IDS[pod], direction, proto, peer, port, plen)


def expect_tcp(maps: BpfPolicyMaps, lab: Lab, src: str, dst: str, port: int, ok: bool) -> None:
    """Connect src -> dst:port, assert the outcome, and that decide() predicts it."""
    client, server = lab.pods[src], lab.pods[dst]
    answer = tcp(client, server.ip, port)
    assert (answer == f"{server.ip}:{port}") is ok, f"{src} -> {dst}:{port}: {answer}"
    assert model_allows(maps, client, server, TCP, port) is ok


def model_allows(maps: BpfPolicyMaps, client: Pod, server: Pod, proto: int, port: int) -> bool:
    state = maps.dump()
    verdicts = [
        decide(state, Packet(client.ifindex, Direction.EGRESS, client.ip, server.ip, proto, port)),
        decide(state, Packet(server.ifindex, Direction.INGRESS, client.ip, server.ip, proto, port)),
    ]
    return all(d is None or d.verdict == Verdict.FORWARDED for d in verdicts)


def only(events: list[RawFlowEvent], verdict: Verdict) -> list[RawFlowEvent]:
    return [e for e in events if e.verdict == verdict]


def test_no_endpoint_config_allows_everything(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    before = maps.counters()["no_endpoint"]
    expect_tcp(maps, lab, "cli", "srv", 8080, ok=True)
    assert udp(lab.pods["ext"], lab.pods["srv"].ip, 8081) == f"{lab.pods['srv'].ip}:8081"
    assert maps.counters()["no_endpoint"] > before
    assert events.poll(0.1) == []  # not our endpoints: no events
    assert maps.conntrack() == []


def test_enforced_ingress_without_rules_drops_with_event(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    configure(maps, lab, {"srv": INGRESS})
    expect_tcp(maps, lab, "cli", "srv", 8080, ok=False)
    got = wait_events(events, 2)  # cli's egress FORWARDED (not enforced), srv's ingress DROPPED
    forwarded, dropped = only(got, Verdict.FORWARDED), only(got, Verdict.DROPPED)
    srv, cli = lab.pods["srv"], lab.pods["cli"]
    drop = dropped[0]
    assert (drop.drop_reason, drop.drop_reason_desc) == (DROP_POLICY_DENIED, "Policy denied")
    assert (drop.src_identity, drop.dst_identity) == (IDS["cli"], IDS["srv"])
    assert (drop.saddr, drop.daddr, drop.dport, drop.proto) == (cli.ip, srv.ip, 8080, TCP)
    assert drop.tcp_flags & SYN
    assert (drop.endpoint_id, drop.ifindex) == (EP_IDS["srv"], srv.ifindex)
    assert drop.direction == Direction.INGRESS
    assert drop.observation_point == ObservationPoint.TO_ENDPOINT
    assert not drop.is_reply
    assert drop.time_ns > 1_600_000_000 * 10**9
    fwd = forwarded[0]
    assert (fwd.endpoint_id, fwd.direction) == (EP_IDS["cli"], Direction.EGRESS)
    assert fwd.observation_point == ObservationPoint.FROM_ENDPOINT
    assert (fwd.src_identity, fwd.dst_identity, fwd.drop_reason) == (IDS["cli"], IDS["srv"], 0)
    assert maps.counters()["policy_denied"] >= 1


def test_allow_rule_for_identity_and_port(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    configure(maps, lab, {"srv": INGRESS})
    maps.update_policy([rule("srv", Direction.INGRESS, TCP, IDS["cli"], 8080, 16)])
    expect_tcp(maps, lab, "cli", "srv", 8080, ok=True)
    expect_tcp(maps, lab, "cli", "srv", 8081, ok=False)  # other port
    expect_tcp(maps, lab, "ext", "srv", 8080, ok=False)  # other identity
    got = events.poll(0.2) + events.poll(0.2)
    allowed = [e for e in only(got, Verdict.FORWARDED) if e.endpoint_id == EP_IDS["srv"]]
    assert [(e.src_identity, e.dport) for e in allowed] == [(IDS["cli"], 8080)]  # one per flow
    denied = {(e.src_identity, e.dport) for e in only(got, Verdict.DROPPED)}
    assert denied == {(IDS["cli"], 8081), (IDS["ext"], 8080)}


def test_replies_of_allowed_egress_pass_enforced_ingress(maps: BpfPolicyMaps, lab: Lab) -> None:
    configure(maps, lab, {"cli": INGRESS})
    expect_tcp(maps, lab, "cli", "srv", 8080, ok=True)  # the SYN-ACK comes back through CT
    flows = [f for f in maps.conntrack() if f.endpoint_id == EP_IDS["cli"]]
    assert [(f.direction, f.dport, f.proto) for f in flows] == [(Direction.EGRESS, 8080, TCP)]
    assert flows[0].packets_rev >= 1
    assert maps.counters()["reply"] >= 1
    expect_tcp(maps, lab, "srv", "cli", 8080, ok=False)  # a new flow the other way is not


def test_port_range(maps: BpfPolicyMaps, lab: Lab) -> None:
    configure(maps, lab, {"srv": INGRESS})
    prefixes = port_range_prefixes(9000, 9010)
    maps.update_policy([rule("srv", Direction.INGRESS, TCP, IDS["cli"], p, n) for p, n in prefixes])
    assert len(prefixes) > 1
    expect_tcp(maps, lab, "cli", "srv", 9005, ok=True)
    expect_tcp(maps, lab, "cli", "srv", 9011, ok=False)
    expect_tcp(maps, lab, "cli", "srv", 8080, ok=False)


def test_any_identity_and_any_protocol(maps: BpfPolicyMaps, lab: Lab) -> None:
    configure(maps, lab, {"srv": INGRESS})
    maps.update_policy([rule("srv", Direction.INGRESS, TCP, ANY_IDENTITY, 8081, 16)])
    expect_tcp(maps, lab, "cli", "srv", 8081, ok=True)
    expect_tcp(maps, lab, "ext", "srv", 8081, ok=True)
    expect_tcp(maps, lab, "ext", "srv", 8080, ok=False)
    maps.update_policy([rule("srv", Direction.INGRESS, ANY_PROTO, IDS["ext"])])
    expect_tcp(maps, lab, "ext", "srv", 8080, ok=True)
    srv = lab.pods["srv"]
    assert udp(lab.pods["ext"], srv.ip, 9011) == f"{srv.ip}:9011"
    assert udp(lab.pods["cli"], srv.ip, 9011) == "timeout"


def test_cidr_identities_with_except(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    inside, excepted = CIDR_IDENTITY_BASE + 1, CIDR_IDENTITY_BASE + 2
    configure(maps, lab, {"srv": INGRESS}, pod_ips=False)
    maps.update_ipcache(
        {
            CidrKey("10.210.1.0/24"): inside,  # cli 10.210.1.5 and ext 10.210.1.20
            CidrKey("10.210.1.16/28"): excepted,  # ... except ext's /28
        }
    )
    maps.update_policy([rule("srv", Direction.INGRESS, TCP, inside, 8080, 16)])
    expect_tcp(maps, lab, "cli", "srv", 8080, ok=True)
    expect_tcp(maps, lab, "ext", "srv", 8080, ok=False)
    drops = only(events.poll(0.2) + events.poll(0.2), Verdict.DROPPED)
    assert {e.src_identity for e in drops} == {excepted}
    # srv itself has no ipcache entry: it is WORLD to the others
    assert {e.dst_identity for e in drops} == {IDS["srv"]}


def test_udp_request_response_through_conntrack(
    maps: BpfPolicyMaps, lab: Lab, events: FlowEventReader
) -> None:
    configure(maps, lab, {"cli": INGRESS | EGRESS})
    maps.update_policy([rule("cli", Direction.EGRESS, UDP, IDS["srv"], 8080, 16)])
    srv, cli = lab.pods["srv"], lab.pods["cli"]
    assert udp(cli, srv.ip, 8080) == f"{srv.ip}:8080"  # the response is a CT reply
    assert udp(cli, srv.ip, 8081) == "timeout"  # egress not allowed
    assert model_allows(maps, cli, srv, UDP, 8080)
    assert not model_allows(maps, cli, srv, UDP, 8081)
    drops = only(events.poll(0.2) + events.poll(0.2), Verdict.DROPPED)
    assert [(e.direction, e.observation_point, e.dport, e.proto) for e in drops] == [
        (Direction.EGRESS, ObservationPoint.FROM_ENDPOINT, 8081, UDP)
    ]
    assert (drops[0].src_identity, drops[0].dst_identity) == (IDS["cli"], IDS["srv"])


def test_icmp_echo_policy_and_replies(maps: BpfPolicyMaps, lab: Lab) -> None:
    configure(maps, lab, {"srv": INGRESS, "cli": INGRESS})
    srv, cli, ext = lab.pods["srv"], lab.pods["cli"], lab.pods["ext"]
    assert not ping(cli, srv.ip, 0x4242)  # srv enforces ingress, nothing allows ICMP
    maps.update_policy([rule("srv", Direction.INGRESS, ANY_PROTO, IDS["cli"])])
    assert ping(cli, srv.ip, 0x4243)  # allowed; the echo reply passes cli's ingress via CT
    assert not ping(ext, srv.ip, 0x4244)
    assert not ping(srv, cli.ip, 0x4243)  # a request the other way is new, not a reply
    flows = [f for f in maps.conntrack() if f.proto == 1 and f.endpoint_id == EP_IDS["cli"]]
    # cli's egress is not enforced: both of its echo flows were tracked, keyed by the echo id
    assert {(f.direction, f.sport, f.dport) for f in flows} == {
        (Direction.EGRESS, 0x4242, 0),
        (Direction.EGRESS, 0x4243, 0),
    }


def test_kernel_maps_dump_like_the_fake(maps: BpfPolicyMaps, lab: Lab) -> None:
    from services.datapath.fakepolicymaps import FakePolicyMaps  # noqa: PLC0415

    fake = FakePolicyMaps(SMALL)
    for m in (maps, fake):  # the same writes to both
        configure(m, lab, {"srv": INGRESS, "cli": EGRESS})
        m.update_ipcache({CidrKey("10.0.0.0/8"): CIDR_IDENTITY_BASE + 7})
        m.update_policy(
            [
                rule("srv", Direction.INGRESS, TCP, IDS["cli"], p, n)
                for p, n in port_range_prefixes(1, 65535)
            ]
        )
        m.delete_policy([rule("srv", Direction.INGRESS, TCP, IDS["cli"], 1, 16)])
        m.delete_ipcache([CidrKey("10.210.1.20/32"), CidrKey("192.0.2.0/24")])  # one absent
    assert maps.dump() == fake.dump()
    assert maps.fill()["policy"] == fake.fill()["policy"]
