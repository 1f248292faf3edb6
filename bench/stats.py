"""Percentiles of one run, and the median and spread of a figure over repetitions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max in milliseconds."""
    ordered = sorted(latencies_s)
    if not ordered:
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}

    def at(q: float) -> float:
        return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] * 1000

    return {"p50_ms": at(50), "p99_ms": at(99), "max_ms": ordered[-1] * 1000}


@dataclass(frozen=True)
class Spread:
    """A figure over repetitions: its median, min and max."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(statistics.median(finite), min(finite), max(finite), len(finite))

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}

    def show(self, digits: int = 1, unit: str = "") -> str:
        """ "12.3 (11.9-13.0)" — the median, then min-max when there are several."""
        if self.n == 0:
            return "—"
        text = f"{_num(self.median, digits)}{unit}"
        if self.n > 1:
            text += f" ({_num(self.low, digits)}\u2013{_num(self.high, digits)})"
        return text


def _num(value: float, digits: int) -> str:
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"
