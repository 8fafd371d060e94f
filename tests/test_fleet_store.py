"""The fleet store on a real SQLite file and a real PostgreSQL (127.0.0.1:5432, database `test`,
one fresh schema per test, dropped afterwards): idempotent ingestion, liveness, quarantine,
drift/alert/state round trips, concurrent writers, LZ4-compressed payloads (and the text fallback
without lz4), schema versioning with the upgrade of a real version-1 database, and URL errors."""
from __future__ import annotations

import json
import math
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import lz4.block
import numpy as np
import pytest

from edgeops.errors import InputFileError, UsageError
from edgeops.fleet import store as store_module
from edgeops.fleet import store_schema
from edgeops.fleet.ingest import parse_message
from edgeops.fleet.store import StoreError, open_store, sqlite_path
from test_fleet_ingest import BUNDLE_ID, encode, make_heartbeat, make_status, make_window, parsed_window, topic

from conftest import PG_BASE


def windows_for(devices, seqs, **kw):
    return [parsed_window(d, s, end=1_000_000.0 + 60 * s, **kw) for d in devices for s in seqs]


def status(device_id, state, ts, received=None):
    return parse_message(topic(device_id, "status"), encode(make_status(device_id, state, ts)), received=received)


def heartbeat(device_id, ts, received=None, instance="4f1c0a9b"):
    return parse_message(topic(device_id, "heartbeat"), encode(make_heartbeat(device_id, ts, instance)),
                         received=received)


def by_id(store):
    return {d["device_id"]: d for d in store.devices()}


