"""The fleet database: windows, device liveness, quarantine, reference statistics, drift, alerts.

``open_store(url)`` picks the backend: a SQLite file by default (store_sqlite.py), PostgreSQL for
fleets that outgrow one machine (store_pg.py). The SQL here is written once for both (``?``
placeholders; the PostgreSQL backend converts them). Tables: store_schema.py.

A Store is used from one thread at a time; open another with ``open_store`` for another thread.
"""
from __future__ import annotations

import json
import os
from collections import Counter

from edgeops.errors import InputFileError, UsageError
from edgeops.fleet.ingest import Message
from edgeops.fleet.store_records import RecordsMixin, finite_or_none, to_json
from edgeops.fleet.store_schema import SCHEMA_VERSION, StoreError, pack_payload, unpack_payload

__all__ = ["Store", "StoreError", "open_store", "sqlite_path"]

QUARANTINE_PAYLOAD_BYTES = 64 * 1024
QUARANTINE_KEEP = 2000       # newest rejected payloads kept for inspection (counts are kept forever)
P95_HORIZON_S = 3600.0
FLEET = "__fleet__"

_WINDOW_COLUMNS = ("device_id, instance, seq, bundle_id, variant, role, window_start, window_end, requests, rows, "
                   "errors, rejected, p95_latency_ms, received, payload, payload_lz4")
_INSERT_WINDOW = (f"INSERT INTO windows ({_WINDOW_COLUMNS}) VALUES ({', '.join('?' * 16)}) "
                  "ON CONFLICT (device_id, instance, seq) DO NOTHING")


def open_store(url: str) -> Store:
    """"sqlite:///abs/path.db", "sqlite:relative.db" or a plain path -> SQLite; "postgresql://..." -> PostgreSQL."""
    if not isinstance(url, str) or not url.strip():
        raise UsageError("no fleet database given", "give a SQLite file path or a postgresql:// URL")
    url = url.strip()
    if url.startswith(("postgresql://", "postgres://")):
        from edgeops.fleet.store_pg import PostgresBackend
        return Store(PostgresBackend(url))
    from edgeops.fleet.store_sqlite import SqliteBackend
    return Store(SqliteBackend(sqlite_path(url)))


def sqlite_path(url: str) -> str:
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest.startswith("//"):
            rest = rest[2:]
            if not rest.startswith("/"):
                raise UsageError(f"unsupported SQLite URL {url!r}: SQLite has no host",
                                 "use sqlite:///absolute/path.db, sqlite:relative.db or a plain file path")
        if not rest:
            raise UsageError(f"SQLite URL {url!r} names no file", "use sqlite:///absolute/path.db or a file path")
        return os.path.expanduser(rest)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(f"unknown database URL scheme {scheme!r}",
                         "use a SQLite file path, sqlite:///abs/path.db or postgresql://user@host/db")
    return os.path.expanduser(url)


def _clean_text(text, limit: int) -> str:
    """Text safe for any SQL column: no NUL, no lone surrogate."""
    text = text if isinstance(text, str) else repr(text)
    text = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _primary_bundle(bundles) -> dict | None:
    for entry in bundles or ():
        if entry.get("role") == "primary":
            return entry
    return None


