"""Byte layout of the load-balancing maps: ctypes mirrors of bpf/lb4_maps.h and pure codecs.

Why a separate, pure module: the layout is a contract between C and Python, so it lives in one
place with no I/O. The loader uses :data:`MAP_SPECS` to verify pinned maps before reusing them,
the map layer uses the codecs, and a test compares every size here with what bcc compiled.
Encoding validates each field and names the map, the entry and the field on bad input, so a
malformed desired state is reported, not written.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from services.datapath.bpfsys import (
    BPF_F_NO_PREALLOC,
    MAP_TYPE_ARRAY,
    MAP_TYPE_HASH,
    MAP_TYPE_LPM_TRIE,
    MAP_TYPE_LRU_HASH,
    MAP_TYPE_PERCPU_ARRAY,
)
from services.datapath.lbmap import (
    INLINE_BACKENDS_MAX,
    BackendState,
    BackendValue,
    FrontendValue,
    InlineBackend,
    RevNatValue,
    ServiceFlags,
    ServiceKey,
    ServiceValue,
)
from services.datapath.svcranges import MAP_SERVICE_RANGES, SERVICE_RANGES_MAX, Lb4RangeKey


class Lb4Key(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("dport", ctypes.c_uint16),
        ("backend_slot", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class Lb4Service(ctypes.Structure):
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("rev_nat_index", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("affinity_timeout", ctypes.c_uint32),
    ]


class Lb4InlineBackend(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("backend_id", ctypes.c_uint32),
    ]


class Lb4Frontend(ctypes.Structure):
    _fields_ = [
        ("rev_nat_index", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("n_inline", ctypes.c_uint8),
        ("affinity_timeout", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("backends", Lb4InlineBackend * INLINE_BACKENDS_MAX),
    ]


class Lb4Backend(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
    ]


class Lb4ReverseNat(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Lb4AffinityKey(ctypes.Structure):
    _fields_ = [
        ("client_cookie", ctypes.c_uint64),
        ("rev_nat_id", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class Lb4AffinityVal(ctypes.Structure):
    _fields_ = [
        ("last_used", ctypes.c_uint64),
        ("backend_id", ctypes.c_uint32),
        ("slot", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Ipv4RevnatTuple(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Ipv4RevnatEntry(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("rev_nat_index", ctypes.c_uint32),
    ]


class Lb4SkPeer(ctypes.Structure):
    """One slot of the lb4_sk_peer ring: a connected socket's reverse NAT (cookie 0 = free)."""

    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("backend_address", ctypes.c_uint32),
        ("backend_port", ctypes.c_uint16),
        ("port", ctypes.c_uint16),
        ("address", ctypes.c_uint32),
        ("rev_nat_index", ctypes.c_uint32),
        ("pad", ctypes.c_uint64),
    ]


# enum lb4_counter in bpf/lb4_maps.h, in order
COUNTERS = (
    "translated",
    "refused",
    "backend_missing",
    "affinity_hit",
    "affinity_expired",
    "affinity_stale",
    "revnat_hit",
    "revnat_stale",
)

# Logical names (used in MapError and fill(), shared with the fake) -> pinned/kernel names.
MAP_SERVICES, MAP_BACKENDS, MAP_REVNAT = "services", "backends", "revnat"
MAP_FRONTENDS = "frontends"
MAP_AFFINITY, MAP_SK_REVNAT, MAP_COUNTERS = "affinity", "sk_revnat", "counters"
MAP_SK_PEER = "sk_peer"


