"""The fleet monitor against a real Mosquitto, real SQLite and real PostgreSQL.

Windows are built with the agent's own telemetry code (WindowStats), so the monitor reads what
agents really send. Each test uses its own topic prefix (or its own broker when it stops one).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgeops.agent.telemetry import WindowStats, build_window_payload, encode_payload
from edgeops.bundle.refstats import reference_stats
from edgeops.fleet.alerts import AlertDispatcher
from edgeops.fleet.broker import PrivateBroker, parse_broker_url
from edgeops.fleet.detectors import DetectorConfig
from edgeops.fleet.evaluation import EvaluatorConfig
from edgeops.fleet.monitor import Monitor, MonitorConfig
from edgeops.fleet.references import Reference
from edgeops.fleet.store import open_store

SHARED_BROKER = "mqtt://127.0.0.1:1883"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
FEATURES = 6
BUNDLE_ID = "ab" * 32
RUN = "from edgeops.cli.main import main; main()"


# -- helpers -----------------------------------------------------------------------------------

def wait_until(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="module")
def refstats() -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, FEATURES)).astype(np.float32)
    return reference_stats({"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)})


def window(refstats, device_id: str, seq: int, rows: int = 300, shift: dict | None = None,
           seed: int | None = None) -> bytes:
    """One real window payload: rows drawn like the reference, some columns shifted."""
    rng = np.random.default_rng(seed if seed is not None else seq * 7919 + hash(device_id) % 1000)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    for column, delta in (shift or {}).items():
        x[:, column] += delta
    stats = WindowStats(refstats)
    stats.record_request({"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)}, 1.5)
    now = time.time()
    payload = build_window_payload(
        device_id=device_id, seq=seq, agent={"version": "test", "instance": "i-" + device_id},
        bundle={"id": BUNDLE_ID, "name": "tiny", "version": "1"}, variant={"name": "primary", "role": "primary"},
        start=now - 1, end=now, body=stats.snapshot_and_reset(),
        system={"cpu_percent": None, "rss_bytes": None, "temperature_c": None, "load1": None},
        outbox={"pending": 1, "dropped_total": 0})
    return encode_payload(payload)


def publisher(url: str = SHARED_BROKER) -> mqtt.Client:
    broker = parse_broker_url(url)
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, topic: str, body: bytes, retain: bool = False) -> None:
    client.publish(topic, body, qos=1, retain=retain).wait_for_publish(10)


def make_monitor(db_url: str, prefix: str, refstats: dict, *, broker: str = SHARED_BROKER,
                 alerts: AlertDispatcher | None = None, evaluate: float = 3600.0, horizon: float = 600.0,
                 stale_after: float = 3600.0, log: list | None = None, parse_workers: int = 0) -> Monitor:
    """An in-process monitor; parse_workers=1 runs the parser process path (the CLI's default)."""
    config = MonitorConfig(broker=parse_broker_url(broker), db_url=db_url, topic_prefix=prefix,
                           client_id=f"mon-{uuid.uuid4().hex[:10]}", batch_delay=0.05, parse_workers=parse_workers,
                           evaluator=EvaluatorConfig(evaluate_interval=evaluate, horizon_s=horizon,
                                                     stale_after=stale_after,
                                                     detector=DetectorConfig(min_rows=200)))
    ref = Reference(BUNDLE_ID, "tiny", "1", {"model": {"name": "tiny", "version": "1"}}, refstats)
    sink = log if log is not None else []
    monitor = Monitor(config, {BUNDLE_ID: ref}, alerts=alerts, log=sink.append)
    if alerts is not None:
        alerts.publish = monitor.publish
        alerts.start()
    monitor.start()
    assert monitor.wait_connected(20), sink
    time.sleep(0.3)  # the SUBSCRIBE is sent right after CONNACK
    return monitor


def forget_session(url: str, client_id: str) -> None:
    """Remove a persistent session from a shared broker (clean start, no expiry)."""
    broker = parse_broker_url(url)
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port, clean_start=True)
    client.loop(0.5)
    client.disconnect()


