"""Sparse drift rows (`edgeops monitor --drift-history-interval`) on a real SQLite file and a real
PostgreSQL (127.0.0.1:5432, database `test`, fresh schemas per test).

The same real windows (the agent's WindowStats) go to two monitors evaluating at the same
controlled times: one storing every row (interval 0, the behaviour before sparse rows) and one
sparse. The dense one is the truth: the sparse one must hold exactly the rows the rule picks from
it, and `latest_drift` / `fleet status` must tell the same story from the sparse rows.
"""
from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor

import click
import numpy as np
import pytest

from edgeops.agent.telemetry import WindowStats, build_window_payload, encode_payload
from edgeops.bundle.refstats import reference_stats
from edgeops.cli.fleet import monitor_command
from edgeops.fleet import evaluation
from edgeops.fleet.alerts import FLEET
from edgeops.fleet.broker import parse_broker_url
from edgeops.fleet.detectors import DetectorConfig
from edgeops.fleet.evaluation import Evaluator, EvaluatorConfig
from edgeops.fleet.monitor import Monitor, MonitorConfig
from edgeops.fleet.pool import ParserPool
from edgeops.fleet.references import Reference
from edgeops.fleet.status import fleet_status
from edgeops.fleet.store import open_store

BUNDLE_ID = "cd" * 32
FEATURES = 4
T0 = 1_800_000_000.0
STEP = 10.0        # seconds between evaluations
HORIZON = 30.0     # three windows per device (one per step)
INTERVAL = 35.0    # a stable pair is stored again every 4th evaluation
DEVICES = ("dev-a", "dev-b", "dev-c")
SHIFTED = {3, 4}   # steps at which dev-a's x[0] moves by 3 standard deviations


