"""Latency statistics as data: pure functions on numbers, no I/O, numpy only."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-run latencies, all in milliseconds.

    Percentiles use numpy's default "linear" method (Hyndman & Fan type 7, the same as
    Excel's PERCENTILE.INC and pandas' quantile): the value at rank ``p/100 * (n-1)``,
    interpolated between the two nearest sorted values. So for 1..100, p50 = 50.5 and
    p99 = 99.01, and with few runs a high percentile sits between the largest values
    rather than on the maximum.
    """

    count: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float  # sample standard deviation (ddof=1); 0.0 for a single value
    min: float
    max: float

    @classmethod
    def from_values(cls, values_ms: Sequence[float]) -> "LatencyStats":
        arr = np.asarray(values_ms, dtype=np.float64).ravel()
        if arr.size == 0:
            raise ValueError("latency statistics need at least one value")
        if not np.all(np.isfinite(arr)):
            raise ValueError("latency values must be finite numbers")
        p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, PERCENTILES))
        return cls(
            count=int(arr.size),
            p50=p50,
            p90=p90,
            p95=p95,
            p99=p99,
            mean=float(arr.mean()),
            std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            min=float(arr.min()),
            max=float(arr.max()),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def throughput(samples: int, seconds: float) -> float:
    """Samples per second; ``seconds`` must be positive (a zero-length window has no rate)."""
    if seconds <= 0:
        raise ValueError(f"throughput needs a positive duration, got {seconds} s")
    if samples < 0:
        raise ValueError(f"throughput needs a non-negative sample count, got {samples}")
    return samples / seconds