@pytest.fixture
def pg_url():
    psycopg = pytest.importorskip("psycopg")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def stored_seqs(db_url: str, device_id: str) -> list[int]:
    store = open_store(db_url)
    try:
        return sorted(w["seq"] for w in store.windows(device_id=device_id))
    finally:
        store.close()


# -- ingestion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_windows_are_stored_once_under_redelivery(backend, tmp_path, refstats, request):
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    monitor = make_monitor(db_url, prefix, refstats, parse_workers=1 if backend == "sqlite" else 0)
    pub = publisher()
    try:
        bodies = {(d, s): window(refstats, d, s) for d in ("dev-a", "dev-b") for s in range(1, 11)}
        for (d, _), body in bodies.items():
            publish(pub, f"{prefix}/v1/devices/{d}/telemetry", body)
        for (d, _), body in list(bodies.items())[::3]:  # at-least-once: the same windows again
            publish(pub, f"{prefix}/v1/devices/{d}/telemetry", body)
        wait_until(lambda: monitor.stats["windows"] >= 27, what="all 27 deliveries")
        assert monitor.stats["windows_new"] == 20
        assert stored_seqs(db_url, "dev-a") == list(range(1, 11))
        assert stored_seqs(db_url, "dev-b") == list(range(1, 11))
        # The drift counts saw each window once: 10 windows x 300 rows per device.
        totals = monitor.horizon.totals(time.time())[BUNDLE_ID]
        assert int(totals["dev-a"][1][0]) == 3000 and int(totals["dev-b"][1][0]) == 3000
    finally:
        pub.loop_stop()
        monitor.stop()
        forget_session(SHARED_BROKER, monitor.config.client_id)


def test_hostile_payloads_are_quarantined_and_good_ones_keep_flowing(tmp_path, refstats):
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    monitor = make_monitor(db_url, prefix, refstats, parse_workers=1)
    pub = publisher()
    good = json.loads(window(refstats, "dev-a", 1))
    hostile = {
        "dev-a/telemetry": b"\xff\xfe not json",
        "dev-b/telemetry": b"[1, 2, 3]",
        "dev-c/telemetry": json.dumps(dict(good, device_id="dev-c", schema_version=99)).encode(),
        "dev-d/telemetry": json.dumps(dict(good, device_id="someone-else")).encode(),
        "dev-e/telemetry": json.dumps(dict(good, device_id="dev-e", seq=-4)).encode(),
        "dev-f/telemetry": b'{"a":' * 5000 + b"1" + b"}" * 5000,
        "dev-g/telemetry": b"x" * (1024 * 1024 + 10),
        "dev-h/heartbeat": b'{"schema_version": 1, "kind": "heartbeat", "device_id": "dev-h", "ts": NaN}',
    }
    try:
        for seq in range(1, 31):
            publish(pub, f"{prefix}/v1/devices/dev-a/telemetry", window(refstats, "dev-a", seq))
            if seq <= len(hostile):
                topic, body = list(hostile.items())[seq - 1]
                publish(pub, f"{prefix}/v1/devices/{topic}", body)
        wait_until(lambda: monitor.stats["received"] >= 30 + len(hostile), what="every message")
        assert stored_seqs(db_url, "dev-a") == list(range(1, 31))
        assert sum(monitor.quarantined.values()) == len(hostile)
        store = open_store(db_url)
        try:
            counts = store.quarantine_counts()
            assert sum(counts.values()) == len(hostile), counts
            assert {"schema_version", "device_id", "too_large"} <= set(counts), counts
            assert "dev-c" not in {d["device_id"] for d in store.devices()}
        finally:
            store.close()
    finally:
        pub.loop_stop()
        monitor.stop()
        forget_session(SHARED_BROKER, monitor.config.client_id)


# -- restarts ----------------------------------------------------------------------------------

