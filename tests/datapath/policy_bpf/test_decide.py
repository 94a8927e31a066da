"""Pure tests (no root, no BPF): the datapath model ``decide``, the fake maps, the codecs and
the flow-event decoder. The BPF tests check the kernel against the same model.
"""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.datapath.bpflayout import EntryError
from services.datapath.fakepolicymaps import (
    FakePolicyMaps,
    Packet,
    decide,
    lookup_identity,
)
from services.datapath.flowevents import (
    FlowEventError,
    ObservationPoint,
    Verdict,
    decode_event,
)
from services.datapath.lbmap import MapFullError
from services.datapath.policylayout import (
    FlowEventRecord,
    PolicyCapacities,
    decode_policy_key,
    encode_policy_key,
    ip_raw,
)
from services.datapath.policymap import (
    ANY_IDENTITY,
    ANY_PROTO,
    CIDR_IDENTITY_BASE,
    WORLD_IDENTITY,
    CidrKey,
    Direction,
    EndpointFlags,
    EndpointKey,
    EndpointValue,
    PolicyKey,
    PolicyState,
    port_range_prefixes,
)

TCP, UDP = 6, 17
IN, OUT = Direction.INGRESS, Direction.EGRESS
EP, ME, PEER = 7, 1000, 1001


def state(flags: EndpointFlags, *rules: PolicyKey) -> PolicyState:
    return PolicyState(
        endpoints={EndpointKey(5): EndpointValue(EP, ME, flags)},
        ipcache={CidrKey("10.0.0.1/32"): ME, CidrKey("10.0.0.2/32"): PEER},
        policy=set(rules),
    )


def to_me(proto: int = TCP, port: int = 80, src: str = "10.0.0.2") -> Packet:
    return Packet(5, IN, src, "10.0.0.1", proto, port)


def test_ipcache_longest_prefix_and_world() -> None:
    cache = {
        CidrKey("10.1.0.0/16"): CIDR_IDENTITY_BASE + 1,
        CidrKey("10.1.2.0/24"): CIDR_IDENTITY_BASE + 2,
        CidrKey("10.1.2.3/32"): 300,
        CidrKey("0.0.0.0/0"): CIDR_IDENTITY_BASE + 9,
    }
    assert lookup_identity(cache, "10.1.2.3") == 300
    assert lookup_identity(cache, "10.1.2.4") == CIDR_IDENTITY_BASE + 2
    assert lookup_identity(cache, "10.1.9.9") == CIDR_IDENTITY_BASE + 1
    assert lookup_identity(cache, "192.0.2.1") == CIDR_IDENTITY_BASE + 9
    assert lookup_identity({}, "192.0.2.1") == WORLD_IDENTITY


def test_decide_table() -> None:
    assert decide(state(EndpointFlags.NONE), Packet(6, IN, "1.1.1.1", "2.2.2.2", TCP, 1)) is None
    allowed = decide(state(EndpointFlags.ENFORCE_EGRESS), to_me())
    assert allowed is not None and allowed.verdict == Verdict.FORWARDED and not allowed.enforced
    denied = decide(state(EndpointFlags.ENFORCE_INGRESS), to_me())
    assert denied is not None
    assert (denied.verdict, denied.drop_reason) == (Verdict.DROPPED, 133)
    assert (denied.src_identity, denied.dst_identity, denied.endpoint_id) == (PEER, ME, EP)
    assert denied.observation_point == ObservationPoint.TO_ENDPOINT
    ing = EndpointFlags.ENFORCE_INGRESS
    cases = [
        (PolicyKey(EP, IN, TCP, PEER, 80, 16), to_me(), True),
        (PolicyKey(EP, IN, TCP, PEER, 80, 16), to_me(port=81), False),
        (PolicyKey(EP, IN, TCP, PEER, 80, 16), to_me(proto=UDP), False),
        (PolicyKey(EP, OUT, TCP, PEER, 80, 16), to_me(), False),  # other direction
        (PolicyKey(EP + 1, IN, TCP, PEER, 80, 16), to_me(), False),  # other endpoint
        (PolicyKey(EP, IN, TCP, PEER), to_me(port=4242), True),  # every TCP port
        (PolicyKey(EP, IN, ANY_PROTO, PEER), to_me(proto=UDP, port=53), True),
        (PolicyKey(EP, IN, ANY_PROTO, PEER), to_me(src="10.9.9.9"), False),  # WORLD
        (PolicyKey(EP, IN, TCP, ANY_IDENTITY, 80, 16), to_me(src="10.9.9.9"), True),
        (PolicyKey(EP, IN, ANY_PROTO, ANY_IDENTITY), to_me(proto=1, port=0), True),
        (PolicyKey(EP, IN, TCP, WORLD_IDENTITY, 80, 16), to_me(src="10.9.9.9"), True),
    ]
    for rule, packet, ok in cases:
        got = decide(state(ing, rule), packet)
        assert got is not None and (got.verdict == Verdict.FORWARDED) is ok, (rule, packet)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 65535), st.integers(1, 65535), st.integers(0, 65535))
