"""Reconciler properties: safe at every write, idempotent, restart-stable, prunes, recovers.

The invariant is checked by the fake map after *every single entry write*, across random
sequences of desired states (hypothesis), so no interleaving of the plan can expose a master
whose count points at an unwritten slot or a missing backend.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.datapath.fakemaps import FakeLBMap, Fault, FaultyLBMap, check_consistent
from services.datapath.frontend import Backend, BackendAddr, Frontend, FrontendSpec
from services.datapath.lbmap import (
    PROTO_TCP,
    PROTO_UDP,
    BackendState,
    LBMapState,
    ServiceFlags,
    ServiceKey,
    derive_frontends,
)
from services.datapath.reconcile import Reconciler
from services.datapath.render import render, resolved

Desired = dict[Frontend, FrontendSpec]

FRONTENDS = [Frontend(f"10.96.0.{i}", port, proto) for i in range(1, 5)
             for port, proto in ((80, PROTO_TCP), (53, PROTO_UDP))]  # fmt: skip
ADDRS = [BackendAddr(f"10.244.0.{i}", 8080, PROTO_TCP) for i in range(1, 9)] + [
    BackendAddr(f"10.244.0.{i}", 53, PROTO_UDP) for i in range(1, 5)
]


def checked_map(**capacity: int) -> FakeLBMap:
    def check(_name: str, state: LBMapState) -> None:
        problems = check_consistent(state)
        assert not problems, problems

    return FakeLBMap(capacity=capacity, on_write=check)


def expected(desired: Desired) -> dict[str, tuple[object, ...]]:
    """What ``resolved()`` must show for a desired state, computed independently."""
    out: dict[str, tuple[object, ...]] = {}
    for fe, spec in desired.items():
        flags = spec.flags | (ServiceFlags.NO_BACKENDS if not spec.backends else 0)
        names = [f.name for f in ServiceFlags if f and flags & f and f.name]
        out[str(fe)] = (
            len(spec.backends),
            "|".join(names) or "NONE",
            spec.affinity_timeout,
            f"{fe.vip}:{fe.port}",
            tuple(sorted(f"{b.addr} {b.state.name}" for b in spec.backends)),
        )
    return out


@st.composite
def desired_states(draw: st.DrawFn) -> Desired:
    out: Desired = {}
    for fe in draw(st.lists(st.sampled_from(FRONTENDS), unique=True, max_size=len(FRONTENDS))):
        pool = [a for a in ADDRS if a.proto == fe.proto]
        addrs = draw(st.lists(st.sampled_from(pool), unique=True, max_size=len(pool)))
        states = draw(st.lists(st.sampled_from(BackendState), min_size=len(addrs),
                               max_size=len(addrs)))  # fmt: skip
        flags = draw(st.sampled_from([ServiceFlags.NONE, ServiceFlags.SESSION_AFFINITY]))
        out[fe] = FrontendSpec(
            backends=tuple(sorted(Backend(a, s) for a, s in zip(addrs, states, strict=True))),
            flags=flags,
            affinity_timeout=30 if flags else 0,
        )
    # one address has one state: the model derives it from the same endpoint conditions
    first: dict[BackendAddr, BackendState] = {}
    for spec in out.values():
        for b in spec.backends:
            first.setdefault(b.addr, b.state)
    return {
        fe: FrontendSpec(
            tuple(Backend(b.addr, first[b.addr]) for b in spec.backends),
            spec.flags,
            spec.affinity_timeout,
        )
        for fe, spec in out.items()
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(desired_states(), min_size=1, max_size=6), st.booleans())
def test_every_write_is_safe_and_state_converges(seq: list[Desired], incremental: bool) -> None:
    lbmap = checked_map()
    rec = Reconciler(lbmap)
    prev: Desired = {}
    for want in seq:
        if incremental:
            changed = {fe for fe in want.keys() | prev.keys() if want.get(fe) != prev.get(fe)}
            result = rec.apply(want, changed)
        else:
            result = rec.apply(want, prune=True)
        assert result.ok, result.errors
        state = lbmap.dump()
        assert resolved(state) == expected(want)
        # the frontend entries connect() reads agree with the rule the loader rebuilds them by
        assert state.frontends == derive_frontends(state)
        assert len(state.frontends) == len(want)
        used = {s.backend_id for k, s in state.services.items() if k.slot}
        assert set(state.backends) == used, "unreferenced backends left behind"
        assert len(state.revnat) == len(want)
        assert rec.apply(want, prune=True).writes == 0, "re-applying must write nothing"
        prev = want


def test_restart_renumbers_nothing_and_keeps_slots() -> None:
    lbmap = FakeLBMap()
    a = {FRONTENDS[0]: FrontendSpec((Backend(ADDRS[0]), Backend(ADDRS[1]), Backend(ADDRS[2])))}
    Reconciler(lbmap).apply(a, prune=True)
    before = render(lbmap.dump())
    restarted = Reconciler(lbmap)
    assert restarted.apply(a, prune=True).writes == 0
    assert render(lbmap.dump()) == before
    grown = {FRONTENDS[0]: FrontendSpec((*a[FRONTENDS[0]].backends, Backend(ADDRS[3])))}
    result = restarted.apply(grown, prune=True)
    state = lbmap.dump()
    # ids 1..3 kept for the same addresses; the new backend got a fresh id in a new last slot
    assert {i: (b.ip, b.port) for i, b in state.backends.items()} == {
        1: ("10.244.0.1", 8080), 2: ("10.244.0.2", 8080), 3: ("10.244.0.3", 8080),
        4: ("10.244.0.4", 8080),
    }  # fmt: skip
    assert result.writes == 4  # backend 4, slot 4, master count, frontend entry


def test_prune_only_when_asked_and_removes_orphans() -> None:
    lbmap = FakeLBMap()
    old = {fe: FrontendSpec((Backend(ADDRS[i]),)) for i, fe in enumerate(FRONTENDS[:4])}
    Reconciler(lbmap).apply(old, prune=True)
    # simulate a crash in the middle of deleting FRONTENDS[3]: master gone, slot and revnat left
    lbmap.delete_services([FRONTENDS[3].key()])
    rec = Reconciler(lbmap)  # restart
    keep = {FRONTENDS[0]: old[FRONTENDS[0]]}
    assert rec.apply(keep, changed=[FRONTENDS[0]]).writes == 0
    assert len(lbmap.dump().services) == 7, "nothing deleted before the full sync"
    assert rec.apply(keep, prune=True).ok
    state = lbmap.dump()
    assert resolved(state) == expected(keep)
    assert len(state.services) == 2 and len(state.backends) == 1 and len(state.revnat) == 1


def _big_desired() -> Desired:
    return {
        fe: FrontendSpec(tuple(Backend(a) for a in ADDRS if a.proto == fe.proto)[: 2 + i % 4])
        for i, fe in enumerate(FRONTENDS)
    }


def test_recovers_after_a_failure_at_any_write() -> None:
    """Fail the n-th entry write of the plan, for every n: once (the per-frontend fallback must
    converge within the same apply) and from then on (errors reported, frontends pending, the
    next apply converges). Either way the maps end exactly as a clean run's, never unsafe."""
    start = {FRONTENDS[0]: FrontendSpec((Backend(ADDRS[5]),)), FRONTENDS[7]: FrontendSpec()}
    want = _big_desired()
    clean = FakeLBMap()
    clean_rec = Reconciler(clean)
    clean_rec.apply(start, prune=True)
    total = clean_rec.apply(want, prune=True).writes
    assert total > 20
    for nth in range(1, total + 1):
        for times in (1, None):
            inner = checked_map()
            faulty = FaultyLBMap(inner)
            rec = Reconciler(faulty)
            rec.apply(start, prune=True)
            faulty.add(Fault(nth=nth, times=times))
            first = rec.apply(want, prune=True)
            assert faulty.raised >= 1
            if times == 1:
                assert first.ok, (nth, first.errors)
            else:
                assert first.errors and not first.full, nth
                assert rec.pending or any(e.frontend is None for e in first.errors)
                faulty.clear()
                assert rec.apply(want, changed=[], prune=True).ok
            assert render(inner.dump()) == render(clean.dump()), f"fault at write {nth}"
            assert rec.apply(want, prune=True).writes == 0


