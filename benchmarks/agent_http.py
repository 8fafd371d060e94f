"""What does the on-device agent cost over the bare runtime, and against a FastAPI server?

One small ONNX MLP (digits-like: 64 float inputs, 2 hidden layers, 10 classes) is packaged as a
bundle and served four ways in the same run, all with onnxruntime on one intra-op thread:

  bare       onnxruntime ``sess.run`` in this process (no HTTP)
  agent      ``python -m edgeops.agent run BUNDLE`` (telemetry off: no broker)
  agent+mqtt the same with ``--broker mqtt://127.0.0.1:1883 --telemetry-interval 1``
  fastapi    a FastAPI app on uvicorn (httptools, 1 worker) doing the same inference
             (benchmarks/reference_fastapi.py): the reference the issue names

Measured:
  - latency: p50 of sequential POST /v1/predict (1 row, keep-alive http.client on loopback)
    against bare ``sess.run``; overhead = agent p50 - bare p50 (target <= 0.5 ms);
  - throughput: requests/s under ``wrk`` (1 thread, 8 connections, a 1-row body) for agent and
    fastapi, interleaved over rounds (target: agent >= fastapi);
  - telemetry cost: agent+mqtt throughput / agent throughput (target: >= 0.95);
  - start-up: spawn to the first 200 from /healthz; idle RSS after start and after the load.

    python benchmarks/agent_http.py [--rounds 3] [--duration 5] [--broker mqtt://127.0.0.1:1883] [--json FILE]

Needs `wrk` (apt-get install wrk) for throughput; without it a Python client is used and says so.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_FEATURES = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bundle(workdir: Path) -> tuple[Path, Path, np.ndarray]:
    """An ONNX MLP and its bundle (refstats from the same random reference data)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeops.bundle.archive import write_bundle
    from edgeops.bundle.manifest import build_manifest
    from edgeops.bundle.refstats import reference_stats
    from edgeops.runtime import open_runtime

    rng = np.random.default_rng(0)
    dims = (N_FEATURES, 128, 64, 10)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        out = "probabilities" if i == len(dims) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Softmax" if out == "probabilities" else "Relu", [f"m{i}"], [out], **(
            {"axis": -1} if out == "probabilities" else {})))
        prev = out
    nodes.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model_path = workdir / "mlp.onnx"
    onnx.save(model, model_path)

    reference = rng.uniform(0, 16, size=(2000, N_FEATURES)).astype(np.float32)
    runtime = open_runtime(model_path, threads=1)
    outputs = runtime.run({"x": reference})
    manifest = build_manifest(name="bench-mlp", version="1", inputs=[t.to_dict() for t in runtime.inputs],
                              outputs=[t.to_dict() for t in runtime.outputs], source_sha256=None)
    bundle = workdir / "mlp.edgepkg"
    write_bundle(bundle, {"model.onnx": model_path}, manifest, reference_stats({"x": reference}, outputs))
    return bundle, model_path, reference


