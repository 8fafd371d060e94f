"""edgeops.fleet.stats and .signals: drift statistics against scipy on the same data and by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from scipy.spatial.distance import jensenshannon

from edgeops.bundle.refstats import numeric_summary
from edgeops.fleet import signals, stats


def histogram(values, edges):
    """Counts on refstats edges with open outer bins, the agents' binning (docs/telemetry.md)."""
    return np.histogram(values, np.concatenate(([-np.inf], edges, [np.inf])))[0]


# --- PSI -------------------------------------------------------------------------------------

def test_psi_by_hand():
    # proportions 0.5/0.3/0.2 vs 0.3/0.3/0.4
    expected = (0.3 - 0.5) * math.log(0.3 / 0.5) + 0.0 + (0.4 - 0.2) * math.log(0.4 / 0.2)
    assert stats.psi([50, 30, 20], [30, 30, 40]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.24079, abs=1e-5)
    assert stats.psi([50, 30, 20], [50, 30, 20]) == 0.0
    assert stats.psi([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0, abs=1e-15)  # scale-free


def test_psi_zero_bin_is_smoothed_with_eps():
    # cur has nothing in bin 3: its proportion becomes eps instead of 0 (no infinity)
    r, c = np.array([0.25, 0.25, 0.5]), np.array([0.5, 0.5, 1e-4])
    expected = float(np.sum((c - r) * np.log(c / r)))
    assert stats.psi([25, 25, 50], [50, 50, 0]) == pytest.approx(expected, rel=1e-12)
    assert stats.psi([25, 25, 50], [50, 50, 0], eps=1e-2) < expected  # a larger eps damps it


# --- chi-squared: two-sample homogeneity, the detector's test ----------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chi_squared_equals_scipy_contingency(seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(20, 400, size=10)
    cur = rng.integers(5, 100, size=10)
    ours = stats.chi_squared(ref, cur)
    theirs = st.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-10)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-8)
    assert ours.dof == theirs.dof == 9
    assert (ours.n_ref, ours.n_cur) == (int(ref.sum()), int(cur.sum()))


def test_chi_squared_two_bins_has_no_yates_correction():
    # scipy corrects 2x2 tables by default; ours is the uncorrected statistic, documented so
    ours = stats.chi_squared([300, 700], [45, 55])
    assert ours.statistic == pytest.approx(st.chi2_contingency([[300, 700], [45, 55]], correction=False).statistic)
    assert ours.statistic > st.chi2_contingency([[300, 700], [45, 55]]).statistic


def test_chi_squared_drops_bins_empty_on_both_sides():
    # scipy refuses a table with an all-zero column; such a bin carries no information
    with pytest.raises(ValueError):
        st.chi2_contingency([[10, 0, 30], [12, 0, 20]])
    ours = stats.chi_squared([10, 0, 30], [12, 0, 20])
    theirs = st.chi2_contingency([[10, 30], [12, 20]], correction=False)
    assert ours.statistic == pytest.approx(theirs.statistic)
    assert ours.dof == 1


def test_chi_squared_category_only_in_current():
    # "__unseen__": zero in the reference, present now. The pooled expectation handles it
    # without smoothing, exactly as the contingency table does.
    ref, cur = [500, 300, 200, 0], [40, 30, 20, 10]
    ours = stats.chi_squared(ref, cur)
    theirs = st.chi2_contingency(np.array([ref, cur]), correction=False)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-8)
    assert ours.p_value < 1e-10


def test_chi_squared_pools_sparse_bins():
    ref = np.array([5000, 3000, 1500, 400, 60, 30, 10])
    cur = np.array([100, 60, 30, 8, 1, 1, 0])
    pooled = stats.chi_squared(ref, cur, min_expected=5)
    # expected count of the current row = 200 * column / 10200 >= 5 needs columns >= 255:
    # 60, 30, 10 (101 together) are pooled, then the smallest adequate bin (400) joins them
    table = np.array([[5000, 3000, 1500, 400 + 60 + 30 + 10], [100, 60, 30, 8 + 1 + 1 + 0]])
    theirs = st.chi2_contingency(table, correction=False)
    assert pooled.statistic == pytest.approx(theirs.statistic)
    assert pooled.dof == 3
    assert theirs.expected_freq.min() >= 5
    assert stats.chi_squared(ref, cur).dof == 6  # no pooling by default


