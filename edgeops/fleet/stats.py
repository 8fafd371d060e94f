"""Drift statistics on binned sketches: pure functions, numpy + scipy distributions only.

Every function compares a reference histogram (the bundle's refstats counts) with a current one
(the counts the agents sent, summed over an evaluation horizon). Both are counts over the same
bins: numeric features use the reference's quantile edges with open outer bins, categorical
features one bin per category (see docs/telemetry.md). Only counts travel, never raw values, so
the tests work on counts; docs/drift.md says how close each is to its raw-data counterpart.

Conventions:
- counts are non-negative and of equal length (ValueError otherwise); floats are accepted
  (the detector down-weights pooled image features to one observation per row).
- An empty side (total 0) cannot be tested: tests return ``p_value=None`` and a NaN statistic,
  distances return NaN. Callers guard with a minimum row count (the detectors do).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special as _special
from scipy import stats as _dist


@dataclass(frozen=True)
class TestResult:
    """One hypothesis test. ``p_value`` is None when there is nothing to test (an empty side)."""

    __test__ = False  # not a pytest test class, despite the name

    test: str
    statistic: float
    p_value: float | None
    n_ref: int
    n_cur: int
    dof: int | None = None  # degrees of freedom where the test has them (chi-squared)


def _pair(ref_counts, cur_counts) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref_counts, dtype=np.float64).reshape(-1)
    cur = np.asarray(cur_counts, dtype=np.float64).reshape(-1)
    if ref.shape != cur.shape:
        raise ValueError(f"reference has {ref.size} bins but current has {cur.size}: "
                         "both must be counts over the same bins")
    if ref.size == 0:
        raise ValueError("no bins to compare")
    # Four reductions instead of isfinite/all/any passes: this runs for every test of every
    # (device, feature) in an evaluation. A NaN or an infinity makes the sum non-finite.
    if not math.isfinite(float(ref.sum()) + float(cur.sum())):
        raise ValueError("counts must be finite")
    if ref.min() < 0 or cur.min() < 0:
        raise ValueError("counts must be non-negative")
    return ref, cur


def _n(total: float) -> int:
    return int(round(total))


def _empty(test: str, ref: np.ndarray, cur: np.ndarray) -> TestResult | None:
    if ref.sum() > 0 and cur.sum() > 0:
        return None
    return TestResult(test, math.nan, None, _n(ref.sum()), _n(cur.sum()))


def psi(ref_counts, cur_counts, eps: float = 1e-4) -> float:
    """Population stability index: sum over bins of (c - r) * ln(c / r) on proportions.

    Proportions below ``eps`` are raised to ``eps`` (no renormalisation), so a bin that is empty
    on one side adds a large but finite term instead of infinity. PSI is symmetric; the usual
    reading is < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    ref, cur = _pair(ref_counts, cur_counts)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return math.nan
    r = np.maximum(ref / ref.sum(), eps)
    c = np.maximum(cur / cur.sum(), eps)
    return float(np.sum((c - r) * np.log(c / r)))


def chi_squared(ref_counts, cur_counts, min_expected: float = 0.0) -> TestResult:
    """Chi-squared test of homogeneity on the 2 x k table [reference; current].

    Both rows are samples, so the expected counts come from the pooled proportions (this is
    scipy.stats.chi2_contingency with ``correction=False``), not from the reference proportions
    taken as exact: the reference is a finite sample too, and its quantile edges make the true
    mass per bin as uncertain as a multinomial count would be. Treating it as exact would inflate
    false alarms when the current sample is not much smaller than the reference.

    Bins empty on both sides are dropped (they carry no information). ``min_expected`` > 0 pools
    the sparsest bins into one until every expected count reaches it (Cochran's rule uses 5),
    which keeps the chi-squared approximation honest for rare categories.
    """
    ref, cur = _pair(ref_counts, cur_counts)
    empty = _empty("chi_squared", ref, cur)
    if empty is not None:
        return empty
    table = np.vstack([ref, cur])
    table = table[:, table.sum(axis=0) > 0]
    if min_expected > 0:
        table = _pool_sparse(table, min_expected)
    n_ref, n_cur = _n(ref.sum()), _n(cur.sum())
    dof = table.shape[1] - 1
    if dof < 1:
        return TestResult("chi_squared", 0.0, 1.0, n_ref, n_cur, 0)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    # chdtrc is chi2.sf without the distribution object's overhead (thousands of calls per evaluation)
    return TestResult("chi_squared", statistic, float(_special.chdtrc(dof, statistic)), n_ref, n_cur, dof)


