"""The quickstart's last part: serve the signed bundle on two "devices" and watch them.

A monitor (with its own private Mosquitto and the dashboard), then two agents serving the same
bundle on loopback. Both get the digits test rows; one of them (pi-garage) then gets rows whose
centre pixels are brighter, as if its camera's exposure changed. The monitor flags that device
and those pixels, and `edgeops fleet status` shows it.
"""
from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEVICES = ("pi-kitchen", "pi-garage")
SHIFTED = [19, 20, 27, 28, 35, 36, 43, 44]  # centre pixels (8x8 image, row-major)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, module: str) -> subprocess.Popen:
    print(f"\n$ edgeops {shlex.join(args)} &", flush=True)
    if module == "edgeops.agent":  # `python -m edgeops.agent run ...` is `edgeops agent run ...`
        args = args[1:]
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"quickstart: {what} exited (code {proc.returncode}); its log:\n{log.read_text()[-3000:]}")
        result = check()
        if result:
            return result
        time.sleep(0.3)
    sys.exit(f"quickstart: timed out waiting for {what}; its log:\n{log.read_text()[-3000:]}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def post(port: int, path: str, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    if resp.status != 200:
        sys.exit(f"quickstart: {path} answered {resp.status}: {answer}")
    return answer


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def fleet_status(db: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "edgeops.cli.main", "fleet", "status", "--db", str(db), "--json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    data = json.loads(proc.stdout)
    return data["devices"] if isinstance(data, dict) else data


def fleet_part(out: Path, data, bundle: Path, public_key: Path) -> None:
    import joblib

    X_train, X_test, y_train, y_test = data
    fleet = out / "fleet"
    fleet.mkdir(exist_ok=True)
    broker_port, http_port = free_port(), free_port()
    db = fleet / "fleet.db"
    procs: list[subprocess.Popen] = []
    try:
        print("\n== the fleet: a monitor (private broker + dashboard) and two agents serving the signed bundle")
        monitor_log = fleet / "monitor.log"
        monitor = start(["monitor", "--db", str(db), "--state-dir", str(fleet / "state"),
                         "--broker-listen", f"127.0.0.1:{broker_port}", "--bundle", str(bundle), "--key", str(public_key),
                         "--http", f"127.0.0.1:{http_port}", "--evaluate-interval", "2", "--horizon", "300"],
                        monitor_log, "edgeops.cli.main")
        procs.append(monitor)
        wait_for(lambda: port_open(broker_port) and port_open(http_port), "the monitor", monitor, monitor_log)

        ports = {}
        for device in DEVICES:
            ports[device] = free_port()
            log = fleet / f"{device}.log"
            agent = start(["agent", "run", str(bundle), "--trusted-key", str(public_key), "--require-signature",
                           "--broker", f"mqtt://127.0.0.1:{broker_port}", "--device-id", device,
                           "--port", str(ports[device]), "--telemetry-interval", "2",
                           "--buffer-dir", str(fleet / device)], log, "edgeops.agent")
            procs.append(agent)
            wait_for(lambda: healthy(ports[device]), f"the agent {device}", agent, log)

        source = joblib.load(out / "digits_mlp.joblib")
        expected = source.predict(X_test)
        for device in DEVICES:
            got = np.asarray(post(ports[device], "/v1/predict", {"inputs": X_test.tolist()})["outputs"]["label"])
            agree = int((got == expected).sum())
            print(f"{device}: {len(got)} predictions over HTTP; {agree}/{len(got)} equal to the scikit-learn "
                  f"model's (the bundle holds the quantized model the gate accepted)")

        drifted = X_test.copy()
        drifted[:, SHIFTED] = np.clip(drifted[:, SHIFTED] + 6.0, 0, 16)
        print(f"\n{DEVICES[1]} now sees brighter centre pixels {SHIFTED}; {DEVICES[0]} sees the usual data")
        for _ in range(3):
            post(ports[DEVICES[0]], "/v1/predict", {"inputs": X_test.tolist()})
            post(ports[DEVICES[1]], "/v1/predict", {"inputs": drifted.tolist()})
            time.sleep(1)

        def flagged():
            rows = {d["device_id"]: d for d in fleet_status(db)}
            garage = rows.get(DEVICES[1], {})
            return rows if (garage.get("drift") or {}).get("drifted") else None

        rows = wait_for(flagged, "the monitor to flag the drift", monitor, monitor_log, timeout=120)
        for device in DEVICES:
            d = rows.get(device, {})
            top = ", ".join(f["feature"] if isinstance(f, dict) else str(f) for f in d.get("top_features", [])[:5])
            print(f"{device}: drift {'YES' if (d.get('drift') or {}).get('drifted') else 'no'}"
                  + (f" (top features: {top})" if top else ""))
        print(f"\n$ edgeops fleet status --db {db}", flush=True)
        subprocess.run([sys.executable, "-m", "edgeops.cli.main", "fleet", "status", "--db", str(db)])
        print(f"\nthe dashboard was at http://127.0.0.1:{http_port}/ ; logs are in {fleet}/")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
