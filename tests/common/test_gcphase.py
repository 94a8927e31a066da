"""The bulk GC phase helper: collection paused while any phase is open, settled once at the end.

Real collector, real cycles: what a phase leaves unreachable is collected when the last phase
ends, what it keeps is frozen, and the collector's previous on/off state is restored.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from services.common.gcphase import BulkPhases

pytestmark = pytest.mark.usefixtures("restore_gc")


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_phase_pauses_collection_nests_and_collects_cycles_once_at_the_end() -> None:
    phases = BulkPhases()
    gc.enable()
    with phases.phase():
        assert not gc.isenabled()
        with phases.phase():
            assert not gc.isenabled()
            garbage = _Cycle()
            ref = weakref.ref(garbage)
            del garbage
        assert not gc.isenabled(), "an inner phase must not re-enable the collector"
        assert ref() is not None, "no collection while a phase is open"
        kept = [_Cycle()]  # alive at the end of the phase: frozen, not collected
    assert gc.isenabled()
    assert ref() is None, "the cycle left by the phase is collected when it ends"
    assert gc.get_freeze_count() > 0
    assert gc.is_tracked(kept[0])


def test_phase_keeps_the_collector_off_when_it_was_off() -> None:
    gc.disable()
    with BulkPhases().phase():
        pass
    assert not gc.isenabled()


def test_begin_and_end_span_functions_and_overlap_a_phase() -> None:
    """A command's start-up phase (begin at its imports) overlapping the bootstrap's phase."""
    phases = BulkPhases()
    gc.enable()
    phases.begin()
    with phases.phase():
        garbage = _Cycle()
        ref = weakref.ref(garbage)
        del garbage
    assert not gc.isenabled() and phases.settled == 0, "still inside the begun phase"
    assert ref() is not None
    phases.end()
    assert gc.isenabled() and phases.settled == 1 and ref() is None
    with pytest.raises(RuntimeError, match="without a matching begin"):
        phases.end()
    assert phases.open == 0


def test_a_phase_without_collect_only_freezes_unless_an_overlapping_one_collects() -> None:
    phases = BulkPhases()
    gc.enable()
    with phases.phase(collect=False):
        garbage = _Cycle()
        ref = weakref.ref(garbage)
        del garbage
    assert gc.isenabled() and phases.settled == 1
    assert ref() is not None, "frozen, not collected: a one-time phase skips the pass"
    gc.unfreeze()
    gc.collect()
    assert ref() is None
    with phases.phase(collect=False), phases.phase():
        garbage = _Cycle()
        ref = weakref.ref(garbage)
        del garbage
    assert ref() is None, "an overlapping phase that asked to collect makes the end collect"
