"""The lb4_frontends codecs (pure): round trips, the fast packer against the checked encoder, and
the EntryError that names the map, the entry and the field; the loader's repair plan."""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Callable

import pytest

from services.datapath.bpflayout import (
    MAP_FRONTENDS,
    EntryError,
    Lb4Frontend,
    Lb4InlineBackend,
    Lb4Key,
    decode_frontend_value,
    decode_service_key,
    encode_frontend_key,
    encode_frontend_value,
    pack_frontend_keys,
    pack_frontends,
)
from services.datapath.lbmap import (
    INLINE_BACKENDS_MAX,
    PROTO_TCP,
    PROTO_UDP,
    BackendValue,
    FrontendValue,
    InlineBackend,
    LBMapState,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
    derive_frontends,
)
from services.datapath.loader import frontend_repairs

KEY = ServiceKey("10.96.0.10", 443, PROTO_TCP)
AFFINITY = ServiceFlags.SESSION_AFFINITY


def inline(n: int) -> tuple[InlineBackend, ...]:
    return tuple(InlineBackend(2**32 - 1 - i, f"10.244.{i}.{250 + i}", 65535 - i) for i in range(n))


VALUES = [
    FrontendValue(0, 1, ServiceFlags.NO_BACKENDS),
    FrontendValue(7, 2**32 - 1, ServiceFlags.LOCAL_ONLY, 0),  # slots: more than inline holds
    FrontendValue(3, 9, AFFINITY | ServiceFlags.LOCAL_ONLY, 2**32 - 1),  # slots: affinity
    *(FrontendValue(n, 100 + n, ServiceFlags.LOCAL_ONLY, 0, inline(n)) for n in range(1, 5)),
]


def test_the_mirror_is_the_c_layout() -> None:
    # struct lb4_frontend in bpf/lb4_maps.h: 16 bytes of master fields, then 4 x 12 bytes
    assert ctypes.sizeof(Lb4InlineBackend) == 12
    assert ctypes.sizeof(Lb4Frontend) == 16 + INLINE_BACKENDS_MAX * 12 == 64
    offsets = {name: getattr(Lb4Frontend, name).offset for name, *_ in Lb4Frontend._fields_}
    assert offsets == {
        "rev_nat_index": 0,
        "count": 4,
        "flags": 6,
        "n_inline": 7,
        "affinity_timeout": 8,
        "pad": 12,
        "backends": 16,
    }


@pytest.mark.parametrize("value", VALUES, ids=lambda v: f"n{v.count}-inline{len(v.inline)}")
def test_round_trip(value: FrontendValue) -> None:
    raw = encode_frontend_value(KEY, value)
    assert raw.n_inline == len(value.inline)
    assert decode_frontend_value(raw) == value
    # network order where the C struct has __be: the first inline address and port
    if value.inline:
        first = raw.backends[0]
        assert first.address.to_bytes(4, "little") == socket.inet_aton(value.inline[0].ip)
        assert first.port == socket.htons(value.inline[0].port)


def test_the_fast_packer_writes_the_checked_encoders_bytes() -> None:
    items = {KEY._replace(port=1000 + i): v for i, v in enumerate(VALUES)}
    items[ServiceKey("10.96.255.254", 53, PROTO_UDP)] = VALUES[-1]
    packed = pack_frontends(items)
    assert packed.count == len(items)
    assert bytes(packed.keys) == b"".join(bytes(encode_frontend_key(k)) for k in items)
    assert bytes(packed.values) == b"".join(
        bytes(encode_frontend_value(k, v)) for k, v in items.items()
    )
    assert bytes(pack_frontend_keys(items).keys) == bytes(packed.keys)
    keys = (Lb4Key * len(items)).from_buffer(packed.keys)
    values = (Lb4Frontend * len(items)).from_buffer(packed.values)
    assert [decode_service_key(k) for k in keys] == list(items)
    assert [decode_frontend_value(v) for v in values] == list(items.values())


