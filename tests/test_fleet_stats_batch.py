"""edgeops.fleet.stats_batch and the batched evaluate_fleet against the per-pair scalar path.

stats.py is tested against scipy (test_fleet_stats.py); here every batched statistic is held
equal to the scalar one on each row, and evaluate_fleet to a per-pair evaluation (the code it
replaced, kept below as the reference: feature_drift on every (device, feature) pair) on random
fleets that go through the edge cases: devices and features below min_rows, empty current
counts, an empty reference, categories the reference lacks, sparse bins pooled, pooled image
features, features some devices do not send, no "__rows__", local and fleet-wide drift.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as st

from edgeops.bundle.refstats import reference_stats
from edgeops.fleet import stats, stats_batch
from edgeops.fleet import detectors
from edgeops.fleet.detectors import (FLEET, ROWS, DetectorConfig, FleetDrift, _aligned, _rows, evaluate_fleet,
                                     feature_drift, reference_entries)

REL = 1e-9


# --- the statistics, row by row -----------------------------------------------------------------

def random_histograms(rng, rows=60, bins=None, scale=False):
    """A reference and current rows with zero bins, empty rows, sparse bins; floats if ``scale``."""
    k = bins or int(rng.integers(1, 13))
    ref = rng.integers(0, 400, size=k) * (rng.random(k) > 0.15)
    cur = rng.integers(0, 80, size=(rows, k)) * (rng.random((rows, k)) > 0.3)
    cur[0] = 0  # empty current
    cur[1, :] = 0
    cur[1, -1] = 3  # one sparse bin only
    cur[2] = np.where(ref > 0, ref // 7, 5)  # a bin the reference never saw (if any)
    if scale:
        return ref / 3.3, cur / rng.uniform(1, 50, size=(rows, 1))
    return ref, cur


def assert_close(batch, scalar):
    if scalar is None or (isinstance(scalar, float) and math.isnan(scalar)):
        assert math.isnan(batch)
    else:
        assert batch == pytest.approx(scalar, rel=REL, abs=1e-300)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_expected", [0.0, 5.0])
def test_chi_squared_equals_the_scalar_row_by_row(seed, min_expected):
    rng = np.random.default_rng(seed)
    ref, cur = random_histograms(rng, scale=seed % 2 == 1)
    batch = stats_batch.chi_squared(ref, cur, min_expected)
    pooled = 0
    for i, row in enumerate(cur):
        one = stats.chi_squared(ref, row, min_expected)
        assert_close(batch.statistic[i], one.statistic)
        assert_close(batch.p_value[i], one.p_value)
        assert batch.dof[i] == (-1 if one.dof is None else one.dof)
        assert (batch.n_ref[i], batch.n_cur[i]) == (one.n_ref, one.n_cur)
        pooled += one.dof is not None and one.dof < int(((ref + row) > 0).sum()) - 1
    assert pooled > 0 or min_expected == 0  # the pooling path was taken


def test_chi_squared_with_a_reference_per_row_equals_scipy():
    # The scope check tests each device against the rest of the fleet: one reference per row.
    rng = np.random.default_rng(11)
    ref, cur = rng.integers(20, 400, size=(30, 8)), rng.integers(5, 100, size=(30, 8))
    batch = stats_batch.chi_squared(ref, cur)
    for i in range(30):
        theirs = st.chi2_contingency(np.vstack([ref[i], cur[i]]), correction=False)
        assert batch.statistic[i] == pytest.approx(theirs.statistic, rel=1e-10)
        assert batch.p_value[i] == pytest.approx(theirs.pvalue, rel=1e-8)
        assert batch.dof[i] == theirs.dof


def test_sparse_bins_fold_into_the_smallest_adequate_bin_like_the_scalar():
    # test_fleet_stats' worked example, with ties among the adequate bins (the first one joins).
    ref = np.array([5000, 3000, 1500, 400, 60, 30, 10, 400])
    cur = np.array([[100, 60, 30, 8, 1, 1, 0, 8], [100, 60, 30, 8, 1, 1, 0, 8][::-1]])
    batch = stats_batch.chi_squared(ref, cur, min_expected=5)
    for i in range(2):
        one = stats.chi_squared(ref, cur[i], min_expected=5)
        assert batch.dof[i] == one.dof
        assert batch.statistic[i] == pytest.approx(one.statistic, rel=1e-12)
    assert batch.dof[0] == 4


@pytest.mark.parametrize("seed", range(4))
def test_effect_sizes_equal_the_scalar_row_by_row(seed):
    rng = np.random.default_rng(100 + seed)
    ref, cur = random_histograms(rng, bins=int(rng.integers(2, 13)), scale=seed % 2 == 1)
    edges = np.sort(rng.normal(size=ref.size - 1)) if ref.size > 1 else []
    lo, hi = (float(edges[0]) - 2, float(edges[-1]) + 9) if len(edges) else (-1.0, 1.0)
    batch = {"psi": stats_batch.psi(ref, cur), "ks": stats_batch.ks_statistic(ref, cur),
             "js": stats_batch.jensen_shannon(ref, cur),
             "w": stats_batch.wasserstein_binned(ref, cur, edges, lo, hi) if len(edges) else None}
    for i, row in enumerate(cur):
        assert_close(batch["psi"][i], stats.psi(ref, row))
        assert_close(batch["ks"][i], stats.ks_statistic(ref, row))
        assert_close(batch["js"][i], stats.jensen_shannon(ref, row))
        if batch["w"] is not None:
            assert_close(batch["w"][i], stats.wasserstein_binned(ref, row, edges, lo, hi))
    assert np.isnan(batch["psi"][0]) and np.isfinite(batch["psi"][3])


def test_bad_counts_raise_the_scalar_messages():
    for fn in (stats_batch.psi, stats_batch.chi_squared, stats_batch.ks_statistic, stats_batch.jensen_shannon):
        with pytest.raises(ValueError, match="same bins"):
            fn([1, 2, 3], [[1, 2]])
        with pytest.raises(ValueError, match="non-negative"):
            fn([1, 2, 3], [[1, 2, 3], [1, -2, 3]])
        with pytest.raises(ValueError, match="finite"):
            fn([1, 2, 3], [[1, float("nan"), 3]])
    with pytest.raises(ValueError, match="edges make 3 bins"):
        stats_batch.wasserstein_binned([1, 2, 3, 4], [[1, 2, 3, 4]], [0.0, 1.0])


# --- evaluate_fleet against the per-pair evaluation ---------------------------------------------

def per_pair_evaluate_fleet(reference, current, config):
    """evaluate_fleet as it was before batching: feature_drift on every pair, one at a time."""
    entries = reference_entries(reference)
    tested, skipped, rows_of, aggregate = {}, [], {}, {}
    for device in sorted(current):
        counts = current[device]
        rows_of[device] = _rows(device, counts, entries)
        tested[device] = {}
        for name, entry in entries.items():
            if name not in counts:
                continue
            _aligned(entry, counts[name])
            aggregate[name] = _add(aggregate.get(name), counts[name])
            if rows_of[device] >= config.min_rows:
                drift = feature_drift(entry, counts[name], config, rows_of[device])
                if drift.n >= config.min_rows and drift.p_value is not None:
                    tested[device][name] = replace(drift, feature=name)
        if rows_of[device] < config.min_rows:
            skipped.append(device)
    fleet = {}
    for name, summed in aggregate.items():
        drift = feature_drift(entries[name], summed, config, sum(rows_of.values()))
        if drift.n >= config.min_rows and drift.p_value is not None:
            fleet[name] = replace(drift, feature=name)
    family = [(d, name) for d in sorted(tested) for name in tested[d]] + [(FLEET, name) for name in fleet]
    lookup = lambda key: fleet[key[1]] if key[0] == FLEET else tested[key[0]][key[1]]  # noqa: E731
    kept = stats.benjamini_hochberg([lookup(k).p_value for k in family], config.alpha)
    for key, keep in zip(family, kept):
        result = replace(lookup(key), drifted=bool(keep) and lookup(key).psi >= config.min_psi)
        (fleet if key[0] == FLEET else tested[key[0]])[key[1]] = result
    scope = {}
    for name in entries:
        testing = [d for d in tested if name in tested[d]]
        drifting = [d for d in testing if tested[d][name].drifted]
        for device in drifting:
            many = len(drifting) >= 2 and len(drifting) >= config.fleet_fraction * len(testing)
            wide = many or not _breaks_away(entries[name], _subtract(aggregate[name], current[device][name]),
                                            current[device][name], rows_of[device], config)
            scope[(device, name)] = "fleet" if wide else "device"
        if name in fleet and fleet[name].drifted:
            follows = not drifting or any(scope[(d, name)] == "fleet" for d in drifting)
            scope[(FLEET, name)] = "fleet" if follows else "device"
    return FleetDrift(devices={d: list(r.values()) for d, r in tested.items()}, fleet=list(fleet.values()),
                      scope=scope, skipped=tuple(skipped), tests=len(family))


def _add(total, counts):
    if isinstance(counts, dict):
        out = Counter(total or {})
        out.update(counts)
        return dict(out)
    counts = np.asarray(counts, dtype=np.float64)
    return counts.copy() if total is None else total + counts


def _subtract(total, counts):
    if isinstance(total, dict):
        return {k: v - counts.get(k, 0) for k, v in total.items()}
    return total - np.asarray(counts, dtype=np.float64)


def _breaks_away(entry, rest_counts, device_counts, rows, config):
    rest = dict(entry)
    rest["counts" if entry["kind"] == "numeric" else "categories"] = rest_counts
    rest_total = sum(rest_counts.values()) if isinstance(rest_counts, dict) else float(np.sum(rest_counts))
    if rest_total < config.min_rows:
        return True
    versus = feature_drift(rest, device_counts, config, rows)
    return versus.p_value is not None and versus.p_value <= config.alpha and versus.psi >= config.min_psi / 2


def assert_same_result(batched: FleetDrift, per_pair: FleetDrift):
    assert list(batched.devices) == list(per_pair.devices)
    pairs = [(a, b) for d in per_pair.devices for a, b in zip(batched.devices[d], per_pair.devices[d])]
    assert all(len(batched.devices[d]) == len(per_pair.devices[d]) for d in per_pair.devices)
    assert len(batched.fleet) == len(per_pair.fleet)
    for a, b in pairs + list(zip(batched.fleet, per_pair.fleet)):
        for field, want in vars(b).items():
            got = getattr(a, field)
            assert type(got) is type(want), (b.feature, field, got, want)
            if isinstance(want, float):
                assert got == pytest.approx(want, rel=REL, abs=1e-300), (b.feature, field)
            else:
                assert got == want, (b.feature, field)
    assert batched.scope == per_pair.scope and list(batched.scope) == list(per_pair.scope)
    assert (batched.skipped, batched.tests) == (per_pair.skipped, per_pair.tests)


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(42)
    n = 4000
    x = np.column_stack([rng.normal(20, 3, n), rng.lognormal(0, 0.8, n), rng.standard_t(3, n),
                         rng.integers(0, 3, n).astype(float)])  # few distinct values: fewer bins
    colour = rng.choice(["red", "green", "blue", "violet", "rare"], size=n, p=[0.5, 0.3, 0.15, 0.0495, 0.0005])
    return reference_stats(
        {"x": x, "colour": colour, "img": rng.normal(size=(n // 16, 4, 4)), "y": rng.normal(size=n),
         "z": np.full(n, np.nan)},  # z: no reference values at all
        {"y": rng.choice(["a", "b", "c"], size=n, p=[0.6, 0.3, 0.1]), "score": rng.uniform(size=n)},
        feature_names={"x": ["temp", "power", "vib", "level"]})


def draw(entry, rows, rng, tilt=0.0):
    """Counts from the reference's own proportions, tilted towards the upper bins by ``tilt``."""
    if entry["kind"] == "numeric":
        p = np.asarray(entry["counts"], dtype=float) + 1e-9
        p *= np.linspace(1 - tilt, 1 + tilt, p.size)
        return rng.multinomial(rows, p / p.sum()).tolist()
    keys = list(entry["categories"])
    p = np.array([entry["categories"][k] for k in keys], dtype=float)
    p *= np.linspace(1 - tilt, 1 + tilt, p.size)
    return dict(zip(keys, rng.multinomial(rows, p / p.sum()).tolist()))


