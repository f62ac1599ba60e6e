"""Percentiles (nearest rank, from every sample: no histogram buckets, no averaging)."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Sample count, p50/p95/p99/p99.9 and max, in milliseconds.

    A percentile that the sample count cannot resolve (p99.9 of fewer than 1,000
    samples) is None rather than a guess.
    """
    values = sorted(seconds)
    out: dict[str, float | int | None] = {"n": len(values)}
    for p in PERCENTILES:
        resolvable = len(values) >= math.ceil(100 / (100 - p))
        key = "p" + f"{p:g}".replace(".", "_")
        out[key] = round(percentile(values, p) * 1000, 2) if values and resolvable else None
    out["max"] = round(values[-1] * 1000, 2) if values else None
    return out