BAD: list[tuple[ServiceKey, FrontendValue, str, str]] = [
    (KEY, FrontendValue(5, 1, inline=inline(5)), "inline", "5 backends, the entry holds 4"),
    (KEY, FrontendValue(3, 1, inline=inline(2)), "inline", "2 backends but count is 3"),
    (KEY, FrontendValue(2, 1, AFFINITY, 60, inline(2)), "inline", "session affinity"),
    (
        KEY,
        FrontendValue(2, 1, inline=(*inline(1), InlineBackend(5, "10.0.0.256", 80))),
        "inline[1].ip",
        "is not an IPv4 address",
    ),
    (
        KEY,
        FrontendValue(1, 1, inline=(InlineBackend(5, "10.0.0.1", 70000),)),
        "inline[0].port",
        "70000 is not in 0..65535",
    ),
    (
        KEY,
        FrontendValue(1, 1, inline=(InlineBackend(-1, "10.0.0.1", 80),)),
        "inline[0].backend_id",
        "-1 is not in",
    ),
    (KEY, FrontendValue(1, 1, inline=(("10.0.0.1", 80),)), "inline[0]", "not an InlineBackend"),  # type: ignore[arg-type]
    (KEY, FrontendValue(-1, 1), "count", "-1 is not in 0..65535"),
    (KEY, FrontendValue(1, 2**32), "rev_nat_id", "is not in"),
    (KEY, FrontendValue(1, 1, 256), "flags", "256 is not in 0..255"),  # type: ignore[arg-type]
    (KEY, FrontendValue(1, 1, affinity_timeout=-5), "affinity_timeout", "-5 is not in"),
    (KEY._replace(slot=1), FrontendValue(1, 1), "slot", "is not 0"),
    (KEY._replace(vip="10.96.0"), FrontendValue(1, 1), "vip", "is not an IPv4 address"),
    (KEY._replace(port=-1), FrontendValue(1, 1), "port", "-1 is not in 0..65535"),
]


def _check(key: ServiceKey, value: FrontendValue) -> None:
    encode_frontend_key(key)
    encode_frontend_value(key, value)


@pytest.mark.parametrize(
    "pack",
    [_check, lambda k, v: pack_frontends({KEY._replace(port=1): VALUES[3], k: v})],
    ids=["checked", "packed"],
)
@pytest.mark.parametrize(("key", "value", "field", "problem"), BAD, ids=[b[2] for b in BAD])
def test_bad_entries_name_map_entry_and_field(
    pack: Callable[[ServiceKey, FrontendValue], object],
    key: ServiceKey,
    value: FrontendValue,
    field: str,
    problem: str,
) -> None:
    with pytest.raises(EntryError) as info:
        pack(key, value)
    assert info.value.map_name == MAP_FRONTENDS
    assert info.value.field == field
    assert str(info.value).startswith(f"frontends: entry {key!r}: field {field}: ")
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("key", "field"), [(KEY._replace(slot=2), "slot"), (KEY._replace(vip="::1"), "vip")]
)
def test_bad_keys_to_delete_name_the_field(key: ServiceKey, field: str) -> None:
    with pytest.raises(EntryError) as info:
        pack_frontend_keys([KEY, key])
    assert (info.value.map_name, info.value.field) == (MAP_FRONTENDS, field)


def test_decoding_more_inline_backends_than_the_entry_holds_is_refused() -> None:
    raw = encode_frontend_value(KEY, VALUES[-1])
    raw.n_inline = INLINE_BACKENDS_MAX + 1
    with pytest.raises(EntryError, match=r"frontends: entry 'rev_nat_id 104': field n_inline"):
        decode_frontend_value(raw)


# --- the loader's repair plan ------------------------------------------------------------------


def record() -> LBMapState:
    """Three masters: inline (2 backends), slots (5 backends), no backends."""
    state = LBMapState()
    for i in range(1, 6):
        state.backends[i] = BackendValue(f"10.244.0.{i}", 8080, PROTO_TCP)
    for vip, n, rid in (("10.96.0.1", 2, 1), ("10.96.0.2", 5, 2), ("10.96.0.3", 0, 3)):
        flags = ServiceFlags.NONE if n else ServiceFlags.NO_BACKENDS
        state.services[ServiceKey(vip, 80, PROTO_TCP)] = ServiceValue(0, n, rid, flags)
        for slot in range(1, n + 1):
            state.services[ServiceKey(vip, 80, PROTO_TCP, slot)] = ServiceValue(slot, 0, rid)
    return state


def test_repairs_write_what_is_missing_or_wrong_and_delete_what_has_no_master() -> None:
    state = record()
    want = derive_frontends(state)
    assert frontend_repairs(state) == (want, [])  # empty map: everything is written
    state.frontends = dict(want)
    assert frontend_repairs(state) == ({}, [])  # consistent: nothing
    inline_key = ServiceKey("10.96.0.1", 80, PROTO_TCP)
    gone = ServiceKey("10.96.0.9", 80, PROTO_TCP)
    state.frontends[inline_key] = want[inline_key]._replace(inline=want[inline_key].inline[::-1])
    state.frontends[gone] = FrontendValue(1, 9, inline=inline(1))
    del state.frontends[ServiceKey("10.96.0.3", 80, PROTO_TCP)]
    writes, deletes = frontend_repairs(state)
    assert writes == {k: want[k] for k in (inline_key, ServiceKey("10.96.0.3", 80, PROTO_TCP))}
    assert deletes == [gone]
