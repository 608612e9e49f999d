"""Exact statistics of the benchmark's samples: nothing estimated, nothing binned.

Percentiles are *nearest-rank*: the p-th percentile of n samples is the
smallest sample with at least p % of the samples at or below it (the sample
at 1-based rank ``ceil(p / 100 * n)``), so it is always a latency some task
really had. This is the definition ``input_new/baseline_task_queue_v2.py``
prints, and the engine's histogram approximates (within its stated error).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

PERCENTILES = (50, 95, 99)


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank ``p``-th percentile (0 < p <= 100) of an ascending sequence; None if empty."""
    if not 0 < p <= 100:
        raise ValueError(f"p must be within (0, 100], got {p!r}")
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Iterable[float]) -> dict:
    """``count``, ``mean``, ``p50``, ``p95``, ``p99``, ``max`` of ``samples`` (in their unit).

    Every value but ``count`` is None when there are no samples.
    """
    ordered = sorted(samples)
    n = len(ordered)
    out = {"count": n, "mean": math.fsum(ordered) / n if n else None}
    for p in PERCENTILES:
        out[f"p{p}"] = percentile(ordered, p)
    out["max"] = ordered[-1] if n else None
    return out


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (mean of the middle two when even); None if none."""
    ordered = sorted(v for v in values if v is not None)
    n = len(ordered)
    if not n:
        return None
    middle = n // 2
    return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: Iterable[float | None]) -> list[float] | None:
    """``[min, max]`` of the values that are not None; None if none."""
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