@dataclass(frozen=True, slots=True)
class MapCapacities:
    """max_entries per map; compiled in as -D flags and verified against existing pins.

    ``sk_peer`` (the connected sockets' reverse-NAT ring, 32 bytes a slot, always allocated:
    8 MiB at the default) must be a power of two: a socket's slot is its cookie masked. It is
    the last field because callers construct this positionally."""

    services: int = 262144
    backends: int = 131072
    revnat: int = 65536
    affinity: int = 65536
    sk_revnat: int = 65536
    sk_peer: int = 262144

    def __post_init__(self) -> None:
        for name in ("services", "backends", "revnat", "affinity", "sk_revnat", "sk_peer"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 1 << 24:
                raise ValueError(f"MapCapacities.{name}: {value!r} is not in 1..{1 << 24}")
        if self.sk_peer & (self.sk_peer - 1):
            raise ValueError(
                f"MapCapacities.sk_peer: {self.sk_peer!r} is not a power of two "
                "(a socket's slot is its cookie & (sk_peer - 1))"
            )


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str  # logical name
    pin: str  # file name under the pin directory, also the bcc table name
    map_type: int
    key: Any  # a ctypes type
    value: Any
    max_entries: int
    flags: int


def map_specs(cap: MapCapacities) -> tuple[MapSpec, ...]:
    """What bpf/lb4_maps.h creates for these capacities: the reference for pin verification."""
    hash_, lru, nopre = MAP_TYPE_HASH, MAP_TYPE_LRU_HASH, BPF_F_NO_PREALLOC
    return (
        MapSpec(MAP_SERVICES, "lb4_services", hash_, Lb4Key, Lb4Service, cap.services, nopre),
        # one entry per frontend, like the reverse NAT map (bpf/lb4_maps.h)
        MapSpec(MAP_FRONTENDS, "lb4_frontends", hash_, Lb4Key, Lb4Frontend, cap.revnat, nopre),
        MapSpec(
            MAP_BACKENDS, "lb4_backends", hash_, ctypes.c_uint32, Lb4Backend, cap.backends, nopre
        ),
        MapSpec(MAP_REVNAT, "lb4_revnat", hash_, ctypes.c_uint32, Lb4ReverseNat, cap.revnat, nopre),
        MapSpec(MAP_AFFINITY, "lb4_affinity", lru, Lb4AffinityKey, Lb4AffinityVal, cap.affinity, 0),
        MapSpec(
            MAP_SK_REVNAT, "lb4_sk_revnat", lru, Ipv4RevnatTuple, Ipv4RevnatEntry, cap.sk_revnat, 0
        ),
        MapSpec(
            MAP_SK_PEER, "lb4_sk_peer", MAP_TYPE_ARRAY, ctypes.c_uint32, Lb4SkPeer, cap.sk_peer, 0
        ),
        MapSpec(
            MAP_COUNTERS,
            "lb4_counters",
            MAP_TYPE_PERCPU_ARRAY,
            ctypes.c_uint32,
            ctypes.c_uint64,
            len(COUNTERS),
            0,
        ),
        MapSpec(
            MAP_SERVICE_RANGES,
            "lb4_service_ranges",
            MAP_TYPE_LPM_TRIE,
            Lb4RangeKey,
            ctypes.c_uint8,
            SERVICE_RANGES_MAX,
            nopre,
        ),
    )


# --- codecs -------------------------------------------------------------------------------------


class EntryError(ValueError):
    """An entry cannot be encoded: names the map, the entry and the field."""

    def __init__(self, map_name: str, entry: object, field: str, problem: str) -> None:
        super().__init__(f"{map_name}: entry {entry!r}: field {field}: {problem}")
        self.map_name = map_name
        self.field = field


def _ip_raw(value: str) -> int:
    """Dotted quad -> u32 whose in-memory bytes are network order. Not cached: 100,000
    distinct backend addresses would only churn a cache (the packers memoise VIPs per batch)."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, value), "little")


def _ip(map_name: str, entry: object, field: str, value: object) -> int:
    try:
        if isinstance(value, str):
            return _ip_raw(value)
    except OSError:
        pass
    raise EntryError(map_name, entry, field, f"{value!r} is not an IPv4 address")


def _uint(map_name: str, entry: object, field: str, value: object, bits: int) -> int:
    if type(value) is int and 0 <= value < 1 << bits:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << bits:
        return int(value)  # an IntEnum/IntFlag member
    raise EntryError(map_name, entry, field, f"{value!r} is not in 0..{(1 << bits) - 1}")


def _ip_str(raw: int) -> str:
    return socket.inet_ntoa(raw.to_bytes(4, "little"))


_FLAGS: dict[int, ServiceFlags] = {}
_STATES = {int(state): state for state in BackendState}


def _service_flags(raw: int) -> ServiceFlags:
    flags = _FLAGS.get(raw)
    if flags is None:
        flags = _FLAGS[raw] = ServiceFlags(raw)
    return flags


def _encode_lb4_key(m: str, key: ServiceKey) -> Lb4Key:
    return Lb4Key(
        address=_ip(m, key, "vip", key.vip),
        dport=socket.htons(_uint(m, key, "port", key.port, 16)),
        backend_slot=_uint(m, key, "slot", key.slot, 16),
        proto=_uint(m, key, "proto", key.proto, 8),
    )


def encode_service_key(key: ServiceKey) -> Lb4Key:
    return _encode_lb4_key(MAP_SERVICES, key)


def encode_frontend_key(key: ServiceKey) -> Lb4Key:
    """A frontend is keyed like its master: slot 0 (connect() looks it up with slot 0)."""
    raw = _encode_lb4_key(MAP_FRONTENDS, key)
    if raw.backend_slot != 0:
        raise EntryError(
            MAP_FRONTENDS, key, "slot", f"{key.slot!r} is not 0 (frontends are masters)"
        )
    return raw


def decode_service_key(raw: Lb4Key) -> ServiceKey:
    return ServiceKey(_ip_str(raw.address), socket.ntohs(raw.dport), raw.proto, raw.backend_slot)


def encode_service_value(key: ServiceKey, value: ServiceValue) -> Lb4Service:
    m = MAP_SERVICES
    return Lb4Service(
        backend_id=_uint(m, key, "backend_id", value.backend_id, 32),
        count=_uint(m, key, "count", value.count, 16),
        rev_nat_index=_uint(m, key, "rev_nat_id", value.rev_nat_id, 32),
        flags=_uint(m, key, "flags", int(value.flags), 8),
        affinity_timeout=_uint(m, key, "affinity_timeout", value.affinity_timeout, 32),
    )


def decode_service_value(raw: Lb4Service) -> ServiceValue:
    return ServiceValue(
        raw.backend_id,
        raw.count,
        raw.rev_nat_index,
        _service_flags(raw.flags),
        raw.affinity_timeout,
    )


def encode_frontend_value(key: ServiceKey, value: FrontendValue) -> Lb4Frontend:
    """The entry connect() reads. Refuses what the program would misread: more inline backends
    than the entry holds, an inline list that is not exactly the ``count`` slots (the program
    picks among ``n_inline``, the slots path among ``count``), or inline backends on a service
    with session affinity (the program takes the inline path before it looks at affinity)."""
    m = MAP_FRONTENDS
    count = _uint(m, key, "count", value.count, 16)
    flags = _uint(m, key, "flags", value.flags, 8)
    raw = Lb4Frontend(
        rev_nat_index=_uint(m, key, "rev_nat_id", value.rev_nat_id, 32),
        count=count,
        flags=flags,
        affinity_timeout=_uint(m, key, "affinity_timeout", value.affinity_timeout, 32),
    )
    inline = value.inline
    if not isinstance(inline, tuple | list):
        raise EntryError(m, key, "inline", f"{inline!r} is not a sequence of InlineBackend")
    if len(inline) > INLINE_BACKENDS_MAX:
        raise EntryError(
            m, key, "inline", f"{len(inline)} backends, the entry holds {INLINE_BACKENDS_MAX}"
        )
    if inline and len(inline) != count:
        raise EntryError(m, key, "inline", f"{len(inline)} backends but count is {count}")
    if inline and flags & ServiceFlags.SESSION_AFFINITY:
        raise EntryError(m, key, "inline", "must be empty with session affinity (slots path)")
    raw.n_inline = len(inline)
    for i, backend in enumerate(inline):
        where = f"inline[{i}]"
        if not isinstance(backend, tuple) or len(backend) != len(InlineBackend._fields):
            raise EntryError(m, key, where, f"{backend!r} is not an InlineBackend")
        backend_id, ip, port = backend
        slot = raw.backends[i]
        slot.backend_id = _uint(m, key, f"{where}.backend_id", backend_id, 32)
        slot.address = _ip(m, key, f"{where}.ip", ip)
        slot.port = socket.htons(_uint(m, key, f"{where}.port", port, 16))
    return raw


def decode_frontend_value(raw: Lb4Frontend) -> FrontendValue:
    n = raw.n_inline
    if n > INLINE_BACKENDS_MAX:
        raise EntryError(
            MAP_FRONTENDS,
            f"rev_nat_id {raw.rev_nat_index}",
            "n_inline",
            f"{n} is more than {INLINE_BACKENDS_MAX} (map written by a newer version?)",
        )
    backends = raw.backends
    inline = tuple(
        InlineBackend(b.backend_id, _ip_str(b.address), socket.ntohs(b.port)) for b in backends[:n]
    )
    return FrontendValue(
        raw.count, raw.rev_nat_index, _service_flags(raw.flags), raw.affinity_timeout, inline
    )


def encode_backend_id(backend_id: int) -> ctypes.c_uint32:
    return ctypes.c_uint32(_uint(MAP_BACKENDS, backend_id, "id", backend_id, 32))


_STATE_VALUES = frozenset(int(state) for state in BackendState)


def encode_backend(backend_id: int, value: BackendValue) -> Lb4Backend:
    m = MAP_BACKENDS
    state = value.state
    if not isinstance(state, int) or state not in _STATE_VALUES:
        raise EntryError(m, backend_id, "state", f"{state!r} is not a BackendState")
    return Lb4Backend(
        address=_ip(m, backend_id, "ip", value.ip),
        port=socket.htons(_uint(m, backend_id, "port", value.port, 16)),
        proto=_uint(m, backend_id, "proto", value.proto, 8),
        state=int(state),
    )


def decode_backend(raw: Lb4Backend) -> BackendValue:
    state = _STATES.get(raw.state)
    if state is None:
        raise EntryError(
            MAP_BACKENDS,
            _ip_str(raw.address),
            "state",
            f"{raw.state} is not a BackendState (map written by a newer version?)",
        )
    return BackendValue(_ip_str(raw.address), socket.ntohs(raw.port), raw.proto, state)


def encode_revnat_id(rev_nat_id: int) -> ctypes.c_uint32:
    return ctypes.c_uint32(_uint(MAP_REVNAT, rev_nat_id, "id", rev_nat_id, 32))


def encode_revnat(rev_nat_id: int, value: RevNatValue) -> Lb4ReverseNat:
    m = MAP_REVNAT
    return Lb4ReverseNat(
        address=_ip(m, rev_nat_id, "vip", value.vip),
        port=socket.htons(_uint(m, rev_nat_id, "port", value.port, 16)),
    )


def decode_revnat(raw: Lb4ReverseNat) -> RevNatValue:
    return RevNatValue(_ip_str(raw.address), socket.ntohs(raw.port))


# --- packed batches -----------------------------------------------------------------------------
# The batch syscalls take arrays of keys and values. Building one ctypes Structure per entry costs
# microseconds (keyword construction, then a copy into the array); packing every entry straight
# into one bytearray with a precompiled struct costs a fraction of that, which is what lets a cold
# node write 200,000 entries in well under a second. The formats mirror the Structures above
# (checked below at import). Anything the fast path cannot pack (a bad IP, a value out of range,
# a wrong type) is re-encoded entry by entry with the checked encoders, which raise the
# EntryError naming the map, the entry and the field.

_KEY = struct.Struct("<IHHB3x")  # Lb4Key
_SERVICE = struct.Struct("<IIHBxI")  # Lb4Service
_BACKEND = struct.Struct("<IHBB")  # Lb4Backend
_REVNAT = struct.Struct("<IH2x")  # Lb4ReverseNat
# Lb4Backend with the address as its 4 network-order bytes: 100,000 distinct backend addresses
# are packed straight from inet_pton (no int conversion call per backend)
_BACKEND_BYTES = struct.Struct("<4sHBB")
_U32 = struct.Struct("<I")
# Lb4Frontend: the head, then INLINE_BACKENDS_MAX Lb4InlineBackend (address as bytes, as above);
# the inline slots past n_inline stay zero (the value buffer starts zeroed)
_FRONTEND_HEAD = struct.Struct("<IHBBI4x")
_KEY_BYTES = struct.Struct("<4sHHB3x")  # Lb4Key with the address as its 4 network-order bytes
_INLINE = struct.Struct("<4sH2xI")
for _fmt, _ctype in ((_KEY, Lb4Key), (_SERVICE, Lb4Service), (_BACKEND, Lb4Backend),
                     (_BACKEND_BYTES, Lb4Backend), (_REVNAT, Lb4ReverseNat),
                     (_U32, ctypes.c_uint32), (_INLINE, Lb4InlineBackend),
                     (_KEY_BYTES, Lb4Key)):  # fmt: skip
    assert _fmt.size == ctypes.sizeof(_ctype), (_fmt.format, _ctype)
assert Lb4Frontend.backends.offset == _FRONTEND_HEAD.size
assert _FRONTEND_HEAD.size + INLINE_BACKENDS_MAX * _INLINE.size == ctypes.sizeof(Lb4Frontend)
_PACK_ERRORS = (struct.error, OSError, OverflowError, TypeError, ValueError, AttributeError)
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Packed:
    """``count`` keys and values laid out as the kernel's arrays (what the batch calls take)."""

    keys: bytearray
    values: bytearray
    count: int


def _recheck(items: Iterable[tuple[K, V]], check: Callable[[K, V], object]) -> None:
    """Run the checked encoder over every entry: raises the precise EntryError."""
    for key, value in items:
        check(key, value)


def _check_service(key: ServiceKey, value: ServiceValue) -> None:
    encode_service_key(key)
    encode_service_value(key, value)


def _check_backend(backend_id: int, value: BackendValue) -> None:
    encode_backend_id(backend_id)
    encode_backend(backend_id, value)


def _check_revnat(rev_nat_id: int, value: RevNatValue) -> None:
    encode_revnat_id(rev_nat_id)
    encode_revnat(rev_nat_id, value)


def pack_services(items: Mapping[ServiceKey, ServiceValue]) -> Packed:
    n = len(items)
    keys, values = bytearray(n * _KEY.size), bytearray(n * _SERVICE.size)
    kp, vp, htons = _KEY.pack_into, _SERVICE.pack_into, socket.htons
    ks, vs = _KEY.size, _SERVICE.size
    last, raw = None, 0  # a frontend's keys come together and share its VIP (object)
    try:
        for i, ((vip, port, proto, slot), (bid, count, rid, flags, aff)) in enumerate(
            items.items()
        ):
            if vip is not last:
                raw, last = _ip_raw(vip), vip
            kp(keys, i * ks, raw, htons(port), slot, proto)
            vp(values, i * vs, bid, rid, count, flags, aff)
    except _PACK_ERRORS:
        _recheck(items.items(), _check_service)
        raise
    return Packed(keys, values, n)


def pack_service_keys(keys: Iterable[ServiceKey]) -> Packed:
    return _pack_lb4_keys(keys, encode_service_key, masters_only=False)


def pack_frontend_keys(keys: Iterable[ServiceKey]) -> Packed:
    """Frontend keys (slot 0 only: a slot key would name no frontend and delete nothing)."""
    return _pack_lb4_keys(keys, encode_frontend_key, masters_only=True)


def _pack_lb4_keys(
    keys: Iterable[ServiceKey], check: Callable[[ServiceKey], object], *, masters_only: bool
) -> Packed:
    todo = list(keys)
    out = bytearray(len(todo) * _KEY.size)
    kp, htons, ks = _KEY.pack_into, socket.htons, _KEY.size
    last, raw = None, 0
    try:
        for i, (vip, port, proto, slot) in enumerate(todo):
            if masters_only and slot:
                raise ValueError(slot)
            if vip is not last:
                raw, last = _ip_raw(vip), vip
            kp(out, i * ks, raw, htons(port), slot, proto)
    except _PACK_ERRORS:
        for k in todo:
            check(k)
        raise
    return Packed(out, bytearray(), len(todo))


def _check_frontend(key: ServiceKey, value: FrontendValue) -> None:
    encode_frontend_key(key)
    encode_frontend_value(key, value)


_AFFINITY = int(ServiceFlags.SESSION_AFFINITY)


def pack_frontends(items: Mapping[ServiceKey, FrontendValue]) -> Packed:
    """Like :func:`pack_services`; the rules :func:`encode_frontend_value` enforces are checked
    here too (a breach goes to the checked encoder, which names it). Every frontend change
    rewrites its entry (one per endpoint change of a small service), so this is on the worker's
    per-event path: addresses go in as inet_pton's bytes, flags are tested with int.__and__
    (IntFlag's own operator is Python-level)."""
    n = len(items)
    ks, vs, bs = _KEY_BYTES.size, ctypes.sizeof(Lb4Frontend), _INLINE.size
    keys, values = bytearray(n * ks), bytearray(n * vs)
    kp, hp, bp = _KEY_BYTES.pack_into, _FRONTEND_HEAD.pack_into, _INLINE.pack_into
    htons, pton, inet, and_ = socket.htons, socket.inet_pton, socket.AF_INET, int.__and__
    head, most, affinity = _FRONTEND_HEAD.size, INLINE_BACKENDS_MAX, _AFFINITY
    try:
        at = 0
        for i, ((vip, port, proto, slot), (count, rid, flags, aff, inline)) in enumerate(
            items.items()
        ):
            n_inline = len(inline)
            if slot or (
                n_inline and (n_inline != count or n_inline > most or and_(flags, affinity))
            ):
                raise ValueError(slot)
            kp(keys, i * ks, pton(inet, vip), htons(port), 0, proto)
            hp(values, at, rid, count, flags, n_inline, aff)
            b = at + head
            for bid, addr, bport in inline:
                bp(values, b, pton(inet, addr), htons(bport), bid)
                b += bs
            at += vs
    except _PACK_ERRORS:
        _recheck(items.items(), _check_frontend)
        raise
    return Packed(keys, values, n)


def pack_backends(items: Mapping[int, BackendValue]) -> Packed:
    n = len(items)
    keys, values = bytearray(n * 4), bytearray(n * _BACKEND.size)
    kp, vp, htons, vs = _U32.pack_into, _BACKEND_BYTES.pack_into, socket.htons, _BACKEND.size
    pton, inet, states = socket.inet_pton, socket.AF_INET, _STATE_VALUES
    try:
        for i, (bid, (addr, port, proto, state)) in enumerate(items.items()):
            if state not in states or type(bid) is not int:
                raise ValueError(bid)
            kp(keys, i * 4, bid)
            vp(values, i * vs, pton(inet, addr), htons(port), proto, state)
    except _PACK_ERRORS:
        _recheck(items.items(), _check_backend)
        raise
    return Packed(keys, values, n)


def pack_revnat(items: Mapping[int, RevNatValue]) -> Packed:
    n = len(items)
    keys, values = bytearray(n * 4), bytearray(n * _REVNAT.size)
    kp, vp, ip, htons, vs = _U32.pack_into, _REVNAT.pack_into, _ip_raw, socket.htons, _REVNAT.size
    try:
        for i, (rid, (vip, port)) in enumerate(items.items()):
            kp(keys, i * 4, rid)
            vp(values, i * vs, ip(vip), htons(port))
    except _PACK_ERRORS:
        _recheck(items.items(), _check_revnat)
        raise
    return Packed(keys, values, n)


def pack_ids(ids: Iterable[int], map_name: str) -> Packed:
    todo = list(ids)
    out = bytearray(len(todo) * 4)
    try:
        for i, ident in enumerate(todo):
            if type(ident) is not int:
                raise TypeError(ident)
            _U32.pack_into(out, i * 4, ident)
    except _PACK_ERRORS:
        for ident in todo:
            _uint(map_name, ident, "id", ident, 32)
        raise
    return Packed(out, bytearray(), len(todo))
