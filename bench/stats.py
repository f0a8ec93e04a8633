"""Percentiles and timing helpers."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def interleaved(
    functions: dict[str, Callable[[], object]], rounds: int, *, every: dict[str, int] | None = None
) -> dict[str, list[float]]:
    """Time each function once per round, interleaved, so machine noise hits all of them alike. ``every`` runs a
    slow one only every k-th round."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for index in range(rounds):
        for name, function in functions.items():
            if every and index % every.get(name, 1):
                continue
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return samples
