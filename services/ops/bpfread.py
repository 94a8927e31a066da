"""Reading one node's pinned maps for ``weir bpf dump`` (the I/O edge).

Why through :class:`BpfLBMap` and :class:`BpfPolicyMaps`: they open the pins directly with
``bpf(BPF_OBJ_GET)`` and read in batches, so inspecting a node needs no compiler, no bcc and no
running worker, and they decode with the same codecs the worker writes with. Only the group a map
belongs to is opened (a node running with ``--no-policy`` has no policy pins, and its LB maps
must still be readable). The pin directory may be given as the node's base directory (what
``weir datapath --pin-dir`` takes; the layout version is appended) or as the versioned directory
itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.datapath.bpflayout import MAP_AFFINITY, MAP_SK_REVNAT
from services.datapath.bpfmaps import BpfLBMap
from services.datapath.lbmap import MapError
from services.datapath.loader import DEFAULT_VERSION
from services.datapath.policybpf import BpfPolicyMaps
from services.datapath.policylayout import MAP_POLICY_COUNTERS
from services.ops import bpf_policy_view, bpf_view
from services.ops.bpf_view import POLICY_MAPS, MapName
from services.ops.output import Column, OpsError

PROBE = "lb4_services"  # a pin every layout version has


def version_dir(base: Path) -> Path:
    """``base`` itself when it holds the pins, else ``base/<version>``."""
    return base if (base / PROBE).exists() else base / DEFAULT_VERSION


def columns(name: MapName) -> list[Column]:
    return bpf_view.COLUMNS.get(name) or bpf_policy_view.COLUMNS[name.value]


def table_rows(name: MapName, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as the table shows them (compact cells where the JSON has separate fields)."""
    return [bpf_policy_view.ct_cells(r) for r in rows] if name is MapName.CT else rows


def dump(base: Path, name: MapName, node: str) -> dict[str, Any]:
    """``{"node", "pin_dir", "map", "capacity", "entries": [...]}`` for one map."""
    where = version_dir(base)
    policy = name in POLICY_MAPS
    try:
        maps: BpfLBMap | BpfPolicyMaps = BpfPolicyMaps(where) if policy else BpfLBMap(where)
    except MapError as exc:
        hint = " with the policy loop (not --no-policy)" if policy else ""
        raise OpsError(
            f"node {node}: cannot open the pinned maps under {where} ({exc}); is "
            f"`weir datapath --node {node}` running on this machine{hint}? Pass --pin-dir DIR "
            "(the worker's --pin-dir) to look elsewhere"
        ) from None
    with maps:
        try:
            if isinstance(maps, BpfPolicyMaps):
                rows = _policy_rows(maps, name)
                pinned = maps.maps[MAP_POLICY_COUNTERS if name is MapName.POLICY_COUNTERS else name]
            else:
                rows = _rows(maps, name)
                pinned = maps.maps[name.value]
        except MapError as exc:
            raise OpsError(f"node {node}: reading map {name} under {where}: {exc}") from None
    return {
        "node": node,
        "pin_dir": str(where),
        "map": name.value,
        "capacity": pinned.max_entries,
        "entries": rows,
    }


def _rows(maps: BpfLBMap, name: MapName) -> list[dict[str, Any]]:
    if name is MapName.COUNTERS:
        return bpf_view.counter_rows(maps.counters())
    if name is MapName.SERVICE_RANGES:
        return bpf_policy_view.range_rows(maps.service_ranges())
    if name is MapName.AFFINITY:
        return bpf_view.affinity_rows(maps.maps[MAP_AFFINITY].items())
    if name is MapName.SK_REVNAT:
        return bpf_view.sk_revnat_rows(maps.maps[MAP_SK_REVNAT].items())
    if name is MapName.SK_PEER:
        return bpf_view.sk_peer_rows(maps.sk_peers())
    state = maps.dump()
    if name is MapName.FRONTENDS:
        return bpf_view.frontend_rows(state)
    if name is MapName.SERVICES:
        return bpf_view.service_rows(state)
    if name is MapName.BACKENDS:
        return bpf_view.backend_rows(state)
    return bpf_view.revnat_rows(state)


def _policy_rows(maps: BpfPolicyMaps, name: MapName) -> list[dict[str, Any]]:
    if name is MapName.POLICY_COUNTERS:
        return bpf_view.counter_rows(maps.counters())
    if name is MapName.CT:
        return bpf_policy_view.ct_rows(maps.conntrack())
    state = maps.dump()
    if name is MapName.ENDPOINTS:
        return bpf_policy_view.endpoint_rows(state)
    if name is MapName.IPCACHE:
        return bpf_policy_view.ipcache_rows(state)
    return bpf_policy_view.policy_rows(state)
