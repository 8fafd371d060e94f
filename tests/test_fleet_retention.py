"""Retention of the fleet store (Store.prune_rows, Evaluator.prune, `edgeops monitor --retention`)
on a real SQLite file and a real PostgreSQL (127.0.0.1:5432, database `test`, one fresh schema
per test): exactly the old rows go, in chunks, devices.window_count stays equal to the windows
stored, 0 keeps everything, and the evaluator prunes once at start and then on its own schedule."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import click
import pytest

from edgeops.cli.fleet import monitor_command
from edgeops.cli.main import main
from edgeops.fleet import evaluation
from edgeops.fleet.broker import parse_broker_url
from edgeops.fleet.evaluation import Evaluator, EvaluatorConfig
from edgeops.fleet.monitor import Monitor, MonitorConfig
from edgeops.fleet.store import open_store
from test_fleet_ingest import BUNDLE_ID

DAY = 86400.0
NOW = 1_800_000_000.0


# -- helpers -----------------------------------------------------------------------------------

def add_windows(store, device: str, ends: list[float], first_seq: int = 1) -> None:
    """Windows received as they ended (retention needs both times before the cutoff)."""
    from edgeops.fleet.ingest import parse_message
    from test_fleet_ingest import encode, make_window, topic

    store.insert_windows([parse_message(topic(device, "telemetry"), encode(make_window(device, first_seq + i, end=end)),
                                        received=end) for i, end in enumerate(ends)])


def add_drift(store, at: float, devices=("a",)) -> None:
    store.save_drift(at, [{"device_id": d, "bundle_id": BUNDLE_ID, "feature": "x[0]", "drifted": False}
                          for d in devices])


def stored_ends(store) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for w in store.windows():
        out.setdefault(w["device_id"], []).append(w["window"]["end"])
    return out


def assert_counts_exact(store) -> None:
    """devices.window_count (what `fleet status` shows) equals the windows actually stored."""
    stored = Counter(w["device_id"] for w in store.windows())
    devices = store.devices()
    assert {d["device_id"]: d["windows"] for d in devices} == {d["device_id"]: stored[d["device_id"]] for d in devices}


def make_evaluator(url: str, logs: list, **config) -> Evaluator:
    monitor = Monitor(MonitorConfig(broker=parse_broker_url("mqtt://127.0.0.1:1883"), db_url=url, parse_workers=0),
                      log=logs.append)
    return Evaluator(monitor, EvaluatorConfig(separate_process=False, **config))


# -- the store -------------------------------------------------------------------------------

def test_prune_deletes_exactly_the_old_rows_in_chunks(store):
    cut = NOW - 7 * DAY
    old_a = [cut - 60.0 * i for i in range(1, 31)]       # 30 old windows on a, 20 on b: 50 in all
    old_b = [cut - 30.0 * i for i in range(1, 21)]
    add_windows(store, "a", old_a + [cut, cut + 60, NOW])  # a window ending exactly at the cut stays
    add_windows(store, "b", old_b + [NOW - 5])
    add_windows(store, "c", [NOW - 1, NOW])                # a device with nothing to prune
    for i in range(50):
        add_drift(store, cut - 1 - i)
        store.save_alert({"ts": cut - 1 - i, "device_id": "a", "state": "raised", "n": i})
    add_drift(store, cut)
    store.save_alert({"ts": cut, "device_id": "b", "state": "cleared"})

    between = Counter()
    for table in ("windows", "drift", "alerts"):
        # chunks of 7: 7 full chunks (49 rows), then one of 1 that ends the loop
        assert store.prune_rows(table, cut, chunk_rows=7, carry_on=lambda: between.update([table]) or True) == 50
    assert between == {"windows": 7, "drift": 7, "alerts": 7}

    assert stored_ends(store) == {"a": [cut, cut + 60, NOW], "b": [NOW - 5], "c": [NOW - 1, NOW]}
    assert {d["device_id"]: d["windows"] for d in store.devices()} == {"a": 3, "b": 1, "c": 2}
    assert [r["evaluated_at"] for r in store.drift_history()] == [cut]
    assert [a["ts"] for a in store.alerts()] == [cut]
    assert store.prune_rows("windows", cut, chunk_rows=7) == 0  # nothing left to delete


def test_counts_stay_exact_when_stopped_midway_and_with_writers_between_chunks(store, store_url):
    cut = NOW - DAY
    add_windows(store, "a", [cut - 10.0 * i for i in range(1, 21)] + [NOW])
    add_windows(store, "b", [cut - 10.0 * i - 5 for i in range(1, 21)])
    writer = open_store(store_url)  # ingestion, on its own connection, between the prune's transactions
    seqs = iter(range(1000, 2000))
    try:
        def ingest_then_go_on() -> bool:
            add_windows(writer, "a", [NOW + 1], first_seq=next(seqs))
            add_windows(writer, "b", [NOW + 1], first_seq=next(seqs))
            return True
        assert store.prune_rows("windows", cut, chunk_rows=6, carry_on=ingest_then_go_on) == 40
        assert_counts_exact(store)
        assert {d["device_id"]: d["windows"] for d in store.devices()} == {"a": 1 + 6, "b": 6}

        add_windows(store, "a", [cut - 1.0 - i for i in range(10)], first_seq=100)
        assert store.prune_rows("windows", cut, chunk_rows=4, carry_on=lambda: False) == 4  # stopped after one
        assert_counts_exact(store)
        assert store.prune_rows("windows", cut, chunk_rows=4) == 6
        assert_counts_exact(store)
    finally:
        writer.close()


def test_two_pruners_at_once_delete_each_row_once(store, store_url):
    """Two monitors sharing a database both prune; counts stay exact (PostgreSQL: READ COMMITTED)."""
    cut = NOW - DAY
    for d in ("a", "b", "c"):
        add_windows(store, d, [cut - 7.0 * i for i in range(1, 41)] + [NOW])
    stores = [open_store(store_url) for _ in range(2)]
    results, barrier = [], threading.Barrier(2)

    def prune(s):
        barrier.wait()
        results.append(s.prune_rows("windows", cut, chunk_rows=5))
    threads = [threading.Thread(target=prune, args=(s,)) for s in stores]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores:
            s.close()
    assert sum(results) == 120
    assert stored_ends(store) == {"a": [NOW], "b": [NOW], "c": [NOW]}
    assert_counts_exact(store)


def test_prune_keeps_its_old_contract_and_refuses_bad_input(store):
    add_windows(store, "a", [NOW - 100, NOW])
    add_drift(store, NOW - 100)
    assert store.prune(before=NOW - 50, chunk_rows=1) == {"windows": 1, "drift": 1}
    with pytest.raises(ValueError, match="NaN"):
        store.prune_rows("windows", float("nan"))  # PostgreSQL would take it as later than any time
    with pytest.raises(ValueError, match="windows, drift, alerts"):
        store.prune_rows("quarantine", NOW)
    with pytest.raises(ValueError, match="at least 1"):
        store.prune_rows("drift", NOW, chunk_rows=0)
    assert len(store.windows()) == 1


# -- the evaluator ------------------------------------------------------------------------------

def test_evaluator_prunes_on_its_own_schedule(store_url):
    logs: list[str] = []
    ev = make_evaluator(store_url, logs, retention_s=7 * DAY, drift_retention_s=2 * DAY, prune_interval=600.0)
    ev.store = open_store(store_url)
    try:
        s = ev.store
        add_windows(s, "a", [NOW - 10 * DAY, NOW - 3 * DAY, NOW - 3600])
        for age in (3 * DAY, DAY, 3600):
            add_drift(s, NOW - age)
        for age in (10 * DAY, 3600):
            s.save_alert({"ts": NOW - age, "device_id": "a", "state": "raised"})

        assert ev.prune(now=NOW) == {"windows": 1, "alerts": 1, "drift": 1}
        assert stored_ends(s) == {"a": [NOW - 3 * DAY, NOW - 3600]}
        assert [r["evaluated_at"] for r in s.drift_history()] == [NOW - DAY, NOW - 3600]
        assert [a["ts"] for a in s.alerts()] == [NOW - 3600]
        assert len(logs) == 1 and logs[0].startswith(
            "pruned 1 windows older than 7 day(s), 1 alerts older than 7 day(s), 1 drift rows older than 2 day(s)")

        add_windows(s, "a", [NOW - 8 * DAY], first_seq=10)
        assert ev.prune(now=NOW + 599) is None  # not due yet: the old window stays
        assert len(s.windows()) == 3
        # due: everything older than now - age goes, measured from the new now
        assert ev.prune(now=NOW + 600) == {"windows": 1, "alerts": 0, "drift": 0}
        assert ev.prune(now=NOW + DAY + 1200) == {"windows": 0, "alerts": 0, "drift": 1}
        assert ev.prune(now=NOW + DAY + 1800) == {"windows": 0, "alerts": 0, "drift": 0}
        assert len(logs) == 3  # one line per prune that deleted something
        assert_counts_exact(s)
    finally:
        ev.store.close()


def test_zero_keeps_everything_and_each_table_has_its_own_age(store_url):
    logs: list[str] = []
    ev = make_evaluator(store_url, logs)  # the defaults: keep forever (existing callers unchanged)
    ev.store = open_store(store_url)
    try:
        add_windows(ev.store, "a", [100.0, NOW])
        add_drift(ev.store, 1.0)
        ev.store.save_alert({"ts": 1.0, "device_id": "a"})
        assert ev.prune(now=NOW) is None
        assert len(ev.store.windows()) == 2 and len(ev.store.drift_history()) == 1 and len(ev.store.alerts()) == 1

        ev.config = EvaluatorConfig(separate_process=False, drift_retention_s=DAY)  # windows kept forever
        assert ev.prune(now=NOW) == {"drift": 1}
        assert len(ev.store.windows()) == 2 and len(ev.store.alerts()) == 1
        assert logs == [logs[0]] and "1 drift rows older than 1 day(s)" in logs[0]
    finally:
        ev.store.close()


def test_an_unfinished_prune_is_due_again_at_once(store_url, monkeypatch):
    ev = make_evaluator(store_url, [], retention_s=DAY, prune_interval=600.0)
    ev.store = open_store(store_url)
    try:
        add_windows(ev.store, "a", [NOW - 2 * DAY, NOW])
        monkeypatch.setattr(evaluation, "PRUNE_BUDGET_S", 0.0)  # the budget runs out before any table
        assert ev.prune(now=NOW) == {}
        monkeypatch.setattr(evaluation, "PRUNE_BUDGET_S", 20.0)
        assert ev.prune(now=NOW + 1) == {"windows": 1, "alerts": 0}  # not held back by prune_interval
        assert ev.prune(now=NOW + 2) is None  # that one completed: the interval applies again
    finally:
        ev.store.close()


def test_the_evaluator_thread_prunes_once_at_start(store_url):
    with open_store(store_url) as s:
        add_windows(s, "a", [time.time() - 9 * DAY, time.time()])
    logs: list[str] = []
    ev = make_evaluator(store_url, logs, retention_s=7 * DAY, evaluate_interval=3600.0)
    ev.start()
    try:
        deadline = time.monotonic() + 30
        while not logs and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ev.stop()
    assert logs and logs[0].startswith("pruned 1 windows older than 7 day(s)"), logs
    with open_store(store_url) as s:
        assert len(s.windows()) == 1 and s.devices()[0]["windows"] == 1


# -- the command line -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--retention", "-1"], "Invalid value for '--retention': -1.0 is not in the range x>=0.0"),
    (["--retention", "abc"], "Invalid value for '--retention': 'abc' is not a valid float range"),
    (["--drift-retention", "-0.5"], "Invalid value for '--drift-retention'"),
    (["--retention", "nan"], "nan is not a number of days"),
])
def test_bad_retention_values_exit_2_with_one_line(args, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", "--db", str(tmp_path / "f.db"), "--state-dir", str(tmp_path / "s")] + args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "Traceback" not in err and not (tmp_path / "s").exists()  # nothing was started


def test_retention_shorter_than_the_horizon_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", "--db", str(tmp_path / "f.db"), "--state-dir", str(tmp_path / "s"),
              "--retention", "0.01", "--horizon", "3600"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "error: --retention 0.01 days keeps less than the --horizon of 3600 s" in err
    assert "hint: use --retention 0.05 or more" in err and not (tmp_path / "s").exists()


def test_retention_options_parse_to_seconds():
    params = monitor_command.make_context("monitor", ["--drift-retention", "0"]).params
    assert params["retention"] == 7 * DAY and params["drift_retention"] is None  # defaults 7 days; 0 = forever
    params = monitor_command.make_context("monitor", ["--retention", "1.5", "--drift-retention", "0.25"]).params
    assert params["retention"] == 1.5 * DAY and params["drift_retention"] == 0.25 * DAY
    text = monitor_command.get_help(click.Context(monitor_command))
    assert "--retention DAYS" in text and "--drift-retention DAYS" in text and "forever" in text


def test_the_monitor_command_prunes_with_its_options(tmp_path):
    """`edgeops monitor --retention 7` end to end: the evaluator thread prunes at start."""
    import paho.mqtt.client as mqtt

    db = tmp_path / "fleet.db"
    with open_store(str(db)) as s:
        add_windows(s, "a", [time.time() - 8 * DAY, time.time() - 6 * DAY])
        add_drift(s, time.time() - 3 * DAY)
    client_id = f"mon-{uuid.uuid4().hex[:10]}"
    proc = subprocess.Popen([sys.executable, "-c", "from edgeops.cli.main import main; main()", "monitor",
                             "--broker", "mqtt://127.0.0.1:1883", "--db", str(db), "--client-id", client_id,
                             "--topic-prefix", f"test-{uuid.uuid4().hex[:10]}", "--parse-workers", "0",
                             "--retention", "7", "--drift-retention", "2"],
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("pruned" in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        reader.join(10)
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", 1883, clean_start=True)  # forget the monitor's persistent session
        client.disconnect()
    assert proc.returncode == 0, "".join(lines)
    pruned = [line for line in lines if "pruned" in line]
    assert len(pruned) == 1 and "pruned 1 windows older than 7 day(s), 0 alerts older than 7 day(s), " \
        "1 drift rows older than 2 day(s)" in pruned[0], "".join(lines)
    with open_store(str(db)) as s:
        assert len(s.windows()) == 1 and s.devices()[0]["windows"] == 1 and s.drift_history() == []


def test_a_device_clock_in_1970_does_not_get_its_windows_pruned_on_arrival(store):
    """window_end is the device's clock; a board that booted without the time stamps 1970. Its
    windows go only once the monitor also received them before the cutoff."""
    from edgeops.fleet.ingest import parse_message
    from test_fleet_ingest import encode, make_window, topic

    cut = NOW - 7 * DAY
    fresh = parse_message(topic("a", "telemetry"), encode(make_window("a", 1, end=1000.0)), received=NOW - 5)
    old = parse_message(topic("a", "telemetry"), encode(make_window("a", 2, end=1060.0)), received=cut - 5)
    store.insert_windows([fresh, old])
    assert store.prune_rows("windows", cut) == 1
    assert [w["seq"] for w in store.windows()] == [1]
    assert_counts_exact(store)
