"""The real LBMap: the pinned eBPF maps of bpf/sock_lb.c, written with batched bpf(2) calls.

Why it works on pinned file descriptors and not on bcc table objects: the maps outlive every
worker (they are pinned), so anything that can open the pin directory can read and write them —
the worker after bcc loaded the programs, and operator tools that never compile anything. Batches
use BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH (one syscall per few thousand entries, which is
what lets a cold node sync 100,000 endpoints in about a second) and fall back to one syscall per
entry where the kernel refuses batches. The kernel's E2BIG/ENOSPC become :class:`MapFullError`
naming the map and the entry; the batch reports how far it got, so the error is precise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from services.datapath import bpfsys
from services.datapath.bpflayout import (
    COUNTERS,
    MAP_BACKENDS,
    MAP_COUNTERS,
    MAP_FRONTENDS,
    MAP_REVNAT,
    MAP_SERVICES,
    MAP_SK_PEER,
    Lb4SkPeer,
    MapCapacities,
    MapSpec,
    Packed,
    decode_backend,
    decode_frontend_value,
    decode_revnat,
    decode_service_key,
    decode_service_value,
    map_specs,
    pack_backends,
    pack_frontend_keys,
    pack_frontends,
    pack_ids,
    pack_revnat,
    pack_service_keys,
    pack_services,
)
from services.datapath.lbmap import (
    BackendValue,
    FrontendValue,
    LBMapState,
    MapError,
    MapFullError,
    RevNatValue,
    ServiceKey,
    ServiceValue,
)
from services.datapath.svcranges import MAP_SERVICE_RANGES, decode_range, encode_range

CHUNK = 4096  # entries per batch syscall
_FULL = (errno.E2BIG, errno.ENOSPC)
_NO_BATCH = (errno.EINVAL, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524, errno.EOPNOTSUPP)
T = TypeVar("T")
# not written by the control plane: the counters, the install-time ranges, and the ring of
# connected sockets' peers (an array: every slot always exists, so a walk would count them all)
_NOT_FILLED = (MAP_COUNTERS, MAP_SERVICE_RANGES, MAP_SK_PEER)


def possible_cpus() -> int:
    """Per-CPU map values have one slot per *possible* CPU (not online)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


def percpu_sum(fd: int, index: int, ncpu: int) -> int:
    """One slot of a per-CPU u64 array, summed over the ``ncpu`` possible CPUs."""
    per_cpu = (ctypes.c_uint64 * ncpu)()
    bpfsys.map_lookup(fd, ctypes.c_uint32(index), per_cpu)
    return sum(per_cpu)


def percpu_counters(m: PinnedMap, names: Sequence[str]) -> dict[str, int]:
    """A per-CPU u64 counter array whose slots are ``names`` (a C enum, in order), summed."""
    ncpu = possible_cpus()
    return {name: percpu_sum(m.fd, index, ncpu) for index, name in enumerate(names)}


