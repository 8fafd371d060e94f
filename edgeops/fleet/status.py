"""The fleet's state as data (`edgeops fleet status --json`; documented in docs/fleet-monitor.md)."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import InputFileError
from .alerts import FLEET
from .hysteresis import Hysteresis
from .store import open_store, sqlite_path

TOP_FEATURES = 5


def fleet_status(db_url: str, stale_after: float = 180.0, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    if not db_url.startswith(("postgresql://", "postgres://")):
        path = Path(sqlite_path(db_url))
        if not path.is_file():  # opening it would create an empty database and report an empty fleet
            raise InputFileError(f"no fleet database at {path}",
                                 "pass the --db the monitor writes to, or start `edgeops monitor` first")
    store = open_store(db_url)
    try:
        devices = store.devices()
        evaluation = store.get_state("evaluation") or {}
        latest = latest_drift(store, evaluation)
        active = Hysteresis(1, 1, store.get_state("hysteresis")).active()
        stale_active = Hysteresis(1, 1, store.get_state("stale")).active()
        quarantined = store.quarantine_counts()
    finally:
        store.close()
    by_device: dict[str, list[dict]] = {}
    for row in latest:
        by_device.setdefault(row["device_id"], []).append(row)
    alerts_by_device: dict[str, list[str]] = {}
    for key in sorted(active):
        kind, _, device_id = key.split("|", 2)
        alerts_by_device.setdefault(device_id, []).append(kind)
    for device_id in stale_active:
        alerts_by_device.setdefault(device_id, []).append("stale")
    # The last evaluation, which with sparse drift rows may have stored none (older monitors did
    # not record it: then the newest row's time).
    evaluated_at = evaluation.get("at") or max((r.get("evaluated_at") or 0 for r in latest), default=None) or None
    result = []
    for device in sorted(devices, key=lambda d: d["device_id"]):
        device_id = device["device_id"]
        last_seen = device.get("last_seen")
        stale = last_seen is None or now - float(last_seen) > stale_after
        online = device.get("online")
        state = "stale" if stale else ("offline" if online is False else "online")
        rows = by_device.get(device_id, [])
        result.append({
            "device_id": device_id, "state": state, "online": online, "stale": stale,
            "last_seen": last_seen, "last_seq": device.get("last_seq"), "bundle": device.get("bundle"),
            "windows": device.get("windows"), "p95_latency_ms": device.get("p95_latency_ms"),
            "drift": _drift_summary(rows), "top_features": _top(rows),
            "alerts": alerts_by_device.get(device_id, [])})
    fleet_rows = by_device.get(FLEET, [])
    return {"schema_version": 1, "generated_at": now, "evaluated_at": evaluated_at, "stale_after_s": stale_after,
            "devices": result,
            "fleet": {"drifted": any(r["drifted"] for r in fleet_rows), "drift": [_feature(r) for r in fleet_rows],
                      "alerts": alerts_by_device.get(FLEET, [])},
            "counts": {"devices": len(result), "online": sum(d["state"] == "online" for d in result),
                       "offline": sum(d["state"] == "offline" for d in result),
                       "stale": sum(d["stale"] for d in result),
                       "drifting": sum(d["drift"]["drifted"] for d in result)},
            "quarantined": quarantined}


def latest_drift(store, evaluation: dict | None = None, device_id: str | None = None) -> list[dict]:
    """Store.latest_drift reaching as far back as the monitor that wrote the rows says a stable
    pair's newest row can be (its --drift-history-interval plus two evaluations), else its default.

    ``evaluation``: the state the evaluator records ("evaluation"), if already read.
    """
    evaluation = store.get_state("evaluation") if evaluation is None else evaluation
    max_age = (evaluation or {}).get("drift_max_age")
    if isinstance(max_age, (int, float)) and not isinstance(max_age, bool) and max_age >= 0:
        return store.latest_drift(max_age=float(max_age), device_id=device_id)
    return store.latest_drift(device_id=device_id)


def _drift_summary(rows: list[dict]) -> dict:
    p_values = [r["p_value"] for r in rows if r.get("p_value") is not None]
    psis = [r["psi"] for r in rows if r.get("psi") is not None]
    scopes = sorted({r["scope"] for r in rows if r["drifted"] and r.get("scope")})
    return {"drifted": any(r["drifted"] for r in rows), "tested": len(rows),
            "drifted_features": sum(bool(r["drifted"]) for r in rows),
            "min_p_value": min(p_values) if p_values else None, "max_psi": max(psis) if psis else None,
            "scopes": scopes}


def _top(rows: list[dict]) -> list[dict]:
    drifted = [r for r in rows if r["drifted"]]
    drifted.sort(key=lambda r: (-(r.get("psi") or 0.0), r.get("p_value") if r.get("p_value") is not None else 1.0))
    return [_feature(r) for r in drifted[:TOP_FEATURES]]


def _feature(row: dict) -> dict:
    return {"feature": row["feature"], "kind": row.get("kind"), "test": row.get("test"),
            "statistic": row.get("statistic"), "p_value": row.get("p_value"), "psi": row.get("psi"),
            "n": row.get("n"), "drifted": bool(row["drifted"]), "scope": row.get("scope"),
            "bundle_id": row.get("bundle_id")}
