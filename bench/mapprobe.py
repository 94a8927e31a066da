"""Look into one node's pinned service maps from outside the worker, a few syscalls per question.

The programming-latency benchmark measures from the API write to the change being *in the
kernel maps* of every node, not to the worker saying so: it opens each worker's pinned maps
itself and asks single-key questions (``BPF_MAP_LOOKUP_ELEM``), which cost microseconds and take
no lock the worker needs. A whole-map dump (what ``BpfLBMap.dump`` does) would cost milliseconds
at 10k Services and would slow the workers it is timing.

It reads what connect() reads: the frontend entry in lb4_frontends first (written after the
master and the slots), and its inline backends, or the slots when the entry has none.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from services.datapath import bpfsys
from services.datapath.bpflayout import (
    Lb4Backend,
    Lb4Frontend,
    Lb4Key,
    Lb4Service,
    encode_frontend_key,
    encode_service_key,
)
from services.datapath.lbmap import PROTO_TCP, ServiceKey


def _ip_raw(ip: str) -> int:
    return int.from_bytes(bytes(int(part) for part in ip.split(".")), "little")


def _found(fd: int, key: object, value: object) -> bool:
    """Look ``key`` up into ``value``; False when absent (any other error raises)."""
    try:
        bpfsys.map_lookup(fd, key, value)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


class MapProbe:
    """Read-only single-key lookups in one node's pinned lb4_frontends, lb4_services and
    lb4_backends maps."""

    def __init__(self, maps_dir: Path) -> None:
        self.maps_dir = maps_dir
        self._fds: list[int] = []
        try:
            for name in ("lb4_frontends", "lb4_services", "lb4_backends"):
                self._fds.append(bpfsys.obj_get(maps_dir / name))
        except OSError:
            self.close()
            raise
        self._frontends, self._services, self._backends = self._fds
        self._fe = Lb4Frontend()
        self._svc = Lb4Service()
        self._be = Lb4Backend()
        self._id = ctypes.c_uint32()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def _lookup_service(self, key: Lb4Key) -> Lb4Service | None:
        return self._svc if _found(self._services, key, self._svc) else None

    def _lookup_frontend(self, vip: str, port: int) -> Lb4Frontend | None:
        key = encode_frontend_key(ServiceKey(vip, port, PROTO_TCP, 0))
        return self._fe if _found(self._frontends, key, self._fe) else None

    def master_count(self, vip: str, port: int) -> int | None:
        """Backend count of vip:port/TCP as connect() sees it (its frontend entry), None if the
        frontend is absent."""
        value = self._lookup_frontend(vip, port)
        return None if value is None else int(value.count)

    def backend_ips(self, vip: str, port: int) -> list[int] | None:
        """Raw backend addresses connect() can pick for vip:port/TCP: the frontend entry's inline
        backends, else its slots' (None if the frontend is absent)."""
        entry = self._lookup_frontend(vip, port)
        if entry is None:
            return None
        count, n_inline = int(entry.count), int(entry.n_inline)
        if n_inline:
            return [
                int(entry.backends[i].address) for i in range(min(n_inline, len(entry.backends)))
            ]
        out: list[int] = []
        for slot in range(1, count + 1):
            value = self._lookup_service(encode_service_key(ServiceKey(vip, port, PROTO_TCP, slot)))
            if value is None:
                continue
            self._id.value = value.backend_id
            if _found(self._backends, self._id, self._be):
                out.append(int(self._be.address))
        return out

    def has_backend(self, vip: str, port: int, ip: str) -> bool:
        ips = self.backend_ips(vip, port)
        return ips is not None and _ip_raw(ip) in ips

    def has_frontend(self, vip: str, port: int) -> bool:
        return self.master_count(vip, port) is not None
