"""Goldens: Kubernetes manifests in, canonical map dump out (like Cilium's clusterip.txtar).

Each ``testdata/<name>.yaml`` is applied from empty maps on node-a; the dump must equal
``testdata/<name>.golden``. ``UPDATE_GOLDEN=1`` rewrites the goldens (review the diff!). Every
write is checked against the datapath invariant while it happens, and applying the same state
again must write nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.datapath.fakemaps import FakeLBMap, check_consistent
from services.datapath.lbmap import LBMapState
from services.datapath.reconcile import Reconciler
from services.datapath.render import render, resolved
from tests.datapath.manifests import desired, manifests


def checked_map() -> FakeLBMap:
    def check(_name: str, state: LBMapState) -> None:
        problems = check_consistent(state)
        assert not problems, problems

    return FakeLBMap(on_write=check)


@pytest.mark.parametrize("manifest", manifests(), ids=lambda p: p.stem)
def test_golden(manifest: Path) -> None:
    lbmap = checked_map()
    rec = Reconciler(lbmap)
    result = rec.apply(desired(manifest), prune=True)
    assert result.ok, result.errors
    got = render(lbmap.dump())
    golden = manifest.with_suffix(".golden")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(got)
    assert golden.exists(), f"{golden.name} missing: run with UPDATE_GOLDEN=1 and review it"
    assert got == golden.read_text()
    again = rec.apply(desired(manifest), prune=True)
    assert again.ok and again.writes == 0


def test_transitions_between_goldens_converge() -> None:
    """Walking from one manifest's state to the next on the same maps ends where a fresh apply
    would (same answers per frontend), with nothing left behind and no unsafe instant."""
    lbmap = checked_map()
    rec = Reconciler(lbmap)
    paths = manifests()
    for path in [*paths, *reversed(paths)]:
        want = desired(path)
        assert rec.apply(want, prune=True).ok
        fresh = FakeLBMap()
        Reconciler(fresh).apply(want, prune=True)
        assert resolved(lbmap.dump()) == resolved(fresh.dump())
        state = lbmap.dump()
        assert len(state.services) == len(fresh.dump().services)
        assert len(state.backends) == len(fresh.dump().backends)
        assert len(state.revnat) == len(fresh.dump().revnat)
