"""What the monitor derives and keeps besides telemetry: reference statistics, drift results,
alerts and small state (e.g. the detectors' hysteresis), plus retention.

A mixin of ``Store`` (store.py), kept apart so that each module stays short; it uses only the
backend helpers ``self._db.run`` / ``self._db.query`` and the SQL that works on both databases
(one exception: how a chunk of old windows is picked for deletion, rowid in SQLite, ctid in
PostgreSQL).
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable

_DRIFT_COLUMNS = ("evaluated_at", "device_id", "bundle_id", "feature", "kind", "test", "statistic", "p_value",
                  "psi", "n", "drifted", "scope")
_AGE_COLUMNS = {"windows": "window_end", "drift": "evaluated_at", "alerts": "ts"}  # what retention prunes by
# Rows deleted per transaction: each chunk holds SQLite's write lock ~10-20 ms (measured: ~20 us
# per 9 KB window, ~2 us per drift row).
PRUNE_CHUNK_ROWS = {"windows": 1000, "drift": 5000, "alerts": 5000}
# latest_drift's default reach: the monitor's default --drift-history-interval (600 s) plus two
# default evaluation intervals (60 s), rounded up. The evaluator records its own (state
# "evaluation", drift_max_age) for readers.
LATEST_DRIFT_MAX_AGE_S = 900.0


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

    def latest_drift(self, max_age: float = LATEST_DRIFT_MAX_AGE_S, device_id: str | None = None) -> list[dict]:
        """Per (device, feature), its newest row (its rows, if several share that time), among the
        rows at most ``max_age`` seconds older than the newest row of all; ``device_id``: only
        that device's.

        The monitor stores a pair that does not change only every --drift-history-interval
        (distribution.py), so the last evaluation alone does not hold every pair; ``max_age``
        should cover that interval plus an evaluation or two, and is how long a device that left
        the fleet (or a feature a new bundle dropped) still shows.
        """
        if not max_age >= 0:  # also NaN
            raise ValueError(f"max_age must be a number of seconds >= 0, not {max_age!r}")
        newest = self._db.query("SELECT MAX(evaluated_at) FROM drift")[0][0]
        if newest is None:
            return []
        # The cutoff as a value, not a subquery: PostgreSQL then plans for a short range of
        # drift_by_time with one drift_by_device probe per row (EXPLAIN: Nested Loop Anti Join),
        # where a subquery's unknown cutoff gets a hash anti join over the whole table.
        where, params = "evaluated_at >= ?", (float(newest) - float(max_age),)
        if device_id is not None:
            where, params = "device_id = ? AND " + where, (device_id, *params)
        return self._drift(f"WHERE {where} AND NOT EXISTS (SELECT 1 FROM drift newer "
                           "WHERE newer.device_id = drift.device_id AND newer.feature = drift.feature "
                           "AND newer.evaluated_at > drift.evaluated_at)", params)

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

    # -- retention ---------------------------------------------------------------------------------
    def prune(self, before: float, chunk_rows: int | None = None) -> dict[str, int]:
        """Delete windows that ended and drift rows evaluated before ``before``; rows deleted per table."""
        return {table: self.prune_rows(table, before, chunk_rows) for table in ("windows", "drift")}

    def prune_rows(self, table: str, before: float, chunk_rows: int | None = None,
                   carry_on: Callable[[], bool] | None = None) -> int:
        """Delete the rows of ``table`` ("windows", "drift" or "alerts") older than ``before``,
        oldest first, ``chunk_rows`` (default: PRUNE_CHUNK_ROWS) per transaction; returns how
        many went.

        Deleting a day of windows in one transaction would hold SQLite's write lock for seconds
        while ingestion waits; each chunk holds it briefly. ``carry_on()`` runs between chunks
        (it may pause, so that waiting writers get the lock); False stops early. Each window
        chunk subtracts what it deleted from its devices' window_count in the same transaction:
        the count stays exact at every commit, even with writers adding windows meanwhile (a
        recount could miss a window committed while it ran).
        """
        if table not in _AGE_COLUMNS:
            raise ValueError(f"prune_rows prunes {', '.join(_AGE_COLUMNS)}, not {table!r}")
        if math.isnan(before):  # PostgreSQL orders NaN above every number: it would delete everything
            raise ValueError("prune_rows needs a time, not NaN")
        chunk_rows = PRUNE_CHUNK_ROWS[table] if chunk_rows is None else chunk_rows
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        params = (float(before), int(chunk_rows))
        chunk = self._window_chunk if table == "windows" else self._row_chunk(table)
        total = 0
        while True:
            deleted = self._db.run(lambda db: chunk(db, params), f"pruning old {table}")
            total += deleted
            if deleted < chunk_rows or (carry_on is not None and not carry_on()):
                return total

    @staticmethod
    def _row_chunk(table: str):
        column = _AGE_COLUMNS[table]
        select = f"SELECT id FROM {table} WHERE {column} < ? ORDER BY {column} LIMIT ?"
        # drift and alerts have an integer key on both backends (rowid alias / identity column).
        # PostgreSQL plans "id IN (SELECT ...)" as a hash join over the whole table, and
        # "id = ANY(ARRAY(SELECT ...))" as index lookups; SQLite only knows the first.
        return lambda db, params: db.execute(f"DELETE FROM {table} WHERE " + (
            f"id IN ({select})" if db.dialect == "sqlite" else f"id = ANY(ARRAY({select}))"), params)

    @staticmethod
    def _window_chunk(db, params) -> int:
        # ORDER BY keeps the lookup on the windows_by_end index: a sequential scan would walk
        # the rows of the previous chunks again (in PostgreSQL, dead until vacuumed).
        # window_end is the device's clock: a board that booted without the time (1970) would
        # see its windows deleted right after they arrived, so they must also have been
        # *received* before the cutoff (the monitor's clock).
        select = "SELECT {rid} FROM windows WHERE window_end < ? AND received < ? ORDER BY window_end LIMIT ?"
        params = (params[0], params[0], params[1])
        if db.dialect == "sqlite":  # select, then delete by rowid: DELETE ... RETURNING needs SQLite 3.35
            rows = db.fetch(select.format(rid="rowid, device_id"), params)
            db.executemany("DELETE FROM windows WHERE rowid = ?", [(r[0],) for r in rows])
            devices = Counter(r[1] for r in rows)
        else:  # windows are never updated, so a row keeps its ctid until deleted
            rows = db.fetch(f"DELETE FROM windows WHERE ctid = ANY(ARRAY({select.format(rid='ctid')})) "
                            "RETURNING device_id", params)
            devices = Counter(r[0] for r in rows)
        # Sorted, like ingestion's device updates, so that concurrent writers lock rows in one order.
        db.executemany("UPDATE devices SET window_count = window_count - ? WHERE device_id = ?",
                       [(n, device) for device, n in sorted(devices.items())])
        return len(rows)