def test_goodness_of_fit_form_equals_scipy_chisquare():
    ref, cur = np.array([400, 300, 200, 100]), np.array([30, 35, 20, 15])
    ours = stats.chi_squared_goodness_of_fit(ref, cur)
    theirs = st.chisquare(cur, f_exp=cur.sum() * ref / ref.sum())
    assert ours.statistic == pytest.approx(theirs.statistic)
    assert ours.p_value == pytest.approx(theirs.pvalue)


def test_goodness_of_fit_over_alarms_with_a_small_reference_and_homogeneity_does_not():
    # The reason the detector uses the two-sample form: refstats edges are quantiles of a finite
    # reference, so its proportions are not the truth. Undrifted data, reference 1000 rows,
    # current 5000 rows, 300 repetitions: GoF flags most of them at p <= 0.01.
    rng = np.random.default_rng(7)
    gof = hom = 0
    for _ in range(300):
        entry = numeric_summary(rng.normal(size=1000))
        cur = histogram(rng.normal(size=5000), entry["edges"])
        gof += stats.chi_squared_goodness_of_fit(entry["counts"], cur).p_value <= 0.01
        hom += stats.chi_squared(entry["counts"], cur).p_value <= 0.01
    assert gof / 300 > 0.5
    assert hom / 300 < 0.04


# --- KS on binned CDFs ------------------------------------------------------------------------

def test_ks_binned_equals_ks_2samp_when_every_value_sits_on_an_edge():
    # Integer data, one integer per bin: the binned CDFs ARE the empirical CDFs at every jump,
    # so statistic and p-value equal scipy's (method="asymp", the same Smirnov distribution).
    rng = np.random.default_rng(3)
    a, b = rng.poisson(4.0, size=3000), rng.poisson(4.3, size=800)
    edges = np.arange(1, 15) - 0.5
    ours = stats.ks_binned(histogram(a, edges), histogram(b, edges))
    theirs = st.ks_2samp(a, b, method="asymp")
    assert ours.statistic == pytest.approx(theirs.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)


@pytest.mark.parametrize("draw", [
    lambda rng, n, s: rng.normal(s, 1, n),
    lambda rng, n, s: rng.lognormal(0, 1, n) + s * 2.16,
    lambda rng, n, s: rng.standard_t(3, n) + s * 1.73,
], ids=["normal", "lognormal", "t3"])
def test_ks_binned_is_the_exact_statistic_seen_at_the_edges_only(draw):
    # Deciles of the reference (10 bins). D_binned <= D_exact always; D_exact exceeds it by at
    # most the largest single-bin mass of either side (the CDFs cannot move more inside a bin).
    rng = np.random.default_rng(11)
    gaps = []
    for shift in (0.0, 0.25, 0.5):
        for _ in range(20):
            raw_ref, raw_cur = draw(rng, 5000, 0.0), draw(rng, 1000, shift)
            entry = numeric_summary(raw_ref)
            ref, cur = np.array(entry["counts"]), histogram(raw_cur, entry["edges"])
            binned = stats.ks_binned(ref, cur)
            exact = st.ks_2samp(raw_ref, raw_cur)
            assert binned.statistic <= exact.statistic + 1e-12
            assert exact.statistic - binned.statistic <= max((ref / ref.sum()).max(), (cur / cur.sum()).max())
            assert binned.p_value >= exact.pvalue - 1e-12 or binned.p_value > 0.01  # never more alarming
            gaps.append(exact.statistic - binned.statistic)
    assert np.mean(gaps) < 0.015  # docs/drift.md: about 0.006-0.01 on average


# --- Jensen-Shannon, Wasserstein ----------------------------------------------------------------

def test_jensen_shannon_is_scipys_distance_squared_in_bits():
    ref, cur = [40, 30, 20, 10, 0], [10, 20, 30, 35, 5]
    assert stats.jensen_shannon(ref, cur) == pytest.approx(jensenshannon(ref, cur, base=2) ** 2, rel=1e-12)
    assert stats.jensen_shannon(ref, ref) == 0.0
    assert stats.jensen_shannon([10, 0], [0, 7]) == pytest.approx(1.0)  # disjoint: the maximum


