"""Shared helpers for the agent tests: tiny real bundles, an in-process agent, raw HTTP.

Not a test module (no test_ prefix): imported by tests/test_agent_*.py.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from pathlib import Path

import numpy as np


def mlp_onnx(path: Path, seed: int = 0, features: int = 4, hidden: int = 8, classes: int = 3) -> Path:
    """A small float MLP: x[batch, features] -> scores[batch, classes], label[batch] (argmax)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(features, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=(hidden,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, classes)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])], [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mixed_onnx(path: Path) -> Path:
    """Two inputs of other dtypes: ids int64[batch, 2] and tag string[batch, 1], echoed back."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["ids_out"]), helper.make_node("Identity", ["tag"], ["tag_out"])],
        "mixed", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2]),
                  helper.make_tensor_value_info("tag", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", 2]),
         helper.make_tensor_value_info("tag_out", TensorProto.STRING, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def bundle_from_onnx(out: Path, model: Path, reference: dict[str, np.ndarray], name: str = "mlp",
                     version: str = "1.0", sign_key=None, feature_names=None) -> Path:
    """A real bundle (edgeops.bundle API) with reference statistics computed through the model."""
    from edgeops.bundle.archive import write_bundle
    from edgeops.bundle.manifest import build_manifest, sha256_file
    from edgeops.bundle.refstats import reference_stats
    from edgeops.runtime import open_runtime

    runtime = open_runtime(model)
    outputs = runtime.run(reference)
    manifest = build_manifest(name=name, version=version, inputs=[t.to_dict() for t in runtime.inputs],
                              outputs=[t.to_dict() for t in runtime.outputs], source_sha256=sha256_file(model),
                              toolchain={"edgeops": "0.1.0"})
    stats = reference_stats(reference, outputs, feature_names=feature_names)
    return write_bundle(out, {"model.onnx": model}, manifest, stats, sign_key=sign_key)


def mlp_bundle(directory: Path, seed: int = 0, name: str = "mlp", sign_key=None, reference=None) -> Path:
    """MLP bundle whose reference data lies in [0, 10) for every feature."""
    if reference is None:
        reference = np.random.default_rng(seed + 100).uniform(0, 10, size=(300, 4)).astype(np.float32)
    model = mlp_onnx(directory / f"{name}-{seed}.onnx", seed=seed)
    return bundle_from_onnx(directory / f"{name}-{seed}.edgepkg", model, {"x": reference}, name=name,
                            sign_key=sign_key)


@contextlib.contextmanager
def running_agent(bundle, tmp_path: Path, **options):
    """An Agent started in this process on a free port; yields it, stops it afterwards."""
    from edgeops.agent import Agent, load_config

    settings = {"bundle": str(bundle), "port": 0, "buffer_dir": str(tmp_path / "buffer"), "device_id": "test-device"}
    settings.update({k: v for k, v in options.items()})
    config = load_config({k: v for k, v in settings.items()}, env={})
    lines: list[str] = []
    agent = Agent(config, log=lines.append)
    agent.start()
    agent.lines = lines
    try:
        yield agent
    finally:
        agent.stop()


class Client:
    """A keep-alive JSON client (http.client)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        host, port = url.split("//")[1].rsplit(":", 1)
        self.host, self.port, self.timeout = host, int(port), timeout
        self.token = token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body=None, headers=None):
        headers = dict(headers or {})
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        try:
            self.conn.request(method, path, body, headers)
            response = self.conn.getresponse()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # the server closed the idle keep-alive connection: reconnect once, as HTTP clients do
            self.conn.close()
            self.conn.request(method, path, body, headers)
            response = self.conn.getresponse()
        data = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        ctype = response.getheader("Content-Type", "")
        return response.status, (json.loads(data) if data and ctype.startswith("application/json") else data), response

    def predict(self, inputs, **extra):
        return self.request("POST", "/v1/predict", {"inputs": inputs, **extra})

    def close(self):
        self.conn.close()


def raw_exchange(url: str, data: bytes, timeout: float = 15.0, half_close: bool = False) -> tuple[int | None, bytes]:
    """Send raw bytes, read until the server closes or a full response arrived: (status, raw response)."""
    host, port = url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        if data:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):  # refused early (413): read the answer
                pass
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            received += chunk
            if _complete(received):
                break
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None
    return status, received


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll until predicate() is truthy; returns its value (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def outbox_windows(agent) -> list[dict]:
    """The windows waiting in the agent's outbox (the tests point it at an unreachable broker)."""
    return [json.loads(payload) for _, _, payload in agent.outbox.pending(limit=1000)]