@pytest.fixture(scope="module")
def refstats() -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, FEATURES)).astype(np.float32)
    return reference_stats({"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)})


def window(refstats, device_id: str, seq: int, end: float, shift: float = 0.0) -> bytes:
    """A real window: 10 requests of 30 rows (so latency/error signals are tested too)."""
    rng = np.random.default_rng(seq * 7919 + DEVICES.index(device_id) if device_id in DEVICES else seq)
    stats = WindowStats(refstats)
    for _ in range(10):
        x = rng.normal(size=(30, FEATURES)).astype(np.float32)
        x[:, 0] += shift
        stats.record_request({"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)}, 1.5)
    return encode_payload(build_window_payload(
        device_id=device_id, seq=seq, agent={"version": "test", "instance": "i-" + device_id},
        bundle={"id": BUNDLE_ID, "name": "tiny", "version": "1"}, variant={"name": "primary", "role": "primary"},
        start=end - 1, end=end, body=stats.snapshot_and_reset(),
        system={"cpu_percent": None, "rss_bytes": None, "temperature_c": None, "load1": None},
        outbox={"pending": 1, "dropped_total": 0}))


class Fleet:
    """A monitor (no broker) fed windows directly, and its evaluator, on one database."""

    def __init__(self, url: str, refstats: dict, interval: float, separate_process: bool = False):
        self.url = url
        config = EvaluatorConfig(evaluate_interval=STEP, horizon_s=HORIZON, stale_after=1e9, separate_process=False,
                                 drift_history_interval=interval,
                                 detector=DetectorConfig(min_rows=200, min_requests=5))
        self.monitor = Monitor(MonitorConfig(broker=parse_broker_url("mqtt://127.0.0.1:1"), db_url=url,
                                             parse_workers=0, evaluator=config),
                               {BUNDLE_ID: Reference(BUNDLE_ID, "tiny", "1", {"model": {"name": "tiny"}}, refstats)},
                               log=print)
        self.monitor.store = open_store(url)
        self.monitor.parser = ParserPool("edgeops", 0)
        self.evaluator = Evaluator(self.monitor, config)
        self.evaluator.store = open_store(url)
        if separate_process:  # what Evaluator._run sets up: rows are then stored by the child process
            self.evaluator._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                       initializer=evaluation._evaluation_process)

    def send(self, payloads: list[tuple[str, bytes, float]]) -> None:
        self.monitor.ingest([(f"edgeops/v1/devices/{d}/telemetry", p, 0, 0, end) for d, p, end in payloads])

    def close(self) -> None:
        if self.evaluator._pool is not None:
            self.evaluator._pool.shutdown(wait=True)
        self.evaluator.store.close()
        self.monitor.store.close()
        self.monitor.parser.close()


def run(fleets: list[Fleet], refstats: dict, steps: range, devices=DEVICES, after=None) -> None:
    """At each step every device sends a window ending just before it, then each fleet evaluates."""
    for step in steps:
        now = T0 + STEP * step
        payloads = [(d, window(refstats, d, step + 1, now - 1, 3.0 if d == "dev-a" and step in SHIFTED else 0.0),
                     now - 1) for d in devices]
        for fleet in fleets:
            fleet.send(payloads)
            fleet.evaluator.evaluate_once(now=now)
        if after is not None:
            after(step, now)


def by_time(url: str) -> dict[float, list[dict]]:
    with open_store(url) as store:
        out: dict[float, list[dict]] = {}
        for row in store.drift_history():
            out.setdefault(row["evaluated_at"], []).append(row)
    return out


def picked_by_the_rule(dense: dict[float, list[dict]], interval: float) -> dict[float, list[dict]]:
    """The rule, written out: the rows of a full history that a sparse monitor stores."""
    last: dict[tuple, tuple[float, bool]] = {}
    out: dict[float, list[dict]] = {}
    for now in sorted(dense):
        for row in dense[now]:
            key = (row["bundle_id"], row["device_id"], row["feature"])
            prev = last.get(key)
            if row["drifted"] or prev is None or prev[1] != row["drifted"] or now - prev[0] >= interval:
                out.setdefault(now, []).append(row)
                last[key] = (now, row["drifted"])
    return out


def strip_ids(rows_by_time: dict[float, list[dict]]) -> dict[float, list[tuple]]:
    return {t: sorted(tuple(sorted(r.items())) for r in rows) for t, rows in rows_by_time.items()}


# -- the rule over a sequence of real evaluations ------------------------------------------------------

def test_sparse_rows_are_exactly_what_the_rule_picks_from_the_full_history(make_url, refstats):
    dense_url, sparse_url = make_url(), make_url()
    dense, sparse = Fleet(dense_url, refstats, 0.0), Fleet(sparse_url, refstats, INTERVAL)
    try:
        run([dense, sparse], refstats, range(12))
    finally:
        dense.close()
        sparse.close()
    full, stored = by_time(dense_url), by_time(sparse_url)
    times = [T0 + STEP * i for i in range(12)]

    # interval 0: every pair in every evaluation, as before sparse rows
    assert sorted(full) == times
    pairs = {(r["device_id"], r["feature"]) for r in full[times[0]]}
    assert all({(r["device_id"], r["feature"]) for r in full[t]} == pairs and len(full[t]) == len(pairs)
               for t in times)
    assert {d for d, _ in pairs} == {*DEVICES, FLEET}
    assert {f for _, f in pairs} >= {"x[0]", "x[3]", "label", "__latency__", "__error_rate__"}

    # the drift really started and cleared, and a stable pair really stayed stable
    a0 = [r["drifted"] for t in times for r in full[t] if (r["device_id"], r["feature"]) == ("dev-a", "x[0]")]
    start, end = a0.index(True), len(a0) - a0[::-1].index(True)
    assert 0 < start and end < len(a0) and all(a0[start:end]), a0
    assert not any(r["drifted"] for t in times for r in full[t] if r["device_id"] == "dev-b")

    assert strip_ids(stored) == strip_ids(picked_by_the_rule(full, INTERVAL))

    def stored_times(device: str, feature: str) -> list[float]:
        return [t for t in sorted(stored) for r in stored[t] if (r["device_id"], r["feature"]) == (device, feature)]
    # (d) first evaluation, (c) every 4th evaluation after it (35 s at 10 s steps)
    assert stored_times("dev-b", "x[1]") == [times[0], times[4], times[8]]
    # (a) every drifted evaluation, (b) the first clean one after it
    a_times = stored_times("dev-a", "x[0]")
    assert set(times[start:end + 1]) <= set(a_times), (a_times, start, end)
    # signal rows by the same rule
    assert stored_times("dev-c", "__latency__") == [times[0], times[4], times[8]]
    assert sum(map(len, stored.values())) < 0.6 * sum(map(len, full.values()))


def test_the_evaluation_process_applies_the_same_rule(make_url, refstats):
    """With the child process (the monitor's default), which stores the rows itself, the result
    is the same as evaluating in the monitor's process; its memory is per database."""
    inproc_url, child_url = make_url(), make_url()
    inproc, child = Fleet(inproc_url, refstats, INTERVAL), Fleet(child_url, refstats, INTERVAL, separate_process=True)
    try:
        run([inproc, child], refstats, range(6))
    finally:
        inproc.close()
        child.close()
    assert strip_ids(by_time(child_url)) == strip_ids(by_time(inproc_url))
    assert len(by_time(child_url).get(T0 + STEP, [])) < len(by_time(child_url)[T0])  # sparse after the first


def test_a_failed_save_stores_every_pair_again(make_url, refstats):
    url = make_url()
    fleet = Fleet(url, refstats, INTERVAL)
    try:
        run([fleet], refstats, range(4))
        assert len(by_time(url).get(T0 + STEP, [])) < len(by_time(url)[T0])
        saved = fleet.evaluator.store.save_drift

        def fail(*args):
            raise OSError("disk full")
        fleet.evaluator.store.save_drift = fail
        with pytest.raises(OSError):
            run([fleet], refstats, range(4, 5))  # every pair is due again here (INTERVAL), and the save fails
        fleet.evaluator.store.save_drift = saved
        run([fleet], refstats, range(5, 6))
    finally:
        fleet.close()
    rows = by_time(url)
    assert T0 + 4 * STEP not in rows and len(rows[T0 + 5 * STEP]) == len(rows[T0])


# -- latest_drift ---------------------------------------------------------------------------------

def row(device: str, feature: str, drifted: bool = False, psi: float = 0.01, scope: str | None = None) -> dict:
    return {"device_id": device, "bundle_id": BUNDLE_ID, "feature": feature, "kind": "numeric",
            "test": "chi_squared", "statistic": 1.0, "p_value": 0.5, "psi": psi, "n": 300,
            "drifted": drifted, "scope": scope}


def test_latest_drift_returns_each_pairs_newest_row_within_max_age(make_url):
    with open_store(make_url()) as store:
        assert store.latest_drift() == []
        store.save_drift(T0, [row("a", "x[0]"), row("a", "x[1]"), row("b", "x[0]"), row("gone", "x[0]")])
        store.save_drift(T0 + 600, [row("a", "x[0]", True, psi=0.7, scope="device"), row("b", "x[0]", psi=0.02)])
        store.save_drift(T0 + 660, [row("a", "x[0]", False, psi=0.05)])
        store.save_drift(T0 + 1000, [row("b", "x[1]")])

        latest = store.latest_drift(max_age=1000)
        assert [(r["device_id"], r["feature"], r["evaluated_at"], r["drifted"], r["psi"]) for r in latest] == [
            ("a", "x[1]", T0, False, 0.01), ("gone", "x[0]", T0, False, 0.01), ("b", "x[0]", T0 + 600, False, 0.02),
            ("a", "x[0]", T0 + 660, False, 0.05), ("b", "x[1]", T0 + 1000, False, 0.01)]
        # the default reaches 900 s back from the newest row: the pairs stored only at T0 have left
        assert [(r["device_id"], r["feature"]) for r in store.latest_drift()] == [
            ("b", "x[0]"), ("a", "x[0]"), ("b", "x[1]")]
        assert [(r["feature"], r["evaluated_at"]) for r in store.latest_drift(max_age=1000, device_id="a")] == [
            ("x[1]", T0), ("x[0]", T0 + 660)]
        assert [r["feature"] for r in store.latest_drift(max_age=0)] == ["x[1]"]  # the newest rows only
        assert set(store.latest_drift(max_age=0)[0]) == set(store.drift_history()[0])  # the same dicts
        with pytest.raises(ValueError, match="max_age"):
            store.latest_drift(max_age=float("nan"))


# -- what users look at: fleet status ---------------------------------------------------------------

def _status_view(report: dict) -> dict:
    """What fleet status says about drift, without the numbers of stable pairs (stored earlier)."""
    return {"devices": {d["device_id"]: (d["drift"]["drifted"], d["drift"]["tested"], d["drift"]["drifted_features"],
                                         d["drift"]["scopes"], d["top_features"], d["alerts"])
                        for d in report["devices"]},
            "fleet": (report["fleet"]["drifted"], sorted((f["feature"], f["drifted"], f["scope"])
                                                         for f in report["fleet"]["drift"])),
            "counts": report["counts"], "evaluated_at": report["evaluated_at"]}


def test_fleet_status_from_sparse_rows_matches_the_full_history(make_url, refstats):
    dense_url, sparse_url = make_url(), make_url()
    dense, sparse = Fleet(dense_url, refstats, 0.0), Fleet(sparse_url, refstats, INTERVAL)
    seen = []

    def compare(step, now):
        expected = _status_view(fleet_status(dense_url, stale_after=1e9, now=now))
        assert _status_view(fleet_status(sparse_url, stale_after=1e9, now=now)) == expected, step
        seen.append(expected["devices"]["dev-a"][0])
    try:
        run([dense, sparse], refstats, range(12), after=compare)
        assert True in seen and seen[-1] is False  # the drift showed, then cleared
        # dev-c stops sending: its windows leave the horizon, then its last rows age out of
        # latest_drift (the interval plus two evaluations after its last stored row)
        run([dense, sparse], refstats, range(12, 24), devices=("dev-a", "dev-b"))
    finally:
        dense.close()
        sparse.close()
    report = fleet_status(sparse_url, stale_after=1e9, now=T0 + 23 * STEP)
    by_device = {d["device_id"]: d for d in report["devices"]}
    assert by_device["dev-c"]["drift"]["tested"] == 0 and by_device["dev-b"]["drift"]["tested"] > 0
    assert report["evaluated_at"] == T0 + 23 * STEP


def test_status_shows_a_drifting_device_and_its_top_features(make_url, refstats):
    url = make_url()
    fleet = Fleet(url, refstats, INTERVAL)
    try:
        run([fleet], refstats, range(5))  # dev-a shifted at steps 3 and 4
    finally:
        fleet.close()
    report = fleet_status(url, stale_after=1e9, now=T0 + 4 * STEP)
    a = next(d for d in report["devices"] if d["device_id"] == "dev-a")
    assert a["drift"]["drifted"] and a["top_features"][0]["feature"] == "x[0]"
    assert a["top_features"][0]["psi"] > 0.25 and a["drift"]["tested"] > FEATURES
    assert report["counts"]["drifting"] == 1


# -- the command line -----------------------------------------------------------------------------

def test_the_option_parses_and_reaches_the_evaluator(tmp_path):
    params = monitor_command.make_context("monitor", []).params
    assert params["drift_history_interval"] == 600.0
    assert monitor_command.make_context("monitor", ["--drift-history-interval", "0"]).params[
        "drift_history_interval"] == 0.0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(click.BadParameter) as error:
            monitor_command.make_context("monitor", ["--drift-history-interval", bad])
        assert error.value.param.name == "drift_history_interval"
    import paho.mqtt.client as mqtt

    db, client_id = tmp_path / "fleet.db", f"mon-{uuid.uuid4().hex[:10]}"
    proc = subprocess.Popen([sys.executable, "-c", "from edgeops.cli.main import main; main()", "monitor",
                             "--broker", "mqtt://127.0.0.1:1883", "--db", str(db), "--parse-workers", "0",
                             "--client-id", client_id, "--topic-prefix", f"t-{uuid.uuid4().hex[:10]}",
                             "--evaluate-interval", "0.5", "--drift-history-interval", "123"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, state = time.monotonic() + 60, None
        while state is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if db.exists():
                with open_store(str(db)) as store:
                    state = store.get_state("evaluation")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", 1883, clean_start=True)  # forget the monitor's persistent session
        client.disconnect()
    assert state is not None and state["drift_max_age"] == 123 + 2 * 0.5, err