class Store(RecordsMixin):
    """Telemetry ingestion and the device list; drift, alerts, state: store_records.RecordsMixin."""

    def __init__(self, backend):
        self._db = backend
        try:
            backend.ensure_schema(self._check_version)
        except BaseException:
            backend.close()
            raise
        g = backend.greatest
        newer_info = "(devices.info_ts IS NULL OR excluded.info_ts >= devices.info_ts)"
        newer_bundle = ("(excluded.bundle_ts IS NOT NULL AND "
                        "(devices.bundle_ts IS NULL OR excluded.bundle_ts >= devices.bundle_ts))")
        # One upsert serves windows, heartbeats and status: each column keeps the newest value
        # by the device's own clock (info_ts / bundle_ts), never goes back on redelivery.
        self._upsert_device = f"""
            INSERT INTO devices (device_id, last_seen, last_seq, last_end, window_count, instance, agent_version,
                                 info_ts, bundle_id, bundle_name, bundle_version, bundle_ts)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (device_id) DO UPDATE SET
              last_seen = {g('devices.last_seen', 'excluded.last_seen')},
              last_end = {g('devices.last_end', 'excluded.last_end')},
              window_count = devices.window_count + excluded.window_count,
              last_seq = CASE
                WHEN devices.instance IS NULL OR devices.instance = excluded.instance
                  THEN {g('devices.last_seq', 'excluded.last_seq')}
                WHEN excluded.info_ts >= devices.info_ts THEN excluded.last_seq
                ELSE devices.last_seq END,
              instance = CASE WHEN {newer_info} THEN COALESCE(excluded.instance, devices.instance)
                         ELSE devices.instance END,
              agent_version = CASE WHEN {newer_info} THEN COALESCE(excluded.agent_version, devices.agent_version)
                              ELSE devices.agent_version END,
              info_ts = {g('devices.info_ts', 'excluded.info_ts')},
              bundle_id = CASE WHEN {newer_bundle} THEN excluded.bundle_id ELSE devices.bundle_id END,
              bundle_name = CASE WHEN {newer_bundle} THEN excluded.bundle_name ELSE devices.bundle_name END,
              bundle_version = CASE WHEN {newer_bundle} THEN excluded.bundle_version ELSE devices.bundle_version END,
              bundle_ts = {g('devices.bundle_ts', 'excluded.bundle_ts')}"""

    @staticmethod
    def _check_version(version: int) -> None:
        if version > SCHEMA_VERSION:
            raise InputFileError(f"the fleet database has schema version {version}, newer than this edgeops reads "
                                 f"({SCHEMA_VERSION})", "upgrade edgeops, or use another database")

    @property
    def dialect(self) -> str:
        return self._db.dialect

    # -- ingestion ---------------------------------------------------------------------------------
    def insert_windows(self, messages: list[Message]) -> int:
        """Store window messages in one transaction; returns how many were new.

        Idempotent: a window already stored (same device, agent instance and seq) is skipped.
        Payloads are stored LZ4-compressed when the lz4 package is installed (store_schema.py).
        Rows go in sorted by key so that concurrent writers lock them in the same order.
        """
        rows: dict[tuple, tuple] = {}
        for m in messages:
            if m.kind != "window":
                raise ValueError(f"insert_windows takes window messages, not {m.kind!r}")
            p = m.payload
            key = (m.device_id, p["agent"]["instance"], p["seq"])
            if key in rows:
                continue
            requests, span = p["requests"], p["window"]
            rows[key] = key + (
                p["bundle"]["id"], p["variant"]["name"], p["variant"]["role"], float(span["start"]),
                float(span["end"]), requests["count"], requests["rows"], requests["errors"], requests["rejected"],
                finite_or_none(p["latency_ms"].get("p95")), float(m.received)) + pack_payload(m.text or to_json(p))
        if not rows:
            return 0
        ordered = [rows[k] for k in sorted(rows)]
        devices = self._device_updates_from_windows(messages)

        def work(db):
            new = Counter(row[0] for row, is_new in zip(ordered, db.insert_new(_INSERT_WINDOW, ordered)) if is_new)
            db.executemany(self._upsert_device, [u[:4] + (new[u[0]],) + u[5:] for u in devices])
            return sum(new.values())
        return self._db.run(work, "storing windows")

    @staticmethod
    def _device_updates_from_windows(messages: list[Message]) -> list[tuple]:
        """One devices row per device of the batch, in one pass (this runs for every batch)."""
        newest: dict[str, tuple] = {}    # device -> (end, seq, message): the newest window
        primary: dict[str, tuple] = {}   # device -> (end, seq, message): the newest primary window
        seen: dict[str, list] = {}       # device -> [last received, last end]
        top_seq: dict[tuple, int] = {}   # (device, instance) -> highest seq
        for m in messages:
            p = m.payload
            device, end, seq = m.device_id, p["window"]["end"], p["seq"]
            key = (end, seq, m)
            if device not in newest or key[:2] > newest[device][:2]:
                newest[device] = key
            if p["variant"]["role"] == "primary" and (device not in primary or key[:2] > primary[device][:2]):
                primary[device] = key
            s = seen.setdefault(device, [m.received, end])
            s[0], s[1] = max(s[0], m.received), max(s[1], end)
            instance = (device, p["agent"]["instance"])
            top_seq[instance] = max(top_seq.get(instance, 0), seq)
        updates = []
        for device in sorted(newest):
            end, _, m = newest[device]
            agent = m.payload["agent"]
            bundle_end, _, b = primary.get(device, (None, None, None))
            bundle = b.payload["bundle"] if b else {}
            updates.append((device, float(seen[device][0]), top_seq[(device, agent["instance"])],
                            float(seen[device][1]), 0, agent["instance"], agent["version"], float(end),
                            bundle.get("id"), bundle.get("name"), bundle.get("version"),
                            None if bundle_end is None else float(bundle_end)))
        return updates

    def record_heartbeats(self, messages: list[Message]) -> None:
        """Keep the newest heartbeat per device (and a count); heartbeats also prove liveness."""
        latest: dict[str, Message] = {}
        counts: Counter = Counter()
        for m in messages:
            if m.kind != "heartbeat":
                raise ValueError(f"record_heartbeats takes heartbeat messages, not {m.kind!r}")
            counts[m.device_id] += 1
            if m.device_id not in latest or m.payload["ts"] >= latest[m.device_id].payload["ts"]:
                latest[m.device_id] = m
        if not latest:
            return
        beats, devices = [], []
        for device_id in sorted(latest):
            m = latest[device_id]
            p = m.payload
            beats.append((device_id, float(p["ts"]), float(m.received), counts[device_id],
                          m.text if m.text else to_json(p)))
            devices.append(self._info_row(m, last_seen=m.received))
        g = self._db.greatest
        sql = f"""INSERT INTO heartbeats (device_id, ts, received, count, payload) VALUES (?, ?, ?, ?, ?)
                  ON CONFLICT (device_id) DO UPDATE SET
                    count = heartbeats.count + excluded.count,
                    received = {g('heartbeats.received', 'excluded.received')},
                    payload = CASE WHEN excluded.ts >= heartbeats.ts THEN excluded.payload ELSE heartbeats.payload END,
                    ts = {g('heartbeats.ts', 'excluded.ts')}"""

        def work(db):
            db.executemany(sql, beats)
            db.executemany(self._upsert_device, devices)
        self._db.run(work, "storing heartbeats")

    def _info_row(self, m: Message, last_seen: float) -> tuple:
        p = m.payload
        ts = float(p["ts"])
        b = _primary_bundle(p.get("bundles")) or {}
        return (m.device_id, float(last_seen), None, None, 0, p["agent"]["instance"], p["agent"]["version"], ts,
                b.get("id"), b.get("name"), b.get("version"), ts if b else None)

    def record_status(self, message: Message) -> None:
        """Retained online/offline status. An empty payload forgets the device (telemetry.md).

        The newest status by its ``ts`` wins; at equal ``ts`` offline wins, because the last will
        carries the ts of the connect whose "online" it ends. A retained status can be old, so
        it counts as a sign of life only at min(ts, received).
        """
        m = message
        if m.kind != "status":
            raise ValueError(f"record_status takes a status message, not {m.kind!r}")
        if not m.payload:
            def forget(db):
                db.execute("DELETE FROM devices WHERE device_id = ?", (m.device_id,))
                db.execute("DELETE FROM heartbeats WHERE device_id = ?", (m.device_id,))
            self._db.run(forget, "forgetting a device")
            return
        ts = float(m.payload["ts"])
        online = m.payload["state"] == "online"
        newer = ("(devices.status_ts IS NULL OR excluded.status_ts > devices.status_ts "
                 "OR (excluded.status_ts = devices.status_ts AND NOT excluded.online))")
        sql = f"""INSERT INTO devices (device_id, online, status_ts) VALUES (?, ?, ?)
                  ON CONFLICT (device_id) DO UPDATE SET
                    online = CASE WHEN {newer} THEN excluded.online ELSE devices.online END,
                    status_ts = CASE WHEN {newer} THEN excluded.status_ts ELSE devices.status_ts END"""

        def work(db):
            db.execute(sql, (m.device_id, online, ts))
            db.execute(self._upsert_device, self._info_row(m, last_seen=min(ts, m.received)))
        self._db.run(work, "storing a status")

    def quarantine(self, topic: str, payload: bytes, reason: str, received: float) -> None:
        """Keep a rejected message aside (truncated) and count it by reason."""
        self.quarantine_many([(topic, payload, reason, received)])

    def quarantine_many(self, items: list[tuple[str, bytes, str, float]]) -> None:
        """Several rejected messages in one transaction: (topic, payload, reason, received) each."""
        if not items:
            return
        rows, counts = [], Counter()
        for topic, payload, reason, received in items:
            reason = _clean_text(reason, 100)
            if isinstance(payload, str):
                payload = payload.encode("utf-8", "backslashreplace")
            payload = bytes(payload or b"")
            rows.append((float(received), _clean_text(topic, 1024), reason, len(payload),
                         payload[:QUARANTINE_PAYLOAD_BYTES]))
            counts[reason] += 1

        def work(db):
            db.executemany("INSERT INTO quarantine (received, topic, reason, size, payload) "
                           "VALUES (?, ?, ?, ?, ?)", rows)
            db.executemany("""INSERT INTO quarantine_counts (reason, count) VALUES (?, ?)
                              ON CONFLICT (reason) DO UPDATE SET count = quarantine_counts.count + excluded.count""",
                           sorted(counts.items()))
            db.execute("DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?", (QUARANTINE_KEEP,))
        self._db.run(work, "storing rejected messages")

    def quarantine_counts(self) -> dict[str, int]:
        rows = self._db.query("SELECT reason, count FROM quarantine_counts ORDER BY reason")
        return {reason: int(n) for reason, n in rows}

    def quarantined(self, limit: int = 100) -> list[dict]:
        """The newest rejected messages kept aside, newest first (payload truncated to 64 KiB)."""
        rows = self._db.query("SELECT id, received, topic, reason, size, payload FROM quarantine "
                              "ORDER BY id DESC LIMIT ?", (int(limit),))
        return [{"id": r[0], "received": r[1], "topic": r[2], "reason": r[3], "size": r[4], "payload": bytes(r[5])}
                for r in rows]

    # -- queries -------------------------------------------------------------------------------------
    def devices(self) -> list[dict]:
        """Every known device, by id. ``online`` is None until a status was seen.

        ``p95_latency_ms``: the request-weighted mean of the windows' p95 over the hour before the
        device's newest window (an approximation: percentiles do not add up exactly).
        """
        rows = self._db.query("""
            SELECT d.device_id, d.online, d.status_ts, d.last_seen, d.last_seq, d.window_count, d.bundle_id,
                   d.bundle_name, d.bundle_version, d.instance, d.agent_version, d.last_end,
                   h.ts, h.count, h.payload
            FROM devices d LEFT JOIN heartbeats h ON h.device_id = d.device_id""")
        weighted = self._db.query(f"""
            SELECT w.device_id, SUM(w.p95_latency_ms * w.requests), SUM(w.requests)
            FROM windows w JOIN devices d ON d.device_id = w.device_id
            WHERE w.window_end >= d.last_end - {P95_HORIZON_S} AND w.p95_latency_ms IS NOT NULL AND w.requests > 0
            GROUP BY w.device_id""")
        p95 = {device: float(total) / float(weight) for device, total, weight in weighted if weight}
        out = []
        for r in sorted(rows):  # in Python: PostgreSQL's collation would order ids differently
            beat = json.loads(r[14]) if r[14] else None
            out.append({
                "device_id": r[0], "online": None if r[1] is None else bool(r[1]), "status_ts": r[2],
                "last_seen": r[3], "last_seq": r[4], "windows": int(r[5] or 0),
                "bundle": {"id": r[6], "name": r[7], "version": r[8]} if r[6] else None,
                "p95_latency_ms": p95.get(r[0]), "instance": r[9], "agent_version": r[10], "last_window_end": r[11],
                "last_heartbeat": r[12], "heartbeats": int(r[13] or 0),
                "uptime_s": beat.get("uptime_s") if beat else None, "outbox": beat.get("outbox") if beat else None,
            })
        return out

    def windows(self, device_id: str | None = None, bundle_id: str | None = None, since: float | None = None,
                until: float | None = None) -> list[dict]:
        """Stored window payloads ordered by window end; ``since <= window.end < until``.

        Raises StoreError if a payload is stored compressed and the ``lz4`` package is missing.
        """
        where, params = [], []
        for clause, value in (("device_id = ?", device_id), ("bundle_id = ?", bundle_id),
                              ("window_end >= ?", since), ("window_end < ?", until)):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = "SELECT payload, payload_lz4 FROM windows" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.query(sql + " ORDER BY window_end, device_id, seq", tuple(params))
        return [unpack_payload(text, packed) for text, packed in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
