"""observe_many records exactly what one Histogram.observe per amount records (the worker
observes the network-programming latency of a whole batch at once)."""

from __future__ import annotations

import math
import time

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from contracts.v1 import Op
from services.datapath import metrics as m
from services.datapath.model import Change
from services.datapath.worker import _observe_programming

BUCKETS = m.NETWORK_PROGRAMMING._upper_bounds[:-1]  # the worker's own bounds (+Inf implied)
AMOUNTS = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=100.0),
        st.sampled_from([*BUCKETS, 0.0, math.inf, math.nan, -1.0]),  # on the bounds, odd ones
    ),
    max_size=60,
)


def samples(h: Histogram) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in h.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@given(AMOUNTS, AMOUNTS)
def test_observe_many_counts_like_observe(first: list[float], second: list[float]) -> None:
    registry = CollectorRegistry()
    one = Histogram("one", "per amount", buckets=BUCKETS, registry=registry)
    many = Histogram("many", "per batch", buckets=BUCKETS, registry=registry)
    for batch in (first, second):
        for amount in batch:
            one.observe(amount)
        m.observe_many(many, batch)
    got = {(k[0].replace("many", "one", 1), k[1]): v for k, v in samples(many).items()}
    want = samples(one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key[0].endswith("_sum"):
            assert same(got[key], value), (key, got[key], value)
        else:  # bucket and count samples: exact
            assert got[key] == value, (key, got[key], value)


def test_observe_many_falls_back_for_a_labelled_parent() -> None:
    """A histogram with labels has no buckets of its own: observe() raises, so must this."""
    registry = CollectorRegistry()
    h = Histogram("lab", "labelled", ["kind"], registry=registry)
    try:
        m.observe_many(h, [0.1])
    except ValueError:
        pass
    else:
        raise AssertionError("a labelled histogram took observations without labels")


def test_worker_observes_each_applied_event_once() -> None:
    """A batch's events (None: skipped messages) each count once in the programming histogram,
    in the bucket of its age; an event from the future counts as 0 s."""
    now = time.time()
    ages = [0.0005, 0.2, 3.0, -5.0]  # -5: the watcher's clock ahead of ours
    events: list[Change | None] = [
        Change("service", Op.UPSERT, "ns", f"s{i}", now - age, None) for i, age in enumerate(ages)
    ]
    events.insert(1, None)
    before = _hist(m.NETWORK_PROGRAMMING)
    _observe_programming(events)
    after = _hist(m.NETWORK_PROGRAMMING)
    assert after["count"] - before["count"] == 4
    assert after["le=0.001"] - before["le=0.001"] == 2  # 0.0005 s and the clamped future one
    assert after["le=0.25"] - before["le=0.25"] == 3
    assert after["le=5.0"] - before["le=5.0"] == 4
    assert 3.2 <= after["sum"] - before["sum"] < 3.3  # 0.0005 + 0.2 + 3 + 0, plus our delay


def _hist(h: Histogram) -> dict[str, float]:
    out = {}
    for metric in h.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                out[f"le={float(s.labels['le'])}"] = s.value
            elif s.name.endswith("_count"):
                out["count"] = s.value
            elif s.name.endswith("_sum"):
                out["sum"] = s.value
    return out
