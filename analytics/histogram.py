"""Latency histograms: how percentiles over many buckets are estimated.

A percentile of a day cannot be computed from the percentiles of its hours, so
every rollup row also keeps a sparse histogram of its values (milliseconds).
Histograms add up; a range's percentile is read from the sum.

Bin ``i`` (``i >= 1``) holds the integers in ``[EDGES[i-1], EDGES[i])``; bin 0
holds 0. The edges are the integers ``ceil(2 ** (k / 8))``: below 12 ms every
bin is one millisecond wide, above that a bin spans 9 % at most, so an
estimate is within 4.5 % of the true nearest-rank percentile. Values from
``EDGES[-1]`` (about 9.3 hours) on share the last bin. The edges are integers
so that PostgreSQL (``width_bucket``) and Python (``bisect``) put every value
in the same bin.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable

EDGES: tuple[int, ...] = tuple(sorted({math.ceil(2 ** (k / 8)) for k in range(0, 8 * 25 + 1)}))


def bin_of(value: int) -> int:
    """The bin of a value in milliseconds (same as PostgreSQL's width_bucket(value, EDGES))."""
    return bisect_right(EDGES, value)


def histogram(values: Iterable[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        key = str(bin_of(value))
        counts[key] = counts.get(key, 0) + 1
    return counts


def merge(target: dict[int, int], hist: dict) -> dict[int, int]:
    """Add ``hist`` (as stored: string keys) into ``target`` (int keys)."""
    for key, count in hist.items():
        index = int(key)
        target[index] = target.get(index, 0) + count
    return target


def _estimate(index: int) -> float:
    if index == 0:
        return 0.0
    low = EDGES[index - 1]
    high = EDGES[index] if index < len(EDGES) else low * 2
    if high - low == 1:
        return float(low)  # exact: the bin holds one integer
    return round(math.sqrt(low * (high - 1)), 1)  # geometric middle of the integers it holds


def percentile(counts: dict[int, int], fraction: float) -> float | None:
    """Estimate of the nearest-rank percentile (the smallest value with at least
    ``fraction`` of all values at or below it); None for an empty histogram."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return _estimate(index)
    return _estimate(max(counts))  # unreachable: seen reaches total


def percentile_cont(sorted_values: list[int], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont over already sorted values (linear interpolation)."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low))
