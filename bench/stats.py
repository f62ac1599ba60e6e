"""Percentiles: nearest rank from every sample (no histogram buckets, no averaging), or,
for runs too long to keep every sample (the sustained run and the soak), from
histograms with 1%-wide buckets; and a bitmap of request indices for their ledgers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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


class LogHistogram:
    """Counts of durations in buckets 1% wide (log scale, from 1 µs): constant memory
    however many samples, for windows too long to keep every sample (the soak).

    A percentile read from it is the upper edge of the bucket holding the nearest-rank
    sample, so it is at most 1% above the exact value.
    """

    _STEP = math.log(1.01)

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.n = sum(self.counts.values())
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        index = int(math.log(max(seconds, 1e-6) * 1e6) / self._STEP)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.n += 1
        if seconds > self.max_s:
            self.max_s = seconds

    def update(self, other: LogHistogram) -> None:
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.n += other.n
        self.max_s = max(self.max_s, other.max_s)

    def to_json(self) -> dict[str, Any]:
        return {"counts": {str(k): v for k, v in self.counts.items()}, "max_s": self.max_s}

    @staticmethod
    def from_json(data: dict[str, Any]) -> LogHistogram:
        histogram = LogHistogram({int(k): int(v) for k, v in data.get("counts", {}).items()})
        histogram.max_s = float(data.get("max_s", 0.0))
        return histogram

    def _upper_edge_s(self, index: int) -> float:
        return math.exp((index + 1) * self._STEP) / 1e6

    def percentile_s(self, p: float) -> float:
        if not self.n:
            return math.nan
        rank = max(1, math.ceil(p / 100 * self.n))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(self._upper_edge_s(index), self.max_s or math.inf)
        return self.max_s

    def summary_ms(self) -> dict[str, float | int | None]:
        """The keys of `summarize_ms`, from the buckets (within 1% of the exact values)."""
        out: dict[str, float | int | None] = {"n": self.n}
        for p in PERCENTILES:
            resolvable = self.n >= math.ceil(100 / (100 - p))
            key = "p" + f"{p:g}".replace(".", "_")
            out[key] = round(self.percentile_s(p) * 1000, 2) if self.n and resolvable else None
        out["max"] = round(self.max_s * 1000, 2) if self.n else None
        return out


class Bitmap:
    """One bit per request index (who was acknowledged, who was delivered): 3 million
    events take 375 KB."""

    def __init__(self, size: int = 0, data: bytes | None = None) -> None:
        self.bits = bytearray(data) if data is not None else bytearray((size + 7) // 8)

    def set(self, index: int) -> bool:
        """Set bit `index` (growing as needed); whether it was already set."""
        byte, bit = divmod(index, 8)
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        was = bool(self.bits[byte] >> bit & 1)
        self.bits[byte] |= 1 << bit
        return was

    def count(self) -> int:
        return int.from_bytes(self.bits, "little").bit_count()

    def and_not(self, other: Bitmap) -> Bitmap:
        """Bits set here and not in `other`."""
        size = max(len(self.bits), len(other.bits))
        mine = int.from_bytes(self.bits, "little")
        theirs = int.from_bytes(other.bits, "little")
        return Bitmap(data=(mine & ~theirs).to_bytes(size, "little"))

    def indices(self, limit: int) -> list[int]:
        out: list[int] = []
        for byte, value in enumerate(self.bits):
            if value:
                out += [byte * 8 + b for b in range(8) if value >> b & 1]
                if len(out) >= limit:
                    return out[:limit]
        return out