def test_restart_after_a_failure_converges() -> None:
    want = _big_desired()
    for nth in (1, 9, 17, 30):
        inner = checked_map()
        faulty = FaultyLBMap(inner, [Fault(map_name="services", nth=nth, times=None)])
        Reconciler(faulty).apply(want, prune=True)
        rec = Reconciler(inner)  # the worker died and restarted
        assert rec.apply(want, prune=True).ok
        assert resolved(inner.dump()) == expected(want)


def test_a_failing_entry_does_not_block_other_frontends() -> None:
    want = _big_desired()
    bad = FRONTENDS[2]

    def of_bad(key: object) -> bool:
        return isinstance(key, ServiceKey) and Frontend.of(key) == bad

    faulty = FaultyLBMap(checked_map(), [Fault(map_name="services", times=None, key=of_bad)])
    rec = Reconciler(faulty)
    result = rec.apply(want, prune=True)
    assert [(e.frontend, e.map_name) for e in result.errors] == [(bad, "services")]
    assert rec.pending == {bad}
    got = resolved(faulty.dump())
    assert {k: v for k, v in expected(want).items() if k != str(bad)} == got
    faulty.clear()
    assert rec.apply(want, changed=[]).ok
    assert resolved(faulty.dump()) == expected(want)


def test_full_map_is_reported_and_the_rest_applied() -> None:
    lbmap = checked_map(backends=5)
    rec = Reconciler(lbmap)
    want = _big_desired()
    result = rec.apply(want, prune=True)
    assert result.full and all(e.full and e.map_name == "backends" for e in result.errors)
    failed = {e.frontend for e in result.errors}
    got = resolved(lbmap.dump())
    assert got and all(v == expected(want)[k] for k, v in got.items())
    assert all(str(fe) not in got for fe in failed if fe is not None)
    lbmap.capacity["backends"] = 100
    assert rec.apply(want, changed=[]).ok  # pending frontends retried
    assert resolved(lbmap.dump()) == expected(want)


