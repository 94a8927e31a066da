"""Reading one node's pinned load-balancing maps for ``weir bpf dump`` (the I/O edge).

Why through :class:`BpfLBMap`: it opens the pins directly with ``bpf(BPF_OBJ_GET)`` and reads in
batches, so inspecting a node needs no compiler, no bcc and no running worker, and it decodes with
the same codecs the worker writes with. The pin directory may be given as the node's base
directory (what ``weir datapath --pin-dir`` takes; the layout version is appended) or as the
versioned directory itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.datapath.bpflayout import MAP_AFFINITY, MAP_SK_REVNAT
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import MapError
from services.datapath.loader import DEFAULT_VERSION
from services.ops import bpf_view
from services.ops.bpf_view import MapName
from services.ops.output import OpsError

PROBE = "lb4_services"  # a pin every layout version has


def version_dir(base: Path) -> Path:
    """``base`` itself when it holds the pins, else ``base/<version>``."""
    return base if (base / PROBE).exists() else base / DEFAULT_VERSION


def dump(base: Path, name: MapName, node: str) -> dict[str, Any]:
    """``{"node", "pin_dir", "map", "capacity", "entries": [...]}`` for one map."""
    where = version_dir(base)
    try:
        maps = BpfLBMap(where)
    except MapError as exc:
        raise OpsError(
            f"node {node}: cannot open the pinned maps under {where} ({exc}); is "
            f"`weir datapath --node {node}` running on this machine? Pass --pin-dir DIR "
            "(the worker's --pin-dir) to look elsewhere"
        ) from None
    with maps:
        try:
            rows = _rows(maps, name)
        except MapError as exc:
            raise OpsError(f"node {node}: reading map {name} under {where}: {exc}") from None
        capacity = maps.maps[name.value].max_entries
    return {
        "node": node,
        "pin_dir": str(where),
        "map": name.value,
        "capacity": capacity,
        "entries": rows,
    }


def _rows(maps: BpfLBMap, name: MapName) -> list[dict[str, Any]]:
    if name is MapName.COUNTERS:
        return bpf_view.counter_rows(maps.counters())
    if name is MapName.AFFINITY:
        return bpf_view.affinity_rows(maps.maps[MAP_AFFINITY].items())
    if name is MapName.SK_REVNAT:
        return bpf_view.sk_revnat_rows(maps.maps[MAP_SK_REVNAT].items())
    state = maps.dump()
    if name is MapName.SERVICES:
        return bpf_view.service_rows(state)
    if name is MapName.BACKENDS:
        return bpf_view.backend_rows(state)
    return bpf_view.revnat_rows(state)
