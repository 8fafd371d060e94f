"""The agent's HTTP service with real runtimes: exact predictions, hostile clients, auth, feedback,
A/B split and shadow, metrics. Agents run in this process on free ports (real sockets)."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from agent_testlib import (Client, mixed_onnx, bundle_from_onnx, mlp_bundle, outbox_windows, raw_exchange,
                           running_agent, wait_for)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

UNREACHABLE = "mqtt://127.0.0.1:1"  # windows stay in the outbox, where the tests read them


# -- identical predictions: scikit-learn and a small CNN, packaged through the edgeops API -----------

@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    pytest.importorskip("skl2onnx")
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeops.cli.bundle import build_package

    d = tmp_path_factory.mktemp("digits")
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X[:1400], y[:1400])
    joblib.dump(model, d / "digits.joblib")
    np.save(d / "ref.npy", X[:1400])
    path = build_package(d / "digits.joblib", "rpi4", d / "digits.edgepkg", sample_input=d / "ref.npy",
                         reference=d / "ref.npy", name="digits", version="1.0", benchmark=False, quiet=True)
    return path, model, X[1400:], y[1400:]


def test_sklearn_predictions_over_http_are_identical(digits_bundle, tmp_path):
    path, model, X, y = digits_bundle
    with running_agent(path, tmp_path) as agent:
        client = Client(agent.url)
        labels, probs = [], []
        for start in range(0, len(X), 100):
            status, body, _ = client.predict(X[start:start + 100].tolist())
            assert status == 200, body
            assert body["variant"] == "primary" and body["model"]["name"] == "digits"
            assert len(body["model"]["bundle_id"]) == 64 and body["request_id"]
            labels.extend(body["outputs"]["label"])
            probs.extend(body["outputs"]["probabilities"])
        labels, probs = np.array(labels), np.array(probs, dtype=np.float32)
        assert np.array_equal(labels, model.predict(X))
        np.testing.assert_allclose(probs, model.predict_proba(X), atol=1e-6)
        # and bit-identical to the runtime the agent loaded, on the same rows
        bare = agent.variants[0].bundle.runtime.run({"input": X})
        assert np.array_equal(probs, bare["probabilities"]) and np.array_equal(labels, bare["label"])


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from edgeops.cli.bundle import build_package

    nn = torch.nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 4 * 4, 3)

        def forward(self, image):
            return self.fc(torch.flatten(self.pool(torch.relu(self.conv(image))), 1))

    torch.manual_seed(0)
    model = TinyCNN().eval()
    d = tmp_path_factory.mktemp("cnn")
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    torch.jit.trace(model, (torch.from_numpy(x[:2]),)).save(str(d / "cnn.pt"))
    np.save(d / "ref.npy", x)
    path = build_package(d / "cnn.pt", "rpi4", d / "cnn.edgepkg", sample_input=d / "ref.npy",
                         reference=d / "ref.npy", name="cnn", version="1.0", benchmark=False, quiet=True)
    test = np.random.default_rng(1).standard_normal((20, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(test)).numpy()
    return path, test, expected


def test_cnn_predictions_over_http_are_identical(cnn_bundle, tmp_path):
    path, x, expected = cnn_bundle
    with running_agent(path, tmp_path) as agent:
        status, body, _ = Client(agent.url).predict(x.tolist())
        assert status == 200, body
        got = np.array(body["outputs"]["output"], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)
        assert np.array_equal(got, agent.variants[0].bundle.runtime.run({"image": x})["output"])
        status, body, _ = Client(agent.url).predict(x[:, :, :4].tolist())
        assert status == 422 and body["reason"] == "shape" and "image" in body["error"]


# -- hostile clients -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return mlp_bundle(tmp_path_factory.mktemp("mlp"))


def _post(body: bytes, length: int | None = None, ctype: bytes = b"application/json", extra: bytes = b"") -> bytes:
    length = len(body) if length is None else length
    return (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
            + str(length).encode() + b"\r\n" + extra + b"\r\n" + body)


def test_hostile_bodies_get_the_right_4xx_and_the_agent_keeps_serving(mlp, tmp_path):
    with running_agent(mlp, tmp_path, max_batch_rows=50, request_timeout=1.5, broker=UNREACHABLE,
                       flush_timeout=0) as agent:
        url = agent.url
        client = Client(url)
        good = [[1.0, 2.0, 3.0, 4.0]]
        cases = [
            (_post(b"{not json"), 400, "not valid JSON"),
            (_post(b"[" * 200_000), 400, "nested too deeply"),
            (_post(b'{"inputs": ' + b"[" * 500 + b"]" * 500 + b"}"), 422, "not a rectangular array"),
            (_post(b"x" * (5 << 20)), 413, "more than the limit"),
            (_post(b'{"inputs": [[1, 2, 3, 4]]}', length=10), 400, "not valid JSON"),
            (_post(b'{"inputs": [["a", "b", "c", "d"]]}'), 422, "takes numbers"),
            (_post(b'{"inputs": [[1, 2, "3", 4]]}'), 422, "got text"),
            (_post(b'{"inputs": [[true, 2, 3, 4]]}'), 422, "true/false"),
            (_post(b'{"inputs": [[1, 2, 3]]}'), 422, "got shape [1, 3]"),
            (_post(b'{"inputs": [[1, 2], [3, 4, 5]]}'), 422, "rectangular"),
            (_post(b'{"inputs": [[NaN, 2, 3, 4]]}'), 422, "missing"),
            (_post(b'{"inputs": [[Infinity, 2, 3, 4]]}'), 422, "infinite"),
            (_post(b'{"inputs": [[1e39, 2, 3, 4]]}'), 422, "infinite, or too large"),
            (_post(b'{"inputs": []}'), 422, "no rows"),
            (_post(b'{"inputs": ' + str([[1, 2, 3, 4]] * 51).encode() + b"}"), 413, "more than the limit of 50"),
            (_post(b'{"rows": [[1, 2, 3, 4]]}'), 400, "JSON object with"),
            (_post(b'[1, 2]'), 400, "JSON object with"),
            (_post(b'{"inputs": {"y": [[1, 2, 3, 4]]}}'), 422, "unknown input(s) y"),
            (_post(b'{"inputs": [[1, 2, 3, 4]]}', ctype=b"text/plain"), 415, "must be JSON"),
            (_post(b"\xff\xfe{}"), 400, "UTF-8"),
            (b"POST /v1/predict HTTP/1.1\r\nContent-Type: application/json\r\n\r\n", 411, "Content-Length"),
            (b"POST /v1/predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411, "chunked"),
            (b"POST /v1/predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, "not a number"),
            (b"GET /v1/predict HTTP/1.1\r\n\r\n", 405, "not allowed"),
            (b"GET /nope HTTP/1.1\r\n\r\n", 404, "no such path"),
            (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400, "not an HTTP"),
            (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431, "too many header"),
        ]
        for data, status, needle in cases:
            got, raw = raw_exchange(url, data, timeout=20)
            assert got == status, (data[:80], raw[:300])
            assert needle.encode() in raw, (needle, raw[:400])
            assert b'"hint"' in raw
            assert client.predict(good)[0] == 200  # still serving after each
        # Content-Length larger than the body, then silence: answered 408 after the timeout
        status, raw = raw_exchange(url, _post(b'{"inputs": [[1, 2', length=100), timeout=20)
        assert status == 408, raw[:300]
        # an honest client on the same agent is unaffected
        assert client.predict(good)[0] == 200
        windows = _close_and_read(agent, client)
        reasons = windows[-1]["requests"]["rejected_reasons"]
        assert reasons["schema"] >= 4 and reasons["dtype"] >= 3 and reasons["shape"] >= 4
        assert reasons["missing"] == 1 and reasons["nonfinite"] == 2


def _close_and_read(agent, client) -> list[dict]:
    # Requests are recorded after their answer is sent, by the connection's thread: one more request
    # on the same kept-alive connection means the previous ones are recorded.
    assert client.request("GET", "/healthz")[0] == 200
    agent.close_window()
    return outbox_windows(agent)


def test_slow_clients_and_connection_limit_do_not_stall_the_agent(mlp, tmp_path):
    with running_agent(mlp, tmp_path, request_timeout=2.0, max_connections=4) as agent:
        host, port = agent.url.split("//")[1].rsplit(":", 1)
        slow = socket.create_connection((host, int(port)), timeout=20)
        slow.sendall(_post(b'{"inputs": [[1, 2,', length=200)[:-3])  # half a request, then nothing
        client = Client(agent.url)
        assert client.predict([[1, 2, 3, 4]])[0] == 200  # served while the slow client hangs
        slow.settimeout(20)
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        slow.close()
        client.close()
        idle = [socket.create_connection((host, int(port)), timeout=20) for _ in range(4)]
        status, raw = raw_exchange(agent.url, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status == 503 and b"too many connections" in raw
        for s in idle:
            s.close()
        wait_for(lambda: raw_exchange(agent.url, b"GET /healthz HTTP/1.1\r\n\r\n")[0] == 200)
        assert client.predict([[1, 2, 3, 4]])[0] == 200


def test_token_is_required_where_documented(mlp, tmp_path):
    with running_agent(mlp, tmp_path, token="s3cret-token") as agent:
        anonymous = Client(agent.url)
        status, body, response = anonymous.predict([[1, 2, 3, 4]])
        assert status == 401 and response.getheader("WWW-Authenticate").startswith("Bearer")
        assert anonymous.request("GET", "/metrics")[0] == 401
        assert anonymous.request("POST", "/v1/feedback", {"feedback": []})[0] == 401
        assert Client(agent.url, token="s3cret-tokeN").predict([[1, 2, 3, 4]])[0] == 401
        assert anonymous.request("GET", "/healthz")[0] == 200
        authed = Client(agent.url, token="s3cret-token")
        assert authed.predict([[1, 2, 3, 4]])[0] == 200
        status, text, _ = authed.request("GET", "/metrics")
        assert status == 200 and b'edgeops_agent_requests_total{variant="none",status="401"} 4' in text


# -- value rules against the reference -----------------------------------------------------------------

def test_range_and_missing_rules_follow_the_reference(tmp_path):
    ref = np.random.default_rng(5).uniform(0, 10, size=(300, 4)).astype(np.float32)
    ref[::10, 0] = np.nan  # the reference has missing values in column 0 only
    bundle = mlp_bundle(tmp_path / "b", reference=ref)
    with running_agent(bundle, tmp_path / "a", broker=UNREACHABLE, flush_timeout=0) as agent:
        client = Client(agent.url)
        status, body, _ = client.predict([[None, 1, 2, 3]])
        assert status == 200 and body["outputs"]["label"] is not None  # NaN output -> null, valid JSON
        status, body, _ = client.predict([[1, None, 2, 3], [1, 2, 3, 4]])
        assert status == 422 and body["reason"] == "missing" and "row 0 feature 'x[1]'" in body["error"]
        status, body, _ = client.predict([[1, 2, 3, 4], [1, 2, 3, 45]])  # range [0, 10] -> accepted [-30, 40]
        assert status == 422 and body["reason"] == "range" and "row 1 feature 'x[3]' = 45" in body["error"]
        assert client.predict([[1, 2, 3, 39.5]])[0] == 200
        window = _close_and_read(agent, client)[-1]
        assert window["requests"]["rejected_reasons"] == {"missing": 1, "range": 1}
        violations = {f["name"]: f["violations"] for f in window["features"]}
        assert violations == {"x[0]": 0, "x[1]": 1, "x[2]": 0, "x[3]": 1}
        assert window["features"][0]["missing"] == 1 and window["requests"]["count"] == 2
    with running_agent(bundle, tmp_path / "k", range_tolerance=1.0) as agent:  # accepted [-10, 20]
        client = Client(agent.url)
        assert client.predict([[1, 2, 3, 19.5]])[0] == 200
        status, body, _ = client.predict([[1, 2, 3, 25]])
        assert status == 422 and body["reason"] == "range" and "= 25" in body["error"]
    with running_agent(bundle, tmp_path / "w", range_check="warn") as agent:
        status, body, _ = Client(agent.url).predict([[1, 2, 3, 1000]])
        assert status == 200 and "x[3]" in body["warnings"][0]
    with running_agent(bundle, tmp_path / "o", range_check="off") as agent:
        status, body, _ = Client(agent.url).predict([[1, 2, 3, 1000]])
        assert status == 200 and "warnings" not in body


def test_several_inputs_ints_and_text(tmp_path):
    model = mixed_onnx(tmp_path / "mixed.onnx")
    ref = {"ids": np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int64),
           "tag": np.array([["a"], ["b"], ["a"]], dtype=object)}
    bundle = bundle_from_onnx(tmp_path / "mixed.edgepkg", model, ref, name="mixed")
    with running_agent(bundle, tmp_path) as agent:
        client = Client(agent.url)
        status, body, _ = client.predict({"ids": [[1, 2], [3.0, 4]], "tag": [["a"], ["zz"]]})
        assert status == 200, body
        assert body["outputs"] == {"ids_out": [[1, 2], [3, 4]], "tag_out": [["a"], ["zz"]]}
        bad = [({"ids": [[1.5, 2]], "tag": [["a"]]}, "dtype", "fraction"),
               ({"ids": [[1, 2]], "tag": [[3]]}, "dtype", "takes text"),
               ({"ids": [[1, 2]], "tag": [[None]]}, "missing", "null"),
               ({"ids": [[1, 2]]}, "schema", "missing input(s) tag"),
               ({"ids": [[1, 2], [3, 4]], "tag": [["a"]]}, "shape", "different numbers of rows"),
               ({"ids": [[1, 2**70]], "tag": [["a"]]}, "dtype", "outside")]
        for inputs, reason, needle in bad:
            status, body, _ = client.predict(inputs)
            assert status == 422 and body["reason"] == reason and needle in body["error"], (inputs, body)
        status, body, _ = client.predict([[1, 2]])
        assert status == 422 and "takes 2 inputs" in body["error"]


# -- feedback, A/B split, shadow, metrics ---------------------------------------------------------------

def test_feedback_tracks_accuracy_per_variant(mlp, tmp_path):
    x = np.random.default_rng(9).uniform(0, 10, size=(6, 4)).round(3).tolist()
    with running_agent(mlp, tmp_path, broker=UNREACHABLE, flush_timeout=0) as agent:
        client = Client(agent.url)
        status, body, _ = client.predict(x, request_id="req-1")
        assert status == 200 and body["request_id"] == "req-1"
        predicted = body["outputs"]["label"]
        labels = list(predicted[:4]) + [(p + 1) % 3 for p in predicted[4:]]  # 4 right, 2 wrong
        status, body, _ = client.request("POST", "/v1/predict", {"inputs": x[:1]}, {"X-Request-ID": "req-2"})
        assert body["request_id"] == "req-2"
        status, body, _ = client.request("POST", "/v1/feedback", {"feedback": [
            {"request_id": "req-1", "labels": labels}, {"request_id": "nope", "labels": [1]},
            {"request_id": "req-2", "labels": [0, 1]}, {"labels": [1]}]})
        assert status == 200, body
        assert body["accepted"] == 1 and body["unknown"] == ["nope"] and len(body["invalid"]) == 2
        # the same id again: already used
        status, body, _ = client.request("POST", "/v1/feedback", {"feedback": [{"request_id": "req-1", "labels": labels}]})
        assert body["unknown"] == ["req-1"]
        assert client.request("POST", "/v1/feedback", b"{oops", {"Content-Type": "application/json"})[0] == 400
        window = _close_and_read(agent, client)[-1]
        assert window["accuracy"] == {"kind": "labels", "labelled": 6, "correct": 4}


def test_ab_split_is_deterministic_with_per_variant_telemetry(tmp_path):
    primary = mlp_bundle(tmp_path / "p", seed=0)
    candidate = mlp_bundle(tmp_path / "c", seed=1, name="mlp-b")
    rows = [[1.0, 2.0, 3.0, 4.0]]
    with running_agent(primary, tmp_path / "a", candidate=str(candidate), split=0.3, broker=UNREACHABLE,
                       flush_timeout=0) as agent:
        client = Client(agent.url)
        seen = {}
        for i in range(400):
            status, body, _ = client.predict(rows, request_id=f"r{i}")
            assert status == 200
            seen[f"r{i}"] = body["variant"]
        share = sum(v == "candidate" for v in seen.values()) / len(seen)
        assert 0.15 < share < 0.45, share
        for rid in ("r1", "r2", "r3", "r4"):
            assert client.predict(rows, request_id=rid)[1]["variant"] == seen[rid]
        n_candidate = sum(v == "candidate" for v in seen.values()) + sum(seen[r] == "candidate" for r in ("r1", "r2", "r3", "r4"))
        text = client.request("GET", "/metrics")[1].decode()
        assert f'edgeops_agent_requests_total{{variant="candidate",status="200"}} {n_candidate}' in text
        assert f'edgeops_agent_requests_total{{variant="primary",status="200"}} {404 - n_candidate}' in text
        assert 'edgeops_agent_model_info{variant="candidate",role="candidate"' in text
        windows = {w["variant"]["name"]: w for w in _close_and_read(agent, client)}
        assert windows["candidate"]["requests"]["count"] == n_candidate
        assert windows["primary"]["requests"]["count"] == 404 - n_candidate
        assert windows["candidate"]["bundle"]["name"] == "mlp-b" and windows["candidate"]["variant"]["role"] == "candidate"
        assert windows["primary"]["seq"] != windows["candidate"]["seq"]
        health = client.request("GET", "/healthz")[1]
        assert health["split"] == 0.3 and len(health["bundles"]) == 2


def test_shadow_runs_on_the_same_requests_and_its_answers_are_discarded(tmp_path):
    primary = mlp_bundle(tmp_path / "p", seed=0)
    shadow = mlp_bundle(tmp_path / "s", seed=1, name="mlp-shadow")
    x = np.random.default_rng(3).uniform(0, 10, size=(5, 4)).tolist()
    with running_agent(primary, tmp_path / "a", shadow=str(shadow), broker=UNREACHABLE, flush_timeout=0) as agent:
        client = Client(agent.url)
        for i in range(30):
            status, body, _ = client.predict(x, request_id=f"s{i}")
            assert status == 200 and body["variant"] == "primary"
        want = 'edgeops_agent_requests_total{variant="shadow",status="200"}'

        def shadow_done():
            text = client.request("GET", "/metrics")[1].decode()
            line = next((ln for ln in text.splitlines() if ln.startswith(want)), "")
            dropped = int(next(ln for ln in text.splitlines()
                               if ln.startswith("edgeops_agent_shadow_dropped_total")).split()[-1])
            return line and int(line.split()[-1]) + dropped == 30 and (int(line.split()[-1]), dropped)

        ran, dropped = wait_for(shadow_done)
        labels = [0] * 5
        status, body, _ = client.request("POST", "/v1/feedback", {"feedback": [{"request_id": "s0", "labels": labels}]})
        assert body["accepted"] == 1
        windows = {w["variant"]["name"]: w for w in _close_and_read(agent, client)}
        assert windows["primary"]["requests"]["count"] == 30
        assert windows["shadow"]["requests"]["count"] == ran and windows["shadow"]["variant"]["role"] == "shadow"
        assert windows["shadow"]["requests"]["rows"] == 5 * ran
        assert windows["primary"]["accuracy"]["labelled"] == 5
        if ran == 30:  # s0 ran in the shadow, so its prediction has feedback too
            assert windows["shadow"]["accuracy"]["labelled"] == 5


def test_incompatible_candidate_is_refused_at_start(tmp_path):
    from edgeops.errors import UsageError

    primary = mlp_bundle(tmp_path / "p")
    other = bundle_from_onnx(tmp_path / "m.edgepkg", mixed_onnx(tmp_path / "mixed.onnx"),
                             {"ids": np.ones((3, 2), np.int64), "tag": np.array([["a"]] * 3, dtype=object)})
    with pytest.raises(UsageError, match="same input signature"):
        with running_agent(primary, tmp_path / "a", candidate=str(other)):
            pass


def test_health_and_metrics(mlp, tmp_path):
    with running_agent(mlp, tmp_path) as agent:
        client = Client(agent.url)
        status, health, _ = client.request("GET", "/healthz")
        assert status == 200 and health["status"] == "ok"
        assert health["bundles"][0]["name"] == "mlp" and health["telemetry"]["enabled"] is False
        client.predict([[1, 2, 3, 4]])
        client.predict([[1, 2, 3]])
        status, text, response = client.request("GET", "/metrics")
        assert status == 200 and response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
        text = text.decode()
        for needle in ('edgeops_agent_requests_total{variant="primary",status="200"} 1',
                       'edgeops_agent_requests_total{variant="primary",status="422"} 1',
                       'edgeops_agent_rejections_total{variant="primary",reason="shape"} 1',
                       'edgeops_agent_predict_latency_seconds_count{variant="primary"} 1',
                       'edgeops_agent_predict_latency_seconds_bucket{variant="primary",le="+Inf"} 1',
                       "process_resident_memory_bytes ", 'edgeops_agent_model_info{variant="primary"'):
            assert needle in text, needle
        status, _, response = client.request("HEAD", "/healthz")
        assert status == 200 and int(response.getheader("Content-Length")) > 0


def test_concurrent_clients(mlp, tmp_path):
    x = [[1.0, 2.0, 3.0, 4.0]] * 3
    with running_agent(mlp, tmp_path) as agent:
        expected = Client(agent.url).predict(x)[1]["outputs"]
        failures = []

        def work():
            client = Client(agent.url)
            for _ in range(40):
                status, body, _ = client.predict(x)
                if status != 200 or body["outputs"] != expected:
                    failures.append((status, body))

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures


def test_a_window_the_outbox_cannot_store_is_counted_not_silent(mlp, tmp_path):
    # A disk that refuses writes, for real: RLIMIT_FSIZE 0 makes every file write of this process
    # fail with EFBIG while the window is closed (Python ignores SIGXFSZ). The window is lost, and
    # /metrics and the log say so.
    import resource

    with running_agent(mlp, tmp_path, broker=UNREACHABLE, flush_timeout=0) as agent:
        client = Client(agent.url)
        assert client.predict([[1, 2, 3, 4]])[0] == 200
        assert agent.close_window() == 1
        assert client.predict([[1, 2, 3, 4]])[0] == 200
        assert client.request("GET", "/healthz")[0] == 200
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        try:
            written = agent.close_window()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        assert written == 0
        status, text, _ = client.request("GET", "/metrics")
        body = text.decode() if isinstance(text, bytes) else str(text)
        assert status == 200 and "edgeops_agent_telemetry_windows_lost_total 1" in body, body
        assert any("cannot store the primary telemetry window" in line for line in agent.lines), agent.lines
        assert agent.close_window() == 1  # the disk works again: so does the outbox
