"""What the monitor derives and keeps besides telemetry: reference statistics, drift results,
alerts and small state (e.g. the detectors' hysteresis), plus retention.

A mixin of ``Store`` (store.py), kept apart so that each module stays short; it uses only the
backend helpers ``self._db.run`` / ``self._db.query`` and the SQL that works on both databases.
"""
from __future__ import annotations

import json
import math
import time

_DRIFT_COLUMNS = ("evaluated_at", "device_id", "bundle_id", "feature", "kind", "test", "statistic", "p_value",
                  "psi", "n", "drifted", "scope")


def to_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), default=_plain)


def _plain(value):
    """numpy scalars and arrays (as detectors may leave in a result) to plain Python."""
    for method in ("tolist", "item"):
        if hasattr(value, method):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class RecordsMixin:
    """Needs ``self._db``: a store_sqlite / store_pg backend."""

    # -- references ----------------------------------------------------------------------------------
    def save_reference(self, bundle_id: str, manifest: dict, refstats: dict) -> None:
        sql = """INSERT INTO reference_stats (bundle_id, saved, manifest, refstats) VALUES (?, ?, ?, ?)
                 ON CONFLICT (bundle_id) DO UPDATE SET saved = excluded.saved, manifest = excluded.manifest,
                   refstats = excluded.refstats"""
        self._db.run(lambda db: db.execute(sql, (bundle_id, time.time(), to_json(manifest), to_json(refstats))),
                     "storing reference statistics")

    def reference(self, bundle_id: str) -> dict | None:
        rows = self._db.query("SELECT manifest, refstats FROM reference_stats WHERE bundle_id = ?", (bundle_id,))
        if not rows:
            return None
        return {"manifest": json.loads(rows[0][0]), "refstats": json.loads(rows[0][1])}

    def reference_ids(self) -> list[str]:
        return [r[0] for r in self._db.query("SELECT bundle_id FROM reference_stats ORDER BY bundle_id")]

    # -- drift, alerts, state ----------------------------------------------------------------------
    def save_drift(self, evaluated_at: float, rows: list[dict]) -> None:
        values = [(float(evaluated_at), r["device_id"], r["bundle_id"], r["feature"], r.get("kind"), r.get("test"),
                   finite_or_none(r.get("statistic")), finite_or_none(r.get("p_value")),
                   finite_or_none(r.get("psi")), None if r.get("n") is None else int(r["n"]),
                   bool(r.get("drifted")), r.get("scope")) for r in rows]
        if not values:
            return
        sql = f"INSERT INTO drift ({', '.join(_DRIFT_COLUMNS)}) VALUES ({', '.join('?' * len(_DRIFT_COLUMNS))})"
        self._db.run(lambda db: db.executemany(sql, values), "storing drift results")

    def _drift(self, where: str, params: tuple) -> list[dict]:
        columns = ", ".join(_DRIFT_COLUMNS)
        rows = self._db.query(f"SELECT {columns} FROM drift {where} ORDER BY evaluated_at, id", params)
        out = []
        for r in rows:
            row = dict(zip(_DRIFT_COLUMNS, r))
            row["drifted"] = bool(row["drifted"])
            out.append(row)
        return out

    def drift_history(self, device_id: str | None = None, feature: str | None = None,
                      since: float | None = None) -> list[dict]:
        where, params = [], []
        for clause, value in (("device_id = ?", device_id), ("feature = ?", feature), ("evaluated_at >= ?", since)):
            if value is not None:
                where.append(clause)
                params.append(value)
        return self._drift("WHERE " + " AND ".join(where) if where else "", tuple(params))

    def latest_drift(self) -> list[dict]:
        return self._drift("WHERE evaluated_at = (SELECT MAX(evaluated_at) FROM drift)", ())

    def save_alert(self, alert: dict) -> None:
        """Keep an alert dict as given; ``alert["ts"]`` (if a number) orders and filters them."""
        ts = alert.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            ts = time.time()
        ts = float(ts)
        device = alert.get("device_id")
        self._db.run(lambda db: db.execute("INSERT INTO alerts (ts, device_id, payload) VALUES (?, ?, ?)",
                                           (ts, device if isinstance(device, str) else None, to_json(alert))),
                     "storing an alert")

    def alerts(self, since: float | None = None) -> list[dict]:
        if since is None:
            rows = self._db.query("SELECT payload FROM alerts ORDER BY ts, id")
        else:
            rows = self._db.query("SELECT payload FROM alerts WHERE ts >= ? ORDER BY ts, id", (float(since),))
        return [json.loads(r[0]) for r in rows]

    def get_state(self, key: str) -> dict | None:
        rows = self._db.query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def set_state(self, key: str, value: dict) -> None:
        sql = """INSERT INTO state (key, updated, value) VALUES (?, ?, ?)
                 ON CONFLICT (key) DO UPDATE SET updated = excluded.updated, value = excluded.value"""
        self._db.run(lambda db: db.execute(sql, (key, time.time(), to_json(value))), "storing state")

    def prune(self, before: float) -> dict[str, int]:
        """Delete windows that ended and drift rows evaluated before ``before`` (retention)."""
        def work(db):
            windows = db.execute("DELETE FROM windows WHERE window_end < ?", (float(before),))
            drift = db.execute("DELETE FROM drift WHERE evaluated_at < ?", (float(before),))
            db.execute("UPDATE devices SET window_count = "
                       "(SELECT COUNT(*) FROM windows w WHERE w.device_id = devices.device_id)")
            return {"windows": windows, "drift": drift}
        return self._db.run(work, "pruning old rows")

