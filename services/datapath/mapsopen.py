"""Open a node's LB maps: start the loader child at once, hand back maps that wait for it.

Why apart from the worker: the loader child (bcc compile, load, attach; about a CPU-second) is
the longest thing a cold node does that does not need the bus, so ``weir datapath`` starts it
right after validating its options, before it imports the worker; the child compiles on one
core while the worker imports, connects and reads the snapshot on the other. Only the loader's
small modules (ctypes layouts, bpf(2) calls) are imported here.

``OpenedMaps.loaded`` blocks until the loader child has finished (successfully or not): the
policy loop waits on it before it starts its own compile child, so on two cores one compile
runs at a time beside the worker's bootstrap instead of two compiles taking a share of the
worker's core (see ``services.datapath.policyworker``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from services.datapath.lbmap import LBMap
from services.datapath.settings import DatapathSettings


def _nothing() -> None:
    return None


@dataclass
class OpenedMaps:
    lbmap: LBMap
    close: Callable[[], None] = _nothing
    program_versions: dict[str, str] = field(default_factory=dict)
    loaded: Callable[[], None] = _nothing  # blocks until the loader child is done


def open_maps(settings: DatapathSettings) -> OpenedMaps:
    """The node's LB maps: load + attach the BPF programs (pinned, reused across restarts) or,
    with ``maps=fake``, in-memory maps for tests without a kernel."""
    if settings.maps == "fake":
        from services.datapath.fakemaps import FakeLBMap  # noqa: PLC0415

        return OpenedMaps(FakeLBMap())
    from services.datapath import loader  # noqa: PLC0415
    from services.datapath.bpfmaps import BpfLBMap  # noqa: PLC0415
    from services.datapath.deferredmaps import DeferredLBMap  # noqa: PLC0415

    if not settings.cgroup:
        raise ValueError("cgroup: required with maps=bpf (the cgroup2 path to attach to)")
    pin_dir = (
        Path(settings.pin_dir) if settings.pin_dir else loader.default_pin_dir(settings.node_name)
    )

    def install() -> BpfLBMap:
        started = time.perf_counter()
        version_dir = loader.install_in_child(  # hook: unknown service-CIDR addresses -> refused
            pin_dir, Path(settings.cgroup), service_cidrs=settings.service_cidrs
        )
        from services.datapath import metrics as m  # noqa: PLC0415  (prometheus: not before)

        m.BOOTSTRAP.labels("loader").set(time.perf_counter() - started)
        return BpfLBMap(version_dir)

    # the loader child compiles while the worker reads and decodes the snapshot (two cores);
    # the programs stay attached through their pinned links: closing only drops our fds
    bpf_maps = DeferredLBMap(install, BpfLBMap.capacities())
    return OpenedMaps(
        bpf_maps, bpf_maps.close, {"sock_lb": loader.DEFAULT_VERSION}, bpf_maps.settled
    )
