"""End to end: train -> `edgeops package` -> two real agents -> `edgeops monitor` -> one drift alert.

One agent receives inputs shifted on two features; only that device and those features may be
flagged, and its drift alert must arrive on the MQTT alert topic.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edgeops.bundle.archive import read_bundle
from helpers import run_cli

SHIFTED = (1, 4)  # columns shifted on the drifting device
RUN = "from edgeops.cli.main import main; main()"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("skl2onnx")
    import joblib
    from sklearn.linear_model import LogisticRegression

    work = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 2] > 0).astype(np.int64)
    joblib.dump(LogisticRegression().fit(x, y), work / "model.joblib")
    np.save(work / "ref.npy", x[:2000])
    out = work / "tiny.edgepkg"
    proc = run_cli("package", work / "model.joblib", "--device", "generic-x86_64", "-o", out,
                   "--reference", work / "ref.npy", "--no-benchmark", "--name", "tiny", cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def start_agent(bundle, work, prefix: str, device_id: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeops.agent", "run", str(bundle), "--broker", "mqtt://127.0.0.1:1883",
         "--topic-prefix", prefix, "--telemetry-interval", "1", "--heartbeat-interval", "2", "--device-id", device_id,
         "--port", "0", "--buffer-dir", str(work / device_id)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        found = re.search(r"listening on (http://\S+?)\s", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, found.group(1).rstrip("/")
    proc.kill()
    raise AssertionError("the agent did not start: " + "".join(lines)[-2000:])


def predict(url: str, rows: np.ndarray) -> None:
    body = json.dumps({"inputs": rows.tolist()}).encode()
    request = urllib.request.Request(url + "/v1/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_shifted_device_and_features_are_flagged_and_alerted(bundle, tmp_path):
    prefix = f"e2e-{uuid.uuid4().hex[:10]}"
    names = [f["name"] for f in read_bundle(bundle).refstats["features"]]
    shifted_names = {names[i] for i in SHIFTED}
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    alerts: list[dict] = []
    sub = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: alerts.append(json.loads(m.payload))
    sub.connect("127.0.0.1", 1883)
    sub.subscribe(f"{prefix}/v1/alerts/+", qos=1)
    sub.loop_start()
    client_id = f"mon-{uuid.uuid4().hex[:8]}"
    # Two devices with the default --fleet-fraction: the one that drifts alone must be local.
    monitor = subprocess.Popen(
        [sys.executable, "-c", RUN, "monitor", "--broker", "mqtt://127.0.0.1:1883", "--db", db_url,
         "--bundle", str(bundle), "--topic-prefix", prefix, "--client-id", client_id, "--evaluate-interval", "1",
         "--horizon", "30", "--min-rows", "200", "--parse-workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    agents = []
    rng = np.random.default_rng(1)
    try:
        agents = [start_agent(bundle, tmp_path, prefix, d) for d in ("dev-ok", "dev-shift")]
        (_, url_ok), (_, url_shift) = agents

        def drift_alerts():
            return [a for a in alerts if a["type"] == "drift" and a["state"] == "raised"]

        deadline = time.monotonic() + 90
        while not drift_alerts() and time.monotonic() < deadline:
            predict(url_ok, rng.normal(size=(60, 6)).astype(np.float32))
            shifted = rng.normal(size=(60, 6)).astype(np.float32)
            shifted[:, SHIFTED] += 2.0
            predict(url_shift, shifted)
            time.sleep(0.1)
        raised = drift_alerts()
        assert raised, f"no drift alert; monitor log: {_tail(monitor)}"
        assert [a["device_id"] for a in raised] == ["dev-shift"]
        alert = raised[0]
        flagged = {f["feature"] for f in alert["features"]}
        assert flagged and flagged <= shifted_names, flagged
        assert alert["scope"] == "device" and alert["bundle"]["name"] == "tiny"

        status = subprocess.run([sys.executable, "-c", RUN, "fleet", "status", "--db", db_url, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        devices = {d["device_id"]: d for d in json.loads(status.stdout)["devices"]}
        assert set(devices) == {"dev-ok", "dev-shift"}
        assert devices["dev-ok"]["state"] == "online" and devices["dev-shift"]["state"] == "online"
        assert devices["dev-shift"]["drift"]["drifted"] is True
        top = {f["feature"] for f in devices["dev-shift"]["top_features"] if not f["feature"].startswith("__")}
        assert top and top <= shifted_names | {"label", "output:label"}, top
        assert not [f for f in devices["dev-ok"]["top_features"] if f["feature"] in names]
        assert "drift" in devices["dev-shift"]["alerts"] and "drift" not in devices["dev-ok"]["alerts"]
        assert not [a for a in alerts if a["device_id"] != "dev-shift" and a["type"] in ("drift", "prediction_drift")]
    finally:
        for proc, _ in agents:
            stop(proc)
        stop(monitor)
        sub.loop_stop()
        _forget(client_id)
    assert monitor.returncode == 0


def _tail(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err[-3000:]


def _forget(client_id: str) -> None:
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", 1883, clean_start=True)
    client.loop(0.5)
    client.disconnect()