def test_port_ranges_allow_exactly_the_range(a: int, b: int, port: int) -> None:
    lo, hi = min(a, b), max(a, b)
    rules = [PolicyKey(EP, IN, TCP, PEER, p, n) for p, n in port_range_prefixes(lo, hi)]
    got = decide(state(EndpointFlags.ENFORCE_INGRESS, *rules), to_me(port=port))
    assert got is not None and (got.verdict == Verdict.FORWARDED) is (lo <= port <= hi)


@given(st.integers(0, 16).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, 65535))))
def test_policy_key_codec_roundtrip(case: tuple[int, int]) -> None:
    plen, port = case
    port &= (0xFFFF << (16 - plen)) & 0xFFFF
    key = PolicyKey(9, OUT, UDP, 12345, port, plen)
    raw = encode_policy_key(key)
    assert raw.prefixlen == 80 + plen
    assert decode_policy_key(raw) == key
    # the port is in network order: its most significant byte first in memory
    assert bytes(raw)[14:16] == port.to_bytes(2, "big")


def test_fake_validates_like_the_kernel_maps_and_fills_up() -> None:
    fake = FakePolicyMaps(PolicyCapacities(endpoints=1, ipcache=2, rules=2, ct=8))
    with pytest.raises(EntryError, match="field port_prefix_len"):
        fake.update_policy([PolicyKey(1, IN, TCP, 5, 0, 17)])
    with pytest.raises(EntryError, match="field cidr"):
        fake.update_ipcache({CidrKey("10.0.0.300/32"): 1})
    with pytest.raises(EntryError, match="field flags"):
        fake.update_endpoints({EndpointKey(1): EndpointValue(1, 1, 8)})  # type: ignore[arg-type]
    fake.update_endpoints({EndpointKey(1): EndpointValue(1, 1)})
    fake.update_endpoints({EndpointKey(1): EndpointValue(1, 2)})  # an update needs no room
    with pytest.raises(MapFullError, match=r"^endpoints: .*map full \(1 entries\)"):
        fake.update_endpoints({EndpointKey(2): EndpointValue(2, 2)})
    fake.delete_ipcache([CidrKey("10.0.0.0/8")])  # absent: fine
    assert fake.fill() == {"endpoints": (1, 1), "ipcache": (0, 2), "policy": (0, 2)}


def record(**fields: int) -> bytes:
    base = {
        "ktime_ns": 5,
        "saddr": ip_raw("10.0.0.2"),
        "daddr": ip_raw("10.0.0.1"),
        "sport": 0x3930,  # 12345 in network order
        "dport": 0x5000,  # 80
        "src_identity": PEER,
        "dst_identity": ME,
        "endpoint_id": EP,
        "ifindex": 5,
        "verdict": 2,
        "drop_reason": 133,
        "proto": TCP,
        "tcp_flags": 2,
        "direction": 0,
        "obs_point": 101,
    }
    return bytes(FlowEventRecord(**{**base, **fields}))


def test_decode_event() -> None:
    event = decode_event(record(), wall_offset_ns=1000)
    assert (event.saddr, event.daddr, event.sport, event.dport) == (
        "10.0.0.2",
        "10.0.0.1",
        12345,
        80,
    )
    assert (event.verdict, event.drop_reason_desc) == (Verdict.DROPPED, "Policy denied")
    assert (event.direction, event.observation_point) == (IN, ObservationPoint.TO_ENDPOINT)
    assert (event.ktime_ns, event.time_ns, event.is_reply) == (5, 1005, False)
    assert ctypes.sizeof(FlowEventRecord) == 48
    with pytest.raises(FlowEventError, match="record is 47 bytes, expected 48"):
        decode_event(record()[:47])
    with pytest.raises(FlowEventError, match="field verdict: unknown value 99"):
        decode_event(record(verdict=99))
    with pytest.raises(FlowEventError, match="field obs_point: unknown value 7"):
        decode_event(record(obs_point=7))