def random_fleet(reference, rng, devices=50):
    entries = reference_entries(reference)
    wide = {"level": 0.6, "temp": 0.2}  # every device: a clear and a modest fleet-wide drift
    local = {(3, "vib"): 0.9, (7, "power"): 0.9, (9, "output:y"): 0.9, (11, "colour"): 0.9}
    current = {}
    for d in range(devices):
        broken = any(key[0] == d for key in local)
        rows = 1500 if broken else int(rng.integers(40, 2500))
        counts = {}
        for name, entry in entries.items():
            if (d + len(name)) % 13 == 0 and not broken:
                continue  # this device does not send the feature
            n = rows * 16 if name == "img" else rows
            if name == "power" and d % 5 == 0:
                n = rows // 4  # mostly missing: too few values to test
            tilt = local.get((d, name), wide.get(name, 0.0) if d % 2 else 0.0)
            counts[name] = draw(entry, n, rng, tilt)
        if d % 17 == 4:
            counts["temp"] = [0] * len(counts.get("temp", entries["temp"]["counts"]))  # empty current counts
        if d % 6 == 1:
            counts["colour"] = {**counts.get("colour", {}), "__unseen__": int(rng.integers(0, 40))}
        if d % 8 == 2:
            counts["output:y"] = {**counts.get("output:y", {}), "d": int(rng.integers(1, 30))}  # not in the reference
        if d % 10 != 5:
            counts[ROWS] = rows
        current[f"dev{(d * 7919) % 1000:03d}"] = counts  # devices arrive in no particular order
    return current


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("config", [
    DetectorConfig(),
    DetectorConfig(min_psi=0.0, min_rows=100),
    DetectorConfig(min_expected=0.0, fleet_fraction=1.0),
    DetectorConfig(alpha=0.2, min_psi=0.02, fleet_fraction=0.1, min_rows=50),
], ids=["default", "no-psi-floor", "no-pooling", "loose"])
def test_evaluate_fleet_equals_the_per_pair_evaluation(reference, seed, config):
    rng = np.random.default_rng(seed)
    current = random_fleet(reference, rng)
    per_pair = per_pair_evaluate_fleet(reference, current, config)
    assert_same_result(evaluate_fleet(reference, current, config), per_pair)
    if config == DetectorConfig():  # the fleets do reach the edge cases they are meant to
        assert per_pair.skipped and set(per_pair.scope.values()) == {"device", "fleet"}
        assert any(r.feature == "output:y" and r.drifted for rs in per_pair.devices.values() for r in rs)
        assert not any(r.feature == "z" for rs in per_pair.devices.values() for r in rs)


