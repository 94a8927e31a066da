"""Look into one node's pinned service maps from outside the worker, a few syscalls per question.

The programming-latency benchmark measures from the API write to the change being *in the
kernel maps* of every node, not to the worker saying so: it opens each worker's pinned maps
itself and asks single-key questions (``BPF_MAP_LOOKUP_ELEM``), which cost microseconds and take
no lock the worker needs. A whole-map dump (what ``BpfLBMap.dump`` does) would cost milliseconds
at 10k Services and would slow the workers it is timing.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from services.datapath import bpfsys
from services.datapath.bpflayout import Lb4Backend, Lb4Key, Lb4Service, encode_service_key
from services.datapath.lbmap import PROTO_TCP, ServiceKey


def _ip_raw(ip: str) -> int:
    return int.from_bytes(bytes(int(part) for part in ip.split(".")), "little")


class MapProbe:
    """Read-only single-key lookups in one node's pinned lb4_services and lb4_backends maps."""

    def __init__(self, maps_dir: Path) -> None:
        self.maps_dir = maps_dir
        self._services = bpfsys.obj_get(maps_dir / "lb4_services")
        try:
            self._backends = bpfsys.obj_get(maps_dir / "lb4_backends")
        except OSError:
            os.close(self._services)
            raise
        self._svc = Lb4Service()
        self._be = Lb4Backend()
        self._id = ctypes.c_uint32()

    def close(self) -> None:
        for fd in (self._services, self._backends):
            if fd >= 0:
                os.close(fd)
        self._services = self._backends = -1

    def _lookup_service(self, key: Lb4Key) -> Lb4Service | None:
        try:
            bpfsys.map_lookup(self._services, key, self._svc)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return self._svc

    def master_count(self, vip: str, port: int) -> int | None:
        """Backend count in the master slot of vip:port/TCP, None if the frontend is absent."""
        value = self._lookup_service(encode_service_key(ServiceKey(vip, port, PROTO_TCP, 0)))
        return None if value is None else int(value.count)

    def backend_ips(self, vip: str, port: int) -> list[int] | None:
        """Raw backend addresses in the slots of vip:port/TCP (None if the frontend is absent)."""
        count = self.master_count(vip, port)
        if count is None:
            return None
        out: list[int] = []
        for slot in range(1, count + 1):
            value = self._lookup_service(encode_service_key(ServiceKey(vip, port, PROTO_TCP, slot)))
            if value is None:
                continue
            self._id.value = value.backend_id
            try:
                bpfsys.map_lookup(self._backends, self._id, self._be)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    continue
                raise
            out.append(int(self._be.address))
        return out

    def has_backend(self, vip: str, port: int, ip: str) -> bool:
        ips = self.backend_ips(vip, port)
        return ips is not None and _ip_raw(ip) in ips

    def has_frontend(self, vip: str, port: int) -> bool:
        return self.master_count(vip, port) is not None
