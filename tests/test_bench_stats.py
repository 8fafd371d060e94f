"""edgeops.bench.stats: latency statistics against known values, numpy, scipy and the stdlib."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from edgeops.bench.stats import LatencyStats, throughput


def test_known_values_one_to_hundred():
    s = LatencyStats.from_values(range(1, 101))
    assert s.count == 100
    # numpy's default linear interpolation: rank p/100 * (n - 1) between sorted values
    assert s.p50 == pytest.approx(50.5)
    assert s.p90 == pytest.approx(90.1)
    assert s.p95 == pytest.approx(95.05)
    assert s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    assert s.std == pytest.approx(29.011491975882016)  # sample std, ddof=1
    assert (s.min, s.max) == (1.0, 100.0)


def test_order_does_not_matter():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    s = LatencyStats.from_values(values)
    assert s == LatencyStats.from_values(sorted(values))
    assert s.p50 == 3.0
    assert s.p90 == pytest.approx(4.6)  # rank 3.6: 4 + 0.6 * (5 - 4)


def test_single_value_has_zero_std_and_flat_percentiles():
    s = LatencyStats.from_values([2.5])
    assert s.count == 1 and s.std == 0.0
    assert s.p50 == s.p90 == s.p95 == s.p99 == s.min == s.max == s.mean == 2.5


def test_two_values_interpolate():
    s = LatencyStats.from_values([1.0, 2.0])
    assert s.p50 == pytest.approx(1.5)
    assert s.p99 == pytest.approx(1.99)
    assert s.std == pytest.approx(statistics.stdev([1.0, 2.0]))


@pytest.mark.parametrize("bad", [[], np.array([]), [1.0, float("nan")], [float("inf")]])
def test_empty_or_non_finite_input_is_rejected(bad):
    with pytest.raises(ValueError):
        LatencyStats.from_values(bad)


def test_random_data_matches_numpy_scipy_and_statistics():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(42)
    values = rng.lognormal(mean=0.0, sigma=0.5, size=1237)  # skewed, like real latencies
    s = LatencyStats.from_values(values.tolist())
    for p, got in zip((50, 90, 95, 99), (s.p50, s.p90, s.p95, s.p99)):
        assert got == pytest.approx(np.percentile(values, p), rel=1e-12)
        assert got == pytest.approx(scipy_stats.scoreatpercentile(values, p), rel=1e-12)
    assert s.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert s.std == pytest.approx(statistics.stdev(values), rel=1e-9)
    assert s.std == pytest.approx(scipy_stats.tstd(values), rel=1e-9)
    assert s.min == values.min() and s.max == values.max()
    assert s.min <= s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.max


def test_frozen_and_json_ready():
    s = LatencyStats.from_values(np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(AttributeError):
        s.p50 = 0.0  # type: ignore[misc]
    d = s.to_dict()
    assert set(d) == {"count", "p50", "p90", "p95", "p99", "mean", "std", "min", "max"}
    assert all(type(v) in (int, float) for v in d.values())  # plain Python numbers, not numpy scalars
    assert json.loads(json.dumps(d)) == d


def test_throughput():
    assert throughput(100, 2.0) == 50.0
    assert throughput(0, 1.0) == 0.0
    with pytest.raises(ValueError):
        throughput(10, 0.0)
    with pytest.raises(ValueError):
        throughput(-1, 1.0)