def test_injected_map_full_error() -> None:
    faulty = FaultyLBMap(FakeLBMap(), [Fault(map_name="services", full=True, times=None)])
    result = Reconciler(faulty).apply(_big_desired())
    assert result.full and len(result.errors) == len(FRONTENDS)
    assert all(e.map_name == "services" and "full" in e.message for e in result.errors)


def test_frontend_entry_carries_small_services_inline_and_follows_changes() -> None:
    """Up to four backends and no affinity: the backends ride in the frontend entry (one lookup
    in connect()); a fifth backend or affinity moves it to the slots, and back, safely."""
    lbmap = checked_map()
    rec = Reconciler(lbmap)
    fe = FRONTENDS[0]

    def apply(n: int, flags: ServiceFlags = ServiceFlags.NONE) -> tuple[int, int]:
        spec = FrontendSpec(tuple(Backend(a) for a in ADDRS[:n]), flags, 30 if flags else 0)
        assert rec.apply({fe: spec}, prune=True).ok
        entry = lbmap.dump().frontends[fe.key()]
        return entry.count, len(entry.inline)

    assert apply(4) == (4, 4)
    assert [b.ip for b in lbmap.dump().frontends[fe.key()].inline] == [a.ip for a in ADDRS[:4]]
    assert apply(5) == (5, 0)
    assert apply(3) == (3, 3)
    assert apply(3, ServiceFlags.SESSION_AFFINITY) == (3, 0)
    assert apply(1) == (1, 1)
    assert apply(0) == (0, 0)
    assert rec.apply({}, prune=True).ok
    assert lbmap.dump().frontends == {}