def test_wasserstein_binned_is_exact_for_the_bin_midpoints():
    edges = [1.0, 2.0, 4.0]
    ref, cur = [10, 20, 30, 40], [40, 30, 20, 10]
    points = stats.bin_points(edges, lo=0.0, hi=5.0)
    np.testing.assert_allclose(points, [0.5, 1.5, 3.0, 4.5])
    assert stats.wasserstein_binned(ref, cur, edges, 0.0, 5.0) == pytest.approx(
        st.wasserstein_distance(points, points, ref, cur), rel=1e-12)


def test_wasserstein_outer_bins_are_capped_near_the_edges():
    # A heavy tail's minimum (-50) would put the lowest decile's mass far out: capped at 3 widths
    # of the neighbouring bin (1.0), the point is at -1 - 1.5; the reference max (2.5) is closer.
    points = stats.bin_points([-1.0, 0.0, 1.0], lo=-50.0, hi=2.5)
    np.testing.assert_allclose(points, [-2.5, -0.5, 0.5, 1.75])


@pytest.mark.parametrize("draw,sd", [
    (lambda rng, n: rng.normal(0, 1, n), 1.0),
    (lambda rng, n: rng.lognormal(0, 1, n), 2.16),
    (lambda rng, n: rng.standard_t(3, n), 1.73),
    (lambda rng, n: rng.uniform(0, 1, n), 0.289),
], ids=["normal", "lognormal", "t3", "uniform"])
def test_wasserstein_binned_approximates_the_raw_distance(draw, sd):
    rng = np.random.default_rng(5)
    ratios = []
    for _ in range(10):
        raw_ref = draw(rng, 5000)
        raw_cur = draw(rng, 2000) + 0.5 * sd
        entry = numeric_summary(raw_ref)
        binned = stats.wasserstein_binned(entry["counts"], histogram(raw_cur, entry["edges"]), entry["edges"],
                                          entry["min"], entry["max"])
        ratios.append(binned / st.wasserstein_distance(raw_ref, raw_cur))
    assert 0.8 < np.mean(ratios) < 1.15


# --- edge cases ---------------------------------------------------------------------------------

def test_empty_current_is_not_testable():
    for test in (stats.chi_squared, stats.ks_binned, stats.chi_squared_goodness_of_fit):
        result = test([10, 20, 30], [0, 0, 0])
        assert result.p_value is None and math.isnan(result.statistic) and result.n_cur == 0
    assert math.isnan(stats.psi([10, 20], [0, 0]))
    assert math.isnan(stats.jensen_shannon([10, 20], [0, 0]))
    assert math.isnan(stats.wasserstein_binned([10, 20, 5], [0, 0, 0], [0.0, 1.0]))


@pytest.mark.parametrize("fn", [stats.psi, stats.chi_squared, stats.ks_binned, stats.jensen_shannon,
                                stats.chi_squared_goodness_of_fit])