def test_small_fleets_and_the_aggregate_order(reference):
    # Two devices (the local case of test_fleet_detectors), one device, none; and a fleet whose
    # first device lacks a feature, so the aggregates appear out of the reference's order.
    rng = np.random.default_rng(7)
    entries = reference_entries(reference)
    two = {f"d{i}": {**{n: draw(e, 2000, rng, 0.8 if (i, n) == (1, "temp") else 0.0) for n, e in entries.items()},
                     ROWS: 2000} for i in range(2)}
    del two["d0"]["vib"]
    for current in (two, {"d1": two["d1"]}, {}):
        for config in (DetectorConfig(), DetectorConfig(min_psi=0.0)):
            per_pair = per_pair_evaluate_fleet(reference, current, config)
            assert_same_result(evaluate_fleet(reference, current, config), per_pair)
    result = evaluate_fleet(reference, two, DetectorConfig())
    assert result.scope[("d1", "temp")] == "device"
    assert [r.feature for r in result.fleet][-1] == "vib"


@pytest.mark.parametrize("name", ["vib", "colour"])
def test_a_device_against_the_rest_of_the_fleet(reference, name):
    # The scope check on its own: few peers (rest below min_rows: local by rule), just enough,
    # peers like the device, peers unlike it; one device's rows are a pooled-feature's.
    entry = reference_entries(reference)[name]
    rng = np.random.default_rng(21)
    config = DetectorConfig()
    cases = [(draw(entry, n, rng, tilt), draw(entry, m, rng, 0.7), rows)
             for n, tilt, m, rows in [(150, 0.7, 900, 900), (199, 0.0, 900, 900), (200, 0.7, 900, 900),
                                      (201, 0.0, 900, 900), (5000, 0.7, 900, 900), (5000, 0.0, 900, 900),
                                      (5000, 0.7, 900, 300), (3000, 0.0, 400, 400)]]
    want = [_breaks_away(entry, rest, device, rows, config) for rest, device, rows in cases]
    keys = list(entry["categories"]) if entry["kind"] != "numeric" else None
    rows_of = lambda c: [list(x.values()) if keys else x for x in c]  # noqa: E731
    got = detectors._breaks_away(entry, np.array(rows_of([c[0] for c in cases]), dtype=float),
                                 np.array(rows_of([c[1] for c in cases]), dtype=float),
                                 np.array([c[2] for c in cases]), config)
    assert got.tolist() == want
    assert want[:2] == [True, True] and False in want[2:] and True in want[2:]