class PinnedMap:
    """One pinned map: an fd plus its ctypes key/value types. Closes its fd on close()."""

    def __init__(self, spec: MapSpec, fd: int) -> None:
        self.spec = spec
        self.fd = fd
        self.batch = True  # cleared when the kernel refuses batch operations
        info = bpfsys.map_info(fd)
        self.max_entries = info.max_entries

    @classmethod
    def open(cls, pin_dir: Path, spec: MapSpec) -> PinnedMap:
        path = pin_dir / spec.pin
        try:
            fd = bpfsys.obj_get(path)
        except OSError as exc:
            raise MapError(spec.name, f"cannot open pinned map {path}: {exc.strerror}") from exc
        return cls(spec, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def error(self, exc: OSError, entry: object) -> MapError:
        """The MapError (MapFullError when full) for a failed write of ``entry``."""
        kind = MapFullError if exc.errno in _FULL else MapError
        what = f"map full ({self.max_entries} entries)" if kind is MapFullError else exc.strerror
        return kind(self.spec.name, f"writing {entry!r}: {what}")

    def update_packed(self, packed: Packed, labels: Sequence[object]) -> None:
        """Write packed (key, value) arrays: one batch syscall per CHUNK entries."""
        ks, vs = ctypes.sizeof(self.spec.key), ctypes.sizeof(self.spec.value)
        kbuf, vbuf = _view(packed.keys), _view(packed.values)
        self.update_in_chunks(
            packed.count,
            labels,
            lambda start, n: bpfsys.map_update_batch_at(
                self.fd, kbuf + start * ks, vbuf + start * vs, n
            ),
            lambda i: bpfsys.map_update_at(self.fd, kbuf + i * ks, vbuf + i * vs),
        )

    def update_in_chunks(
        self,
        count: int,
        labels: Sequence[object],
        update_batch: Callable[[int, int], object],
        update_one: Callable[[int], object],
    ) -> None:
        """Write entries 0..count-1 by ``update_batch(start, n)`` (CHUNK at a time) while the
        kernel does batches, else by ``update_one(i)``; an error names ``labels[i]``. The
        caller's two callables say where entry ``i`` is."""
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            if self.batch:
                try:
                    update_batch(start, n)
                    continue
                except OSError as exc:
                    if exc.errno not in _NO_BATCH:
                        raise self.error(exc, labels[start + exc.done]) from exc  # type: ignore[attr-defined]
                    self.batch = False
            for i in range(start, start + n):
                try:
                    update_one(i)
                except OSError as exc:
                    raise self.error(exc, labels[i]) from exc

    def delete_packed(self, packed: Packed, labels: Sequence[object]) -> None:
        """Delete packed keys; absent keys are skipped (deleting what is absent is no error)."""
        ks = ctypes.sizeof(self.spec.key)
        kbuf = _view(packed.keys)
        self.delete_skipping_absent(
            packed.count,
            labels,
            lambda pos, n: bpfsys.map_delete_batch_at(self.fd, kbuf + pos * ks, n),
            lambda i: bpfsys.map_delete_at(self.fd, kbuf + i * ks),
        )

    def delete_skipping_absent(
        self,
        count: int,
        labels: Sequence[object],
        delete_batch: Callable[[int, int], object],
        delete_one: Callable[[int], object],
    ) -> None:
        """Delete keys 0..count-1 by ``delete_batch(pos, n)`` (CHUNK at a time) while the kernel
        does batches, else by ``delete_one(i)``; absent keys are skipped, any other error names
        ``labels[i]``. The caller's two callables say where key ``i`` is."""
        pos = 0
        while pos < count and self.batch:
            n = min(CHUNK, count - pos)
            try:
                delete_batch(pos, n)
                pos += n
            except OSError as exc:
                done = exc.done  # type: ignore[attr-defined]
                if exc.errno == errno.ENOENT:
                    pos += done + 1  # skip the absent key, go on after it
                elif exc.errno in _NO_BATCH and done == 0:
                    self.batch = False
                else:
                    raise self.error(exc, labels[pos + done]) from exc
        for i in range(pos, count):
            try:
                delete_one(i)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise self.error(exc, labels[i]) from exc

    def empty(self) -> bool:
        """Whether the map has no entry: one syscall, whatever its size."""
        try:
            bpfsys.map_get_next_key(self.fd, None, self.spec.key())
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return True
            raise MapError(self.spec.name, f"reading: {exc.strerror}") from exc
        return False

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Every (key, value), read in batches (one pass, not a snapshot under writes)."""
        for key, value in self.views():
            yield _copy(self.spec.key, key), _copy(self.spec.value, value)

    def views(self) -> Iterator[tuple[Any, Any]]:
        """Like items(), but each pair is a view into a buffer the next batch overwrites:
        decode it before asking for the next one (saves a copy per entry in dump())."""
        if not self.batch:
            yield from self._items_by_key()
            return
        chunk = CHUNK
        keys = (self.spec.key * chunk)()
        values = (self.spec.value * chunk)()
        cursor = ctypes.create_string_buffer(max(8, ctypes.sizeof(self.spec.key)))
        first, more = True, True
        while more:
            try:
                got, more = bpfsys.map_lookup_batch(self.fd, keys, values, chunk, cursor, first)
            except OSError as exc:
                if exc.errno == errno.ENOSPC and chunk < self.max_entries:  # a bucket > chunk
                    chunk *= 4
                    keys, values = (self.spec.key * chunk)(), (self.spec.value * chunk)()
                    continue
                if exc.errno in _NO_BATCH and first:
                    yield from self._items_by_key()
                    return
                raise MapError(self.spec.name, f"reading: {exc.strerror}") from exc
            first = False
            for i in range(got):
                yield keys[i], values[i]

    def _items_by_key(self) -> Iterator[tuple[Any, Any]]:
        key, nxt, value = self.spec.key(), self.spec.key(), self.spec.value()
        attr_first = True
        while True:
            try:
                bpfsys.map_get_next_key(self.fd, None if attr_first else key, nxt)
            except OSError:
                return
            attr_first = False
            ctypes.memmove(ctypes.addressof(key), ctypes.addressof(nxt), ctypes.sizeof(key))
            try:
                bpfsys.map_lookup(self.fd, key, value)
            except OSError:
                continue  # deleted in between
            yield _copy(self.spec.key, key), _copy(self.spec.value, value)


def _copy(ctype: Any, item: Any) -> Any:
    """Detach an element from a reused buffer: a Structure copy, or a plain int."""
    if isinstance(item, int):
        return item
    if isinstance(item, ctypes._SimpleCData):
        return item.value
    return ctype.from_buffer_copy(item)


def _view(buf: bytearray) -> int:
    """Address of a bytearray's storage (valid while the bytearray lives and is not resized)."""
    if not buf:
        return 0
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class PinnedMaps:
    """A set of pinned maps opened by spec (all or none); ``close()`` drops every fd."""

    def __init__(self, pin_dir: Path, specs: Iterable[MapSpec]) -> None:
        self.pin_dir = Path(pin_dir)
        self.maps: dict[str, PinnedMap] = {}
        try:
            for spec in specs:
                self.maps[spec.name] = PinnedMap.open(self.pin_dir, spec)
        except MapError:
            self.close()
            raise

    def close(self) -> None:
        for m in self.maps.values():
            m.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BpfLBMap(PinnedMaps):
    """LBMap on the pinned maps under ``pin_dir`` (the versioned directory, e.g. .../node/v1)."""

    def __init__(self, pin_dir: Path, capacities: MapCapacities | None = None) -> None:
        super().__init__(pin_dir, map_specs(capacities or MapCapacities()))

    # --- LBMap -----------------------------------------------------------------------------

    def update_backends(self, items: Mapping[int, BackendValue]) -> None:
        self.maps[MAP_BACKENDS].update_packed(pack_backends(items), list(items))

    def delete_backends(self, ids: Iterable[int]) -> None:
        labels = list(ids)
        self.maps[MAP_BACKENDS].delete_packed(pack_ids(labels, MAP_BACKENDS), labels)

    def update_services(self, items: Mapping[ServiceKey, ServiceValue]) -> None:
        self.maps[MAP_SERVICES].update_packed(pack_services(items), list(items))

    def delete_services(self, keys: Iterable[ServiceKey]) -> None:
        labels = list(keys)
        self.maps[MAP_SERVICES].delete_packed(pack_service_keys(labels), labels)

    def update_revnat(self, items: Mapping[int, RevNatValue]) -> None:
        self.maps[MAP_REVNAT].update_packed(pack_revnat(items), list(items))

    def delete_revnat(self, ids: Iterable[int]) -> None:
        labels = list(ids)
        self.maps[MAP_REVNAT].delete_packed(pack_ids(labels, MAP_REVNAT), labels)

    def update_frontends(self, items: Mapping[ServiceKey, FrontendValue]) -> None:
        self.maps[MAP_FRONTENDS].update_packed(pack_frontends(items), list(items))

    def delete_frontends(self, keys: Iterable[ServiceKey]) -> None:
        labels = list(keys)
        self.maps[MAP_FRONTENDS].delete_packed(pack_frontend_keys(labels), labels)

    def dump(self) -> LBMapState:
        state = LBMapState()
        for k, v in self.maps[MAP_SERVICES].views():
            state.services[decode_service_key(k)] = decode_service_value(v)
        for k, v in self.maps[MAP_FRONTENDS].views():
            state.frontends[decode_service_key(k)] = decode_frontend_value(v)
        for k, v in self.maps[MAP_BACKENDS].views():
            state.backends[int(k)] = decode_backend(v)
        for k, v in self.maps[MAP_REVNAT].views():
            state.revnat[int(k)] = decode_revnat(v)
        return state

    def fill(self) -> dict[str, tuple[int, int]]:
        """The maps the control plane writes (not the counters, the install-time ranges or the
        sockets' peer ring)."""
        return {
            name: (sum(1 for _ in m.views()), m.max_entries)
            for name, m in self.maps.items()
            if name not in _NOT_FILLED
        }

    @staticmethod
    def capacities(capacities: MapCapacities | None = None) -> dict[str, int]:
        """max_entries of the maps :meth:`fill` reports, known before any map exists."""
        specs = map_specs(capacities or MapCapacities())
        return {s.name: s.max_entries for s in specs if s.name not in _NOT_FILLED}

    # --- datapath counters and install-time settings -----------------------------------------

    def counters(self) -> dict[str, int]:
        """The per-CPU event counters of bpf/sock_lb.c, summed over CPUs."""
        return percpu_counters(self.maps[MAP_COUNTERS], COUNTERS)

    def sk_peers(self) -> list[tuple[int, Lb4SkPeer]]:
        """The occupied slots of the connected sockets' peer ring (cookie != 0), by slot: one
        batched pass over the whole array (every slot exists), copying only the occupied."""
        return [
            (int(slot), Lb4SkPeer.from_buffer_copy(peer))
            for slot, peer in self.maps[MAP_SK_PEER].views()
            if peer.cookie
        ]

    def service_ranges(self) -> list[ipaddress.IPv4Network]:
        """The service CIDRs whose unknown addresses the programs refuse, sorted."""
        return sorted(decode_range(k) for k, _v in self.maps[MAP_SERVICE_RANGES].items())

    def set_service_ranges(self, nets: Iterable[ipaddress.IPv4Network]) -> None:
        """Make the ranges exactly ``nets``: add the new ones first, then remove the others, so
        a range kept across a restart never has a gap."""
        m = self.maps[MAP_SERVICE_RANGES]
        want = set(nets)
        one = ctypes.c_uint8(1)
        for net in sorted(want):
            try:
                bpfsys.map_update(m.fd, encode_range(net), one)
            except OSError as exc:
                raise m.error(exc, str(net)) from exc
        for net in self.service_ranges():
            if net not in want:
                with contextlib.suppress(FileNotFoundError):
                    bpfsys.map_delete(m.fd, encode_range(net))
