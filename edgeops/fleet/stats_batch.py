"""The drift statistics of stats.py for many histograms at once: one numpy pass per feature.

A fleet evaluation tests every (device, feature) pair; calling the scalar functions once per
pair costs more in Python and scipy call overhead than in arithmetic (about 100 us a pair).
Here each function takes the current counts as a 2-D array, one row per histogram (device),
and the reference either as one row shared by all (the bundle's counts) or as a 2-D array of
the same shape (the rest of the fleet, one per device). Each returns one value per row, equal
to the scalar function's on that row (within floating-point rounding: the sums run in another
order); stats.py stays the reference, and tests/test_fleet_stats_batch.py holds them equal.

Same conventions as stats.py: counts finite and non-negative (ValueError with the same
messages otherwise); a row whose reference or current side totals 0 is untestable, giving NaN
(the scalar tests' ``p_value=None``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special as _special

from edgeops.fleet.stats import bin_points


@dataclass(frozen=True)
class TestResults:
    """One test on each row. NaN statistic and p-value (dof -1) where a side is empty."""

    __test__ = False  # not a pytest test class, despite the name

    test: str
    statistic: np.ndarray
    p_value: np.ndarray
    n_ref: np.ndarray  # rounded totals, as stats.TestResult's
    n_cur: np.ndarray
    dof: np.ndarray


def _pair(ref_counts, cur_counts) -> tuple[np.ndarray, np.ndarray]:
    cur = np.asarray(cur_counts, dtype=np.float64)
    ref = np.asarray(ref_counts, dtype=np.float64)
    if cur.ndim != 2:
        raise ValueError(f"current counts must be a 2-D array (one histogram per row), got {cur.ndim}-D")
    if ref.ndim == 1:
        ref = np.broadcast_to(ref, cur.shape) if ref.size == cur.shape[1] else ref[None, :]
    if ref.shape != cur.shape:
        raise ValueError(f"reference has {ref.shape[-1]} bins but current has {cur.shape[1]}: "
                         "both must be counts over the same bins")
    if cur.shape[1] == 0:
        raise ValueError("no bins to compare")
    if not (np.isfinite(ref).all() and np.isfinite(cur).all()):
        raise ValueError("counts must be finite")
    if cur.size and (ref.min() < 0 or cur.min() < 0):
        raise ValueError("counts must be non-negative")
    return ref, cur


def _shares(ref: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which rows have both sides non-empty, and the proportions (NaN rows where not)."""
    n_ref, n_cur = ref.sum(axis=1), cur.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (n_ref > 0) & (n_cur > 0), ref / n_ref[:, None], cur / n_cur[:, None]


def psi(ref_counts, cur_counts, eps: float = 1e-4) -> np.ndarray:
    """stats.psi per row (NaN where a side is empty)."""
    ref, cur = _pair(ref_counts, cur_counts)
    ok, r, c = _shares(ref, cur)
    r, c = np.maximum(r, eps), np.maximum(c, eps)
    with np.errstate(invalid="ignore"):
        out = np.sum((c - r) * np.log(c / r), axis=1)
    return np.where(ok, out, np.nan)