def raw_sql(url, sql, params=()):
    """Run one statement on the database beside the store (to read raw columns, or tamper)."""
    if url.startswith("postgresql"):
        import psycopg
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    conn = sqlite3.connect(url, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_ingestion_is_idempotent(store):
    batch = windows_for(["a", "b"], range(1, 11))
    assert store.insert_windows(batch) == 20
    assert store.insert_windows(batch) == 0                      # redelivered: nothing new
    overlap = windows_for(["a", "b"], range(8, 14))
    assert store.insert_windows(overlap + overlap[:3]) == 6      # seq 11..13 of both, duplicates in-batch
    assert store.insert_windows([]) == 0
    assert len(store.windows()) == 26
    devices = by_id(store)
    assert devices["a"]["windows"] == devices["b"]["windows"] == 13
    assert devices["a"]["last_seq"] == 13
    assert [w["seq"] for w in store.windows(device_id="a")] == list(range(1, 14))


def test_a_wiped_agent_buffer_starts_seq_again_and_is_still_stored(store):
    assert store.insert_windows(windows_for(["a"], range(1, 6))) == 5
    fresh = [parsed_window("a", s, end=2_000_000.0 + 60 * s, instance="new-instance") for s in (1, 2)]
    assert store.insert_windows(fresh) == 2                      # same seqs, new agent instance
    device = by_id(store)["a"]
    assert (device["instance"], device["last_seq"], device["windows"]) == ("new-instance", 2, 7)
    assert store.insert_windows(windows_for(["a"], [3])) == 0    # a late redelivery of the old instance
    assert by_id(store)["a"]["instance"] == "new-instance"


def test_windows_are_returned_as_stored_and_filtered(store):
    other = "f" * 64
    store.insert_windows(windows_for(["a", "b"], range(1, 6)) + windows_for(["c"], [1, 2], bundle_id=other))
    everything = store.windows()
    ends = [w["window"]["end"] for w in everything]
    assert ends == sorted(ends) and len(everything) == 12
    assert everything[0] == make_window("a", 1, end=1_000_060.0)   # the payload exactly as received
    assert {w["device_id"] for w in store.windows(bundle_id=other)} == {"c"}
    selected = store.windows(device_id="b", since=1_000_120.0, until=1_000_240.0)
    assert [w["seq"] for w in selected] == [2, 3]                 # since <= end < until
    assert store.windows(device_id="nobody") == []


def test_payload_text_that_postgresql_jsonb_would_refuse_round_trips(store):
    w = make_window("a", 1)
    w["features"][-1]["counts"] = {"nul\u0000cat": 3, "\ud800": 1, "caf\u00e9": 2}
    m = parse_message(topic("a", "telemetry"), json.dumps(w).encode())
    assert store.insert_windows([m]) == 1
    assert store.windows()[0]["features"][-1]["counts"] == w["features"][-1]["counts"]


def test_device_liveness_from_status_heartbeats_and_windows(store):
    store.insert_windows(windows_for(["a"], [1]))
    assert by_id(store)["a"]["online"] is None                    # no status seen yet
    store.record_status(status("a", "online", ts=5000.0, received=5001.0))
    a = by_id(store)["a"]
    assert a["online"] is True and a["status_ts"] == 5000.0
    store.record_status(status("a", "offline", ts=5000.0))        # the last will: same ts as the connect
    assert by_id(store)["a"]["online"] is False
    store.record_status(status("a", "online", ts=4000.0))         # an older status arriving late
    assert by_id(store)["a"]["online"] is False
    store.record_status(status("a", "online", ts=6000.0))         # reconnected
    assert by_id(store)["a"]["online"] is True

    # A status alone creates the device; a retained old status is not a recent sign of life.
    store.record_status(status("b", "offline", ts=100.0, received=9_999_999.0))
    b = by_id(store)["b"]
    assert (b["online"], b["last_seen"], b["windows"], b["bundle"]["id"]) == (False, 100.0, 0, BUNDLE_ID)

    store.record_heartbeats([heartbeat("b", 200.0, received=300.0), heartbeat("b", 250.0, received=350.0),
                             heartbeat("c", 10.0, received=20.0)])
    store.record_heartbeats([heartbeat("b", 150.0, received=360.0)])   # late, older heartbeat
    b = by_id(store)["b"]
    assert (b["heartbeats"], b["last_heartbeat"], b["last_seen"]) == (3, 250.0, 360.0)
    assert b["uptime_s"] == 3600.2 and b["outbox"] == {"pending": 0, "dropped_total": 0}
    assert by_id(store)["c"]["online"] is None

    # An empty retained status forgets the device; its windows stay for history.
    store.record_status(parse_message(topic("a", "status"), b""))
    assert "a" not in by_id(store) and len(store.windows(device_id="a")) == 1


def test_p95_latency_from_the_last_hour_of_windows(store):
    old = parsed_window("a", 1, end=1000.0, p95=100.0, requests=10)
    recent = [parsed_window("a", 2, end=9000.0, p95=2.0, requests=30),
              parsed_window("a", 3, end=9060.0, p95=4.0, requests=10),
              parsed_window("a", 4, end=9120.0, p95=None, requests=0)]
    store.insert_windows([old] + recent)
    assert by_id(store)["a"]["p95_latency_ms"] == pytest.approx((2.0 * 30 + 4.0 * 10) / 40)
    store.insert_windows([parsed_window("b", 1, p95=None, requests=0)])
    assert by_id(store)["b"]["p95_latency_ms"] is None


def test_quarantine_counts_and_keeps_truncated_payloads(store, monkeypatch):
    monkeypatch.setattr(store_module, "QUARANTINE_KEEP", 5)
    store.quarantine("edgeops/v1/devices/x/telemetry", b"\xff\xfe not utf-8", "utf8", 1.0)
    big = b"{" + b"x" * (200 * 1024)
    store.quarantine_many([("t\x00opic\ud800", big, "too_large", 2.0)] +
                          [("edgeops/v1/devices/y/telemetry", b"[]", "not_object", 3.0 + i) for i in range(8)])
    assert store.quarantine_counts() == {"not_object": 8, "too_large": 1, "utf8": 1}
    kept = store.quarantined(limit=100)
    assert len(kept) == 5 and all(k["reason"] == "not_object" for k in kept)   # the oldest rows trimmed
    store.quarantine("edgeops/v1/devices/z/telemetry", big, "too_large", 20.0)
    newest = store.quarantined(limit=1)[0]
    assert newest["size"] == len(big) and newest["payload"] == big[:64 * 1024]
    assert store.quarantine_counts()["too_large"] == 2


def test_references_drift_alerts_and_state_round_trip(store):
    assert store.reference(BUNDLE_ID) is None
    store.save_reference(BUNDLE_ID, {"model": {"name": "digits"}}, {"features": [{"name": "x", "edges": [1.5]}]})
    store.save_reference(BUNDLE_ID, {"model": {"name": "digits", "version": "2"}}, {"features": []})
    assert store.reference(BUNDLE_ID) == {"manifest": {"model": {"name": "digits", "version": "2"}},
                                          "refstats": {"features": []}}

    def row(device, feature, drifted, statistic=1.5, p=0.001, scope=None):
        return {"device_id": device, "bundle_id": BUNDLE_ID, "feature": feature, "kind": "numeric",
                "test": "ks", "statistic": statistic, "p_value": p, "psi": 0.3, "n": 500, "drifted": drifted,
                "scope": scope}
    store.save_drift(100.0, [row("a", "x[0]", True, scope="device"), row("__fleet__", "x[0]", False)])
    store.save_drift(200.0, [row("a", "x[0]", False, statistic=math.nan, p=None), row("b", "x[1]", True)])
    store.save_drift(300.0, [])
    latest = store.latest_drift(max_age=0)  # only the newest evaluation's rows
    assert [(r["device_id"], r["drifted"], r["evaluated_at"]) for r in latest] == [("a", False, 200.0),
                                                                                   ("b", True, 200.0)]
    # Rows are stored sparsely (a stable pair only every few minutes): by default each pair's newest
    # row within max_age of the newest evaluation counts, so the fleet row of t=100 is still current.
    assert sorted((r["device_id"], r["evaluated_at"]) for r in store.latest_drift()) == [
        ("__fleet__", 100.0), ("a", 200.0), ("b", 200.0)]
    assert [r["device_id"] for r in store.latest_drift(max_age=50)] == ["a", "b"]
    assert latest[0]["statistic"] is None and latest[0]["p_value"] is None and latest[1]["n"] == 500
    history = store.drift_history(device_id="a", feature="x[0]")
    assert [(r["evaluated_at"], r["drifted"], r["scope"]) for r in history] == [(100.0, True, "device"),
                                                                                (200.0, False, None)]
    assert len(store.drift_history(since=150.0)) == 2 and len(store.drift_history()) == 4

    store.save_alert({"ts": 50.0, "device_id": "a", "feature": "x[0]", "state": "raised"})
    store.save_alert({"ts": 10.0, "device_id": None, "scope": "fleet", "state": "raised", "psi": np.float64(0.5)})
    assert [a["ts"] for a in store.alerts()] == [10.0, 50.0] and store.alerts()[0]["psi"] == 0.5
    assert store.alerts(since=20.0) == [{"ts": 50.0, "device_id": "a", "feature": "x[0]", "state": "raised"}]

    assert store.get_state("hysteresis") is None
    store.set_state("hysteresis", {"a|x[0]": {"on": 2}})
    store.set_state("hysteresis", {"a|x[0]": {"on": 3}})
    assert store.get_state("hysteresis") == {"a|x[0]": {"on": 3}}


def test_prune_removes_old_rows_and_recounts(store):
    # received as they ended: a window goes once it both ended and was received before the cutoff
    store.insert_windows([parse_message(topic("a", "telemetry"), encode(make_window("a", s, end=1_000_000.0 + 60 * s)),
                                        received=1_000_000.0 + 60 * s) for s in range(1, 6)])
    store.save_drift(10.0, [{"device_id": "a", "bundle_id": BUNDLE_ID, "feature": "x", "drifted": False}])
    assert store.prune(before=1_000_000.0 + 60 * 3) == {"windows": 2, "drift": 1}
    assert by_id(store)["a"]["windows"] == 3 and len(store.windows()) == 3


def test_data_survives_reopening(store_url):
    with open_store(store_url) as s:
        s.insert_windows(windows_for(["a"], [1, 2]))
    with open_store(store_url) as s:
        assert s.insert_windows(windows_for(["a"], [1, 2, 3])) == 1
        assert by_id(s)["a"]["windows"] == 3


def test_two_stores_writing_overlapping_batches_at_once(store_url):
    """Two monitor processes (here: threads, one Store each) sharing the load and seeing the same
    redelivered windows: no failure, no double count."""
    devices = [f"dev-{i:02d}" for i in range(20)]
    everything = windows_for(devices, range(1, 41))                 # 800 windows

    def batches(seed):
        # Both writers get the same rounds of windows in different orders, partly overlapping:
        # each round, both transactions insert many of the same keys at the same moment.
        rng = random.Random(seed)
        rounds = [everything[i:i + 200] for i in range(0, len(everything), 200)]
        return [rng.sample(r, 160) for r in rounds]
    plans = [batches(1), batches(2)]
    new, errors = [0, 0], []
    rounds = threading.Barrier(2)

    def worker(k):
        try:
            with open_store(store_url) as s:
                for batch in plans[k]:
                    rounds.wait(timeout=60)
                    new[k] += s.insert_windows(batch)
                    s.record_heartbeats([heartbeat(m.device_id, 1.0) for m in batch[:5]])
        except Exception as exc:  # reported below, the thread must not die silently
            errors.append(exc)
            rounds.abort()
    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    unique = {(m.device_id, m.payload["seq"]) for plan in plans for batch in plan for m in batch}
    with open_store(store_url) as s:
        assert sum(new) == len(unique) == len(s.windows())
        assert sum(d["windows"] for d in s.devices()) == len(unique)


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_fleet_ingest import parsed_window
from edgeops.fleet.store import open_store
s = open_store({path!r})
k = int(sys.argv[1])
total = 0
for start in range(1, 201, 20):
    batch = [parsed_window(f"dev-{{d}}", seq) for d in range(3) for seq in range(start + 10 * k, start + 10 * k + 20)]
    total += s.insert_windows(batch)
print(total)
"""


def test_two_processes_writing_one_sqlite_file_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.db")
    open_store(path).close()
    code = WRITER.format(tests=str(__import__("pathlib").Path(__file__).parent), path=path)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    with open_store(path) as s:
        stored = s.windows()
    expected = {(f"dev-{d}", seq) for d in range(3) for seq in range(1, 211)}
    assert {(w["device_id"], w["seq"]) for w in stored} == expected
    assert sum(int(o[0]) for o in outs) == len(expected) == len(stored)


def test_stores_opened_at_the_same_moment_on_a_new_database(store_url, tmp_path):
    """Monitors starting together: the tables are created once, nobody fails."""
    targets = [store_url]
    if "postgresql" not in store_url:
        targets += [str(tmp_path / f"new-{i}.db") for i in range(15)]
    for url in targets:
        errors, start = [], threading.Barrier(3)

        def opener():
            try:
                start.wait(timeout=30)
                with open_store(url) as s:
                    s.set_state("k", {"v": 1})
            except Exception as exc:  # reported below
                errors.append(exc)
        threads = [threading.Thread(target=opener) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
    if "postgresql" not in store_url:
        with sqlite3.connect(store_url) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_is_refused(store_url):
    open_store(store_url).close()
    newer = store_schema.SCHEMA_VERSION + 1
    raw_sql(store_url, f"UPDATE schema_version SET version = {newer}")
    with pytest.raises(InputFileError, match=f"schema version {newer}, newer than this edgeops reads"):
        open_store(store_url)
    assert raw_sql(store_url, "SELECT version FROM schema_version") == [(newer,)]   # left as it was


def test_store_urls_and_their_errors(tmp_path):
    assert sqlite_path("sqlite:///abs/fleet.db") == "/abs/fleet.db"
    assert sqlite_path("sqlite:rel/fleet.db") == "rel/fleet.db"
    assert sqlite_path("fleet.db") == "fleet.db"
    for bad in ("", "mysql://host/db", "sqlite://host/db", "sqlite:"):
        with pytest.raises(UsageError):
            open_store(bad)
    with pytest.raises(InputFileError, match="does not exist"):
        open_store(str(tmp_path / "missing-dir" / "fleet.db"))
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputFileError):
        open_store(str(tmp_path / "junk.db"))
    with pytest.raises(InputFileError, match="cannot connect"):
        open_store("postgresql://postgres:secret@127.0.0.1:1/test")
    try:
        open_store("postgresql://postgres:secret@127.0.0.1:1/test")
    except InputFileError as exc:
        assert "secret" not in str(exc)
    with pytest.raises(UsageError):
        open_store("postgresql://postgres@127.0.0.1:5432/test?no_such_option=1")
    with pytest.raises(UsageError, match="no schema"):
        open_store(f"{PG_BASE}?options=-csearch_path%3Dno_such_schema_{uuid.uuid4().hex[:8]}")


def test_sqlite_never_imports_psycopg_and_missing_psycopg_names_the_extra(tmp_path):
    code = f"""
import sys
from edgeops.fleet.store import open_store
open_store({str(tmp_path / 'x.db')!r}).close()
assert 'psycopg' not in sys.modules
sys.modules['psycopg'] = None  # as if it were not installed
from edgeops.errors import MissingDependencyError
try:
    open_store('postgresql://postgres@127.0.0.1:5432/test')
except MissingDependencyError as exc:
    print(exc.package, exc.extra)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["psycopg", "monitor"]


# -- compressed payloads -------------------------------------------------------------------------------

def test_window_payloads_are_stored_lz4_compressed_and_read_back_exactly(store, store_url):
    batch = windows_for(["a", "b"], range(1, 6))
    assert store.insert_windows(batch) == 10
    raw = raw_sql(store_url, "SELECT device_id, seq, payload, payload_lz4 FROM windows ORDER BY device_id, seq")
    sent = {(m.device_id, m.payload["seq"]): m.text for m in batch}
    for device, seq, text, packed in raw:
        original = sent[(device, seq)].encode()
        assert text == "" and isinstance(packed, bytes)
        assert len(packed) < 0.7 * len(original)                       # really compressed, not just moved
        assert lz4.block.decompress(packed) == original                # the text as received, byte for byte
    assert store.windows() == [m.payload for m in sorted(batch, key=lambda m: (m.payload["window"]["end"],
                                                                             m.device_id))]
    assert store.insert_windows(batch[:3]) == 0                        # idempotent as before


def test_without_lz4_payloads_are_stored_as_text_and_compressed_rows_ask_for_it(store, store_url, monkeypatch):
    monkeypatch.setattr(store_schema, "lz4", None)                     # as if lz4 were not installed
    plain = windows_for(["plain"], [1, 2])
    assert store.insert_windows(plain) == 2 and store.insert_windows(plain) == 0
    raw = raw_sql(store_url, "SELECT payload, payload_lz4 FROM windows ORDER BY seq")
    assert raw == [(m.text, None) for m in plain]
    assert store.windows() == [m.payload for m in plain]

    monkeypatch.setattr(store_schema, "lz4", lz4)                      # a process that has lz4 writes next
    packed = windows_for(["packed"], [1])
    assert store.insert_windows(packed) == 1
    assert [w["device_id"] for w in store.windows()] == ["packed", "plain", "plain"]   # both kinds, one list

    monkeypatch.setattr(store_schema, "lz4", None)
    assert store.windows(device_id="plain") == [m.payload for m in plain]
    with pytest.raises(StoreError, match=r"pip install 'edgeops\[monitor\]'"):
        store.windows()


def test_the_store_works_when_lz4_cannot_be_imported(tmp_path):
    code = f"""
import sys
sys.modules['lz4'] = None  # not installed: only the stdlib (and psycopg) are there
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
from test_fleet_ingest import parsed_window
from edgeops.fleet.store import open_store
with open_store({str(tmp_path / 'x.db')!r}) as s:
    m = parsed_window('a', 1)
    assert s.insert_windows([m]) == 1 and s.windows() == [m.payload]
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert raw_sql(str(tmp_path / "x.db"), "SELECT payload_lz4 IS NULL, length(payload) > 1000 FROM windows") \
        == [(1, 1)]


# -- upgrading a version-1 database --------------------------------------------------------------------
# The version-1 schema as edgeops created it (kept here verbatim: the upgrade must work on what
# is really out there, not on what the current DDL minus a column happens to be).
V1_TYPES = {
    "sqlite": {"text": "TEXT", "real": "REAL", "int": "INTEGER", "bool": "INTEGER", "bytes": "BLOB",
               "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"text": "TEXT", "real": "DOUBLE PRECISION", "int": "BIGINT", "bool": "BOOLEAN",
                   "bytes": "BYTEA", "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"},
}
V1_DDL = (
    "CREATE TABLE schema_version (version {int} NOT NULL)",
    """CREATE TABLE devices (device_id {text} PRIMARY KEY, online {bool}, status_ts {real}, last_seen {real},
        last_seq {int}, last_end {real}, window_count {int} NOT NULL DEFAULT 0, instance {text},
        agent_version {text}, info_ts {real}, bundle_id {text}, bundle_name {text}, bundle_version {text},
        bundle_ts {real})""",
    """CREATE TABLE windows (device_id {text} NOT NULL, instance {text} NOT NULL, seq {int} NOT NULL,
        bundle_id {text} NOT NULL, variant {text} NOT NULL, role {text} NOT NULL, window_start {real} NOT NULL,
        window_end {real} NOT NULL, requests {int} NOT NULL, rows {int} NOT NULL, errors {int} NOT NULL,
        rejected {int} NOT NULL, p95_latency_ms {real}, received {real} NOT NULL, payload {text} NOT NULL,
        PRIMARY KEY (device_id, instance, seq))""",
    """CREATE TABLE heartbeats (device_id {text} PRIMARY KEY, ts {real} NOT NULL, received {real} NOT NULL,
        count {int} NOT NULL, payload {text} NOT NULL)""",
    """CREATE TABLE quarantine (id {serial}, received {real} NOT NULL, topic {text} NOT NULL,
        reason {text} NOT NULL, size {int} NOT NULL, payload {bytes} NOT NULL)""",
    "CREATE TABLE quarantine_counts (reason {text} PRIMARY KEY, count {int} NOT NULL)",
    """CREATE TABLE reference_stats (bundle_id {text} PRIMARY KEY, saved {real} NOT NULL, manifest {text} NOT NULL,
        refstats {text} NOT NULL)""",
    """CREATE TABLE drift (id {serial}, evaluated_at {real} NOT NULL, device_id {text} NOT NULL,
        bundle_id {text} NOT NULL, feature {text} NOT NULL, kind {text}, test {text}, statistic {real},
        p_value {real}, psi {real}, n {int}, drifted {bool} NOT NULL, scope {text})""",
    "CREATE TABLE alerts (id {serial}, ts {real} NOT NULL, device_id {text}, payload {text} NOT NULL)",
    "CREATE TABLE state (key {text} PRIMARY KEY, updated {real} NOT NULL, value {text} NOT NULL)",
    "CREATE INDEX windows_by_end ON windows (window_end)",
    "CREATE INDEX windows_by_bundle ON windows (bundle_id, window_end)",
    "CREATE INDEX windows_by_device ON windows (device_id, window_end)",
    "CREATE INDEX drift_by_time ON drift (evaluated_at)",
    "CREATE INDEX drift_by_device ON drift (device_id, feature, evaluated_at)",
    "CREATE INDEX alerts_by_time ON alerts (ts)",
)
V1_INSERT_WINDOW = ("INSERT INTO windows (device_id, instance, seq, bundle_id, variant, role, window_start, "
                    "window_end, requests, rows, errors, rejected, p95_latency_ms, received, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def make_v1_database(url, messages):
    """A version-1 fleet database with ``messages`` (windows) in it, written as version 1 wrote them."""
    rows = []
    for m in messages:
        p = m.payload
        rows.append((m.device_id, p["agent"]["instance"], p["seq"], p["bundle"]["id"], p["variant"]["name"],
                     p["variant"]["role"], p["window"]["start"], p["window"]["end"], p["requests"]["count"],
                     p["requests"]["rows"], p["requests"]["errors"], p["requests"]["rejected"],
                     p["latency_ms"]["p95"], m.received, m.text))
    if url.startswith("postgresql"):
        import psycopg
        with psycopg.connect(url) as conn:                             # one transaction
            for sql in V1_DDL:
                conn.execute(sql.format(**V1_TYPES["postgresql"]))
            conn.execute("INSERT INTO schema_version (version) VALUES (1)")
            conn.cursor().executemany(V1_INSERT_WINDOW.replace("?", "%s"), rows)
        return
    conn = sqlite3.connect(url, isolation_level=None)
    conn.execute("PRAGMA page_size = 8192")
    conn.execute("PRAGMA journal_mode = WAL")
    with conn:
        for sql in V1_DDL:
            conn.execute(sql.format(**V1_TYPES["sqlite"]))
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.executemany(V1_INSERT_WINDOW, rows)
    conn.close()


def test_a_version_1_database_is_upgraded_in_place_by_stores_opening_it_at_once(store_url):
    old = windows_for(["a", "b"], range(1, 4))
    make_v1_database(store_url, old)
    assert raw_sql(store_url, "SELECT version FROM schema_version") == [(1,)]

    # The monitor, its evaluator, parser workers and the dashboard open the database at once. A
    # writer holding the windows table makes them all find version 1 and then queue up for the
    # upgrade together: the race that the schema lock must settle (one upgrades, the others find
    # it done), made certain rather than left to timing.
    app = "edgeops_upgrade_" + uuid.uuid4().hex[:8]
    is_pg = store_url.startswith("postgresql")
    url = store_url + f"&application_name={app}" if is_pg else store_url
    if is_pg:
        import psycopg
        holder = psycopg.connect(store_url)
        holder.execute("LOCK TABLE windows IN ACCESS EXCLUSIVE MODE")
    else:
        holder = sqlite3.connect(store_url, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    errors = []

    def opener():
        try:
            with open_store(url) as s:
                s.windows()
        except Exception as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not errors:
        if is_pg:   # all four waiting on a lock (the table, or the schema lock)
            waiting = raw_sql(store_url, "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = ? "
                                         "AND wait_event_type = 'Lock'", (app,))[0][0]
            if waiting == len(threads):
                break
        else:       # SQLite cannot tell who waits: give them the time to read the version
            time.sleep(0.5)
            break
        time.sleep(0.02)
    if is_pg:
        holder.commit()
    else:
        holder.execute("COMMIT")
    holder.close()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert raw_sql(store_url, "SELECT version FROM schema_version") == [(store_schema.SCHEMA_VERSION,)]

    with open_store(store_url) as s:
        expected = sorted(old, key=lambda m: (m.payload["window"]["end"], m.device_id))
        assert s.windows() == [m.payload for m in expected]            # the old text rows, unchanged
        assert s.insert_windows(old[:2]) == 0                          # old keys still deduplicate
        new = windows_for(["a"], [4, 5])
        assert s.insert_windows(new) == 2
        assert [w["seq"] for w in s.windows(device_id="a")] == [1, 2, 3, 4, 5]
    raw = dict(((d, q), (t, b)) for d, q, t, b in
               raw_sql(store_url, "SELECT device_id, seq, payload, payload_lz4 FROM windows"))
    assert raw[("a", 1)] == (old[0].text, None)                        # untouched by the upgrade
    assert raw[("a", 4)][0] == "" and lz4.block.decompress(raw[("a", 4)][1]) == new[0].text.encode()
    open_store(store_url).close()                                      # opening again changes nothing
    assert raw_sql(store_url, "SELECT version FROM schema_version") == [(store_schema.SCHEMA_VERSION,)]
