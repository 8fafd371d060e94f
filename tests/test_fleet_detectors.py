"""edgeops.fleet.detectors: per-feature tests, BH across a fleet, scope, hysteresis, signals.

Fleets are simulated from real reference statistics (edgeops.bundle.refstats on drawn data);
device histograms are drawn from the true bin probabilities (a multinomial: the exact
distribution of the counts an agent would send for raw data from that distribution).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as st

from edgeops.bundle.refstats import reference_stats
from edgeops.errors import UsageError
from edgeops.fleet import stats
from edgeops.fleet.detectors import (FLEET, DetectorConfig, FeatureDrift, FleetDrift, Hysteresis,
                                     accuracy_drift, correct_signals, drift_key, error_rate_drift,
                                     evaluate_fleet, feature_drift, latency_drift, reference_entries,
                                     split_key)
from edgeops.fleet.signals import LATENCY_BUCKETS_MS

SHAPES = {  # feature name -> frozen scipy distribution (several shapes)
    "temp": st.norm(20, 3), "power": st.lognorm(0.8), "gap": st.expon(), "vib": st.t(3), "level": st.uniform(0, 5),
}
COLOURS = {"red": 0.5, "green": 0.3, "blue": 0.15, "violet": 0.0495, "rare": 0.0005}


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(42)
    n = 4000
    x = np.column_stack([SHAPES[k].rvs(n, random_state=rng) for k in SHAPES])
    colour = rng.choice(list(COLOURS), size=n, p=list(COLOURS.values()))
    label = rng.choice(["cat", "dog"], size=n, p=[0.7, 0.3])
    return reference_stats({"x": x, "colour": colour}, {"label": label}, feature_names={"x": list(SHAPES)})


def true_probs(entry, name, shift_sd=0.0):
    if entry["kind"] == "numeric":
        dist = SHAPES[name]
        cdf = dist.cdf(np.asarray(entry["edges"]) - shift_sd * dist.std())
        return np.diff(np.concatenate(([0.0], cdf, [1.0])))
    truth = COLOURS if name == "colour" else {"cat": 0.7, "dog": 0.3}
    out = {k: 0.0 for k in entry["categories"]}
    for k, p in truth.items():
        key = k if k in out else "__unseen__"
        out[key] = out.get(key, 0.0) + p
    return out


def draw(entry, name, rows, rng, shift_sd=0.0, stuck=False):
    if stuck:  # a stuck sensor: everything in the bin of the reference maximum
        counts = [0] * (len(entry["edges"]) + 1)
        counts[-1] = rows
        return counts
    p = true_probs(entry, name, shift_sd)
    if isinstance(p, dict):
        values = np.array(list(p.values()))
        return dict(zip(p, rng.multinomial(rows, values / values.sum()).tolist()))
    return rng.multinomial(rows, p / p.sum()).tolist()


def fleet(reference, rng, devices=40, rows=(200, 3000), shifts=None):
    """{device: {name: counts, "__rows__": n}}; shifts: {(device, name): shift_sd or "stuck"}."""
    shifts = shifts or {}
    entries = reference_entries(reference)
    out = {}
    for d in range(devices):
        device = f"dev{d:03d}"
        n = int(rng.integers(rows[0], rows[1] + 1))
        counts = {}
        for name, entry in entries.items():
            shift = shifts.get((device, name), 0.0)
            counts[name] = draw(entry, name, n, rng, 0.0 if shift == "stuck" else shift, shift == "stuck")
        out[device] = {**counts, "__rows__": n}
    return out


def drifted_keys(result: FleetDrift) -> set[tuple[str, str]]:
    keys = {(d, r.feature) for d, rs in result.devices.items() for r in rs if r.drifted}
    return keys | {(FLEET, r.feature) for r in result.fleet if r.drifted}


# --- one feature ----------------------------------------------------------------------------------

def test_feature_drift_numeric_effect_sizes_and_verdict(reference):
    rng = np.random.default_rng(1)
    entry = reference_entries(reference)["temp"]
    calm = feature_drift(entry, draw(entry, "temp", 2000, rng))
    moved = feature_drift(entry, draw(entry, "temp", 2000, rng, shift_sd=1.0))
    assert calm.test == moved.test == "chi_squared" and calm.kind == "numeric" and calm.source == "feature"
    assert not calm.drifted and calm.psi < 0.05
    assert moved.drifted and moved.psi > 0.5 and moved.p_value < 1e-50
    assert 0.8 < moved.wasserstein_sd < 1.2  # a 1 sd shift, seen through 10 bins
    assert moved.ks > 0.3 and moved.jensen_shannon > calm.jensen_shannon
    assert moved.n == 2000


def test_feature_drift_categorical_with_unseen_values(reference):
    entry = reference_entries(reference)["colour"]
    share = {k: int(v * 1000) for k, v in COLOURS.items() if k in entry["categories"]}
    calm = feature_drift(entry, share)
    broken = feature_drift(entry, {**share, "__unseen__": 150})
    assert not calm.drifted
    assert broken.drifted and broken.kind == "categorical" and broken.ks is None


def test_feature_drift_rejects_malformed_counts(reference):
    entries = reference_entries(reference)
    with pytest.raises(ValueError, match="edges make 10 bins"):
        feature_drift(entries["temp"], [1, 2, 3])
    with pytest.raises(ValueError, match="numeric"):
        feature_drift(entries["temp"], {"a": 1})
    with pytest.raises(ValueError, match="dict"):
        feature_drift(entries["colour"], [1, 2, 3])


def test_pooled_image_feature_counts_each_row_once(reference):
    # 64 values per row (an image pooled into one feature): the test treats 300 rows as 300
    # observations, not 19200 correlated pixels.
    entry = dict(reference_entries(reference)["temp"])
    entry["counts"] = [c * 64 for c in entry["counts"]]
    rng = np.random.default_rng(3)
    cur = draw(entry, "temp", 300 * 64, rng, shift_sd=0.1)
    per_row = feature_drift(entry, cur, rows=300)
    per_pixel = feature_drift(entry, cur)
    assert per_row.statistic == pytest.approx(per_pixel.statistic / 64, rel=1e-9)
    assert per_row.psi == per_pixel.psi


# --- the fleet ------------------------------------------------------------------------------------

def test_one_broken_device_among_many_is_local(reference):
    rng = np.random.default_rng(5)
    current = fleet(reference, rng, shifts={("dev007", "vib"): "stuck", ("dev007", "temp"): 1.0})
    result = evaluate_fleet(reference, current, DetectorConfig())
    device_keys = {k for k in drifted_keys(result) if k[0] != FLEET}
    assert device_keys == {("dev007", "vib"), ("dev007", "temp")}
    assert result.scope[("dev007", "vib")] == "device" and result.scope[("dev007", "temp")] == "device"
    for key in drifted_keys(result) - device_keys:  # the aggregate may notice; it is still local
        assert result.scope[key] == "device"
    assert result.tests == 40 * 7 + 7


def test_in_a_fleet_of_two_the_device_that_drifts_alone_is_local(reference):
    # Half of a two-device fleet is not "most of the fleet": the end-to-end case.
    rng = np.random.default_rng(12)
    current = fleet(reference, rng, devices=2, rows=(2000, 2000), shifts={("dev001", "temp"): 1.0})
    result = evaluate_fleet(reference, current, DetectorConfig())
    assert {k for k in drifted_keys(result) if k[0] != FLEET} == {("dev001", "temp")}
    assert result.scope[("dev001", "temp")] == "device"
    assert all(result.scope[k] == "device" for k in drifted_keys(result))


def test_fleet_wide_drift_is_fleet(reference):
    rng = np.random.default_rng(6)
    shifts = {(f"dev{d:03d}", "level"): 0.6 for d in range(40)}
    result = evaluate_fleet(reference, fleet(reference, rng, shifts=shifts), DetectorConfig())
    flagged = [d for d, rs in result.devices.items() for r in rs if r.feature == "level" and r.drifted]
    assert len(flagged) >= 30
    assert all(result.scope[(d, "level")] == "fleet" for d in flagged)
    assert result.scope[(FLEET, "level")] == "fleet"
    assert {f for _, f in drifted_keys(result)} == {"level"}


def test_modest_fleet_wide_drift_is_fleet_even_when_few_devices_pass_alone(reference):
    # Every device moved by 0.25 sd (PSI ~0.06, under the floor): only devices whose noise
    # pushes PSI over 0.1 are flagged, far fewer than half, but they look like their peers, so
    # they are "fleet", not 20 separate broken sensors.
    rng = np.random.default_rng(8)
    shifts = {(f"dev{d:03d}", "temp"): 0.25 for d in range(60)}
    result = evaluate_fleet(reference, fleet(reference, rng, devices=60, rows=(200, 600), shifts=shifts),
                            DetectorConfig())
    flagged = [d for d, rs in result.devices.items() for r in rs if r.feature == "temp" and r.drifted]
    assert 5 <= len(flagged) < 30
    fleet_scoped = [d for d in flagged if result.scope[(d, "temp")] == "fleet"]
    assert len(fleet_scoped) >= 0.9 * len(flagged)


def test_min_rows_guard_skips_small_devices(reference):
    rng = np.random.default_rng(9)
    current = fleet(reference, rng, devices=10, shifts={("dev003", "temp"): "stuck"})
    entries = reference_entries(reference)
    current["dev003"] = {name: draw(e, name, 150, rng, stuck=name == "temp") for name, e in entries.items()}
    current["dev003"]["__rows__"] = 150
    result = evaluate_fleet(reference, current, DetectorConfig(min_rows=200))
    assert result.skipped == ("dev003",) and result.devices["dev003"] == []
    assert ("dev003", "temp") not in drifted_keys(result)
    lowered = evaluate_fleet(reference, current, DetectorConfig(min_rows=100))
    assert ("dev003", "temp") in drifted_keys(lowered) and lowered.skipped == ()


def test_effect_size_floor_ignores_significant_but_tiny_shifts(reference):
    # 200k rows: a 0.1 sd shift is overwhelmingly significant, but PSI ~0.01 is not worth an alert
    rng = np.random.default_rng(10)
    current = fleet(reference, rng, devices=3, rows=(200_000, 200_000),
                    shifts={(f"dev{d:03d}", "temp"): 0.1 for d in range(3)})
    strict = evaluate_fleet(reference, current, DetectorConfig())
    temp = [r for r in strict.devices["dev000"] if r.feature == "temp"][0]
    assert temp.p_value < 1e-10 and temp.psi < 0.1 and not temp.drifted
    assert not drifted_keys(strict)
    loose = evaluate_fleet(reference, current, DetectorConfig(min_psi=0.0))
    assert ("dev000", "temp") in drifted_keys(loose)


def test_benjamini_hochberg_spans_the_fleet(reference):
    # One device with a borderline shift: significant as a lone test, not among 280 others
    entry = reference_entries(reference)["level"]
    counts = [22] * 10
    counts[0], counts[-1] = 38, 4
    alone = feature_drift(entry, counts, DetectorConfig(min_rows=200, min_psi=0.0))
    assert 0.0001 < alone.p_value < 0.01 and alone.drifted
    rng = np.random.default_rng(11)
    current = fleet(reference, rng, devices=40)
    current["dev000"]["level"] = counts
    current["dev000"]["__rows__"] = max(current["dev000"]["__rows__"], 220)
    result = evaluate_fleet(reference, current, DetectorConfig(min_psi=0.0))
    assert ("dev000", "level") not in drifted_keys(result)
    only = evaluate_fleet(reference, {"dev000": {"level": counts, "__rows__": 220}}, DetectorConfig(min_psi=0.0))
    assert ("dev000", "level") in drifted_keys(only)


def test_prediction_drift_on_outputs(reference):
    rng = np.random.default_rng(12)
    current = fleet(reference, rng, devices=10)
    current["dev004"]["label"] = {"cat": 200, "dog": 800}
    result = evaluate_fleet(reference, current, DetectorConfig())
    label = [r for r in result.devices["dev004"] if r.feature == "label"][0]
    assert label.drifted and label.source == "output" and label.kind == "labels"


def test_unknown_feature_names_are_refused(reference):
    with pytest.raises(ValueError, match="reference does not have"):
        evaluate_fleet(reference, {"d1": {"nope": [1, 2], "__rows__": 500}}, DetectorConfig())


def test_config_validation():
    with pytest.raises(UsageError):
        DetectorConfig(alpha=0.0)
    with pytest.raises(UsageError):
        DetectorConfig(min_rows=0)
    with pytest.raises(UsageError):
        DetectorConfig(fleet_fraction=1.5)


def test_false_alarms_on_undrifted_fleets_are_rare(reference):
    # The fast variant of benchmarks/drift_false_alarms.py: 80 devices x 7 features (normal,
    # lognormal, exponential, t3, uniform, categorical with a rare value, an output), rows
    # 200..5000, 8 evaluations with fresh data. Checked twice: BH alone (min_psi=0), which
    # must hold by itself (judging by goodness of fit instead of homogeneity flags ~5% here),
    # and the default detector + hysteresis. The same fleet with one shifted device is caught.
    rng = np.random.default_rng(2024)
    config, bh_only = DetectorConfig(), DetectorConfig(min_psi=0.0)
    hysteresis = Hysteresis(config.enter_after, config.exit_after)
    tests = flagged = flagged_bh = raised = 0
    for _ in range(8):
        current = fleet(reference, rng, devices=80, rows=(200, 5000))
        result = evaluate_fleet(reference, current, config)
        tests += result.tests
        flagged += len(drifted_keys(result))
        flagged_bh += len(drifted_keys(evaluate_fleet(reference, current, bh_only)))
        for d, rs in result.devices.items():
            for r in rs:
                raised += hysteresis.update(drift_key(d, r.feature), r.drifted) == "raised"
    assert tests == 8 * (80 * 7 + 7)
    assert flagged_bh / tests <= 0.002
    assert flagged / tests <= 0.002
    assert raised == 0
    shifted = fleet(reference, rng, devices=80, rows=(200, 5000), shifts={("dev010", "gap"): 0.5})
    assert ("dev010", "gap") in drifted_keys(evaluate_fleet(reference, shifted, config))


# --- hysteresis -----------------------------------------------------------------------------------

def test_hysteresis_raises_and_clears_after_streaks():
    h = Hysteresis(enter_after=2, exit_after=3)
    events = [h.update("d1|temp", v) for v in [True, False, True, True, True, False, False, True, False,
                                                False, False]]
    assert events == [None, None, None, "raised", None, None, None, None, None, None, "cleared"]
    assert h.active() == set()
    assert h.update("d1|temp", True) is None and h.update("d1|temp", True) == "raised"
    assert h.active() == {"d1|temp"}


def test_hysteresis_state_survives_a_restart():
    h = Hysteresis(2, 3)
    h.update("a|x", True)
    h.update("b|y", True)
    h.update("b|y", True)  # raised
    h.update("b|y", False)
    state = json.loads(json.dumps(h.to_dict()))
    again = Hysteresis(2, 3, state)
    assert again.active() == {"b|y"}
    assert again.update("a|x", True) == "raised"  # the streak carried over
    assert again.update("b|y", False) is None and again.update("b|y", False) == "cleared"
    assert again.to_dict()["keys"] == {"a|x": {"active": True, "streak": 0}}
    with pytest.raises(ValueError):
        Hysteresis(2, 3, {"keys": {"a|x": {"active": "yes", "streak": 1}}})
    with pytest.raises(ValueError):
        Hysteresis(0, 3)


def test_keys():
    assert split_key(drift_key("pi-01", "x|y")) == ("pi-01", "x|y")


# --- operational signals --------------------------------------------------------------------------

def test_error_rate_drift_needs_significance_and_a_material_increase():
    config = DetectorConfig()
    assert error_rate_drift(40, 1000, 10, 10000, config).drifted  # 4% vs 0.1%
    small = error_rate_drift(5, 1000, 10, 10000, config)  # 0.5% vs 0.1%: significant, below +1 point
    assert small.p_value < 0.01 and not small.drifted and not small.material
    assert not error_rate_drift(12, 100, 10, 10000, config).drifted  # too few requests
    rejected = error_rate_drift(60, 1000, 100, 10000, config, signal="rejection_rate")
    assert rejected.signal == "rejection_rate" and rejected.drifted


def test_latency_drift_from_histograms():
    rng = np.random.default_rng(4)
    edges = np.array(LATENCY_BUCKETS_MS)
    hist = lambda x: np.bincount(np.searchsorted(edges, x, side="left"), minlength=17).tolist()  # noqa: E731
    base = hist(rng.lognormal(np.log(4.0), 0.5, 5000))
    slow = latency_drift(base, hist(rng.lognormal(np.log(12.0), 0.5, 1000)))
    calm = latency_drift(base, hist(rng.lognormal(np.log(4.2), 0.5, 1000)))
    assert slow.drifted and slow.effect > 2
    assert not calm.drifted and calm.effect < 1.5


def test_accuracy_drift_against_the_manifest_sample():
    config = DetectorConfig()
    assert accuracy_drift(150, 200, config, base_correct=370, base_labelled=400).drifted  # 75% vs 92.5%
    assert not accuracy_drift(182, 200, config, base_correct=370, base_labelled=400).drifted
    assert not accuracy_drift(20, 40, config, baseline_accuracy=0.9).drifted  # too few labels


def test_correct_signals_applies_bh_across_devices():
    config = DetectorConfig()
    rng = np.random.default_rng(0)
    results = {}
    for d in range(300):  # undrifted: each device's error count from the same 1% rate
        results[(f"dev{d}", "error_rate")] = error_rate_drift(int(rng.binomial(1000, 0.01)), 1000,
                                                              int(rng.binomial(1000, 0.01)), 1000, config)
    results[("bad", "error_rate")] = error_rate_drift(80, 1000, 10, 1000, config)
    corrected = correct_signals(results, config.alpha)
    assert [k for k, v in corrected.items() if v.drifted] == [("bad", "error_rate")]


def test_feature_drift_dataclass_is_frozen_and_json_ready(reference):
    result = feature_drift(reference_entries(reference)["temp"], [100] * 10)
    with pytest.raises(AttributeError):
        result.drifted = True  # type: ignore[misc]
    assert isinstance(result, FeatureDrift)
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in vars(result).values())
    assert all(math.isfinite(v) for v in (result.statistic, result.psi))
    assert stats.psi([1], [1]) == 0.0


def test_output_named_like_a_feature_and_a_feature_without_reference_values():
    rng = np.random.default_rng(13)
    y = rng.normal(size=1000)
    ref = reference_stats({"y": y, "z": np.full(1000, np.nan)}, {"y": rng.choice(["a", "b"], size=1000)})
    entries = reference_entries(ref)
    assert set(entries) == {"y", "z", "output:y"} and entries["output:y"]["kind"] == "labels"
    current = {"d1": {"y": stats_counts(entries["y"], rng.normal(size=500)), "z": [500], "output:y": {"a": 0, "b": 500},
                      "__rows__": 500}}
    result = evaluate_fleet(ref, current, DetectorConfig())
    features = {r.feature: r for r in result.devices["d1"]}
    assert set(features) == {"y", "output:y"}  # z has no reference values: nothing to test
    assert features["output:y"].drifted and features["output:y"].source == "output"
    assert not features["y"].drifted


def stats_counts(entry, values):
    return np.histogram(values, np.concatenate(([-np.inf], entry["edges"], [np.inf])))[0].tolist()