def _pool_sparse(table: np.ndarray, min_expected: float) -> np.ndarray:
    """Merge the columns with the smallest totals until each expected count >= min_expected."""
    rows = table.sum(axis=1)
    needed = min_expected * table.sum() / rows.min()  # column total giving the smaller row min_expected
    totals = table.sum(axis=0)
    order = np.argsort(totals, kind="stable")
    sparse = [j for j in order if totals[j] < needed]
    keep = [j for j in order if totals[j] >= needed]  # ascending totals
    pooled = table[:, sparse].sum(axis=1)
    if sparse and keep and pooled.sum() < needed:
        # The sparse bins together are still too sparse: fold in the smallest adequate bin.
        pooled = pooled + table[:, keep.pop(0)]
    columns = [table[:, j] for j in sorted(keep)]
    if pooled.sum() > 0:
        columns.append(pooled)
    return np.column_stack(columns)


def chi_squared_goodness_of_fit(ref_counts, cur_counts, eps: float = 1e-4) -> TestResult:
    """Chi-squared goodness of fit of the current counts to the reference proportions as exact.

    Kept for comparison (scipy.stats.chisquare with f_exp = n_cur * reference proportions):
    docs/drift.md measures how it over-alarms when the reference is itself small. Reference
    proportions below ``eps`` are raised to ``eps`` and renormalised, so a bin the reference
    never saw does not give an infinite statistic.
    """
    ref, cur = _pair(ref_counts, cur_counts)
    empty = _empty("chi_squared_gof", ref, cur)
    if empty is not None:
        return empty
    p = np.maximum(ref / ref.sum(), eps)
    p = p / p.sum()
    expected = cur.sum() * p
    statistic = float(np.sum((cur - expected) ** 2 / expected))
    dof = ref.size - 1
    p_value = float(_special.chdtrc(dof, statistic)) if dof > 0 else 1.0
    return TestResult("chi_squared_gof", statistic, p_value, _n(ref.sum()), _n(cur.sum()), dof)


def ks_binned(ref_counts, cur_counts) -> TestResult:
    """Two-sample Kolmogorov-Smirnov on the binned CDFs (ordered bins: numeric features only).

    The statistic is the largest gap between the two empirical CDFs evaluated at the bin edges
    only, so it is <= the raw-data KS statistic (equal when the largest raw gap falls on an
    edge). The p-value is Smirnov's two-sample distribution as scipy.stats.ks_2samp computes it
    with method="asymp": kstwo.sf(D, round(n_ref * n_cur / (n_ref + n_cur))). Because D is
    taken at few points the test is conservative (fewer false alarms, some lost power).
    """
    ref, cur = _pair(ref_counts, cur_counts)
    empty = _empty("ks_binned", ref, cur)
    if empty is not None:
        return empty
    d = _max_cdf_gap(ref, cur)
    n_ref, n_cur = ref.sum(), cur.sum()
    en = max(int(np.round(n_ref * n_cur / (n_ref + n_cur))), 1)
    p_value = float(np.clip(_dist.kstwo.sf(d, en), 0.0, 1.0))
    return TestResult("ks_binned", d, p_value, _n(n_ref), _n(n_cur))


def ks_statistic(ref_counts, cur_counts) -> float:
    """The binned KS statistic alone (ks_binned without the p-value), NaN for an empty side."""
    ref, cur = _pair(ref_counts, cur_counts)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return math.nan
    return _max_cdf_gap(ref, cur)