def start_cli_monitor(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", RUN, "monitor", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_while_messages_arrive_loses_nothing(tmp_path, refstats):
    broker = PrivateBroker(tmp_path / "broker").start()
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    prefix = "kill"
    args = ["--broker", broker.url, "--db", db_url, "--topic-prefix", prefix, "--client-id", "mon-kill",
            "--evaluate-interval", "3600"]
    total = 300
    proc = start_cli_monitor(args)
    pub = publisher(broker.url)
    bodies = [window(refstats, "dev-k", seq, rows=20) for seq in range(1, total + 1)]
    sent = threading.Event()

    def keep_publishing():
        for seq, body in enumerate(bodies, 1):
            publish(pub, f"{prefix}/v1/devices/dev-k/telemetry", body)
            time.sleep(0.01)
        sent.set()

    try:
        wait_until(lambda: "subscribed to" in proc.stderr.readline(), what="the monitor's subscription")
        thread = threading.Thread(target=keep_publishing, daemon=True)
        thread.start()
        wait_until(lambda: (_sqlite_count(tmp_path / "fleet.db") or 0) >= 50, what="50 stored windows")
        # Hold the database's write lock: the monitor keeps receiving but cannot commit. Messages
        # acknowledged on receipt would be lost by the kill; acknowledged after commit, none is.
        import sqlite3

        lock = sqlite3.connect(tmp_path / "fleet.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        stored_at_lock = _sqlite_count(tmp_path / "fleet.db")
        time.sleep(1.5)  # ~100 more windows arrive at the monitor and wait for the database
        children = _children(proc.pid)
        assert len(children) >= 2  # its parser processes (and the evaluation process)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Its child processes go with it (they would otherwise wait for the lock and then store
        # windows that no monitor acknowledges).
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in children),
                   timeout=10, what="the killed monitor's child processes to exit")
        lock.execute("ROLLBACK")
        lock.close()
        assert stored_at_lock == _sqlite_count(tmp_path / "fleet.db") < total
        time.sleep(1.0)  # messages keep arriving while no monitor runs
        proc = start_cli_monitor(args)
        assert sent.wait(60)
        wait_until(lambda: _sqlite_count(tmp_path / "fleet.db") == total, timeout=60, what="every window")
        assert stored_seqs(db_url, "dev-k") == list(range(1, total + 1))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pub.loop_stop()
        broker.stop()


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _sqlite_count(path: Path) -> int | None:
    import sqlite3

    if not path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
    except sqlite3.Error:
        return None


def test_private_broker_when_none_is_given(tmp_path, refstats):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    proc = start_cli_monitor(["--topic-prefix", "priv", "--evaluate-interval", "3600"], env)
    try:
        url = None

        def subscribed():
            nonlocal url
            line = proc.stderr.readline()
            if "--broker mqtt://" in line:
                url = line.split("--broker ")[1].split()[0]
            return "subscribed to" in line

        wait_until(subscribed, what="the private broker's URL and the monitor's subscription")
        assert url is not None
        db = tmp_path / "state" / "edgeops" / "fleet.db"
        pub = publisher(url)
        publish(pub, "priv/v1/devices/dev-p/telemetry", window(refstats, "dev-p", 1))
        pub.loop_stop()
        wait_until(lambda: _sqlite_count(db) == 1, what="the window in the default database")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The broker was stopped with the monitor.
    broker = parse_broker_url(url)
    import socket

    with pytest.raises(OSError):
        socket.create_connection((broker.host, broker.port), timeout=2).close()


# -- drift and alerts --------------------------------------------------------------------------

