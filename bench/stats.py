"""Percentiles, spreads and paired ratios shared by the benchmarks (pure: lists in, numbers out)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def summary_us(ns: Sequence[int]) -> dict[str, float]:
    us = [v / 1000.0 for v in ns]
    return {
        "n": float(len(us)),
        "p50_us": percentile(us, 50),
        "p90_us": percentile(us, 90),
        "p99_us": percentile(us, 99),
        "mean_us": sum(us) / len(us) if us else math.nan,
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and inter-quartile range (quartiles interpolated, ``statistics`` inclusive method)
    of a non-empty sequence, plus its min and max."""
    if len(values) < 2:
        only = float(values[0]) if values else math.nan
        return {"median": only, "p25": only, "p75": only, "min": only, "max": only}
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": q2, "p25": q1, "p75": q3, "min": min(values), "max": max(values)}


def paired_ratio(contender: Sequence[Sequence[int]], floor: Sequence[Sequence[int]]) -> list[float]:
    """Per round, the contender's p50 over the floor's p50 from the same round (pure).

    The two lists hold one list of timings per round, in round order; a round where either side
    has no timing at all (every connect failed) gives no ratio rather than a made-up one.
    """
    if len(contender) != len(floor):
        raise ValueError(f"paired_ratio: {len(contender)} contender rounds, {len(floor)} floor")
    return [
        percentile(c, 50) / percentile(f, 50)
        for c, f in zip(contender, floor, strict=True)
        if c and f
    ]


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The end-to-end result over independent rounds (each on a fresh stack): the median round
    is the figure, and every round is kept. One round is a 2-3 s window in which four processes
    share this VM's 2 cores; the same code measured 7,300 to 11,900 events/s from one round to
    the next (docs/benchmarks.md, the A/B), so a single round says more about the host than the
    code."""
    ordered = sorted(rounds, key=lambda r: r["events_per_s"])
    middle = ordered[(len(ordered) - 1) // 2]  # the lower median for an even count
    return {
        "events": middle["events"],
        "events_per_s": middle["events_per_s"],
        "applied_s": middle["applied_s"],
        "events_per_s_min": ordered[0]["events_per_s"],
        "events_per_s_max": ordered[-1]["events_per_s"],
        "rounds": rounds,
    }


def e2e_text(e: dict[str, Any]) -> str:
    """``median (N in T s); rounds a / b / c`` of :func:`summarise_rounds`."""
    runs = " / ".join(f"{r['events_per_s']:.0f}" for r in e["rounds"])
    text = f"{e['events_per_s']:.0f} ({e['events']} in {e['applied_s']:.2f} s)"
    return text if len(e["rounds"]) == 1 else f"median {text}; rounds {runs}"
