"""The monitor's worker side (edgeops/fleet/pool.py): a chunk is parsed, stored and counted in a
worker, and what comes back gives the monitor the same counts as parsing in its own thread.
Also: a worker that cannot store says so and hands the windows back, and an unknown reference
leaves the counting to the monitor."""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pytest

from edgeops.agent.telemetry import WindowStats, build_window_payload, encode_payload
from edgeops.bundle.refstats import reference_stats
from edgeops.fleet.horizon import EXTRAS, Counted, Layout, extras_vector
from edgeops.fleet.pool import ParserPool, _merge, _smallest, work_batch
from edgeops.fleet.store import open_store

PREFIX = "edgeops"
FEATURES = 6


@pytest.fixture(scope="module")
def refstats() -> dict:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    colour = rng.choice(["red", "green", "blue"], size=2000)
    return reference_stats({"x": x, "colour": colour}, {"label": rng.integers(0, 3, 2000)})


@pytest.fixture(scope="module")
def bundle_id(refstats) -> str:
    return hashlib.sha256(json.dumps(refstats, sort_keys=True).encode()).hexdigest()


def window(refstats, bundle_id, device_id: str, seq: int, rows: int = 200, role: str = "primary") -> bytes:
    rng = np.random.default_rng(seq)
    stats = WindowStats(refstats)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32) + 0.3
    stats.record_request({"x": x, "colour": rng.choice(["red", "blue", "pink"], size=rows)},
                         {"label": rng.integers(0, 3, rows)}, 1.2)
    now = time.time()
    payload = build_window_payload(
        device_id=device_id, seq=seq, agent={"version": "t", "instance": "i-" + device_id},
        bundle={"id": bundle_id, "name": "b", "version": "1"}, variant={"name": "primary", "role": role},
        start=now - 60, end=now, body=stats.snapshot_and_reset(),
        system={"cpu_percent": 1.0, "rss_bytes": 1, "temperature_c": None, "load1": 0.1},
        outbox={"pending": 0, "dropped_total": 0})
    return encode_payload(payload)


def items(refstats, bundle_id, n: int = 6) -> list:
    out = [(f"{PREFIX}/v1/devices/dev-{i}/telemetry", window(refstats, bundle_id, f"dev-{i}", i + 1), 100.0 + i)
           for i in range(n)]
    out.append((f"{PREFIX}/v1/devices/dev-x/telemetry", b'{"schema_version": 1, "kind": "window", "device_id": "dev-x"}', 1.0))
    return out