class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_drift_on_one_device_raises_one_alert_everywhere_then_clears(tmp_path, refstats):
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    _Hook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    record = tmp_path / "command.jsonl"
    script = tmp_path / "retrain.py"
    script.write_text("import json, os, sys\nalert = json.load(sys.stdin)\n"
                      f"open({str(record)!r}, 'a').write(json.dumps([os.environ['EDGEOPS_DEVICE_ID'], "
                      "os.environ['EDGEOPS_FEATURES'], alert['type'], alert['state']]) + '\\n')\n")
    url = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
    dispatcher = AlertDispatcher(prefix=prefix, webhook=url, command=f"{sys.executable} {script}",
                                 command_timeout=30, log=lambda m: None)
    alerts_seen: list[dict] = []
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: alerts_seen.append(json.loads(m.payload))
    sub.connect("127.0.0.1", 1883)
    sub.subscribe(f"{prefix}/v1/alerts/+", qos=1)
    sub.loop_start()
    monitor = make_monitor(db_url, prefix, refstats, alerts=dispatcher, evaluate=0.5, horizon=6.0)
    pub = publisher()
    seq = {"dev-a": 0, "dev-b": 0, "dev-c": 0}

    def send_round(shift_b: bool):
        for device in seq:
            seq[device] += 1
            shift = {2: 3.0} if (device == "dev-b" and shift_b) else None
            publish(pub, f"{prefix}/v1/devices/{device}/telemetry", window(refstats, device, seq[device], shift=shift))

    def raised():
        return [a for a in alerts_seen if a["state"] == "raised" and a["type"] == "drift"]

    try:
        deadline = time.monotonic() + 30
        while not raised() and time.monotonic() < deadline:
            send_round(shift_b=True)
            time.sleep(0.25)
        assert raised(), monitor.log if hasattr(monitor, "log") else None
        # Keep drifting for several more evaluations: still one alert (hysteresis).
        target = monitor.evaluator.evaluations + 6
        while monitor.evaluator.evaluations < target:
            send_round(shift_b=True)
            time.sleep(0.25)
        drift_alerts = raised()
        assert len(drift_alerts) == 1, drift_alerts
        alert = drift_alerts[0]
        assert alert["device_id"] == "dev-b" and alert["scope"] == "device"
        assert alert["features"][0]["feature"] == "x[2]"
        assert {f["feature"] for f in alert["features"]} <= {"x[2]", "label"}
        assert alert["bundle"]["id"] == BUNDLE_ID
        wait_until(lambda: [a for a in _Hook.received if a["type"] == "drift"], what="the webhook")
        assert [a["alert_id"] for a in _Hook.received if a["type"] == "drift"] == [alert["alert_id"]]
        wait_until(record.exists, what="the --on-drift-command")
        device, features, kind, state = json.loads(record.read_text().splitlines()[0])
        assert (device, kind, state) == ("dev-b", "drift", "raised") and "x[2]" in features.split(",")

        # The shift ends: once the drifted windows leave the horizon the alert clears, once.
        deadline = time.monotonic() + 40
        while not [a for a in alerts_seen if a["state"] == "cleared"] and time.monotonic() < deadline:
            send_round(shift_b=False)
            time.sleep(0.25)
        cleared = [a for a in alerts_seen if a["state"] == "cleared" and a["type"] == "drift"]
        assert [a["device_id"] for a in cleared] == ["dev-b"]
        assert len(record.read_text().splitlines()) == 1  # cleared alerts do not retrain
        store = open_store(db_url)
        try:
            stored = store.alerts()
        finally:
            store.close()
        assert {(a["type"], a["state"], a["device_id"]) for a in stored} >= {("drift", "raised", "dev-b"),
                                                                               ("drift", "cleared", "dev-b")}
    finally:
        pub.loop_stop()
        sub.loop_stop()
        monitor.stop()
        hook.shutdown()
        forget_session(SHARED_BROKER, monitor.config.client_id)


