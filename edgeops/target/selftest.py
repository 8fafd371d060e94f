"""The agent's self-test, run INSIDE the emulated target Python: `python3.11 -m edgeops.target.selftest JOB`.

It may import only what the agent has on the device: the standard library, numpy, the runtime
(through edgeops.runtime) and edgeops.agent.telemetry; no click, yaml, onnx or scipy, which the
target's site directory does not have. Steps, per model of the bundle:

  load       edgeops.runtime.open_runtime, as the agent loads a bundle's model
  predict    the host's parity inputs (an .npz), batch by batch or row by row for a fixed batch of 1;
             the outputs go back to the host in another .npz for the comparison
  telemetry  one window through WindowStats, build_window_payload and encode_payload (contract A),
             decoded again as JSON

The result is a JSON report (JOB's "report" path), always written, also when a step fails.
Durations are deliberately not recorded: time under emulation says nothing about the device.
"""
from __future__ import annotations

import json
import platform
import re
import sys
import time
import traceback


def main(argv: list[str]) -> int:
    job = json.loads(open(argv[0], encoding="utf-8").read())
    report = {"platform": _platform(), "models": [], "error": None}
    try:
        import numpy as np

        report["platform"]["numpy"] = np.__version__
        for model in job["models"]:
            report["models"].append(_check_model(model, job, np))
    except Exception as exc:  # the report must say what broke, whatever it was
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc(limit=5)
    finally:
        with open(job["report"], "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1, default=str)
    return 0


def _platform() -> dict:
    info = {"machine": platform.machine(), "python": platform.python_version(),
            "libc": " ".join(platform.libc_ver()), "byteorder": sys.byteorder}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            parts = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("CPU part")]
        info["cpu_part"] = parts[0] if parts else None
    except OSError:
        info["cpu_part"] = None
    return info


def _step(result: dict, name: str, fn):
    """Run one step; record ok or the error's first line, and re-raise nothing."""
    try:
        value = fn()
    except Exception as exc:  # a failing step is a finding, not a crash of the self-test
        result["steps"].append({"step": name, "ok": False, "error": _first_line(exc)})
        return None
    result["steps"].append({"step": name, "ok": True})
    return value


def _check_model(model: dict, job: dict, np) -> dict:
    result = {"name": model["name"], "steps": []}
    runtime = _step(result, "load", lambda: _load(model["path"], result))
    if runtime is None:
        return result
    with np.load(model["inputs"], allow_pickle=False) as data:
        feeds = {name: data[name] for name in data.files}
    for spec in runtime.inputs:  # text travels as fixed-width unicode; the runtime takes objects
        if spec.name in feeds and feeds[spec.name].dtype.kind == "U":
            feeds[spec.name] = feeds[spec.name].astype(object)
    outputs = _step(result, "predict", lambda: _predict(runtime, feeds, np))
    if outputs is None:
        return result
    stored = {k: (v.astype(str) if v.dtype.kind == "O" else v) for k, v in outputs.items()}
    np.savez(model["outputs"], **stored)
    result["rows"] = int(len(next(iter(feeds.values()))))
    size = _step(result, "telemetry", lambda: _telemetry(job, feeds, outputs))
    if size is not None:
        result["telemetry_bytes"] = size
    return result


def _load(path: str, result: dict):
    from edgeops.runtime import detect_format, open_runtime

    result["runtime"] = _runtime_version(detect_format(path))
    return open_runtime(path)


def _runtime_version(fmt: str) -> str:
    if fmt == "onnx":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "tflite (unknown version)"


def _predict(runtime, feeds: dict, np) -> dict:
    rows = len(next(iter(feeds.values())))
    fixed_one = any(t.shape and t.shape[0] == 1 for t in runtime.inputs)
    step = 1 if fixed_one else rows
    parts: dict = {}
    for start in range(0, rows, step):
        chunk = runtime.run({k: v[start:start + step] for k, v in feeds.items()})
        for name, value in chunk.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _telemetry(job: dict, feeds: dict, outputs: dict) -> int:
    from edgeops.agent.telemetry import WindowStats, build_window_payload, encode_payload

    refstats = job.get("refstats") or {"schema_version": 1, "features": [], "outputs": []}
    stats = WindowStats(refstats)
    start = time.time()
    # The latency is a placeholder: emulated time is meaningless, and only the encoding is under test.
    stats.record_request(feeds, outputs, latency_ms=1.0)
    body = stats.snapshot_and_reset()
    payload = build_window_payload(
        device_id="target-check", seq=1, agent={"version": "target-check", "instance": "0" * 16},
        bundle=job["bundle"], variant={"name": "primary", "role": "primary"}, start=start, end=time.time(),
        body=body, system={}, outbox={"pending": 0, "dropped_total": 0})
    data = encode_payload(payload)
    decoded = json.loads(data.decode("utf-8"))
    if decoded.get("kind") != "window" or decoded.get("seq") != 1:
        raise ValueError("the encoded window does not decode to the payload")
    return len(data)


def _first_line(exc: BaseException) -> str:
    """The error, with the runtime's own message when edgeops wrapped it (``raise ... from None``
    keeps the original in __context__): its reason is what the user needs, not only its first line."""
    text = getattr(exc, "message", None) or str(exc)
    inner = exc.__context__
    if inner is not None and getattr(exc, "hint", None) is not None:
        text = f"{text.split(':', 1)[0]}: {inner}"
    text = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\) (?=[A-Z])", "", text)  # C++ file and signature
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:700]}" if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