def test_mismatched_or_bad_counts_raise(fn):
    with pytest.raises(ValueError, match="same bins"):
        fn([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        fn([1, 2, 3], [1, -2, 3])
    with pytest.raises(ValueError, match="finite"):
        fn([1, 2, 3], [1, float("nan"), 3])


def test_wasserstein_edges_must_match_counts():
    with pytest.raises(ValueError, match="edges make 3 bins"):
        stats.wasserstein_binned([1, 2, 3, 4], [1, 2, 3, 4], [0.0, 1.0])


def test_single_bin_has_nothing_to_test():
    result = stats.chi_squared([100], [7])
    assert (result.statistic, result.p_value, result.dof) == (0.0, 1.0, 0)


# --- Benjamini-Hochberg -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_benjamini_hochberg_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=400), rng.uniform(0, 1e-4, size=12)])
    rng.shuffle(p)
    for alpha in (0.01, 0.05, 0.2):
        ours = stats.benjamini_hochberg(p, alpha)
        assert np.array_equal(ours, st.false_discovery_control(p) <= alpha)
    assert stats.benjamini_hochberg(p, 0.05).sum() >= 12


def test_benjamini_hochberg_step_up_by_hand_and_untestable_values():
    # m = 4 (the NaN does not count): thresholds .0125 .025 .0375 .05 -> p_(3)=.03 passes, so
    # the three smallest are rejected even though .02 > .0125 (step-up)
    p = [0.03, 0.02, float("nan"), 0.01, 0.9]
    assert stats.benjamini_hochberg(p, 0.05).tolist() == [True, True, False, True, False]
    assert stats.benjamini_hochberg([], 0.05).tolist() == []
    with pytest.raises(ValueError):
        stats.benjamini_hochberg([0.1], 0.0)
    with pytest.raises(ValueError):
        stats.benjamini_hochberg([1.5], 0.05)


# --- operational signals ------------------------------------------------------------------------

def test_rate_increase_equals_fisher_exact_greater():
    for cur, base in [((9, 400), (12, 5000)), ((0, 300), (3, 1000)), ((40, 1000), (400, 10000))]:
        ours = signals.rate_increase(cur[0], cur[1], base[0], base[1])
        table = [[cur[0], cur[1] - cur[0]], [base[0], base[1] - base[0]]]
        assert ours.p_value == pytest.approx(st.fisher_exact(table, alternative="greater").pvalue, rel=1e-9)
        assert ours.statistic == pytest.approx(cur[0] / cur[1] - base[0] / base[1])
    with pytest.raises(ValueError):
        signals.rate_increase(5, 4, 0, 10)
    assert signals.rate_increase(0, 0, 1, 10).p_value is None


def test_accuracy_decrease_against_a_number_and_a_sample():
    fixed = signals.accuracy_decrease(80, 100, baseline_accuracy=0.9)
    assert fixed.p_value == pytest.approx(st.binomtest(80, 100, 0.9, alternative="less").pvalue, rel=1e-9)
    assert fixed.statistic == pytest.approx(-0.1)
    sample = signals.accuracy_decrease(80, 100, base_correct=450, base_labelled=500)
    theirs = st.fisher_exact([[80, 20], [450, 50]], alternative="less").pvalue
    assert sample.p_value == pytest.approx(theirs, rel=1e-9)
    assert sample.p_value > fixed.p_value  # the baseline's own sampling error counts
    with pytest.raises(ValueError):
        signals.accuracy_decrease(80, 100)


def test_manifest_accuracy():
    manifest = {"accuracy": {"metric": "accuracy", "after": 92.5, "samples": 400, "data": "eval"}}
    assert signals.manifest_accuracy(manifest) == (370, 400)
    assert signals.manifest_accuracy({"accuracy": {"metric": "agreement", "after": 99, "samples": 9,
                                                   "data": "calibration"}}) is None
    assert signals.manifest_accuracy({"accuracy": None}) is None


def test_mean_abs_error_increase_equals_welch_from_stats():
    rng = np.random.default_rng(2)
    base_e, cur_e = rng.normal(0, 1.0, 800), rng.normal(0, 1.2, 300)
    sums = lambda e: (e.size, float(np.abs(e).sum()), float((e ** 2).sum()))  # noqa: E731
    ours = signals.mean_abs_error_increase(sums(cur_e), sums(base_e))
    a, b = np.abs(cur_e), np.abs(base_e)
    theirs = st.ttest_ind_from_stats(a.mean(), a.std(ddof=1), a.size, b.mean(), b.std(ddof=1), b.size,
                                     equal_var=False, alternative="greater")
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-6)
    assert ours.statistic == pytest.approx(a.mean() / b.mean())


def test_histogram_quantile_and_latency_shift():
    buckets = signals.LATENCY_BUCKETS_MS
    counts = [0] * 17
    counts[2] = 50  # (0.25, 0.5]
    counts[3] = 50  # (0.5, 1]
    assert signals.histogram_quantile(counts, 0.5, buckets) == pytest.approx(0.5)
    assert signals.histogram_quantile(counts, 0.75, buckets) == pytest.approx(0.75)
    assert signals.histogram_quantile([0] * 16 + [5], 0.5, buckets) == 10000.0  # overflow: lower bound
    assert signals.histogram_quantile([0] * 17, 0.5, buckets) is None
    rng = np.random.default_rng(0)
    edges = np.array(buckets)
    bin_latency = lambda x: np.bincount(np.searchsorted(edges, x, side="left"), minlength=17)  # noqa: E731
    base = bin_latency(rng.lognormal(np.log(3.0), 0.4, 5000))
    slow = signals.latency_shift(base, bin_latency(rng.lognormal(np.log(9.0), 0.4, 2000)))
    same = signals.latency_shift(base, bin_latency(rng.lognormal(np.log(3.0), 0.4, 2000)))
    assert slow.test.p_value < 1e-12
    assert slow.p95_ratio > 2.0
    assert same.test.p_value > 0.001 and 0.8 < same.p95_ratio < 1.25
