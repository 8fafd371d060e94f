"""Drift decisions for a fleet: which test per feature, multiple testing, scope, hysteresis.

A fleet is many devices x many features, evaluated again and again, so false alarms matter as
much as misses. One evaluation:
1. every (device, feature) with at least ``min_rows`` rows is tested against the bundle's
   reference, and so is the fleet aggregate (all devices summed) per feature;
2. Benjamini-Hochberg at ``alpha`` across all of those tests together;
3. a test counts as drift only if BH keeps it AND its PSI reaches ``min_psi``: with thousands of
   rows a test finds differences nobody needs to act on;
4. each drift is scoped "fleet" (at least two devices and >= ``fleet_fraction`` of the tested
   devices drift on that feature, or the device does not differ from the rest of the fleet) or "device" (it differs
   from the reference AND from its peers: a broken sensor, a different site);
5. Hysteresis turns the per-evaluation verdicts into alerts (raise after ``enter_after``
   consecutive drifted evaluations, clear after ``exit_after`` clean ones).
docs/drift.md gives the reasoning and the measured false-alarm rates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeops.errors import UsageError
from edgeops.fleet import stats, stats_batch
# Alert hysteresis (hysteresis.py) and the operational signals (signals.py) live in their own
# modules; exposed here so the monitor needs one module.
from edgeops.fleet.hysteresis import Hysteresis, drift_key, split_key
from edgeops.fleet.signals import (LATENCY_BUCKETS_MS, SignalDrift, accuracy_drift, correct_signals,
                                   error_rate_drift, latency_drift, manifest_accuracy, mean_abs_error_drift)

__all__ = [
    "FLEET", "ROWS", "DetectorConfig", "FeatureDrift", "FleetDrift", "Hysteresis", "drift_key", "split_key",
    "evaluate_fleet", "feature_drift", "reference_entries",
    "LATENCY_BUCKETS_MS", "SignalDrift", "accuracy_drift", "correct_signals", "error_rate_drift",
    "latency_drift", "manifest_accuracy", "mean_abs_error_drift",
]

FLEET = "__fleet__"  # device id of the fleet aggregate
ROWS = "__rows__"  # per-device row count in evaluate_fleet's ``current``
# A feature with more values than rows is an image/sequence pooled over its elements; those
# elements are not independent, so the tests count each row once (conservative).
POOLED_FACTOR = 1.5


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds; docs/drift.md explains each default."""

    alpha: float = 0.01  # BH false discovery rate per evaluation
    min_psi: float = 0.1  # effect-size floor: smaller shifts are not worth an alert
    min_rows: int = 200  # below this a device/feature is not tested at all
    fleet_fraction: float = 0.5  # this share of tested devices drifting on a feature = fleet-wide
    enter_after: int = 2
    exit_after: int = 3
    min_expected: float = 5.0  # chi-squared: pool sparse bins until expected counts reach this
    min_requests: int = 200  # error-rate and latency tests need this many requests on both sides
    min_error_rate_increase: float = 0.01  # +1 percentage point of failed requests
    min_latency_ratio: float = 1.5  # p95 now / p95 baseline
    min_labelled: int = 50  # feedback labels needed for an accuracy test
    min_accuracy_drop: float = 0.05  # 5 percentage points
    min_error_ratio: float = 1.25  # mean absolute error now / baseline (numeric models)

    def __post_init__(self):
        if not 0 < self.alpha < 1:
            raise UsageError(f"alpha must be between 0 and 1, got {self.alpha}", "the default is 0.01")
        if not 0 < self.fleet_fraction <= 1:
            raise UsageError(f"fleet_fraction must be in (0, 1], got {self.fleet_fraction}", "the default is 0.5")
        for name in ("min_rows", "enter_after", "exit_after", "min_requests", "min_labelled"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {value!r}", "see docs/drift.md")
        for name in ("min_psi", "min_expected", "min_error_rate_increase", "min_accuracy_drop"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)!r}", "see docs/drift.md")


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | labels (the reference entry's kind)
    test: str  # the test behind p_value: chi_squared (homogeneity) for every kind
    statistic: float
    p_value: float | None
    psi: float
    n: int  # values in the current counts
    drifted: bool  # evaluate_fleet: after BH and the PSI floor; feature_drift alone: single test
    source: str = "feature"  # feature | output (prediction drift)
    jensen_shannon: float | None = None  # bits, in [0, 1]
    ks: float | None = None  # binned KS statistic (numeric)
    wasserstein_sd: float | None = None  # binned W1 in reference standard deviations (numeric)


def reference_entries(reference: dict) -> dict[str, dict]:
    """The refstats entries by the name ``current`` uses: features, then outputs.

    An output whose name is also a feature's is addressed as "output:NAME".
    """
    entries = {e["name"]: e for e in reference.get("features", [])}
    for entry in reference.get("outputs", []):
        name = entry["name"]
        entries[f"output:{name}" if name in entries else name] = entry
    return entries


def _aligned(entry: dict, cur_counts) -> tuple[np.ndarray, np.ndarray]:
    name, kind = entry.get("name"), entry.get("kind")
    if kind == "numeric":
        if isinstance(cur_counts, dict):
            raise ValueError(f"feature {name!r} is numeric: give a list of bin counts, not a dict")
        ref, cur = np.asarray(entry["counts"], dtype=np.float64), np.asarray(cur_counts, dtype=np.float64)
        if cur.shape != ref.shape:
            raise ValueError(f"feature {name!r}: {cur.size} counts, but the reference's "
                             f"{len(entry['edges'])} edges make {ref.size} bins")
        return ref, cur
    if kind in ("categorical", "labels"):
        if not isinstance(cur_counts, dict):
            raise ValueError(f"feature {name!r} is {kind}: give a dict of counts per category")
        categories = entry.get("categories", {})
        keys = list(categories) + sorted(k for k in cur_counts if k not in categories)
        return (np.array([categories.get(k, 0) for k in keys], dtype=np.float64),
                np.array([cur_counts.get(k, 0) for k in keys], dtype=np.float64))
    raise ValueError(f"feature {name!r} has unknown kind {kind!r}")


def _or_none(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def feature_drift(ref_entry: dict, cur_counts, config: DetectorConfig | None = None,
                  rows: int | None = None) -> FeatureDrift:
    """Test one feature (or output) against its reference entry.

    The p-value is the chi-squared homogeneity test for every kind: it is calibrated with a
    finite reference and sees changes of shape (spread, a stuck value) that KS on ten bins
    misses (docs/drift.md). PSI, Jensen-Shannon, binned KS and Wasserstein are effect sizes.
    ``rows``: how many rows the counts came from; a pooled image feature is counted per row.
    ``drifted`` here is the single-test verdict; evaluate_fleet replaces it after BH.
    """
    config = config or DetectorConfig()
    ref, cur = _aligned(ref_entry, cur_counts)
    total = float(cur.sum())
    scale = total / rows if rows and total > POOLED_FACTOR * rows else 1.0
    test = stats.chi_squared(ref / scale, cur / scale, min_expected=config.min_expected)
    psi = stats.psi(ref, cur)
    ks = wasserstein_sd = None
    if ref_entry["kind"] == "numeric" and total > 0 and ref.sum() > 0:
        ks = stats.ks_statistic(ref, cur)
        std, lo, hi = ref_entry.get("std"), ref_entry.get("min"), ref_entry.get("max")
        if std and lo is not None and hi is not None and len(ref_entry["edges"]) > 0:
            wasserstein_sd = stats.wasserstein_binned(ref, cur, ref_entry["edges"], lo, hi) / std
    drifted = test.p_value is not None and test.p_value <= config.alpha and psi >= config.min_psi
    return FeatureDrift(
        feature=ref_entry["name"], kind=ref_entry["kind"], test=test.test, statistic=test.statistic,
        p_value=test.p_value, psi=psi, n=int(round(total)), drifted=bool(drifted),
        source="output" if "output" in ref_entry else "feature",
        jensen_shannon=_or_none(stats.jensen_shannon(ref, cur)), ks=_or_none(ks),
        wasserstein_sd=_or_none(wasserstein_sd))


@dataclass(frozen=True)
class FleetDrift:
    devices: dict[str, list[FeatureDrift]]  # every tested feature per device ([] when skipped)
    fleet: list[FeatureDrift]  # the fleet aggregate per feature
    scope: dict[tuple[str, str], str]  # (device or FLEET, feature) -> device | fleet, drifted keys only
    skipped: tuple[str, ...] = ()  # devices below min_rows
    tests: int = 0  # size of the BH family


def _rows(device: str, counts: dict, entries: dict) -> int:
    for name in counts:
        if name != ROWS and name not in entries:
            raise ValueError(f"device {device!r} sent counts for {name!r}, which the reference does not have")
    if ROWS in counts:
        return int(counts[ROWS])
    # No row count given: the largest feature total (exact for scalar features without missing values).
    totals = [sum(v.values()) if isinstance(v, dict) else sum(v) for k, v in counts.items()]
    return int(max(totals, default=0))


def evaluate_fleet(reference: dict, current: dict[str, dict[str, object]],
                   config: DetectorConfig | None = None) -> FleetDrift:
    """One evaluation of a fleet running one bundle; see the module docstring for the steps.

    ``current``: {device_id: {feature name: counts, "__rows__": rows}} summed over the horizon.
    Names are those of reference_entries (FeatureDrift.feature carries the same name).
    Each feature is tested for all devices at once (stats_batch); the results are those of
    feature_drift on every (device, feature) pair, which tests/test_fleet_stats_batch.py checks.
    """
    config = config or DetectorConfig()
    entries = reference_entries(reference)
    try:
        return _evaluate(entries, current, config)
    except (ValueError, TypeError):
        _check_in_order(entries, current, config)
        raise


def _check_in_order(entries: dict, current: dict, config: DetectorConfig) -> None:
    """Malformed counts: raise the error that testing pair by pair, device by device, meets first."""
    for device in sorted(current):
        counts = current[device]
        rows = _rows(device, counts, entries)
        for name, entry in entries.items():
            if name in counts:
                ref, cur = _aligned(entry, counts[name])
                if rows >= config.min_rows:
                    stats.psi(ref, cur)  # non-finite or negative counts


def _stack(entry: dict, counts: list) -> tuple[np.ndarray, np.ndarray]:
    """_aligned for many devices: the reference and one row of current counts per device.

    Categorical columns are the reference's categories, then every category some device sent
    that the reference lacks; a device without one has 0 on both sides there, which changes no
    statistic (the chi-squared drops the bin, PSI and Jensen-Shannon add 0).
    """
    name, kind = entry.get("name"), entry.get("kind")
    if kind == "numeric":
        ref, cur = np.asarray(entry["counts"], dtype=np.float64), np.array(counts, dtype=np.float64)
        if cur.shape != (len(counts), ref.size) or ref.ndim != 1:
            raise ValueError(f"feature {name!r}: the counts do not match the reference's {ref.size} bins")
        return ref, cur
    if kind in ("categorical", "labels"):
        if not all(isinstance(c, dict) for c in counts):
            raise ValueError(f"feature {name!r} is {kind}: give a dict of counts per category")
        categories = entry.get("categories", {})
        keys = list(categories) + sorted({k for c in counts for k in c if k not in categories})
        return (np.array([categories.get(k, 0) for k in keys], dtype=np.float64),
                np.array([[c.get(k, 0) for k in keys] for c in counts], dtype=np.float64).reshape(len(counts), -1))
    raise ValueError(f"feature {name!r} has unknown kind {kind!r}")


FIELDS = ("statistic", "p_value", "psi", "n", "jensen_shannon", "ks", "wasserstein_sd")


def _drift_batch(entry: dict, ref: np.ndarray, cur: np.ndarray, rows: np.ndarray, config: DetectorConfig) -> dict:
    """feature_drift on each row of ``cur`` against one reference: {FIELDS: array}, NaN for None."""
    total = cur.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # feature_drift's per-row weighting of pooled features
        scale = np.where((rows != 0) & (total > POOLED_FACTOR * rows), total / rows, 1.0)[:, None]
    test = stats_batch.chi_squared(ref / scale, cur / scale, min_expected=config.min_expected)
    out = {"statistic": test.statistic, "p_value": test.p_value, "psi": stats_batch.psi(ref, cur),
           "n": np.rint(total).astype(np.int64), "jensen_shannon": stats_batch.jensen_shannon(ref, cur),
           "ks": np.full(len(cur), np.nan), "wasserstein_sd": np.full(len(cur), np.nan)}
    if entry["kind"] == "numeric" and ref.sum() > 0 and (total > 0).any():
        out["ks"] = stats_batch.ks_statistic(ref, cur)
        std, lo, hi = entry.get("std"), entry.get("min"), entry.get("max")
        if std and lo is not None and hi is not None and len(entry["edges"]) > 0:
            out["wasserstein_sd"] = stats_batch.wasserstein_binned(ref, cur, entry["edges"], lo, hi) / std
    return out


def _evaluate(entries: dict, current: dict, config: DetectorConfig) -> FleetDrift:
    devices = sorted(current)
    rows = np.array([_rows(d, current[d], entries) for d in devices], dtype=np.int64)
    tests, fleet_tests, features = _test_features(entries, current, devices, rows, config)
    # Benjamini-Hochberg over every test, in the per-pair order (device by device, then the
    # fleet aggregates in the order they appeared), then the effect-size floor.
    order = np.lexsort((tests["position"], tests["device"]))
    family = {k: np.concatenate([tests[k][order], [t[2][k] for t in fleet_tests]]) for k in FIELDS}
    drifted = stats.benjamini_hochberg(family["p_value"], config.alpha) & (family["psi"] >= config.min_psi)
    positions = tests["position"][order].tolist() + [t[1] for t in fleet_tests]
    results = _feature_drifts(entries, positions, family, drifted)
    by_device: dict[str, list[FeatureDrift]] = {d: [] for d in devices}
    for i, result in zip(tests["device"][order].tolist(), results):
        by_device[devices[i]].append(result)
    fleet = {r.feature: r for r in results[order.size:]}

    scope: dict[tuple[str, str], str] = {}
    unsorted = np.empty(order.size, dtype=bool)  # the verdicts in the order the features were tested
    unsorted[order] = drifted[:order.size]
    for name, (have, cur, aggregate, start, stop) in features.items():
        drifting = tests["device"][start:stop][unsorted[start:stop]]
        # One device is never "most of the fleet": in a fleet of two, the one that drifts
        # alone is local (the test case: only that device is flagged).
        many = drifting.size >= 2 and drifting.size >= config.fleet_fraction * (stop - start)
        local = np.zeros(drifting.size, dtype=bool)
        if drifting.size and not many:
            own = cur[np.searchsorted(have, drifting)]
            local = _breaks_away(entries[name], aggregate - own, own, rows[drifting], config)
        for i, breaks in zip(drifting.tolist(), local.tolist()):
            scope[(devices[i], name)] = "device" if breaks else "fleet"
        if name in fleet and fleet[name].drifted:
            follows = not drifting.size or not local.all()
            scope[(FLEET, name)] = "fleet" if follows else "device"
    return FleetDrift(devices=by_device, fleet=list(fleet.values()), scope=scope,
                      skipped=tuple(d for d, n in zip(devices, rows) if n < config.min_rows), tests=len(positions))


def _test_features(entries: dict, current: dict, devices: list, rows: np.ndarray, config: DetectorConfig):
    """Test each feature on every device with enough rows, and on the fleet aggregate.

    Returns the device tests ({"device": index, "position": of the feature, FIELDS...: arrays},
    feature by feature), the fleet tests [(first device, position, {FIELDS: value})] and per
    feature (devices sending it, their counts, the aggregate, where its tests lie in the arrays).
    """
    big = rows >= config.min_rows
    parts: dict[str, list] = {k: [np.zeros(0, dtype=np.int64)] for k in ("device", "position", *FIELDS)}
    fleet_tests, features, done = [], {}, 0
    for position, (name, entry) in enumerate(entries.items()):
        have = np.array([i for i, d in enumerate(devices) if name in current[d]], dtype=np.int64)
        if not have.size:
            continue
        ref, cur = _stack(entry, [current[devices[i]][name] for i in have])
        aggregate, chosen = cur.sum(axis=0), big[have]
        result = _drift_batch(entry, ref, np.vstack([cur[chosen], aggregate]),
                              np.append(rows[have][chosen], rows.sum()), config)
        keep = (result["n"] >= config.min_rows) & ~np.isnan(result["p_value"])  # NaN: an empty reference
        if keep[-1]:
            fleet_tests.append((int(have[0]), position, {k: v[-1] for k, v in result.items()}))
        tested = np.flatnonzero(keep[:-1])
        parts["device"].append(have[chosen][tested])
        parts["position"].append(np.full(tested.size, position))
        for k in FIELDS:
            parts[k].append(result[k][tested])
        features[name] = (have, cur, aggregate, done, done + tested.size)
        done += tested.size
    fleet_tests.sort(key=lambda test: test[:2])
    return {k: np.concatenate(v) for k, v in parts.items()}, fleet_tests, features


def _feature_drifts(entries: dict, positions: list, family: dict, drifted) -> list[FeatureDrift]:
    names = list(entries)
    kinds = [entries[n]["kind"] for n in names]
    sources = ["output" if "output" in entries[n] else "feature" for n in names]
    columns = [family[k].tolist() for k in FIELDS[:4]] + [_nan_to_none(family[k]) for k in FIELDS[4:]]
    # Positional: tens of thousands of these per evaluation (field order of FeatureDrift).
    return [FeatureDrift(names[f], kinds[f], "chi_squared", s, p, psi, n, d, sources[f], js, ks, w)
            for f, d, s, p, psi, n, js, ks, w in zip(positions, drifted.tolist(), *columns)]


def _nan_to_none(values: np.ndarray) -> list:
    out = values.astype(object)
    out[~np.isfinite(values)] = None
    return out.tolist()


def _breaks_away(entry: dict, rest: np.ndarray, device: np.ndarray, rows: np.ndarray,
                 config: DetectorConfig) -> np.ndarray:
    """Does each device (a row) differ from the rest of the fleet (all other devices summed), too?

    A device that drifted from the reference but looks like its peers follows a fleet-wide
    change (each device alone may be too small to pass BH). One that differs from its peers as
    well is local. This is a classification, not a discovery, so it is a single test at alpha,
    with half the PSI floor as margin (the rest of the fleet is noisier than the reference).
    """
    out = np.ones(len(device), dtype=bool)  # no peers to compare with: local
    peers = rest.sum(axis=1) >= config.min_rows
    if peers.any():
        versus = _drift_batch(entry, rest[peers], device[peers], rows[peers], config)
        out[peers] = (versus["p_value"] <= config.alpha) & (versus["psi"] >= config.min_psi / 2)
    return out
