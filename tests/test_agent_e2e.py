"""End to end: `python -m edgeops.agent run` as a process, the real Mosquitto at 127.0.0.1:1883 and the
real `mosquitto_sub`. Windows carry the documented fields; after a SIGKILL mid-window and a restart
the seqs continue without a gap, and the broker delivered the last-will "offline" status."""
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile

import pytest

from agent_testlib import Client, mlp_bundle, wait_for

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

BROKER = ("127.0.0.1", 1883)


def _broker_up() -> bool:
    try:
        socket.create_connection(BROKER, timeout=2).close()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto_sub") and _broker_up()),
                                reason="needs mosquitto_sub and the Mosquitto broker at 127.0.0.1:1883")


class Subscriber:
    """mosquitto_sub -v -C N on PREFIX/#; lines parsed into (topic, payload dict) on a queue."""

    def __init__(self, prefix: str, count: int = 500):
        self.proc = subprocess.Popen(["mosquitto_sub", "-h", BROKER[0], "-p", str(BROKER[1]), "-v", "-q", "1",
                                      "-C", str(count), "-W", "120", "-t", f"{prefix}/#"],
                                     stdout=subprocess.PIPE, text=True)
        self.messages: queue.Queue = queue.Queue()
        self.seen: list[tuple[str, dict]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            topic, _, payload = line.rstrip("\n").partition(" ")
            if payload:
                self.messages.put((topic, json.loads(payload)))

    def until(self, predicate, timeout: float = 30.0) -> tuple[str, dict]:
        """Collect messages until one satisfies predicate(topic, payload); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                topic, payload = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append((topic, payload))
            if predicate(topic, payload):
                return topic, payload
        raise AssertionError(f"no matching message within {timeout} s; saw {[t for t, _ in self.seen][-10:]}")

    def windows(self) -> list[dict]:
        return [p for t, p in self.seen if t.endswith("/telemetry")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


def start_agent(bundle, buffer_dir, prefix: str, device: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeops.agent", "run", str(bundle), "--broker",
                             f"mqtt://{BROKER[0]}:{BROKER[1]}", "--telemetry-interval", "1", "--topic-prefix", prefix,
                             "--device-id", device, "--buffer-dir", str(buffer_dir), "--port", "0",
                             "--heartbeat-interval", "1"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []

    def listening():
        line = proc.stderr.readline()
        lines.append(line)
        if not line and proc.poll() is not None:
            raise AssertionError("the agent exited: " + "".join(lines))
        return "listening on http://" in line and line.split("listening on ")[1].split()[0]

    url = wait_for(listening, timeout=60)
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # keep the pipe drained
    return proc, url


def test_windows_reach_the_broker_and_survive_sigkill(tmp_path):
    bundle = mlp_bundle(tmp_path / "bundle")
    with zipfile.ZipFile(bundle) as zf:
        bundle_id = hashlib.sha256(zf.read("manifest.json")).hexdigest()
    prefix, device = f"test-{uuid.uuid4().hex}", f"e2e-{uuid.uuid4().hex[:8]}"
    status_topic = f"{prefix}/v1/devices/{device}/status"
    sub = Subscriber(prefix)
    agents = []
    try:
        agent, url = start_agent(bundle, tmp_path / "buffer", prefix, device)
        agents.append(agent)
        sub.until(lambda t, p: t == status_topic and p["state"] == "online")
        client = Client(url)
        rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
        for _ in range(10):
            assert client.predict(rows)[0] == 200
        assert client.predict([[1.0, 2.0, 3.0]])[0] == 422
        # all of it lands in the windows (one or two, depending on where the interval fell)
        sub.until(lambda t, p: t.endswith("/telemetry")  # sub.windows() includes this message
                  and sum(w["requests"]["count"] for w in sub.windows()) >= 10
                  and sum(w["requests"]["rejected"] for w in sub.windows()) >= 1)
        windows = sub.windows()
        assert sum(w["requests"]["count"] for w in windows) == 10
        assert sum(w["requests"]["rows"] for w in windows) == 20
        assert sum(w["requests"]["rejected_reasons"].get("shape", 0) for w in windows) == 1
        window = max(windows, key=lambda w: w["requests"]["count"])
        _check_window_fields(window, device, bundle_id)
        _, heartbeat = sub.until(lambda t, p: t.endswith("/heartbeat"))
        assert heartbeat["kind"] == "heartbeat" and heartbeat["last_seq"] >= 1
        assert heartbeat["bundles"][0]["id"] == bundle_id
        instance = window["agent"]["instance"]

        # SIGKILL in the middle of a window: the broker sends the last will
        sub.until(lambda t, p: t.endswith("/telemetry") and p["seq"] >= 4)
        time.sleep(0.5)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        _, will = sub.until(lambda t, p: t == status_topic and p["state"] == "offline")
        assert will["device_id"] == device and will["bundles"][0]["id"] == bundle_id
        last_before = max(w["seq"] for w in sub.windows())

        restarted = time.time()
        agent, url = start_agent(bundle, tmp_path / "buffer", prefix, device)
        agents.append(agent)
        sub.until(lambda t, p: t == status_topic and p["state"] == "online")
        assert Client(url).predict(rows)[0] == 200
        sub.until(lambda t, p: t.endswith("/telemetry") and p["seq"] >= last_before + 3)
        seqs = sorted({w["seq"] for w in sub.windows()})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs  # no gap among what arrived
        assert seqs[0] == 1
        # seq is persisted: the new process continues after the old one (windows it resends keep theirs)
        assert all(w["seq"] > last_before for w in sub.windows() if w["window"]["start"] >= restarted)
        by_seq: dict[int, dict] = {}
        for w in sub.windows():  # a resent window is the same window
            assert by_seq.setdefault(w["seq"], w) == w
        assert {w["agent"]["instance"] for w in sub.windows()} == {instance}  # same buffer directory

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        _, clean = sub.until(lambda t, p: t == status_topic and p["state"] == "offline")
        assert clean["ts"] > will["ts"]
    finally:
        for proc in agents:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        sub.close()
        # forget the retained status of this test device
        subprocess.run(["mosquitto_pub", "-h", BROKER[0], "-p", str(BROKER[1]), "-r", "-n", "-t", status_topic],
                       timeout=10, check=False)


def _check_window_fields(w: dict, device: str, bundle_id: str) -> None:
    assert w["schema_version"] == 1 and w["kind"] == "window" and w["device_id"] == device
    assert isinstance(w["seq"], int) and w["seq"] >= 1
    assert w["agent"]["version"] and len(w["agent"]["instance"]) >= 8
    assert w["bundle"] == {"id": bundle_id, "name": "mlp", "version": "1.0"}
    assert w["variant"] == {"name": "primary", "role": "primary"}
    assert w["window"]["start"] <= w["window"]["end"]
    assert set(w["requests"]) >= {"count", "rows", "errors", "rejected", "rejected_reasons"}
    lat = w["latency_ms"]
    assert len(lat["counts"]) == len(lat["buckets"]) + 1 == 17 and sum(lat["counts"]) == w["requests"]["count"]
    assert lat["p50"] is not None and lat["p50"] <= lat["p99"] <= lat["max"]
    assert [f["name"] for f in w["features"]] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    for f in w["features"]:
        assert f["kind"] == "numeric" and f["input"] == "x" and isinstance(f["counts"], list)
        assert {"missing", "violations", "column"} <= set(f)
    assert sum(w["features"][0]["counts"]) == w["requests"]["rows"]
    labels = next(o for o in w["outputs"] if o["name"] == "label")
    assert labels["kind"] == "labels" and sum(labels["counts"].values()) == w["requests"]["rows"]
    assert "accuracy" in w
    assert set(w["system"]) == {"cpu_percent", "rss_bytes", "temperature_c", "load1"} and w["system"]["rss_bytes"] > 0
    assert set(w["outbox"]) == {"pending", "dropped_total"}