def test_stale_device_and_fleet_status_json(tmp_path, refstats):
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    monitor = make_monitor(db_url, prefix, refstats, evaluate=0.5, stale_after=2.0)
    pub = publisher()
    status = {"schema_version": 1, "kind": "status", "state": "online", "ts": time.time(),
              "agent": {"version": "test", "instance": "i"},
              "bundles": [{"id": BUNDLE_ID, "name": "tiny", "version": "1", "variant": "primary", "role": "primary"}]}
    try:
        for device in ("dev-live", "dev-gone"):
            publish(pub, f"{prefix}/v1/devices/{device}/status", json.dumps(dict(status, device_id=device)).encode())
            publish(pub, f"{prefix}/v1/devices/{device}/telemetry", window(refstats, device, 1))
        wait_until(lambda: monitor.stats["windows_new"] >= 2, what="two windows")
        live = threading.Event()

        def keep_live():  # dev-live keeps sending while dev-gone has gone quiet
            seq = 1
            while not live.wait(0.3):
                seq += 1
                publish(pub, f"{prefix}/v1/devices/dev-live/telemetry", window(refstats, "dev-live", seq, rows=10))

        threading.Thread(target=keep_live, daemon=True).start()
        wait_until(lambda: any(a["type"] == "stale" and a["device_id"] == "dev-gone" for a in _alerts(db_url)),
                   what="a stale alert for dev-gone")
        proc = subprocess.run([sys.executable, "-c", RUN, "fleet", "status", "--db", db_url, "--json",
                               "--stale-after", "2"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        devices = {d["device_id"]: d for d in report["devices"]}
        assert devices["dev-gone"]["state"] == "stale" and devices["dev-gone"]["stale"] is True
        assert devices["dev-live"]["state"] == "online" and devices["dev-live"]["online"] is True
        for d in devices.values():
            assert {"device_id", "online", "bundle", "drift", "top_features", "p95_latency_ms"} <= set(d)
            assert d["bundle"]["id"] == BUNDLE_ID
            assert isinstance(d["drift"]["drifted"], bool) and isinstance(d["top_features"], list)
        assert "stale" in devices["dev-gone"]["alerts"]
        assert report["counts"]["devices"] == 2
        table = subprocess.run([sys.executable, "-c", RUN, "fleet", "status", "--db", db_url, "--stale-after", "2"],
                               capture_output=True, text=True, timeout=60)
        assert table.returncode == 0 and "dev-gone" in table.stdout and "stale" in table.stdout
        live.set()
    finally:
        pub.loop_stop()
        monitor.stop()
        forget_session(SHARED_BROKER, monitor.config.client_id)


def _alerts(db_url: str) -> list[dict]:
    store = open_store(db_url)
    try:
        return store.alerts()
    finally:
        store.close()


def test_user_errors_exit_cleanly(tmp_path):
    bad = subprocess.run([sys.executable, "-c", RUN, "monitor", "--broker", "http://x", "--db",
                          f"sqlite:///{tmp_path / 'f.db'}"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, "-c", RUN, "monitor", "--bundle", str(tmp_path / "none.edgepkg"),
                              "--broker", SHARED_BROKER, "--db", f"sqlite:///{tmp_path / 'f.db'}"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 3 and "hint:" in missing.stderr and "Traceback" not in missing.stderr
    no_broker = subprocess.run([sys.executable, "-c", "import shutil; from edgeops.fleet import broker as b; "
                                "b.MOSQUITTO_PATHS = (); shutil.which = lambda name: None; " + RUN,
                                "monitor", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--state-dir",
                                str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert no_broker.returncode == 4 and "apt install mosquitto" in no_broker.stderr


def test_shared_subscription_splits_the_load_over_one_postgresql(pg_url, refstats):
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    group = f"g{uuid.uuid4().hex[:8]}"
    monitors = []
    for _ in range(2):
        config = MonitorConfig(broker=parse_broker_url(SHARED_BROKER), db_url=pg_url, topic_prefix=prefix,
                               client_id=f"mon-{uuid.uuid4().hex[:10]}", share=group, batch_delay=0.05,
                               parse_workers=0, evaluator=EvaluatorConfig(evaluate_interval=3600))
        monitor = Monitor(config, {}, log=lambda m: None)
        monitor.start()
        assert monitor.wait_connected(20)
        monitors.append(monitor)
    time.sleep(0.5)
    pub = publisher()
    try:
        for seq in range(1, 41):
            publish(pub, f"{prefix}/v1/devices/dev-s/telemetry", window(refstats, "dev-s", seq, rows=10))
        wait_until(lambda: sum(m.stats["received"] for m in monitors) >= 40, what="40 deliveries")
        assert all(m.stats["received"] > 0 for m in monitors)  # both members got a share
        assert sum(m.stats["received"] for m in monitors) == 40  # and no message went to both
        assert stored_seqs(pg_url, "dev-s") == list(range(1, 41))
    finally:
        pub.loop_stop()
        for monitor in monitors:
            monitor.stop()
            forget_session(SHARED_BROKER, monitor.config.client_id)


def test_references_come_from_verified_bundles_keyed_by_manifest_hash(tmp_path, refstats):
    import hashlib
    import zipfile

    import onnx
    from onnx import TensorProto, helper

    from edgeops.bundle.archive import write_bundle
    from edgeops.bundle.manifest import BundleError, build_manifest
    from edgeops.fleet.references import load_references

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, FEATURES])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, FEATURES])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    registry = tmp_path / "registry" / "site-a"
    registry.mkdir(parents=True)
    paths = []
    for version in ("1", "2"):
        manifest = build_manifest(name="tiny", version=version, inputs=[], outputs=[], source_sha256=None,
                                  toolchain={})
        paths.append(write_bundle(registry / f"tiny-{version}.edgepkg", {"model.onnx": tmp_path / "m.onnx"},
                                  manifest, refstats))
    refs = load_references(registry=str(tmp_path / "registry"))
    for path in paths:
        with zipfile.ZipFile(path) as zf:
            expected = hashlib.sha256(zf.read("manifest.json")).hexdigest()
        assert refs[expected].refstats == refstats and refs[expected].name == "tiny"
    assert sorted(r.version for r in refs.values()) == ["1", "2"]
    # A tampered bundle is refused, not trusted.
    with zipfile.ZipFile(paths[0]) as zf:
        entries = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(paths[0], "w") as zf:
        for info, data in entries:
            if info.filename == "refstats.json":
                data = data.replace(b'"numeric"', b'"categorical"', 1)
            zf.writestr(info, data)
    with pytest.raises(BundleError, match="tampered"):
        load_references([str(paths[0])])


def test_latency_and_error_rate_against_the_devices_baseline(tmp_path, refstats):
    from edgeops.fleet.evaluation import Evaluator

    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    monitor = make_monitor(db_url, prefix, refstats, horizon=6.0)
    pub = publisher()
    rng = np.random.default_rng(3)
    t0 = time.time()

    def send(seq: int, end: float, latency_ms: float, errors: int):
        stats = WindowStats(refstats)
        for _ in range(300):
            x = rng.normal(size=(1, FEATURES)).astype(np.float32)
            stats.record_request({"x": x}, {"label": (x[:, 0] > 0).astype(np.int64)}, latency_ms)
        for _ in range(errors):
            stats.record_error(latency_ms)
        payload = build_window_payload(
            device_id="dev-l", seq=seq, agent={"version": "test", "instance": "i"},
            bundle={"id": BUNDLE_ID, "name": "tiny", "version": "1"}, variant={"name": "primary", "role": "primary"},
            start=end - 1, end=end, body=stats.snapshot_and_reset(),
            system={"cpu_percent": None, "rss_bytes": None, "temperature_c": None, "load1": None},
            outbox={"pending": 1, "dropped_total": 0})
        publish(pub, f"{prefix}/v1/devices/dev-l/telemetry", encode_payload(payload))

    evaluator = Evaluator(monitor, EvaluatorConfig(horizon_s=6.0, separate_process=False,
                                                   detector=DetectorConfig(min_rows=200)))
    evaluator.store = open_store(db_url)
    try:
        send(1, t0, latency_ms=1.0, errors=0)  # the baseline: fast, no errors
        wait_until(lambda: monitor.stats["windows_new"] == 1, what="the baseline window")
        assert evaluator.evaluate_once(now=t0 + 1) == []
        send(2, t0 + 100, latency_ms=40.0, errors=60)  # later: 40x slower, 60 failed requests
        wait_until(lambda: monitor.stats["windows_new"] == 2, what="the slow window")
        assert evaluator.evaluate_once(now=t0 + 101) == []  # enter_after=2: not yet
        raised = evaluator.evaluate_once(now=t0 + 102)
        kinds = {(a["type"], a["state"], a["device_id"]) for a in raised}
        assert ("latency", "raised", "dev-l") in kinds and ("error_rate", "raised", "dev-l") in kinds, raised
        assert not [a for a in raised if a["type"] == "drift"]  # the inputs did not change
        latency = next(a for a in raised if a["type"] == "latency")
        assert latency["details"]["effect"] > 10  # p95 ratio
        assert evaluator.evaluate_once(now=t0 + 103) == []  # raised once, not on every evaluation
    finally:
        evaluator.store.close()
        pub.loop_stop()
        monitor.stop()
        forget_session(SHARED_BROKER, monitor.config.client_id)