def bare_p50_ms(model_path: Path, row: np.ndarray, n: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    feed = {"x": row}
    for _ in range(200):
        sess.run(None, feed)
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        sess.run(None, feed)
        times.append(time.perf_counter_ns() - t)
    return statistics.median(times) / 1e6


class Server:
    """A server process; started, waited for (/healthz), measured, stopped."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None):
        self.name, self.cmd, self.port = name, cmd, port
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.startup_s = None

    def start(self, timeout: float = 60.0) -> "Server":
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    self.startup_s = time.perf_counter() - t0
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout} s")

    def rss_mb(self) -> float:
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http_p50_ms(port: int, body: bytes, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    times = []
    for i in range(n + 200):
        t = time.perf_counter_ns()
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if i >= 200:
            times.append(time.perf_counter_ns() - t)
        if resp.status != 200:
            raise RuntimeError(f"port {port}: HTTP {resp.status}: {data[:300]!r}")
    conn.close()
    return statistics.median(times) / 1e6


def throughput_rps(port: int, body: bytes, duration: float, workdir: Path) -> tuple[float, str]:
    wrk = shutil.which("wrk")
    if wrk:
        script = workdir / "post.lua"
        script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = {json.dumps(body.decode())}\n")
        out = subprocess.run([wrk, "-t1", "-c8", f"-d{max(1, int(duration))}s", "-s", str(script),
                              f"http://127.0.0.1:{port}/v1/predict"], capture_output=True, text=True, check=True).stdout
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if bad:
            raise RuntimeError(f"port {port}: {bad.group(1)} failed requests under load")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "wrk -t1 -c8"
    # Fallback: a sequential Python client (the client then limits the rate: say so).
    n, t0 = 0, time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.perf_counter() - t0 < duration:
        conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        n += 1
    return n / (time.perf_counter() - t0), "python sequential client (install wrk for a real load)"


def agent_cmd(bundle: Path, port: int, buffer_dir: Path, broker: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "edgeops.agent", "run", str(bundle), "--port", str(port),
           "--buffer-dir", str(buffer_dir), "--threads", "1", "--device-id", "bench-agent"]
    if broker:
        cmd += ["--broker", broker, "--telemetry-interval", "1", "--topic-prefix", f"bench-{os.getpid()}"]
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load per throughput run")
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    ap.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgeops-agent-bench-"))
    bundle, model_path, reference = build_bundle(work)
    row = reference[:1]
    body = json.dumps({"inputs": row.tolist()}).encode()

    servers = {
        "agent": Server("agent", agent_cmd(bundle, free_port(), work / "buf-agent", None), 0),
        "agent+mqtt": Server("agent+mqtt", agent_cmd(bundle, free_port(), work / "buf-mqtt", args.broker), 0),
        "fastapi": Server("fastapi", [sys.executable, str(HERE / "reference_fastapi.py"), str(model_path),
                                      "--port", "0"], 0),
    }
    for s in servers.values():  # the port is the value after --port
        s.port = free_port()
        s.cmd[s.cmd.index("--port") + 1] = str(s.port)

    results = {name: {"p50_ms": [], "rps": [], "startup_s": [], "rss_idle_mb": [], "rss_loaded_mb": []}
               for name in servers}
    results["bare"] = {"p50_ms": []}
    load_tool = None
    try:
        for rnd in range(args.rounds):
            order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
            results["bare"]["p50_ms"].append(bare_p50_ms(model_path, row, args.requests))
            for name in order:
                server = servers[name].start()
                r = results[name]
                r["startup_s"].append(server.startup_s)
                time.sleep(0.5)
                r["rss_idle_mb"].append(server.rss_mb())
                r["p50_ms"].append(http_p50_ms(server.port, body, args.requests))
                rps, load_tool = throughput_rps(server.port, body, args.duration, work)
                r["rps"].append(rps)
                r["rss_loaded_mb"].append(server.rss_mb())
                server.stop()
                print(f"round {rnd + 1} {name:11s} p50 {r['p50_ms'][-1]:.3f} ms  {rps:8.0f} req/s  "
                      f"start {server.startup_s:.2f} s  rss {r['rss_idle_mb'][-1]:.1f}->{r['rss_loaded_mb'][-1]:.1f} MB",
                      flush=True)
    finally:
        for s in servers.values():
            s.stop()

    med = {name: {k: statistics.median(v) for k, v in r.items() if v} for name, r in results.items()}
    summary = {
        "overhead_p50_ms": med["agent"]["p50_ms"] - med["bare"]["p50_ms"],
        "fastapi_overhead_p50_ms": med["fastapi"]["p50_ms"] - med["bare"]["p50_ms"],
        "throughput_agent_over_fastapi": med["agent"]["rps"] / med["fastapi"]["rps"],
        "throughput_mqtt_over_off": med["agent+mqtt"]["rps"] / med["agent"]["rps"],
        "agent_startup_s": med["agent"]["startup_s"],
        "agent_rss_idle_mb": med["agent"]["rss_idle_mb"],
        "agent_rss_loaded_mb": med["agent"]["rss_loaded_mb"],
    }
    print(f"\nmedians over {args.rounds} rounds (load: {load_tool})")
    print(f"{'':12s}{'p50 ms':>9s}{'req/s':>10s}{'start s':>9s}{'RSS idle':>10s}{'RSS load':>10s}")
    for name, m in med.items():
        print(f"{name:12s}{m['p50_ms']:9.3f}{m.get('rps', float('nan')):10.0f}{m.get('startup_s', float('nan')):9.2f}"
              f"{m.get('rss_idle_mb', float('nan')):10.1f}{m.get('rss_loaded_mb', float('nan')):10.1f}")
    print(f"\nagent overhead over bare sess.run, p50: {summary['overhead_p50_ms']:.3f} ms (target <= 0.5)")
    print(f"fastapi overhead over bare sess.run, p50: {summary['fastapi_overhead_p50_ms']:.3f} ms")
    print(f"throughput agent / fastapi: {summary['throughput_agent_over_fastapi']:.2f} (target >= 1.00)")
    print(f"throughput telemetry on / off: {summary['throughput_mqtt_over_off']:.3f} (target >= 0.95)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": results, "medians": med, "summary": summary,
                                         "load_tool": load_tool}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
