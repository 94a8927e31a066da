"""Percentiles and ratio tables shared by the benchmarks (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
