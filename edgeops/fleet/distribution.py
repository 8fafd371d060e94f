"""Input and prediction drift of one bundle's devices: the part of an evaluation that runs in the
monitor's evaluation process (evaluation.py).

It gets the devices' summed counts as one array (a row per device, in the bundle's Layout),
rebuilds per-feature counts, runs detectors.evaluate_fleet, stores the drift rows itself and
returns only the alert conditions: for a 1,000-device fleet that saves sending ~65,000 rows back
to the monitor's process on every evaluation.

Drift rows are stored sparsely (``history_interval``): a (device, feature) row is stored when it
drifts, when its drifted flag changed since the row last stored for that pair, when that row is
``history_interval`` seconds old or more, or when none was stored yet by this process. Most rows
of a fleet repeat "not drifted" with similar numbers; storing those once every
``history_interval`` instead of every evaluation cuts the rows ~10x at the default 600 s.
"""
from __future__ import annotations

import math

import numpy as np

from .alerts import FLEET
from .detectors import ROWS as ROWS_KEY
from .detectors import DetectorConfig, FeatureDrift, evaluate_fleet
from .horizon import Layout
from .store import open_store

OUTPUT_PREFIX = "output:"  # drift rows of model outputs (prediction drift) are named output:NAME

_PROCESS_STATE: dict = {}  # the evaluation process's Layouts (per bundle), Store and stored pairs (per database)
# Pairs remembered at most: ~190 bytes each (~90 MB). Past it, pairs stored history_interval ago or more are
# forgotten (they are stored at their next evaluation anyway), then all if still too many (each is
# then stored once more: the safe direction).
MAX_REMEMBERED = 500_000


def distribution_drift(refstats: dict, bundle_id: str, bundle: dict, device_ids: list, counts: np.ndarray,
                       rows: np.ndarray, config: DetectorConfig, now: float,
                       db_url: str | None = None, history_interval: float = 0.0,
                       stored: dict | None = None) -> tuple[list[dict], dict]:
    """Input drift and prediction drift (outputs) of one bundle's devices, in one BH family.

    ``counts``: a row per device in the bundle's Layout; ``rows``: their request rows. Returns
    (drift rows, alert conditions). With ``db_url`` the drift rows are stored here and not
    returned: in the evaluation process that saves sending ~65,000 rows back per evaluation of a
    1,000-device fleet.

    Only the rows due by the rule in the module docstring are built (``history_interval`` 0: all
    of them). ``stored`` maps (bundle id, device id, feature) to (time, drifted) of the last row
    stored; None: this process's own map for ``db_url``. Without ``db_url`` the rows returned are
    taken as stored: a caller that fails to store them should clear ``stored``.
    """
    layout = _PROCESS_STATE.get(("layout", bundle_id))
    if layout is None:
        layout = _PROCESS_STATE[("layout", bundle_id)] = Layout(refstats)
    feature_names = set(layout.split(np.zeros(layout.size, dtype=np.int64), "features"))
    current = {}
    for device_id, vector, n in zip(device_ids, counts, rows):
        entry = layout.split(vector, "features")
        for name, value in layout.split(vector, "outputs").items():
            # detectors.reference_entries' naming: an output named like a feature is output:NAME
            entry[OUTPUT_PREFIX + name if name in feature_names else name] = value
        entry[ROWS_KEY] = int(n)
        current[device_id] = entry
    result = evaluate_fleet(refstats, current, config)
    if stored is None:
        stored = _PROCESS_STATE.setdefault(("stored", db_url or ""), {})
    due = DueRule(stored, bundle_id, now, history_interval)
    found, conditions = [], {}
    skipped = set(result.skipped)
    for device_id, drifts in result.devices.items():
        for d in drifts:
            if due(device_id, d.feature, d.drifted):
                found.append(_row(device_id, bundle_id, d, result.scope.get((device_id, d.feature))))
        if device_id in skipped:
            continue  # too few rows to say anything: the alert state stays as it is
        for kind, source in (("drift", "feature"), ("prediction_drift", "output")):
            local = [d for d in drifts if d.source == source and d.drifted
                     and result.scope.get((device_id, d.feature)) != "fleet"]
            conditions[f"{kind}|{bundle_id}|{device_id}"] = (bool(local), {
                "device_id": device_id, "bundle": bundle, "type": kind, "scope": "device",
                "features": _features(local)})
    for d in result.fleet:
        if due(FLEET, d.feature, d.drifted):
            found.append(_row(FLEET, bundle_id, d, result.scope.get((FLEET, d.feature))))
    if result.fleet:
        wide_names = {f for (dev, f), s in result.scope.items() if s == "fleet"}
        for kind, source in (("drift", "feature"), ("prediction_drift", "output")):
            wide = [d for d in result.fleet if d.source == source and (d.drifted or d.feature in wide_names)
                    and result.scope.get((FLEET, d.feature), "fleet") == "fleet"]
            conditions[f"{kind}|{bundle_id}|{FLEET}"] = (bool(wide), {
                "device_id": FLEET, "bundle": bundle, "type": kind, "scope": "fleet", "features": _features(wide)})
    if db_url is not None and found:
        store = _PROCESS_STATE.get(("store", db_url))
        if store is None:
            store = _PROCESS_STATE[("store", db_url)] = open_store(db_url)
        store.save_drift(now, found)
        found = []
    due.commit()  # after the rows were stored: a failed save leaves them due at the next evaluation
    return found, conditions


class DueRule:
    """The storage rule for one bundle's rows of one evaluation (module docstring)."""

    def __init__(self, stored: dict, bundle_id: str, now: float, interval: float):
        if len(stored) > MAX_REMEMBERED:
            for key in [k for k, (t, _) in stored.items() if not 0 <= now - t < interval]:
                del stored[key]
            if len(stored) > MAX_REMEMBERED:
                stored.clear()
        self.stored, self.bundle_id, self.now, self.interval = stored, bundle_id, now, interval
        self.pending: dict = {}

    def __call__(self, device_id: str, feature: str, drifted: bool, bundle_id: str | None = None) -> bool:
        if self.interval <= 0:
            return True  # every row, as before sparse storage: nothing to remember
        key, drifted = (bundle_id or self.bundle_id, device_id, feature), bool(drifted)
        last = self.stored.get(key)
        if last is None or drifted or last[1] != drifted or not 0 <= self.now - last[0] < self.interval:
            self.pending[key] = (self.now, drifted)
            return True
        return False

    def commit(self) -> None:
        self.stored.update(self.pending)


def _num(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _row(device_id: str, bundle_id: str, d: FeatureDrift, scope) -> dict:
    return {"device_id": device_id, "bundle_id": bundle_id, "feature": d.feature, "kind": d.kind,
            "test": d.test, "statistic": _num(d.statistic), "p_value": _num(d.p_value), "psi": _num(d.psi),
            "n": int(d.n), "drifted": bool(d.drifted), "scope": scope if d.drifted else None}


def _features(drifts: list[FeatureDrift]) -> list[dict]:
    ranked = sorted(drifts, key=lambda d: -(_num(d.psi) or 0.0))
    return [{"feature": d.feature, "source": d.source, "kind": d.kind, "test": d.test,
             "statistic": _num(d.statistic), "p_value": _num(d.p_value), "psi": _num(d.psi), "n": int(d.n)}
            for d in ranked]