def _max_cdf_gap(ref: np.ndarray, cur: np.ndarray) -> float:
    gap = np.abs(np.cumsum(ref) / ref.sum() - np.cumsum(cur) / cur.sum())
    return float(min(gap.max(), 1.0))


def jensen_shannon(ref_counts, cur_counts) -> float:
    """Jensen-Shannon divergence in bits: 0 for identical, 1 for disjoint histograms.

    This is the divergence, i.e. scipy.spatial.distance.jensenshannon(r, c, base=2) ** 2 (scipy
    returns the distance, its square root). Empty bins need no smoothing (0 log 0 = 0).
    """
    ref, cur = _pair(ref_counts, cur_counts)
    if ref.sum() <= 0 or cur.sum() <= 0:
        return math.nan
    r, c = ref / ref.sum(), cur / cur.sum()
    m = (r + c) / 2
    return float(min(max(0.5 * (_kl2(r, m) + _kl2(c, m)), 0.0), 1.0))


def _kl2(p: np.ndarray, q: np.ndarray) -> float:
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / q[nz])))


OUTER_WIDTHS = 3.0  # an open outer bin spans at most this many widths of its inner neighbour


def bin_points(edges, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Where wasserstein_binned puts each bin's mass: the bin midpoints.

    An open outer bin is closed at the reference min ``lo`` (max ``hi``), but at most
    OUTER_WIDTHS widths of the adjacent inner bin beyond the edge: a heavy tail's extreme
    minimum would otherwise put the whole outer decile far out and inflate W1 several-fold
    (docs/drift.md has the measurements that chose 3).
    """
    e = np.asarray(edges, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return np.zeros(1)
    if e.size < 2 and (lo is None or hi is None):
        raise ValueError("with fewer than two edges, give lo and hi (the reference min and max)")
    low = e[0] - OUTER_WIDTHS * (e[1] - e[0]) if e.size >= 2 else -np.inf
    high = e[-1] + OUTER_WIDTHS * (e[-1] - e[-2]) if e.size >= 2 else np.inf
    low = low if lo is None else max(low, lo)
    high = high if hi is None else min(high, hi)
    bounds = np.concatenate(([min(low, e[0])], e, [max(high, e[-1])]))
    return (bounds[:-1] + bounds[1:]) / 2


def wasserstein_binned(ref_counts, cur_counts, edges, lo: float | None = None,
                       hi: float | None = None) -> float:
    """Earth mover's distance (W1, in the feature's units) between the binned distributions.

    Each bin's mass sits at its midpoint (bin_points); W1 = sum of |F_ref - F_cur| times the
    distance to the next point. Exact for those point masses (= scipy.stats.wasserstein_distance
    on them); against the raw data it is an approximation (within about 5-10% for shifts of a
    quarter sd or more on the shapes in docs/drift.md), and it cannot see how far beyond the
    reference range the outer bins' mass lies.
    """
    ref, cur = _pair(ref_counts, cur_counts)
    points = bin_points(edges, lo, hi)
    if points.size != ref.size:
        raise ValueError(f"{len(edges)} edges make {points.size} bins, but the counts have {ref.size}")
    if ref.sum() <= 0 or cur.sum() <= 0:
        return math.nan
    gap = np.abs(np.cumsum(ref) / ref.sum() - np.cumsum(cur) / cur.sum())[:-1]
    return float(np.sum(gap * np.diff(points)))


def benjamini_hochberg(p_values, alpha: float) -> np.ndarray:
    """Which hypotheses BH rejects at false discovery rate ``alpha`` (boolean array, input order).

    Step-up: sort the m p-values, find the largest k with p_(k) <= alpha * k / m, reject the k
    smallest. NaN p-values (untestable) are never rejected and do not count in m. Valid for
    independent or positively dependent tests, which is what per-device drift tests sharing one
    reference are.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    rejected = np.zeros(p.size, dtype=bool)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return rejected
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = tested[np.argsort(p[tested], kind="stable")]
    m = tested.size
    below = p[order] <= alpha * np.arange(1, m + 1) / m
    if below.any():
        k = int(np.flatnonzero(below).max()) + 1
        rejected[order[:k]] = True
    return rejected