@pytest.mark.parametrize("change, message", [
    (lambda c: c["dev1"].update(nope=[1, 2]), "reference does not have"),
    (lambda c: c["dev1"].update(temp=[1, 2, 3]), "edges make 10 bins"),
    (lambda c: c["dev1"].update(temp={"a": 1}), "numeric"),
    (lambda c: c["dev1"].update(colour=[1, 2, 3]), "dict"),
    (lambda c: c["dev2"]["temp"].__setitem__(0, -5), "non-negative"),
    (lambda c: c["dev2"]["colour"].update(red=float("nan")), "finite"),
    # Two faults: the one the per-pair order meets first (dev1's negative count) is reported.
    (lambda c: (c["dev1"]["temp"].__setitem__(0, -5), c["dev2"].update(nope=[1])), "non-negative"),
])
def test_malformed_counts_raise_what_the_per_pair_evaluation_raises(reference, change, message):
    rng = np.random.default_rng(3)
    entries = reference_entries(reference)
    current = {f"dev{i}": {**{n: draw(e, 500, rng) for n, e in entries.items()}, ROWS: 500} for i in range(4)}
    change(current)
    with pytest.raises(ValueError, match=message) as batched:
        evaluate_fleet(reference, current, DetectorConfig())
    with pytest.raises(ValueError) as per_pair:
        per_pair_evaluate_fleet(reference, current, DetectorConfig())
    assert str(batched.value) == str(per_pair.value)
