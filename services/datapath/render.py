"""Canonical text dumps of the LB maps, for goldens and operators.

Goldens compare map *contents*, so the dump must be deterministic and readable in a diff: one
line per entry, sorted, slots shown with the backend address they resolve to. :func:`resolved`
is the id-free view (what each frontend answers with), used to compare two sets of maps whose ids
may legitimately differ, e.g. after a restart that lost an allocation that was never written.
"""

from __future__ import annotations

from services.datapath.frontend import PROTO_NAMES, BackendAddr, Frontend
from services.datapath.lbmap import BackendState, LBMapState, ServiceFlags


def _flags(flags: int) -> str:
    names = [f.name for f in ServiceFlags if f and flags & f and f.name]
    return "|".join(names) if names else "NONE"


def render(state: LBMapState) -> str:
    lines = ["# services: vip:port/proto slot -> value"]
    for key in sorted(state.services):
        v = state.services[key]
        fe = Frontend(key.vip, key.port, key.proto)
        if key.slot == 0:
            lines.append(
                f"{fe} #0 count={v.count} revnat={v.rev_nat_id} flags={_flags(v.flags)}"
                f" affinity={v.affinity_timeout}"
            )
        else:
            b = state.backends.get(v.backend_id)
            target = f"{b.ip}:{b.port}" if b else "MISSING"
            lines.append(
                f"{fe} #{key.slot} backend={v.backend_id} ({target}) revnat={v.rev_nat_id}"
            )
    lines.append("# backends: id -> ip:port/proto state")
    for ident in sorted(state.backends):
        b = state.backends[ident]
        addr = BackendAddr(b.ip, b.port, b.proto)
        lines.append(f"{ident} {addr} {BackendState(b.state).name}")
    lines.append("# revnat: id -> vip:port")
    for ident in sorted(state.revnat):
        r = state.revnat[ident]
        lines.append(f"{ident} {r.vip}:{r.port}")
    lines.append("# frontends: vip:port/proto -> what connect() reads (inline backends or slots)")
    for key in sorted(state.frontends):
        f = state.frontends[key]
        picks = " ".join(f"{b.backend_id}={b.ip}:{b.port}" for b in f.inline) or "slots"
        lines.append(
            f"{Frontend(key.vip, key.port, key.proto)} count={f.count} revnat={f.rev_nat_id}"
            f" flags={_flags(f.flags)} affinity={f.affinity_timeout} -> {picks}"
        )
    return "\n".join(lines) + "\n"


def resolved(state: LBMapState) -> dict[str, tuple[object, ...]]:
    """Per frontend: (count, flags, affinity, reverse-NAT target, sorted backends with state)."""
    out: dict[str, tuple[object, ...]] = {}
    for key, master in state.services.items():
        if key.slot != 0:
            continue
        backends = []
        for slot in range(1, master.count + 1):
            sv = state.services.get(key.__class__(key.vip, key.port, key.proto, slot))
            b = state.backends.get(sv.backend_id) if sv else None
            backends.append(
                f"{b.ip}:{b.port}/{PROTO_NAMES.get(b.proto)} {BackendState(b.state).name}"
                if b
                else "MISSING"
            )
        rn = state.revnat.get(master.rev_nat_id)
        out[str(Frontend(key.vip, key.port, key.proto))] = (
            master.count,
            _flags(master.flags),
            master.affinity_timeout,
            f"{rn.vip}:{rn.port}" if rn else "MISSING",
            tuple(sorted(backends)),
        )
    return out
