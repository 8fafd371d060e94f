"""The monitor's evaluator: drift per device, per bundle (model version) and fleet-wide; alerts.

Every ``evaluate_interval`` seconds it sums the in-memory counts of the horizon (horizon.py),
and for each bundle with reference statistics evaluates input drift and prediction drift
(distribution.py, in a lower-priority child process that also stores the drift rows, sparsely:
``drift_history_interval``). Latency, error rate and accuracy are compared
with a baseline (signals.py): the device's own first horizon with enough traffic, kept in the
store; for accuracy the bundle manifest's evaluation accuracy when it has one.

It also applies retention (``prune``): once at start and then at most every ``prune_interval``
seconds, between evaluations and never in the ingestion path, it deletes windows, alerts and
drift rows older than their retention, in short transactions (Store.prune_rows).

Alerts are deduplicated with hysteresis.Hysteresis (state in the store, so a restart neither
repeats nor forgets an alert): one "raised" alert when a condition holds for ``enter_after``
evaluations, one "cleared" when it has been gone for ``exit_after``. Drift of a feature on a
minority of devices alerts per device; drift that the detector classifies as fleet-wide alerts
once, for the device id ``__fleet__``.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from . import signals
from .alerts import FLEET, build_alert
from .detectors import DetectorConfig
from .distribution import DueRule, _num, distribution_drift
from .horizon import ABS_ERR, CORRECT, ERRORS, LABELLED, REJECTED, REQUESTS, ROWS, SQ_ERR
from .hysteresis import Hysteresis
from .pool import child_init
from .store import open_store

# Between two chunks of a prune: SQLite's waiting writers poll for its lock (no queue), and a
# pruner that took it again at once could keep them waiting for the whole prune.
SQLITE_PRUNE_PAUSE_S = 0.05
# An evaluation waits while the thread prunes: a backlog (a large database, the first run with
# retention) is deleted over several rounds of at most this long.
PRUNE_BUDGET_S = 20.0
TOP_FEATURES = 5


@dataclass(frozen=True)
class EvaluatorConfig:
    evaluate_interval: float = 60.0
    horizon_s: float = 900.0
    stale_after: float = 180.0
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    separate_process: bool = True  # run evaluate_fleet in a child process (another core)
    retention_s: float | None = None        # windows and alerts older than this are deleted; None: kept
    drift_retention_s: float | None = None  # the same for drift rows (far more numerous)
    prune_interval: float = 600.0
    drift_history_interval: float = 600.0  # a stable pair's row is stored this often (distribution.py); 0: always

    @property
    def drift_max_age(self) -> float:
        """How old a pair's newest row can be while it is evaluated, with a margin (Store.latest_drift)."""
        return self.drift_history_interval + 2 * self.evaluate_interval


