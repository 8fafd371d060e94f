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
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from edgeops.errors import UsageError
from edgeops.fleet import stats
# The operational signals live in signals.py; exposed here so the monitor needs one module.
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


def _add(total, counts):
    if isinstance(counts, dict):
        out = Counter(total or {})
        out.update({k: v for k, v in counts.items()})
        return dict(out)
    counts = np.asarray(counts, dtype=np.float64)
    return counts.copy() if total is None else total + counts


def _subtract(total, counts):
    if isinstance(total, dict):
        return {k: v - counts.get(k, 0) for k, v in total.items()}
    return total - np.asarray(counts, dtype=np.float64)


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
    """
    config = config or DetectorConfig()
    entries = reference_entries(reference)
    tested: dict[str, dict[str, FeatureDrift]] = {}
    skipped, rows_of, aggregate = [], {}, {}
    for device in sorted(current):
        counts = current[device]
        rows_of[device] = _rows(device, counts, entries)
        tested[device] = {}
        for name, entry in entries.items():
            if name not in counts:
                continue
            _aligned(entry, counts[name])  # raises on malformed counts before anything is summed
            aggregate[name] = _add(aggregate.get(name), counts[name])
            if rows_of[device] >= config.min_rows:
                drift = feature_drift(entry, counts[name], config, rows_of[device])
                if drift.n >= config.min_rows and drift.p_value is not None:
                    tested[device][name] = replace(drift, feature=name)
        if rows_of[device] < config.min_rows:
            skipped.append(device)
    total_rows = sum(rows_of.values())
    fleet = {}
    for name, summed in aggregate.items():
        drift = feature_drift(entries[name], summed, config, total_rows)
        if drift.n >= config.min_rows and drift.p_value is not None:  # None: an empty reference
            fleet[name] = replace(drift, feature=name)

    # Benjamini-Hochberg over every test of this evaluation, then the effect-size floor.
    family = [(d, name) for d in sorted(tested) for name in tested[d]] + [(FLEET, name) for name in fleet]
    lookup = lambda key: fleet[key[1]] if key[0] == FLEET else tested[key[0]][key[1]]  # noqa: E731
    p = [math.nan if lookup(k).p_value is None else lookup(k).p_value for k in family]
    kept = stats.benjamini_hochberg(p, config.alpha) if family else np.zeros(0, dtype=bool)
    for key, keep in zip(family, kept):
        result = lookup(key)
        result = replace(result, drifted=bool(keep) and result.psi >= config.min_psi)
        if key[0] == FLEET:
            fleet[key[1]] = result
        else:
            tested[key[0]][key[1]] = result

    scope: dict[tuple[str, str], str] = {}
    for name in entries:
        testing = [d for d in tested if name in tested[d]]
        drifting = [d for d in testing if tested[d][name].drifted]
        for device in drifting:
            # One device is never "most of the fleet": in a fleet of two, the one that drifts
            # alone is local (the test case: only that device is flagged).
            many = len(drifting) >= 2 and len(drifting) >= config.fleet_fraction * len(testing)
            wide = many or not _breaks_away(
                entries[name], _subtract(aggregate[name], current[device][name]), current[device][name],
                rows_of[device], config)
            scope[(device, name)] = "fleet" if wide else "device"
        if name in fleet and fleet[name].drifted:
            follows = not drifting or any(scope[(d, name)] == "fleet" for d in drifting)
            scope[(FLEET, name)] = "fleet" if follows else "device"
    return FleetDrift(devices={d: list(r.values()) for d, r in tested.items()}, fleet=list(fleet.values()),
                      scope=scope, skipped=tuple(skipped), tests=len(family))


def _breaks_away(entry: dict, rest_counts, device_counts, rows: int, config: DetectorConfig) -> bool:
    """Does this device differ from the rest of the fleet (all other devices summed), too?

    A device that drifted from the reference but looks like its peers follows a fleet-wide
    change (each device alone may be too small to pass BH). One that differs from its peers as
    well is local. This is a classification, not a discovery, so it is a single test at alpha,
    with half the PSI floor as margin (the rest of the fleet is noisier than the reference).
    """
    rest = dict(entry)
    rest["counts" if entry["kind"] == "numeric" else "categories"] = rest_counts
    rest_total = sum(rest_counts.values()) if isinstance(rest_counts, dict) else float(np.sum(rest_counts))
    if rest_total < config.min_rows:
        return True  # no peers to compare with
    versus = feature_drift(rest, device_counts, config, rows)
    return versus.p_value is not None and versus.p_value <= config.alpha and versus.psi >= config.min_psi / 2


def drift_key(device_id: str, feature: str) -> str:
    """Hysteresis key of a (device, feature) pair; device ids never hold "|" (docs/telemetry.md)."""
    return f"{device_id}|{feature}"


def split_key(key: str) -> tuple[str, str]:
    device_id, _, feature = key.partition("|")
    return device_id, feature


class Hysteresis:
    """Per key: raise after ``enter_after`` consecutive drifted evaluations, clear after
    ``exit_after`` consecutive clean ones. A key not updated in an evaluation (device offline,
    too few rows) keeps its state. ``to_dict()`` is JSON-ready, for Store.set_state.
    """

    def __init__(self, enter_after: int, exit_after: int, state: dict | None = None):
        for label, value in (("enter_after", enter_after), ("exit_after", exit_after)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a whole number >= 1, got {value!r}")
        self.enter_after, self.exit_after = enter_after, exit_after
        self._keys: dict[str, dict] = {}
        for key, item in ((state or {}).get("keys") or {}).items():
            if not (isinstance(item, dict) and isinstance(item.get("active"), bool)
                    and isinstance(item.get("streak"), int) and item["streak"] >= 0):
                raise ValueError(f"hysteresis state for {key!r} is malformed: {item!r}")
            self._keys[str(key)] = {"active": item["active"], "streak": item["streak"]}

    def update(self, key: str, drifted: bool) -> str | None:
        """Feed one evaluation's verdict; returns "raised", "cleared" or None."""
        item = self._keys.setdefault(key, {"active": False, "streak": 0})
        event = None
        if item["active"] != bool(drifted):  # a verdict against the current state builds a streak
            item["streak"] += 1
            needed = self.exit_after if item["active"] else self.enter_after
            if item["streak"] >= needed:
                item["active"], item["streak"] = not item["active"], 0
                event = "raised" if item["active"] else "cleared"
        else:
            item["streak"] = 0
        if not item["active"] and item["streak"] == 0:
            del self._keys[key]  # the default state: keep the persisted state small
        return event

    def active(self) -> set[str]:
        return {k for k, item in self._keys.items() if item["active"]}

    def to_dict(self) -> dict:
        return {"version": 1, "enter_after": self.enter_after, "exit_after": self.exit_after,
                "keys": {k: dict(item) for k, item in sorted(self._keys.items())}}