def expected_vectors(refstats, batch) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the monitor computes itself from the full-check parse (the reference for the workers)."""
    pool = ParserPool(PREFIX, 0)
    layout = Layout(refstats)
    out = []
    for first, _ in pool.parse(batch).results:
        if type(first) is Counted:
            out.append((layout.vector(first.payload, first.packed), extras_vector(first.payload)))
    return out


def test_a_worker_stores_its_chunk_and_sends_the_same_counts(tmp_path, refstats, bundle_id):
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_store(url) as store:
        store.save_reference(bundle_id, {"model": {"name": "b"}}, refstats)
    batch = items(refstats, bundle_id)
    out, storage = work_batch(PREFIX, [i for i in batch], url)
    assert storage == {"stored": True, "new": 6, "error": None}
    parsed = _merge([(out, storage)], batch)
    assert parsed.new == 6 and parsed.errors == ()
    assert parsed.results[-1] == (None, "field:seq")  # the rejected one keeps its reason
    windows = [r for r in parsed.results if type(r[0]) is Counted]
    assert all(message is None for _, message in windows)  # stored already: no Message to store
    for (w, _), (vector, extras) in zip(windows, expected_vectors(refstats, batch)):
        assert w.vector is not None and w.vector.dtype == np.uint16
        np.testing.assert_array_equal(w.vector.astype(np.int64), vector)
        np.testing.assert_array_equal(w.extras, extras)
        assert vector.sum() > 0
    with open_store(url) as store:
        stored = store.windows()
    assert sorted(p["device_id"] for p in stored) == [f"dev-{i}" for i in range(6)]
    # The same chunk again (a redelivery) stores nothing new.
    assert work_batch(PREFIX, batch, url)[1]["new"] == 0


def test_without_the_reference_the_worker_sends_packed_sections(tmp_path, refstats, bundle_id):
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    batch = items(refstats, bundle_id, 3)
    out, storage = work_batch(PREFIX, batch, url)
    assert storage["stored"]
    windows = [r[0] for r in _merge([(out, storage)], batch).results if type(r[0]) is Counted]
    assert [w.vector for w in windows] == [None] * 3
    layout = Layout(refstats)
    for w, (vector, extras) in zip(windows, expected_vectors(refstats, batch)):
        np.testing.assert_array_equal(layout.vector(w.payload, w.packed), vector)
        np.testing.assert_array_equal(extras_vector(w.payload), extras)


def test_a_worker_that_cannot_store_hands_the_windows_back(tmp_path, refstats, bundle_id):
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'fleet.db'}"
    batch = items(refstats, bundle_id, 2)
    out, storage = work_batch(PREFIX, batch, url)
    assert storage["stored"] is False and "does not exist" in storage["error"]
    parsed = _merge([(out, storage)], batch)
    assert parsed.errors and parsed.new == 0
    messages = [m for first, m in parsed.results if type(first) is Counted]
    assert [m.device_id for m in messages] == ["dev-0", "dev-1"]
    # The monitor stores these itself, from the text as received.
    assert json.loads(messages[0].text)["seq"] == 1
    with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
        assert store.insert_windows(messages) == 2


def test_vectors_travel_in_the_smallest_type_that_holds_them():
    for top, dtype in ((65535, np.uint16), (65536, np.uint32), (2**32, np.int64)):
        vector = np.array([0, 3, top], dtype=np.int64)
        small = _smallest(vector)
        assert small.dtype == dtype
        np.testing.assert_array_equal(np.frombuffer(small.tobytes(), dtype=small.dtype.str), vector)
    assert _smallest(np.zeros(0, dtype=np.int64)).size == 0


def test_the_pool_parses_in_child_processes(tmp_path, refstats, bundle_id):
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    with open_store(url) as store:
        store.save_reference(bundle_id, {"model": {"name": "b"}}, refstats)
    pool = ParserPool(PREFIX, 2, db_url=url)
    try:
        pool.warm_up()
        batch = items(refstats, bundle_id, 12)
        parsed = pool.parse(batch)
    finally:
        pool.close()
    assert parsed.new == 12
    counted = [r[0] for r in parsed.results if type(r[0]) is Counted]
    assert [c.device_id for c in counted] == [f"dev-{i}" for i in range(12)]
    assert all(c.extras.shape == (EXTRAS,) for c in counted)
    for c, (vector, _) in zip(counted, expected_vectors(refstats, batch)):
        np.testing.assert_array_equal(c.vector.astype(np.int64), vector)


def test_a_worker_failure_other_than_a_broken_pool_parses_the_batch_here(refstats, bundle_id):
    """A bug or MemoryError in a worker must not end ingestion: the batch is parsed (and then
    stored) in the monitor's thread. The Future is the real one a worker's failure completes."""
    from concurrent.futures import Future

    from edgeops.fleet.pool import ParseJob

    logged = []
    pool = ParserPool(PREFIX, 0, log=logged.append)
    failed = Future()
    failed.set_exception(MemoryError("out of memory while counting"))
    batch = items(refstats, bundle_id, 3)
    parsed = ParseJob(pool, batch, [failed]).result()
    windows = [(first, message) for first, message in parsed.results if type(first) is Counted]
    assert [m.device_id for _, m in windows] == ["dev-0", "dev-1", "dev-2"]  # Messages: stored by the monitor
    assert parsed.results[-1] == (None, "field:seq")
    assert logged and "MemoryError" in logged[0]


def test_worker_vectors_add_up_in_64_bits():
    """Vectors arrive as uint16; the horizon must sum them (and in-thread int64 ones) without wrapping."""
    from edgeops.fleet.horizon import HorizonCounts

    horizon = HorizonCounts(600.0)
    small = _smallest(np.array([60000, 1], dtype=np.int64))
    assert small.dtype == np.uint16
    horizon.add("b", "d", 10.0, small, np.zeros(EXTRAS))
    horizon.add("b", "d", 11.0, small, np.zeros(EXTRAS))
    horizon.add("b", "d", 12.0, np.array([10, 2], dtype=np.int64), np.ones(EXTRAS))
    counts, extras = horizon.totals(20.0)["b"]["d"]
    assert counts.dtype == np.int64 and counts.tolist() == [120010, 4]
    assert extras.tolist() == [1.0] * EXTRAS


def _monitor(tmp_path, refstats=None, bundle_id=None, log=None):
    """A Monitor that ingests in its own thread (no broker: ingest() is called directly)."""
    from edgeops.fleet.broker import parse_broker_url
    from edgeops.fleet.monitor import Monitor, MonitorConfig
    from edgeops.fleet.references import Reference

    refs = {bundle_id: Reference(bundle_id, "b", "1", {"model": {"name": "b"}}, refstats)} if refstats else {}
    monitor = Monitor(MonitorConfig(broker=parse_broker_url("mqtt://127.0.0.1:1"),
                                    db_url=str(tmp_path / "fleet.db"), parse_workers=0), refs,
                      log=(log.append if log is not None else (lambda message: None)))
    monitor.store = open_store(monitor.config.db_url)
    for ref in refs.values():
        monitor.store.save_reference(ref.bundle_id, ref.manifest, ref.refstats)
    monitor.parser = ParserPool(PREFIX, 0)
    return monitor


def _published(payload: bytes, topic_: str, received: float = 100.0) -> tuple:
    return (topic_, payload, 0, 1, received)  # (topic, payload, mid, qos, received) as paho's callback queues it


def test_a_reinstalled_agent_starting_again_at_seq_1_is_counted(tmp_path, refstats, bundle_id):
    """(device, agent instance, seq) identifies a window: a wiped agent's new windows are new."""
    monitor = _monitor(tmp_path, refstats, bundle_id)
    try:
        def batch(instance, seqs):
            bodies = [json.loads(window(refstats, bundle_id, "dev-r", s)) for s in seqs]
            for b in bodies:
                b["agent"]["instance"] = instance
            return [_published(json.dumps(b).encode(), f"{PREFIX}/v1/devices/dev-r/telemetry") for b in bodies]

        monitor.ingest(batch("old-instance", [1, 2, 3]))
        monitor.ingest(batch("old-instance", [2, 3]))          # redelivered: not counted again
        monitor.ingest(batch("new-instance", [1, 2]))          # the buffer was wiped: new windows
        (_, extras), = monitor.horizon.totals(time.time()).get(bundle_id, {}).values()
        assert extras[0] == 5 * 200  # ROWS: five windows of 200 rows
        assert monitor.stats["windows_new"] == 5
    finally:
        monitor.store.close()


def test_made_up_bundle_ids_neither_grow_the_monitor_nor_flood_its_log(tmp_path):
    from edgeops.fleet import monitor as monitor_module
    from test_fleet_ingest import encode, make_window

    logs: list[str] = []
    monitor = _monitor(tmp_path, log=logs)
    try:
        ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(monitor_module.MAX_BUNDLES + 200)]
        for start in range(0, len(ids), 300):
            monitor.ingest([_published(encode(make_window("dev-h", i + 1, bundle_id=b)),
                                       f"{PREFIX}/v1/devices/dev-h/telemetry")
                            for i, b in enumerate(ids[start:start + 300], start)])
        assert len(monitor.layouts) <= monitor_module.MAX_BUNDLES
        assert monitor.stats["windows_new"] == len(ids)  # all stored all the same
        assert 10 <= len(logs) <= 12 and "1000 such bundles so far" in logs[-1]
    finally:
        monitor.store.close()