class Evaluator:
    def __init__(self, monitor, config: EvaluatorConfig):
        self.monitor = monitor
        self.config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.store = None
        det = config.detector
        self.hysteresis: Hysteresis | None = None
        self.stale = None
        self.baselines: dict = {}
        self.evaluations = 0
        self._pool: ProcessPoolExecutor | None = None
        self._enter, self._exit = det.enter_after, det.exit_after
        self._pruned_at: float | None = None
        self._stored: dict = {}  # the last drift row stored per pair, when evaluating in this process

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="monitor-evaluate", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop; an evaluation still running in the child process is abandoned, not awaited."""
        self._stop.set()
        pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
            if terminate is not None:
                terminate()
            else:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self.store = open_store(self.monitor.config.db_url)
        if self.config.separate_process:
            # The statistics of a large fleet (tens of thousands of tests) take seconds of CPU:
            # in a child process they use another core instead of holding the GIL that
            # ingestion needs. "spawn": forking a process that runs threads is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_evaluation_process)
        try:
            self._prune_logged()
            while not self._stop.wait(self.config.evaluate_interval):
                try:
                    self.evaluate_once()
                except Exception as exc:  # noqa: BLE001 - one failed evaluation must not end all later ones
                    self.monitor.log(f"error: drift evaluation failed: {type(exc).__name__}: {exc}")
                self._prune_logged()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self.store.close()

    def _prune_logged(self) -> None:
        try:
            self.prune()
        except Exception as exc:  # noqa: BLE001 - retried at the next prune_interval
            self.monitor.log(f"error: deleting old rows failed: {type(exc).__name__}: {exc}")

    def prune(self, now: float | None = None) -> dict[str, int] | None:
        """Retention: delete rows older than the configured ages (by ``now``) once ``prune_interval``
        has passed since the last complete prune. Rows deleted per table; None if not due."""
        cfg, now = self.config, time.time() if now is None else now
        ages = {table: age for table, age in (("windows", cfg.retention_s), ("alerts", cfg.retention_s),
                                              ("drift", cfg.drift_retention_s)) if age is not None}
        last = self._pruned_at
        if not ages or (last is not None and 0 <= now - last < cfg.prune_interval):
            return None
        pause = SQLITE_PRUNE_PAUSE_S if self.store.dialect == "sqlite" else 0.0
        started = time.monotonic()
        deadline = started + PRUNE_BUDGET_S

        def time_left() -> bool:
            return not self._stop.is_set() and time.monotonic() < deadline

        deleted = {}
        for table, age in ages.items():
            if time_left():
                deleted[table] = self.store.prune_rows(table, now - age,
                                                       carry_on=lambda: not self._stop.wait(pause) and time_left())
        complete = time_left()
        if complete:
            self._pruned_at = now  # else a backlog is left (or stopping): due again after the next evaluation
        if any(deleted.values()):
            self.monitor.log("pruned " + ", ".join(f"{n} {'drift rows' if t == 'drift' else t} older than "
                                                   f"{_days(ages[t])}" for t, n in deleted.items())
                             + f" in {time.monotonic() - started:.1f} s" + ("" if complete else "; more next round"))
        return deleted

    def _distribution_drift(self, ref, devices: dict, now: float, rows: list) -> dict | None:
        """``distribution_drift`` in the child process if there is one (which also stores its drift
        rows), else here (its rows go to ``rows``). None when stopping."""
        device_ids = list(devices)
        if not device_ids:
            return {}
        counts = np.stack([devices[d][0] for d in device_ids])
        row_counts = np.array([int(devices[d][1][ROWS]) for d in device_ids], dtype=np.int64)
        args = (ref.refstats, ref.bundle_id, ref.bundle(), device_ids, counts, row_counts, self.config.detector, now)
        history = self.config.drift_history_interval
        if self._pool is not None:
            try:
                return self._pool.submit(distribution_drift, *args, db_url=self.monitor.config.db_url,
                                         history_interval=history).result()[1]
            except (BrokenProcessPool, RuntimeError, OSError, CancelledError) as exc:
                if self._stop.is_set():
                    return None
                self.monitor.log(f"the drift evaluation process failed ({type(exc).__name__}): evaluating in the "
                                 "monitor process from now on")
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        found, conditions = distribution_drift(*args, history_interval=history, stored=self._stored)
        rows.extend(found)
        return conditions

    def _load_state(self) -> None:
        if self.hysteresis is None:
            self.hysteresis = Hysteresis(self._enter, self._exit, self.store.get_state("hysteresis"))
            self.stale = Hysteresis(1, 1, self.store.get_state("stale"))
            self.baselines = self.store.get_state("baselines") or {}

    def evaluate_once(self, now: float | None = None) -> list[dict]:
        """One evaluation; returns the alerts it sent."""
        self._load_state()
        now = time.time() if now is None else now
        monitor = self.monitor
        with monitor.lock:
            totals = monitor.horizon.totals(now)
            layouts = dict(monitor.layouts)
        rows: list[dict] = []
        conditions: dict[str, tuple[bool, dict]] = {}
        signals_by_key: dict[str, tuple] = {}
        for bundle_id, devices in totals.items():
            ref, layout = monitor.reference(bundle_id, self.store), layouts.get(bundle_id)
            if ref is None or layout is None:
                continue
            found = self._distribution_drift(ref, devices, now, rows)
            if found is None:
                return []  # stopping
            conditions.update(found)
            for device_id, (_, extras) in devices.items():
                self._operational(ref, device_id, extras, signals_by_key)
        due = DueRule(self._stored, "", now, self.config.drift_history_interval)
        self._signal_conditions(signals_by_key, rows, conditions, due)
        alerts = self._update(conditions, totals, now)
        alerts += self._liveness(now)
        if rows:
            try:
                self.store.save_drift(now, rows)
            except Exception:
                self._stored.clear()  # they were taken as stored: store every pair again next time
                raise
        due.commit()
        self.store.set_state("hysteresis", self.hysteresis.to_dict())
        self.store.set_state("stale", self.stale.to_dict())
        self.store.set_state("baselines", self.baselines)
        # Sparse drift rows: the newest row no longer dates the last evaluation, and readers
        # (fleet status, the dashboard) need to know how far back a pair's newest row can be.
        self.store.set_state("evaluation", {"at": now, "drift_max_age": self.config.drift_max_age})
        self.evaluations += 1
        return alerts

    # -- latency, errors, rejections, accuracy against a baseline ------------------------------

    def _operational(self, ref, device_id, extras, out: dict) -> None:
        cfg = self.config.detector
        key = f"{ref.bundle_id}|{device_id}"
        base = self.baselines.get(key)
        requests, labelled = int(extras[REQUESTS]), int(extras[LABELLED])
        if base is None:
            if requests >= cfg.min_requests:  # the device's first horizon with enough traffic
                self.baselines[key] = base = _baseline(extras)
        elif base.get("labelled", 0) < cfg.min_labelled <= labelled:
            base.update(labelled=labelled, correct=float(extras[CORRECT]), abs_error_sum=float(extras[ABS_ERR]),
                        squared_error_sum=float(extras[SQ_ERR]))
        if base is not None and requests >= cfg.min_requests:
            out[f"latency|{key}"] = (ref, device_id, signals.latency_drift(base["latency"], extras[8:].tolist(), cfg))
            out[f"error_rate|{key}"] = (ref, device_id, signals.error_rate_drift(
                int(extras[ERRORS]), requests, base["errors"], base["requests"], cfg))
            offered, base_offered = requests + int(extras[REJECTED]), base["requests"] + base.get("rejected", 0)
            out[f"rejection_rate|{key}"] = (ref, device_id, signals.error_rate_drift(
                int(extras[REJECTED]), offered, base.get("rejected", 0), base_offered, cfg, signal="rejection_rate"))
        if labelled >= cfg.min_labelled:
            acc = self._accuracy(ref, base, extras)
            if acc is not None:
                out[f"accuracy|{key}"] = (ref, device_id, acc)

    def _accuracy(self, ref, base, extras):
        cfg, labelled = self.config.detector, int(extras[LABELLED])
        has_base = base is not None and base.get("labelled", 0) >= cfg.min_labelled
        if float(extras[ABS_ERR]) > 0 or float(extras[SQ_ERR]) > 0:  # a numeric model: mean abs error
            if not has_base:
                return None
            return signals.mean_abs_error_drift(
                (labelled, float(extras[ABS_ERR]), float(extras[SQ_ERR])),
                (base["labelled"], base["abs_error_sum"], base["squared_error_sum"]), cfg)
        gate = signals.manifest_accuracy(ref.manifest)
        if gate is not None:  # the accuracy measured when the bundle was made
            return signals.accuracy_drift(int(extras[CORRECT]), labelled, cfg, base_correct=gate[0],
                                          base_labelled=gate[1])
        if not has_base:
            return None
        return signals.accuracy_drift(int(extras[CORRECT]), labelled, cfg, base_correct=int(base["correct"]),
                                      base_labelled=int(base["labelled"]))

    def _signal_conditions(self, found: dict, rows: list, conditions: dict, due) -> None:
        """BH across every device's operational signals, then one condition per signal; its drift
        row is stored by the same sparse rule as the features' (``due``, distribution.py)."""
        corrected = signals.correct_signals({k: v[2] for k, v in found.items()}, self.config.detector.alpha)
        for key, (ref, device_id, _) in found.items():
            s = corrected[key]
            kind = key.split("|", 1)[0]
            if due(device_id, f"__{s.signal}__", s.drifted, ref.bundle_id):
                rows.append({"device_id": device_id, "bundle_id": ref.bundle_id, "feature": f"__{s.signal}__",
                             "kind": "signal", "test": s.test, "statistic": _num(s.statistic),
                             "p_value": _num(s.p_value), "psi": None, "n": int(s.n), "drifted": bool(s.drifted),
                             "scope": "device" if s.drifted else None})
            conditions[key] = (bool(s.drifted), {
                "device_id": device_id, "bundle": ref.bundle(), "type": kind, "scope": "device",
                "details": {"signal": s.signal, "test": s.test, "statistic": _num(s.statistic),
                            "p_value": _num(s.p_value), "effect": _num(s.effect), "n": int(s.n)}})

    # -- hysteresis and alerts ----------------------------------------------------------------

    def _update(self, conditions: dict, totals: dict, now: float) -> list[dict]:
        alerts = []
        for key, (drifted, info) in sorted(conditions.items()):
            change = self.hysteresis.update(key, drifted)
            if change is None:
                continue
            alerts.append(self._send(change, info, now))
        return alerts

    def _bundle(self, bundle_id: str) -> dict:
        ref = self.monitor.reference(bundle_id, self.store)
        return ref.bundle() if ref is not None else {"id": bundle_id, "name": None, "version": None}

    def _send(self, change: str, info: dict, now: float) -> dict:
        kind, device = info["type"], info["device_id"]
        names = ", ".join(f["feature"] for f in info.get("features", [])[:TOP_FEATURES])
        what = {"drift": "input drift", "prediction_drift": "prediction drift", "latency": "latency increase",
                "error_rate": "error-rate increase", "rejection_rate": "more rejected requests",
                "accuracy": "accuracy drop", "stale": "no telemetry"}[kind]
        where = "across the fleet" if device == FLEET else f"on {device}"
        message = f"{what} {where}" + (f": {names}" if names and change == "raised" else "")
        if change == "cleared":
            message += " has ended"
        alert = build_alert(alert_type=kind, state=change, device_id=device, bundle=info.get("bundle"),
                            scope=info.get("scope"), message=message,
                            features=info.get("features") if change == "raised" else [],
                            details=info.get("details"), evaluated_at=now, horizon_s=self.config.horizon_s)
        self.store.save_alert(alert)
        if self.monitor.alerts is not None:
            self.monitor.alerts.dispatch(alert)
        return alert

    def _liveness(self, now: float) -> list[dict]:
        alerts = []
        for device in self.store.devices():
            last = device.get("last_seen")
            if last is None:
                continue
            stale = now - float(last) > self.config.stale_after
            change = self.stale.update(device["device_id"], stale)
            if change is not None:
                alerts.append(self._send(change, {
                    "device_id": device["device_id"], "type": "stale", "scope": "device",
                    "bundle": device.get("bundle"),
                    "details": {"last_seen": last, "stale_after_s": self.config.stale_after,
                                "online": device.get("online")}}, now))
        return alerts


def _evaluation_process() -> None:
    """Drift evaluation can wait a little; ingestion (acks, the broker's queue) cannot: lower priority."""
    child_init()
    try:
        os.nice(10)
    except OSError:
        return  # not permitted here: run at normal priority


def _baseline(extras: np.ndarray) -> dict:
    return {"requests": int(extras[REQUESTS]), "errors": int(extras[ERRORS]), "rejected": int(extras[REJECTED]),
            "latency": [int(v) for v in extras[8:]], "labelled": int(extras[LABELLED]),
            "correct": float(extras[CORRECT]), "abs_error_sum": float(extras[ABS_ERR]),
            "squared_error_sum": float(extras[SQ_ERR])}


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} day(s)" if seconds >= 86400 else f"{seconds:g} s"