def chi_squared(ref_counts, cur_counts, min_expected: float = 0.0) -> TestResults:
    """stats.chi_squared per row: homogeneity on each row's 2 x k table [reference; current].

    The table's columns are never compacted: a mask says which take part (non-empty ones, minus
    the sparse ones pooled into one extra column), so rows with different pooling stay in one
    array. The pooling decisions are stats._pool_sparse's, column for column.
    """
    ref, cur = _pair(ref_counts, cur_counts)
    n_ref, n_cur = ref.sum(axis=1), cur.sum(axis=1)
    ok = (n_ref > 0) & (n_cur > 0)
    total = n_ref + n_cur
    column = ref + cur
    used = column > 0  # bins empty on both sides are dropped
    pooled_ref = np.zeros(ref.shape[0])
    pooled_cur = np.zeros(ref.shape[0])
    if min_expected > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            needed = min_expected * total / np.minimum(n_ref, n_cur)
        sparse = used & (column < needed[:, None])
        used = used & ~sparse
        pooled_ref = np.where(sparse, ref, 0.0).sum(axis=1)
        pooled_cur = np.where(sparse, cur, 0.0).sum(axis=1)
        # The sparse bins together still too sparse: fold in the smallest adequate bin (the
        # first of equal ones, as the scalar's stable sort does).
        fold = np.flatnonzero(ok & sparse.any(axis=1) & used.any(axis=1) & (pooled_ref + pooled_cur < needed))
        if fold.size:
            smallest = np.where(used[fold], column[fold], np.inf).argmin(axis=1)
            used[fold, smallest] = False
            pooled_ref[fold] += ref[fold, smallest]
            pooled_cur[fold] += cur[fold, smallest]
    pooled = pooled_ref + pooled_cur
    has_pool = pooled > 0
    dof = used.sum(axis=1) + has_pool - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        # expected = row total x column total / grand total, as the scalar's np.outer(...) / sum
        e_ref, e_cur = n_ref[:, None] * column / total[:, None], n_cur[:, None] * column / total[:, None]
        terms = (ref - e_ref) ** 2 / e_ref + (cur - e_cur) ** 2 / e_cur
        statistic = np.where(used, terms, 0.0).sum(axis=1)
        pe_ref, pe_cur = n_ref * pooled / total, n_cur * pooled / total
        statistic += np.where(has_pool, (pooled_ref - pe_ref) ** 2 / pe_ref + (pooled_cur - pe_cur) ** 2 / pe_cur, 0.0)
    testable = ok & (dof >= 1)
    p_value = np.ones(ref.shape[0])
    p_value[testable] = _special.chdtrc(dof[testable], statistic[testable])
    statistic = np.where(testable, statistic, 0.0)
    dof = np.where(testable, dof, 0)
    return TestResults("chi_squared", np.where(ok, statistic, np.nan), np.where(ok, p_value, np.nan),
                       np.rint(n_ref).astype(np.int64), np.rint(n_cur).astype(np.int64), np.where(ok, dof, -1))


def ks_statistic(ref_counts, cur_counts) -> np.ndarray:
    """stats.ks_statistic per row: the largest gap between the binned CDFs."""
    ref, cur = _pair(ref_counts, cur_counts)
    return np.where(_ok(ref, cur), np.minimum(_cdf_gaps(ref, cur).max(axis=1), 1.0), np.nan)


def _ok(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    return (ref.sum(axis=1) > 0) & (cur.sum(axis=1) > 0)


def _cdf_gaps(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(np.cumsum(ref, axis=1) / ref.sum(axis=1)[:, None]
                      - np.cumsum(cur, axis=1) / cur.sum(axis=1)[:, None])


def jensen_shannon(ref_counts, cur_counts) -> np.ndarray:
    """stats.jensen_shannon per row, in bits."""
    ref, cur = _pair(ref_counts, cur_counts)
    ok, r, c = _shares(ref, cur)
    m = (r + c) / 2
    out = 0.5 * (_kl2(r, m) + _kl2(c, m))
    return np.where(ok, np.clip(out, 0.0, 1.0), np.nan)


def _kl2(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log2(p / q), 0.0).sum(axis=1)


def wasserstein_binned(ref_counts, cur_counts, edges, lo: float | None = None,
                       hi: float | None = None) -> np.ndarray:
    """stats.wasserstein_binned per row (all rows share the edges and the reference's range)."""
    ref, cur = _pair(ref_counts, cur_counts)
    points = bin_points(edges, lo, hi)
    if points.size != ref.shape[1]:
        raise ValueError(f"{len(edges)} edges make {points.size} bins, but the counts have {ref.shape[1]}")
    gap = _cdf_gaps(ref, cur)[:, :-1]
    return np.where(_ok(ref, cur), np.sum(gap * np.diff(points), axis=1), np.nan)
