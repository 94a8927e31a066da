"""Weir's side of the datapath benchmark: the real socket LB with N Services in pinned maps.

It loads bpf/sock_lb.c through the same loader the datapath worker uses, attaches it to the
``weir`` contender's cgroup, and writes services through the real map layer (BpfLBMap) in the
worker's order (backends, slots, reverse NAT, master, frontend entry). Pins live in a unique
directory removed on exit, also on failure.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from bench.kubeproxy_rules import BenchService
from bench.netlab import NetLab
from services.datapath.bpflayout import MapCapacities
from services.datapath.lbmap import (
    PROTO_TCP,
    BackendValue,
    FrontendValue,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    frontend_value,
)
from services.datapath.loader import SockLB, remove_pins

BPFFS = Path("/sys/fs/bpf")


class WeirMaps:
    def __init__(self, lab: NetLab, contender: str, max_services: int) -> None:
        self.cgroup = lab.cgroup(contender)
        self.pin_root = BPFFS / f"weirbench-{lab.run_id}"
        slots = max_services * 3 + 16  # master + 2 backends per service
        self.lb = SockLB(
            self.pin_root,
            MapCapacities(services=slots, revnat=max_services + 16, backends=1024),
        )
        self.loaded: set[str] = set()

    def __enter__(self) -> WeirMaps:
        try:
            self.lb.load()
            self.lb.attach(self.cgroup)
            self.maps = self.lb.maps()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        try:
            self.lb.detach()
        finally:
            self.lb.close()
            remove_pins(self.lb.dir)
            shutil.rmtree(self.pin_root, ignore_errors=True)

    def load(self, services: Sequence[BenchService]) -> float:
        """Make the maps hold exactly ``services``; returns the seconds the writes took."""
        start = time.perf_counter()
        backend_ids: dict[tuple[str, int], int] = {}
        for svc in services:
            for ep in svc.endpoints:
                backend_ids.setdefault(ep, len(backend_ids) + 1)
        slots: dict[ServiceKey, ServiceValue] = {}
        masters: dict[ServiceKey, ServiceValue] = {}
        revnat: dict[int, RevNatValue] = {}
        frontends: dict[ServiceKey, FrontendValue] = {}
        backends = {
            bid: BackendValue(ip, port, PROTO_TCP) for (ip, port), bid in backend_ids.items()
        }
        for rev_nat_id, svc in enumerate(services, start=1):
            master = ServiceKey(svc.vip, svc.port, PROTO_TCP, 0)
            for slot, ep in enumerate(svc.endpoints, start=1):
                slots[ServiceKey(svc.vip, svc.port, PROTO_TCP, slot)] = ServiceValue(
                    backend_id=backend_ids[ep], rev_nat_id=rev_nat_id
                )
            revnat[rev_nat_id] = RevNatValue(svc.vip, svc.port)
            masters[master] = ServiceValue(count=len(svc.endpoints), rev_nat_id=rev_nat_id)
            ids = [backend_ids[ep] for ep in svc.endpoints]
            frontends[master] = frontend_value(masters[master], [(b, backends[b]) for b in ids])
        new = {k.vip for k in masters}
        self.maps.update_backends(backends)
        self.maps.update_services(slots)
        self.maps.update_revnat(revnat)
        self.maps.update_services(masters)
        self.maps.update_frontends(frontends)
        stale = self.loaded - new
        if stale:
            state = self.maps.dump()
            self.maps.delete_frontends([k for k in state.frontends if k.vip in stale])
            self.maps.delete_services([k for k in state.services if k.vip in stale])
        self.loaded = new
        return time.perf_counter() - start
