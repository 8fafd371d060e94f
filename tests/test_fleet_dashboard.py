"""The fleet dashboard: its JSON API over plain HTTP, and the page in a real headless Chromium.

The store is a real SQLite store filled the way the monitor fills it: window payloads of
telemetry.md through ingest.parse_message -> Store.insert_windows, the bundle's reference
statistics, drift evaluations computed with the real statistics, an alert.

Chromium (Debian package `chromium`) is required when EDGEOPS_REQUIRE_BROWSER=1 (CI);
elsewhere the browser tests skip, saying why.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgeops.bundle.refstats import reference_stats
from edgeops.fleet.alerts import build_alert
from edgeops.fleet.detectors import DetectorConfig, evaluate_fleet
from edgeops.fleet.ingest import parse_message
from edgeops.fleet.signals import latency_drift
from edgeops.fleet.store import open_store
from edgeops.fleet.web import api
from edgeops.fleet.web.server import start_dashboard

PREFIX = "edgeops"
HOSTILE_CATEGORY = '<img src=x onerror="document.body.dataset.pwned=1">'
BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]
WINDOWS = 12
EVALUATIONS = 6
HORIZON = 6   # windows per evaluation
ROWS_PER_WINDOW = 120


# ------------------------------------------------------------------ realistic data


def _reference(rng):
    n = 4000
    x = np.column_stack([rng.normal(21.0, 2.0, n), rng.normal(45.0, 8.0, n)])
    colour = rng.choice(["red", "green", "blue", HOSTILE_CATEGORY], size=n, p=[0.45, 0.3, 0.2, 0.05])
    # Two outputs: a class, and a smoothed temperature named like the input column "temp"
    # (so its drift rows are named "output:temp", detectors.reference_entries).
    outputs = {"label": (x[:, 0] > 22).astype(np.int64), "temp": (x[:, 0] * 0.9 + 2.1).astype(np.float32)}
    return reference_stats({"x": x, "colour": colour}, outputs, feature_names={"x": ["temp", "humidity"]})


def _bin(values, edges):
    counts, _ = np.histogram(values, bins=np.concatenate(([-np.inf], edges, [np.inf])))
    return [int(c) for c in counts]


def _categories(values, reference_categories):
    out = {}
    for v in values:
        key = v if v in reference_categories else "__unseen__"
        out[key] = out.get(key, 0) + 1
    return out


def _window(refstats, bundle, device, seq, end, rng, temp_shift=0.0, latency=0.8):
    """One window payload of telemetry.md, binned on the reference like an agent bins it."""
    temp = rng.normal(21.0 + temp_shift, 2.0, ROWS_PER_WINDOW)
    humidity = rng.normal(45.0, 8.0, ROWS_PER_WINDOW)
    colour = rng.choice(["red", "green", "blue", HOSTILE_CATEGORY, "purple"], size=ROWS_PER_WINDOW,
                        p=[0.44, 0.3, 0.2, 0.05, 0.01])
    by_name = {f["name"]: f for f in refstats["features"]}
    out_ref = {o["name"]: o for o in refstats["outputs"]}
    latencies = rng.gamma(4.0, latency / 4.0, 60)
    return {
        "schema_version": 1, "kind": "window", "device_id": device, "seq": seq,
        "agent": {"version": "0.1.0", "instance": "a" * 32},
        "bundle": bundle, "variant": {"name": "primary", "role": "primary"},
        "window": {"start": end - 60.0, "end": end},
        "requests": {"count": 60, "rows": ROWS_PER_WINDOW, "errors": 0, "rejected": 1,
                     "rejected_reasons": {"range": 1}},
        "latency_ms": {"buckets": BUCKETS, "counts": _bin(latencies, BUCKETS), "sum": float(latencies.sum()),
                       "max": float(latencies.max()), "p50": float(np.percentile(latencies, 50)),
                       "p90": float(np.percentile(latencies, 90)), "p95": float(np.percentile(latencies, 95)),
                       "p99": float(np.percentile(latencies, 99))},
        "features": [
            {"name": "colour", "input": "colour", "column": None, "kind": "categorical",
             "counts": _categories(colour, by_name["colour"]["categories"]), "missing": 0, "violations": 0},
            {"name": "temp", "input": "x", "column": 0, "kind": "numeric",
             "counts": _bin(temp, by_name["temp"]["edges"]), "missing": 0, "violations": 0},
            {"name": "humidity", "input": "x", "column": 1, "kind": "numeric",
             "counts": _bin(humidity, by_name["humidity"]["edges"]), "missing": 0, "violations": 0},
        ],
        "outputs": [
            {"name": "label", "output": "label", "column": None, "kind": "labels",
             "counts": _categories([str(int(t > 22)) for t in temp], out_ref["label"]["categories"])},
            {"name": "temp", "output": "temp", "column": None, "kind": "numeric",
             "counts": _bin(temp * 0.9 + 2.1, out_ref["temp"]["edges"])},
        ],
        "accuracy": None,
        "system": {"cpu_percent": 7.5, "rss_bytes": 61341696, "temperature_c": 48.0, "load1": 0.3},
        "outbox": {"pending": 0, "dropped_total": 0},
    }


def _message(device, kind, payload, received):
    return parse_message(f"{PREFIX}/v1/devices/{device}/{kind}", json.dumps(payload).encode(), PREFIX, received)


def _status(device, state, ts, bundle):
    return {"schema_version": 1, "kind": "status", "device_id": device, "state": state, "ts": ts,
            "agent": {"version": "0.1.0", "instance": "a" * 32},
            "bundles": [dict(bundle, variant="primary", role="primary")]}


def _sum_counts(windows, name, where="features"):
    total = None
    for w in windows:
        counts = next(f["counts"] for f in w[where] if f["name"] == name)
        if isinstance(counts, list):
            total = counts if total is None else [a + b for a, b in zip(total, counts)]
        else:
            total = dict(total or {})
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
    return total


def _horizon_counts(refstats, windows):
    """What the monitor sums over its horizon, keyed by detectors.reference_entries names."""
    names = {f["name"] for f in refstats["features"]}
    current = {"__rows__": sum(w["requests"]["rows"] for w in windows)}
    for f in refstats["features"]:
        current[f["name"]] = _sum_counts(windows, f["name"])
    for o in refstats["outputs"]:
        current[f"output:{o['name']}" if o["name"] in names else o["name"]] = _sum_counts(windows, o["name"], "outputs")
    return current


def _row(device_id, bundle_id, d, scope):
    """A drift row as the monitor stores it (edgeops/fleet/evaluation.py)."""
    return {"device_id": device_id, "bundle_id": bundle_id, "feature": d.feature, "kind": d.kind, "test": d.test,
            "statistic": d.statistic, "p_value": d.p_value, "psi": d.psi, "n": d.n, "drifted": d.drifted,
            "scope": scope if d.drifted else None}


def _evaluate(refstats, bundle_id, made, evaluated_at):
    """One evaluation with the real detectors over the last HORIZON windows of each device."""
    evaluated = ("pi-kitchen-01", "pi-garage-02", "pi-attic-03", "pi-shed-04")
    horizon = {d: [w for w in made[d] if w["window"]["end"] <= evaluated_at][-HORIZON:] for d in evaluated}
    current = {d: _horizon_counts(refstats, ws) for d, ws in horizon.items() if ws}
    result = evaluate_fleet(refstats, current, DetectorConfig())
    rows = [_row(device, bundle_id, d, result.scope.get((device, d.feature)))
            for device, drifts in result.devices.items() for d in drifts]
    rows += [_row("__fleet__", bundle_id, d, result.scope.get(("__fleet__", d.feature))) for d in result.fleet]
    # Garage's latency against its own first windows (an operational signal: no PSI).
    base = [sum(c) for c in zip(*(w["latency_ms"]["counts"] for w in made["pi-garage-02"][:4]))]
    cur = [sum(c) for c in zip(*(w["latency_ms"]["counts"] for w in horizon["pi-garage-02"]))]
    s = latency_drift(base, cur, DetectorConfig())
    rows.append({"device_id": "pi-garage-02", "bundle_id": bundle_id, "feature": "__latency__", "kind": "signal",
                 "test": s.test, "statistic": s.statistic, "p_value": s.p_value, "psi": None, "n": s.n,
                 "drifted": s.drifted, "scope": "device" if s.drifted else None})
    return rows


def _fill(store, now):
    rng = np.random.default_rng(7)
    refstats = _reference(rng)
    manifest = {"schema_version": 1, "model": {"name": "thermo", "version": "1.2"}}
    bundle_id = hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
    bundle = {"id": bundle_id, "name": "thermo", "version": "1.2"}
    store.save_reference(bundle_id, manifest, refstats)
    # A device running a bundle whose reference the monitor does not have.
    other = {"id": hashlib.sha256(b"other").hexdigest(), "name": "thermo", "version": "2.0-rc1"}
    devices = {  # device -> (bundle, temp shift, latency scale, minutes since its last window)
        "pi-kitchen-01": (bundle, 0.0, 0.8, 0.5),
        "pi-garage-02": (bundle, 3.5, 0.9, 0.5),     # its sensor reads hot: temp drifts; it slows down
        "pi-attic-03": (bundle, 0.0, 0.9, 1.0),      # stopped cleanly a minute ago: offline
        "pi-shed-04": (bundle, 0.0, 1.1, 20.0),      # quiet for 20 minutes: stale
        "jetson-lab-05": (other, 0.0, 0.4, 0.5),     # no reference statistics for its bundle
    }
    made = {}
    for device, (b, shift, lat, quiet_min) in devices.items():
        last_end = now - quiet_min * 60
        windows = [_window(refstats, b, device, seq + 1, last_end - (WINDOWS - 1 - seq) * 60, rng, shift,
                           lat * (3 if device == "pi-garage-02" and seq >= 4 else 1))
                   for seq in range(WINDOWS)]
        assert store.insert_windows([_message(device, "telemetry", w, w["window"]["end"]) for w in windows]) == WINDOWS
        state = "offline" if device == "pi-attic-03" else "online"
        store.record_status(_message(device, "status", _status(device, state, last_end, b), last_end))
        made[device] = windows
    # Kitchen also runs a shadow model on the same requests: stored, shown as its own latency
    # line, but never counted into the input distributions (it would count every row twice).
    shadow = [dict(_window(refstats, bundle, "pi-kitchen-01", WINDOWS + 1 + i, w["window"]["end"], rng, 5.0, 2.0),
                   variant={"name": "shadow-v2", "role": "shadow"}) for i, w in enumerate(made["pi-kitchen-01"])]
    assert store.insert_windows([_message("pi-kitchen-01", "telemetry", w, w["window"]["end"]) for w in shadow]) == WINDOWS
    # Evaluations every two minutes, the last one now.
    for k in range(EVALUATIONS):
        evaluated_at = now - (EVALUATIONS - 1 - k) * 120
        store.save_drift(evaluated_at, _evaluate(refstats, bundle_id, made, evaluated_at))
    store.save_alert(build_alert(alert_type="drift", state="raised", device_id="pi-garage-02", bundle=bundle,
                                 scope="device", message="temp drifted on pi-garage-02 (PSI above 0.1)",
                                 features=[{"feature": "temp", "psi": 1.2}], evaluated_at=now))
    return {"refstats": refstats, "bundle_id": bundle_id, "other": other, "windows": made}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{directory / 'fleet.db'}"
    now = time.time()
    store = open_store(url)
    try:
        data = _fill(store, now)
    finally:
        store.close()
    server = start_dashboard(url, port=0, mqtt_status=lambda: {"connected": True, "broker": "mqtt://127.0.0.1:1883"})
    yield dict(data, url=url, base=server.url.rstrip("/"), dir=directory)
    server.stop()


@pytest.fixture(scope="module")
def empty_fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("empty")
    server = start_dashboard(f"sqlite:///{directory / 'empty.db'}", port=0)
    yield server.url.rstrip("/")
    server.stop()


def _get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json(base, path):
    status, headers, body = _get(base, path)
    assert headers["Content-Type"] == "application/json", (path, headers)
    return status, json.loads(body)


# ------------------------------------------------------------------ JSON API


def test_fleet_overview(fleet):
    status, body = _json(fleet["base"], "/api/fleet")
    assert status == 200
    devices = {d["device_id"]: d for d in body["devices"]}
    assert set(devices) == {"pi-kitchen-01", "pi-garage-02", "pi-attic-03", "pi-shed-04", "jetson-lab-05"}
    garage, kitchen = devices["pi-garage-02"], devices["pi-kitchen-01"]
    assert garage["drifted"] is True and "temp" in garage["drifted_features"]
    assert garage["top_features"][0]["feature"] == "temp" and garage["top_features"][0]["psi"] > 0.25
    assert kitchen["drifted"] is False and kitchen["evaluated"] is True
    assert devices["jetson-lab-05"]["evaluated"] is False
    assert {d: devices[d]["state"] for d in devices} == {
        "pi-kitchen-01": "online", "pi-garage-02": "online", "pi-attic-03": "offline",
        "pi-shed-04": "stale", "jetson-lab-05": "online"}
    assert garage["bundle"]["name"] == "thermo" and garage["windows"] == WINDOWS
    assert kitchen["windows"] == 2 * WINDOWS   # primary + shadow
    # Garage became three times slower; its p95 comes from its windows in the last hour.
    assert garage["p95_latency_ms"] > kitchen["p95_latency_ms"] > 0
    assert "__latency__" in garage["drifted_features"]
    assert body["summary"] == {"devices": 5, "online": 3, "stale": 1, "offline": 1, "drifting": 1, "quarantined": 0}
    assert body["monitor"]["connected"] is True
    assert {r["feature"] for r in body["fleet_drift"]} == {"temp", "humidity", "colour", "label", "output:temp"}


def test_device_features_and_history(fleet):
    status, body = _json(fleet["base"], "/api/devices/pi-garage-02")
    assert status == 200 and body["has_reference"] is True
    features = {f["feature"]: f for f in body["features"]}
    # The reference's order, outputs named as the detectors name them, then the signals.
    assert list(features) == ["colour", "temp", "humidity", "label", "output:temp", "__latency__"]
    assert features["temp"]["score"]["drifted"] is True and features["output:temp"]["score"]["drifted"] is True
    assert features["humidity"]["score"]["drifted"] is False
    assert features["label"]["role"] == "output" and features["output:temp"]["role"] == "output"
    assert features["__latency__"]["role"] == "signal" and features["__latency__"]["score"]["psi"] is None
    assert len(body["timeline"]) == WINDOWS and all(w["requests"] == 60 for w in body["timeline"])
    status, body = _json(fleet["base"], "/api/devices/pi-kitchen-01?hours=1")
    assert status == 200 and {w["variant"] for w in body["timeline"]} == {"primary", "shadow-v2"}

    status, history = _json(fleet["base"], "/api/drift?device=pi-garage-02&feature=temp&hours=2")
    assert status == 200 and len(history["points"]) == EVALUATIONS
    times = [p["t"] for p in history["points"]]
    assert times == sorted(times)
    assert history["points"][-1]["drifted"] is True and history["points"][-1]["psi"] > 0.25
    status, fleet_history = _json(fleet["base"], "/api/drift?device=__fleet__&feature=humidity")
    assert status == 200 and len(fleet_history["points"]) == EVALUATIONS
    # A feature name is any printable text; it reaches SQL only as a bound parameter.
    status, injected = _json(fleet["base"], "/api/drift?device=pi-garage-02&feature=temp%27%20OR%20%271%27%3D%271")
    assert status == 200 and injected["points"] == [] and injected["feature"] == "temp' OR '1'='1"


def test_distribution_reference_vs_current(fleet):
    ref = {f["name"]: f for f in fleet["refstats"]["features"]}
    status, body = _json(fleet["base"], "/api/distribution?device=pi-garage-02&feature=temp")
    assert status == 200 and body["kind"] == "numeric" and body["bundle"] == fleet["bundle_id"]
    assert body["edges"] == ref["temp"]["edges"]
    assert len(body["labels"]) == len(ref["temp"]["edges"]) + 1
    assert body["reference"]["counts"] == ref["temp"]["counts"]
    assert body["current"]["counts"] == _sum_counts(fleet["windows"]["pi-garage-02"], "temp")
    assert body["current"]["windows"] == WINDOWS
    # The hot sensor: most current rows fall in the top bins, unlike the reference deciles.
    assert body["current"]["frequencies"][-1] > 2 * body["reference"]["frequencies"][-1]

    status, body = _json(fleet["base"], "/api/distribution?device=pi-kitchen-01&feature=colour&hours=1")
    assert status == 200 and body["kind"] == "categorical" and body["edges"] is None
    assert body["labels"][:len(ref["colour"]["categories"])] == list(ref["colour"]["categories"])
    assert HOSTILE_CATEGORY in body["labels"] and "__unseen__" in body["labels"]  # "purple" is unseen
    current = _sum_counts(fleet["windows"]["pi-kitchen-01"], "colour")
    assert dict(zip(body["labels"], body["current"]["counts"])) == {k: current.get(k, 0) for k in body["labels"]}
    assert body["current"]["windows"] == WINDOWS   # the shadow's windows are left out
    assert abs(sum(body["reference"]["frequencies"]) - 1) < 1e-9

    # An output named like a feature: its own reference entry and the windows' outputs[].
    out_ref = {o["name"]: o for o in fleet["refstats"]["outputs"]}["temp"]
    status, body = _json(fleet["base"], "/api/distribution?device=pi-garage-02&feature=output:temp")
    assert status == 200 and body["role"] == "output" and body["edges"] == out_ref["edges"]
    assert body["reference"]["counts"] == out_ref["counts"]
    assert body["current"]["counts"] == _sum_counts(fleet["windows"]["pi-garage-02"], "temp", "outputs")
    status, body = _json(fleet["base"], "/api/distribution?device=pi-garage-02&feature=__latency__")
    assert status == 404

    # The whole fleet pooled, for an explicit bundle.
    status, body = _json(fleet["base"], f"/api/distribution?device=__fleet__&feature=label&bundle={fleet['bundle_id']}")
    assert status == 200 and body["current"]["windows"] == 4 * WINDOWS


def test_device_without_reference_and_unknown_device(fleet):
    status, body = _json(fleet["base"], "/api/devices/jetson-lab-05")
    assert status == 200 and body["has_reference"] is False and body["features"] == []
    status, body = _json(fleet["base"], "/api/distribution?device=jetson-lab-05&feature=temp")
    assert status == 404 and "no reference statistics" in body["error"]
    status, body = _json(fleet["base"], "/api/devices/pi-nowhere-99")
    assert status == 404 and "unknown device" in body["error"]
    status, body = _json(fleet["base"], "/api/distribution?device=pi-garage-02&feature=pressure")
    assert status == 404


def test_alerts(fleet):
    status, body = _json(fleet["base"], "/api/alerts?hours=1")
    assert status == 200 and len(body["alerts"]) == 1
    assert body["alerts"][0]["device_id"] == "pi-garage-02" and body["alerts"][0]["state"] == "raised"


@pytest.mark.parametrize("path", [
    "/api/fleet?x=1",                                        # unknown parameter
    "/api/drift?device=a&device=b&feature=temp",             # given twice
    "/api/drift?device=../../etc&feature=temp",              # not a device id
    "/api/drift?device=pi-garage-02%0A&feature=temp",        # a trailing newline is not part of an id
    "/api/drift?device=pi-garage-02",                        # feature missing
    "/api/drift?device=pi-garage-02&feature=%00temp",        # control character
    "/api/drift?device=pi-garage-02&feature=%ff%fe",         # not UTF-8
    "/api/drift?device=pi-garage-02&feature=temp&hours=nan",
    "/api/drift?device=pi-garage-02&feature=temp&hours=-1",
    "/api/drift?device=pi-garage-02&feature=temp&hours=1e300",
    "/api/drift?device=pi-garage-02&feature=temp&hours=1;DROP%20TABLE%20windows",
    "/api/distribution?device=pi-garage-02&feature=temp&bundle=abc",
    "/api/distribution?device=pi-garage-02&feature=" + "f" * 500,
    "/api/devices/%2e%2e%2f%2e%2e",                          # ../.. after decoding
    "/api/devices/%ff",
    "/api/devices/pi-garage-02%0A",
    "/api/alerts?hours=" + "9" * 3000,                       # oversized query
    "/api/alerts?&&&",                                       # empty fields: strict parsing
])
def test_hostile_queries_get_400_json(fleet, path):
    status, body = _json(fleet["base"], path)
    assert status == 400, (path, body)
    assert body["status"] == 400 and body["error"]


@pytest.mark.parametrize("raw", ["/../../etc/passwd", "/app.js/../server.py", "/server.py", "/api.py",
                                 "/%2e%2e/%2e%2e/etc/passwd", "/static/../server.py", "/api/", "/api/fleet/x",
                                 "/index.html/", "/__init__.py"])
def test_unknown_paths_get_404_and_no_file_leaks(fleet, raw):
    host, port = fleet["base"].split("//")[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        connection.request("GET", raw)  # sent as is: no client-side normalisation of ".."
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 404, raw
    assert json.loads(body)["status"] == 404
    assert b"import" not in body and b"root:" not in body


def test_timeline_is_bounded_for_long_histories():
    """A week of one-minute windows becomes at most TIMELINE_POINTS points; counts add up."""
    start = 1_800_000_000.0
    windows = [{"window": {"start": start + 60 * i, "end": start + 60 * (i + 1)}, "variant": {"name": "primary"},
                "requests": {"count": 10, "rows": 20, "errors": i % 2, "rejected": 0},
                "latency_ms": {"p95": 1.0 + (i % 3)}} for i in range(7 * 24 * 60)]
    points = api._timeline(windows, start, start + 7 * 86400 + 60)
    assert 200 <= len(points) <= api.TIMELINE_POINTS
    assert sum(p["requests"] for p in points) == 10 * len(windows)
    assert sum(p["errors"] for p in points) == len(windows) // 2
    assert sum(p["windows"] for p in points) == len(windows)
    assert all(1.0 <= p["p95_latency_ms"] <= 3.0 for p in points)
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)


def test_dns_rebinding_host_is_refused(fleet):
    host, port = fleet["base"].split("//")[1].rsplit(":", 1)
    for name, expected in (("evil.example:" + port, 403), ("localhost:" + port, 200), (f"127.0.0.1:{port}", 200)):
        connection = http.client.HTTPConnection(host, int(port), timeout=20)
        try:
            connection.request("GET", "/api/fleet", headers={"Host": name})
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        assert response.status == expected, name


def test_malformed_request_and_broken_database_answer_json(tmp_path):
    db = tmp_path / "broken.db"
    server = start_dashboard(str(db), port=0)
    try:
        host, port = server.url.rstrip("/").split("//")[1].rsplit(":", 1)
        # Not HTTP at all: a JSON 400, not the stdlib's HTML page.
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            reply = sock.recv(65536)
        assert b'"status":400' in reply and b"<html" not in reply.lower()
        # The database file turns into something else under a running dashboard: 503 with the reason.
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"broken.db{suffix}").unlink(missing_ok=True)
        db.write_bytes(b"this is not a SQLite database" * 200)
        status, body = _json(server.url.rstrip("/"), "/api/fleet")
        assert status == 503 and "SQLite" in body["error"]
    finally:
        server.stop()


def test_static_files_headers_and_read_only(fleet):
    status, headers, body = _get(fleet["base"], "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b'src="/app.js"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, kind in (("/app.js", "text/javascript"), ("/charts.js", "text/javascript"), ("/style.css", "text/css")):
        status, headers, body = _get(fleet["base"], path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 1000
    # No CDN, no external asset: devices and monitors can be offline.
    for path in ("/", "/app.js", "/charts.js", "/style.css"):
        assert b"http://" not in _get(fleet["base"], path)[2].replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https://" not in _get(fleet["base"], path)[2]
    request = urllib.request.Request(fleet["base"] + "/api/fleet", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=20)
    assert info.value.code == 405
    assert fleet["base"].startswith("http://127.0.0.1:")  # the default bind is loopback


def test_empty_fleet_api(empty_fleet):
    status, body = _json(empty_fleet, "/api/fleet")
    assert status == 200 and body["devices"] == [] and body["summary"]["devices"] == 0
    assert body["monitor"] is None
    status, body = _json(empty_fleet, "/api/alerts")
    assert status == 200 and body["alerts"] == []


def test_bad_store_url_and_busy_port_are_usage_errors(fleet, tmp_path):
    from edgeops.errors import EdgeOpsError, UsageError

    with pytest.raises(EdgeOpsError):
        start_dashboard("mysql://nowhere/db", port=0)
    port = int(fleet["base"].rsplit(":", 1)[1])
    with pytest.raises(UsageError, match="cannot serve the dashboard"):
        start_dashboard(f"sqlite:///{tmp_path / 'x.db'}", port=port)


# ------------------------------------------------------------------ real headless browser


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("EDGEOPS_REQUIRE_BROWSER") == "1":
            pytest.fail("EDGEOPS_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); set EDGEOPS_REQUIRE_BROWSER=1 to require it")
    return path


def _browse(tmp_path, url, *extra):
    """Run headless Chromium on url; returns its stdout (the DOM after the page's JS ran)."""
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
               f"--user-data-dir={profile}", "--no-first-run", "--disable-extensions", *extra, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, cwd=tmp_path,
                            env=dict(os.environ, HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_browser_fleet_table(fleet, tmp_path):
    dom = _browse(tmp_path, fleet["base"] + "/", "--dump-dom")
    assert 'data-ready="1"' in dom, dom[-3000:]
    for device in ("pi-kitchen-01", "pi-garage-02", "pi-attic-03", "pi-shed-04", "jetson-lab-05"):
        assert f'data-device="{device}"' in dom
    assert 'data-device="pi-garage-02" data-drifted="true"' in dom
    assert 'data-device="pi-kitchen-01" data-drifted="false"' in dom
    garage_row = dom.split('data-device="pi-garage-02"')[1].split("</tr>")[0]
    assert "DRIFT" in garage_row and "temp" in garage_row
    kitchen_row = dom.split('data-device="pi-kitchen-01"')[1].split("</tr>")[0]
    assert "DRIFT" not in kitchen_row
    assert 'class="badge stale"' in dom and 'class="badge offline"' in dom
    assert "temp drifted on pi-garage-02" in dom      # the alert list
    assert "broker connected" in dom


def test_browser_device_page_charts_and_screenshot(fleet, tmp_path):
    from PIL import Image

    url = fleet["base"] + "/#/device/pi-garage-02/temp"
    dom = _browse(tmp_path, url, "--dump-dom")
    assert 'data-ready="1"' in dom, dom[-3000:]
    assert 'data-feature="temp" class="selected row-drift"' in dom
    psi_chart = dom.split('id="psi-chart"')[1].split('id="dist-chart"')[0]
    assert "<svg" in psi_chart and psi_chart.count("<circle") == EVALUATIONS
    assert 'class="dot psi flag"' in psi_chart      # drifted evaluations drawn as flagged points
    assert 'class="guide"' in psi_chart             # PSI 0.1 / 0.25 guide lines
    bars = dom.split('id="dist-chart"')[1].split("</svg>")[0]
    bins = len({f["name"]: f for f in fleet["refstats"]["features"]}["temp"]["edges"]) + 1
    assert bars.count('class="bar ref"') == bins and bars.count('class="bar cur"') == bins
    assert "<svg" in dom.split('id="latency-chart"')[1].split("</div>")[0]

    shot = tmp_path / "device.png"
    _browse(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as image:
        assert image.size == (1280, 900)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    background = (pixels == pixels[len(pixels) // 2]).all(axis=1).mean()
    assert len(colours) > 200 and background < 0.95   # text, badges, charts: not a blank page
    # The drift colour of flagged points and the bars' blue are on screen.
    assert ((pixels[:, 0] > 190) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).sum() > 30
    assert ((pixels[:, 0] < 70) & (pixels[:, 1] > 90) & (pixels[:, 1] < 130) & (pixels[:, 2] > 200)).sum() > 500


def test_browser_renders_hostile_labels_as_text_and_empty_states(fleet, empty_fleet, tmp_path):
    dom = _browse(tmp_path, fleet["base"] + "/?device=pi-kitchen-01&feature=colour", "--dump-dom")
    assert 'data-feature="colour" class="selected"' in dom
    assert "&lt;img src=x" in dom            # the category label shown as text...
    assert "data-pwned" not in dom           # ...never run as markup
    categories = {f["name"]: f for f in fleet["refstats"]["features"]}["colour"]["categories"]
    assert dom.count('class="bar ref"') == len(categories) + 1   # + __unseen__ ("purple")

    dom = _browse(tmp_path, fleet["base"] + "/#/device/pi-garage-02/__latency__", "--dump-dom")
    assert 'data-feature="__latency__" class="selected row-drift"' in dom
    assert "<svg" in dom.split('id="psi-chart"')[1].split('id="dist-chart"')[0]
    assert "An operational signal" in dom.split('id="dist-chart"')[1]

    dom = _browse(tmp_path, fleet["base"] + "/#/device/jetson-lab-05", "--dump-dom")
    assert 'data-ready="1"' in dom
    notice = dom.split('id="no-reference"')[1].split("</p>")[0]
    assert "hidden" not in notice.split(">")[0] and "No reference statistics" in notice

    dom = _browse(tmp_path, empty_fleet + "/", "--dump-dom")
    assert 'data-ready="1"' in dom
    empty = dom.split('id="fleet-empty"')[1].split(">")[0]
    assert "hidden" not in empty and "data-device=" not in dom


def test_api_on_postgresql(tmp_path):
    """The same views from a PostgreSQL store (its own schema, dropped afterwards)."""
    psycopg = pytest.importorskip("psycopg")
    schema = f"dash_{os.getpid()}_{time.monotonic_ns()}"
    base_url = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        admin = psycopg.connect(base_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    try:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{base_url}?options=-csearch_path%3D{schema}"
        store = open_store(url)
        try:
            _fill(store, time.time())
        finally:
            store.close()
        # The store wrote into this test's schema, nowhere else.
        assert admin.execute(f'SELECT COUNT(*) FROM "{schema}".windows').fetchone()[0] == 6 * WINDOWS
        server = start_dashboard(url, port=0)
        try:
            base = server.url.rstrip("/")
            status, body = _json(base, "/api/fleet")
            assert status == 200
            devices = {d["device_id"]: d for d in body["devices"]}
            assert devices["pi-garage-02"]["drifted"] is True and devices["pi-kitchen-01"]["drifted"] is False
            assert devices["pi-shed-04"]["state"] == "stale" and devices["pi-attic-03"]["state"] == "offline"
            status, body = _json(base, "/api/distribution?device=pi-garage-02&feature=temp")
            assert status == 200 and body["current"]["windows"] == WINDOWS
            status, body = _json(base, "/api/drift?device=pi-garage-02&feature=temp")
            assert status == 200 and len(body["points"]) == EVALUATIONS and body["points"][-1]["drifted"] is True
        finally:
            server.stop()
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()
