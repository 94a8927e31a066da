"""ServiceEntries: the incremental services-map count equals a walk of the maps after any sequence
of applies, including ones that fill a map (errors, resync) and a restart (new mirror)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.datapath.fakemaps import FakeLBMap, Fault, FaultyLBMap
from services.datapath.frontend import Backend, BackendAddr, Frontend, FrontendSpec
from services.datapath.mapfill import ServiceEntries
from services.datapath.reconcile import Reconciler

FRONTENDS = [Frontend(f"10.96.0.{i}", 80, 6) for i in range(1, 9)]
ADDRS = [BackendAddr(f"10.0.0.{i}", 8080, 6) for i in range(1, 13)]

Desired = dict[Frontend, FrontendSpec]


def _desired(rng: random.Random) -> Desired:
    out: Desired = {}
    for fe in FRONTENDS:
        if rng.random() < 0.7:
            picked = sorted(rng.sample(ADDRS, rng.randrange(0, 6)))
            out[fe] = FrontendSpec(tuple(Backend(a) for a in picked))
    return out


def _walk(lbmap: FakeLBMap) -> int:
    return len(lbmap.dump().services)


def _apply(entries: ServiceEntries, rec: Reconciler, want: Desired, changed: set[Frontend]) -> bool:
    touched = changed | rec.pending
    before = entries.before(rec.realised, touched)
    result = rec.apply(want, changed)
    entries.after(rec.realised, touched, before, ok=not result.errors)
    return result.ok


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), capacity=st.sampled_from([8, 14, 200]))
def test_incremental_count_equals_a_walk_of_the_map(seed: int, capacity: int) -> None:
    rng = random.Random(seed)
    lbmap = FakeLBMap(capacity={"services": capacity})
    rec = Reconciler(lbmap)
    entries = ServiceEntries()
    rec.apply({}, prune=True)
    assert entries.count(rec.realised) == _walk(lbmap) == 0
    want: Desired = {}
    for _ in range(12):
        new = _desired(rng)
        changed = {fe for fe in FRONTENDS if new.get(fe) != want.get(fe)}
        want = new
        _apply(entries, rec, want, changed)
        assert entries.count(rec.realised) == _walk(lbmap)
        if rng.random() < 0.2:  # a restart: a new reconciler reads the maps back
            rec = Reconciler(lbmap)
            assert entries.count(rec.realised) == _walk(lbmap)


def test_clean_applies_walk_nothing_and_failures_recount() -> None:
    lbmap = FakeLBMap(capacity={"services": 6})
    rec = Reconciler(lbmap)
    entries = ServiceEntries()
    assert entries.count(rec.realised) == 0
    assert entries.recounts == 1
    one = {FRONTENDS[0]: FrontendSpec((Backend(ADDRS[0]), Backend(ADDRS[1])))}
    assert _apply(entries, rec, one, {FRONTENDS[0]})
    assert entries.count(rec.realised) == 3 == _walk(lbmap)
    assert entries.recounts == 1  # counted from the apply alone
    too_many = {**one, FRONTENDS[1]: FrontendSpec(tuple(Backend(a) for a in ADDRS[:5]))}
    assert not _apply(entries, rec, too_many, {FRONTENDS[1]})  # the map is full
    assert entries.count(rec.realised) == _walk(lbmap)
    assert entries.recounts == 2  # the failed apply made it walk once


def test_a_pending_frontend_written_later_is_counted() -> None:
    inner = FakeLBMap()
    second = FRONTENDS[1].vip
    vip_is_second = lambda k: getattr(k, "vip", "") == second  # noqa: E731
    fault = Fault(map_name="services", op="update", key=vip_is_second, times=2)
    rec = Reconciler(FaultyLBMap(inner, [fault]))  # its first two writes for FRONTENDS[1] fail
    entries = ServiceEntries()
    one = {FRONTENDS[0]: FrontendSpec((Backend(ADDRS[0]),))}
    assert _apply(entries, rec, one, {FRONTENDS[0]})
    two = {**one, FRONTENDS[1]: FrontendSpec(tuple(Backend(a) for a in ADDRS[2:5]))}
    assert not _apply(entries, rec, two, {FRONTENDS[1]})
    assert rec.pending == {FRONTENDS[1]}
    assert entries.count(rec.realised) == _walk(inner)
    three = {**two, FRONTENDS[0]: FrontendSpec((Backend(ADDRS[0]), Backend(ADDRS[1])))}
    # the change names FRONTENDS[0] only; the pending one is written by the same apply
    assert _apply(entries, rec, three, {FRONTENDS[0]})
    assert not rec.pending
    assert entries.count(rec.realised) == _walk(inner) == 7
