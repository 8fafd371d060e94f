"""Operational drift tests: error rate, latency and accuracy against a baseline. Pure functions.

Inputs are the totals of telemetry windows (docs/telemetry.md) over two horizons: a baseline
(the device's own earlier windows, or the bundle's manifest for accuracy) and the current one.
The tests are one-sided where only one direction is a problem (more errors, lower accuracy);
latency uses the two-sided binned KS plus a quantile ratio that says which way it moved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as _dist

from edgeops.fleet.stats import TestResult, benjamini_hochberg, ks_binned

# The agent's fixed latency histogram bounds (docs/telemetry.md), in milliseconds.
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000,
                                         2500, 5000, 10000)


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
    return int(value)


def _events(events, total, label: str) -> tuple[int, int]:
    events, total = _count(f"{label} events", events), _count(f"{label} total", total)
    if events > total:
        raise ValueError(f"{label}: {events} events out of only {total}")
    return events, total


def rate_increase(cur_events, cur_total, base_events, base_total, test: str = "rate_increase") -> TestResult:
    """Is the current event rate (errors / requests) higher than the baseline's?

    One-sided Fisher exact test on the 2 x 2 table (= scipy.stats.fisher_exact(..., alternative=
    "greater")): exact for the small counts errors usually are, where a z-test is unreliable.
    statistic = current rate - baseline rate.
    """
    x1, n1 = _events(cur_events, cur_total, "current")
    x0, n0 = _events(base_events, base_total, "baseline")
    if n1 == 0 or n0 == 0:
        return TestResult(test, math.nan, None, n0, n1)
    # X = current events given all margins ~ hypergeometric; p = P(X >= x1).
    p = float(_dist.hypergeom.sf(x1 - 1, n0 + n1, x0 + x1, n1))
    return TestResult(test, x1 / n1 - x0 / n0, min(max(p, 0.0), 1.0), n0, n1)


def accuracy_decrease(correct, labelled, *, baseline_accuracy: float | None = None,
                      base_correct=None, base_labelled=None) -> TestResult:
    """Is the accuracy on fed-back labels lower than the baseline's? statistic = current - baseline.

    Against a baseline sample (earlier feedback, or the manifest's evaluation: manifest_accuracy):
    one-sided Fisher exact test. Against a bare number: exact binomial test, lower tail
    (= scipy.stats.binomtest(correct, labelled, p, alternative="less")); prefer a sample when
    there is one, since a bare number pretends the baseline has no error of its own.
    """
    k, n = _events(correct, labelled, "current")
    if baseline_accuracy is not None:
        if base_correct is not None or base_labelled is not None:
            raise ValueError("give either baseline_accuracy or base_correct/base_labelled, not both")
        if not 0.0 <= baseline_accuracy <= 1.0:
            raise ValueError(f"baseline_accuracy is a fraction in [0, 1], got {baseline_accuracy}")
        if n == 0:
            return TestResult("binomial_less", math.nan, None, 0, 0)
        p = float(_dist.binom.cdf(k, n, baseline_accuracy))
        return TestResult("binomial_less", k / n - baseline_accuracy, min(p, 1.0), 0, n)
    if base_correct is None or base_labelled is None:
        raise ValueError("accuracy needs a baseline: baseline_accuracy or base_correct/base_labelled")
    k0, n0 = _events(base_correct, base_labelled, "baseline")
    if n == 0 or n0 == 0:
        return TestResult("fisher_less", math.nan, None, n0, n)
    # Fewer correct now = more errors now: the rate_increase test on the wrong answers.
    wrong = rate_increase(n - k, n, n0 - k0, n0)
    return TestResult("fisher_less", k / n - k0 / n0, wrong.p_value, n0, n)


def manifest_accuracy(manifest: dict) -> tuple[int, int] | None:
    """(correct, labelled) of the bundle's accuracy gate on labelled evaluation data, else None.

    The gate stores the quantized model's accuracy in percent (``after``) and its sample count;
    agreement, R^2 or a gate run without labels is no accuracy baseline.
    """
    gate = manifest.get("accuracy") if isinstance(manifest, dict) else None
    if not isinstance(gate, dict) or gate.get("metric") != "accuracy" or gate.get("data") != "eval":
        return None
    samples, after = gate.get("samples"), gate.get("after")
    if not isinstance(samples, int) or samples <= 0 or not isinstance(after, (int, float)):
        return None
    return int(round(after / 100.0 * samples)), samples


def mean_abs_error_increase(cur: tuple, base: tuple) -> TestResult:
    """Has the mean absolute error of a numeric model grown? (labelled, abs_error_sum, squared_error_sum)

    The payload's two sums give the mean and variance of |error| (E[e^2] - E[|e|]^2), enough for
    Welch's one-sided t-test (= scipy.stats.ttest_ind_from_stats(..., equal_var=False,
    alternative="greater")). statistic = current MAE / baseline MAE.
    """
    (n1, m1, s1), (n0, m0, s0) = _abs_error_moments(cur, "current"), _abs_error_moments(base, "baseline")
    if n1 < 2 or n0 < 2:
        return TestResult("welch_greater", math.nan, None, n0, n1)
    ratio = m1 / m0 if m0 > 0 else (math.inf if m1 > 0 else 1.0)
    v1, v0 = s1 ** 2 / n1, s0 ** 2 / n0
    if v1 + v0 == 0:
        return TestResult("welch_greater", ratio, 0.0 if m1 > m0 else 1.0, n0, n1)
    t = (m1 - m0) / math.sqrt(v1 + v0)
    df = (v1 + v0) ** 2 / (v1 ** 2 / (n1 - 1) + v0 ** 2 / (n0 - 1))
    return TestResult("welch_greater", ratio, float(_dist.t.sf(t, df)), n0, n1)


def _abs_error_moments(sums: tuple, label: str) -> tuple[int, float, float]:
    """(n, mean |e|, sample std of |e|) from (labelled, abs_error_sum, squared_error_sum)."""
    n, abs_sum, sq_sum = sums
    n = _count(f"{label} labelled", n)
    if n == 0:
        return 0, 0.0, 0.0
    if abs_sum < 0 or sq_sum < 0:
        raise ValueError(f"{label}: error sums must be non-negative")
    mean = abs_sum / n
    var = max(sq_sum / n - mean ** 2, 0.0) * n / max(n - 1, 1)
    return n, mean, math.sqrt(var)


def histogram_quantile(counts, q: float, buckets=LATENCY_BUCKETS_MS) -> float | None:
    """Quantile ``q`` of a latency histogram, linear within the bucket (Prometheus' method).

    counts[i] holds values in (buckets[i-1], buckets[i]] (the first from 0); the last count is
    above the last bucket, where the answer is that bucket's bound (a lower bound). None if empty.
    """
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    b = np.asarray(buckets, dtype=np.float64).reshape(-1)
    if c.size != b.size + 1:
        raise ValueError(f"{b.size} buckets need {b.size + 1} counts, got {c.size}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q is a fraction in [0, 1], got {q}")
    total = c.sum()
    if total <= 0:
        return None
    rank = q * total
    cum = np.cumsum(c)
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= b.size:
        return float(b[-1])
    lower = 0.0 if i == 0 else float(b[i - 1])
    before = 0.0 if i == 0 else float(cum[i - 1])
    inside = rank - before
    return lower + (float(b[i]) - lower) * (inside / c[i] if c[i] > 0 else 0.0)


@dataclass(frozen=True)
class LatencyComparison:
    """Binned KS between two latency histograms plus the quantiles that tell the direction."""

    test: TestResult
    base_p50: float | None
    cur_p50: float | None
    base_p95: float | None
    cur_p95: float | None
    p95_ratio: float | None  # current p95 / baseline p95


def latency_shift(base_counts, cur_counts, buckets=LATENCY_BUCKETS_MS) -> LatencyComparison:
    """Compare a device's current latency histogram with its own earlier baseline."""
    if len(base_counts) != len(buckets) + 1:
        raise ValueError(f"{len(buckets)} buckets need {len(buckets) + 1} counts, got {len(base_counts)}")
    test = ks_binned(base_counts, cur_counts)
    b50, c50 = histogram_quantile(base_counts, 0.5, buckets), histogram_quantile(cur_counts, 0.5, buckets)
    b95, c95 = histogram_quantile(base_counts, 0.95, buckets), histogram_quantile(cur_counts, 0.95, buckets)
    ratio = c95 / b95 if b95 and c95 is not None else None
    return LatencyComparison(test, b50, c50, b95, c95, ratio)


@dataclass(frozen=True)
class SignalDrift:
    """The verdict on one operational signal of one device.

    ``material``: enough data and an effect above the configured floor; ``drifted``: material and
    significant (single test, or after BH with correct_signals).
    """

    signal: str  # error_rate | rejection_rate | latency | accuracy | mean_abs_error
    test: str
    statistic: float
    p_value: float | None
    effect: float | None  # rate increase, p95 ratio, accuracy drop, MAE ratio
    n: int  # current requests / labelled rows
    material: bool
    drifted: bool


def _config(config):
    if config is None:
        from edgeops.fleet.detectors import DetectorConfig  # detectors imports this module
        return DetectorConfig()
    return config


def _verdict(signal: str, test: TestResult, effect, material: bool, config) -> SignalDrift:
    effect = effect if effect is not None and math.isfinite(effect) else None
    material = bool(material and effect is not None and test.p_value is not None)
    drifted = material and test.p_value <= config.alpha
    return SignalDrift(signal, test.test, test.statistic, test.p_value, effect, test.n_cur, material, drifted)


def error_rate_drift(cur_errors, cur_requests, base_errors, base_requests, config=None,
                     signal: str = "error_rate") -> SignalDrift:
    """More failed (or, with signal="rejection_rate", rejected) requests than the device's baseline."""
    config = _config(config)
    test = rate_increase(cur_errors, cur_requests, base_errors, base_requests, "fisher_greater")
    enough = min(test.n_cur, test.n_ref) >= config.min_requests
    return _verdict(signal, test, test.statistic,
                    enough and test.statistic >= config.min_error_rate_increase, config)


def latency_drift(base_counts, cur_counts, config=None, buckets=LATENCY_BUCKETS_MS) -> SignalDrift:
    """Slower than the device's own baseline: KS on the latency histograms, p95 ratio as effect.

    Latencies are not independent draws (bursts, thermal throttling), so with many requests the
    p-value is small for harmless wobbles; the p95 ratio floor is what keeps alerts meaningful.
    """
    config = _config(config)
    shift = latency_shift(base_counts, cur_counts, buckets)
    enough = min(shift.test.n_cur, shift.test.n_ref) >= config.min_requests
    ratio = shift.p95_ratio
    return _verdict("latency", shift.test, ratio,
                    enough and ratio is not None and ratio >= config.min_latency_ratio, config)


def accuracy_drift(correct, labelled, config=None, *, baseline_accuracy: float | None = None,
                   base_correct=None, base_labelled=None) -> SignalDrift:
    """Lower accuracy on fed-back labels than the baseline (concept drift); effect = the drop."""
    config = _config(config)
    test = accuracy_decrease(correct, labelled, baseline_accuracy=baseline_accuracy,
                             base_correct=base_correct, base_labelled=base_labelled)
    drop = -test.statistic if test.p_value is not None else None
    return _verdict("accuracy", test, drop, test.n_cur >= config.min_labelled and drop is not None
                    and drop >= config.min_accuracy_drop, config)


def mean_abs_error_drift(cur: tuple, base: tuple, config=None) -> SignalDrift:
    """Larger errors of a numeric model on fed-back values: (labelled, abs_error_sum, squared_error_sum)."""
    config = _config(config)
    test = mean_abs_error_increase(cur, base)
    ratio = test.statistic if test.p_value is not None else None
    return _verdict("mean_abs_error", test, ratio, test.n_cur >= config.min_labelled and ratio is not None
                    and ratio >= config.min_error_ratio, config)


def correct_signals(results: dict, alpha: float) -> dict:
    """Benjamini-Hochberg over many SignalDrift (e.g. every device's signals of one evaluation).

    Returns the same keys with ``drifted`` = material and BH-significant at ``alpha``.
    """
    keys = list(results)
    p = [math.nan if results[k].p_value is None else results[k].p_value for k in keys]
    kept = benjamini_hochberg(p, alpha) if keys else []
    return {k: replace(results[k], drifted=bool(keep) and results[k].material) for k, keep in zip(keys, kept)}
