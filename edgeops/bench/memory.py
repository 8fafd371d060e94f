"""Peak memory of one model, measured in an isolated child process.

Peak RSS never goes down within a process, so measuring two models in one process (or in
a process that has imported TensorFlow) would mix them up. Each measurement therefore runs
in a fresh ``python -m edgeops.bench.memory`` that imports only numpy, edgeops.runtime and
the one runtime the model needs, records its RSS (the baseline), loads the model, runs it,
and prints one JSON line. Inputs reach the child as an .npz file.

The peak is the kernel's high-water mark of RSS (VmHWM), restarted at the baseline, on
Linux; elsewhere ru_maxrss (see _peak_rss_mb for why not ru_maxrss everywhere).
MB here means 2**20 bytes.

This module is also the child's entry point: keep its top-level imports to the standard
library so the baseline holds nothing but what a device process would hold too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from .. import errors

_MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryResult:
    path: str
    format: str  # "onnx" | "tflite"
    threads: int | None
    runs: int
    size_bytes: int  # the model file on disk
    baseline_rss_mb: float  # after importing numpy and the runtime, before loading the model
    peak_rss_mb: float  # highest RSS while loading the model and running it ``runs`` times
    model_rss_mb: float  # peak - baseline: what loading and running this model costs
    final_rss_mb: float | None  # RSS after the runs (steady state; None where unreadable)
    peak_source: str  # "VmHWM" (Linux, reset at the baseline) or "ru_maxrss" (elsewhere)

    def to_dict(self) -> dict:
        return asdict(self)


def measure_memory(
    path: str | Path,
    inputs_npz: str | Path | Mapping | None,
    *,
    threads: int | None = None,
    runs: int = 20,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    timeout_s: float = 600.0,
) -> MemoryResult:
    """Peak RSS of loading ``path`` and running it ``runs`` times, in a child process.

    ``inputs_npz`` is an .npz file of arrays keyed by input name, or a dict of arrays
    (written to a temporary .npz for the child), or None: the child then generates random
    inputs (batch 1, or ``input_shapes``) from the model's signature.
    """
    path = Path(path)
    if not path.is_file():
        raise errors.InputFileError(f"{path}: no such model file", "check the path")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise errors.UsageError(f"runs must be an integer >= 1, got {runs!r}", "pass e.g. runs=20")
    cmd = [sys.executable, "-m", "edgeops.bench.memory", str(path), "--runs", str(runs)]
    if threads is not None:
        cmd += ["--threads", str(int(threads))]
    if input_shapes:
        cmd += ["--input-shapes", json.dumps({k: [int(d) for d in v] for k, v in input_shapes.items()})]

    with tempfile.TemporaryDirectory(prefix="edgeops-mem-") as tmp:
        if isinstance(inputs_npz, Mapping):
            npz = Path(tmp) / "inputs.npz"
            save_feeds(inputs_npz, npz)
            cmd += ["--inputs", str(npz)]
        elif inputs_npz is not None:
            if not Path(inputs_npz).is_file():
                raise errors.InputFileError(f"{inputs_npz}: no such inputs file", "pass an .npz file")
            cmd += ["--inputs", str(inputs_npz)]
        proc = _run_child(cmd, path, timeout_s)

    data = _parse_child(proc, path)
    peak, baseline = data["peak_rss_mb"], data["baseline_rss_mb"]
    return MemoryResult(
        path=str(path),
        format=data["format"],
        threads=threads,
        runs=runs,
        size_bytes=path.stat().st_size,
        baseline_rss_mb=baseline,
        peak_rss_mb=peak,
        model_rss_mb=max(peak - baseline, 0.0),
        final_rss_mb=data.get("final_rss_mb"),
        peak_source=data.get("peak_source", "unknown"),
    )


def save_feeds(feeds: Mapping, path: str | Path) -> None:
    """Write arrays keyed by input name to an .npz that np.load reads back.

    Written member by member rather than with np.savez(**feeds), which breaks on input
    names that clash with its own parameters ("file", "allow_pickle").
    """
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in feeds.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(value), allow_pickle=False)


def _run_child(cmd: list[str], path: Path, timeout_s: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The child must import this same edgeops, also when it runs from a checkout.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise errors.EdgeOpsError(
            f"the memory measurement of {path} did not finish within {timeout_s:.0f} s",
            "check that the model runs at all with `edgeops benchmark --runs 1`, or raise the timeout",
        ) from None


def _parse_child(proc: subprocess.CompletedProcess, path: Path) -> dict:
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    data = None
    if line is not None:
        try:
            data = json.loads(line)
        except ValueError:
            data = None
    if isinstance(data, dict) and "error" in data:
        raise _rebuild_error(data["error"])
    if proc.returncode == 0 and isinstance(data, dict) and "peak_rss_mb" in data:
        return data
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1].strip()[:300] if lines else "no error output"
    how = f"exit code {proc.returncode}" if proc.returncode >= 0 else f"killed by signal {-proc.returncode}"
    raise errors.EdgeOpsError(
        f"the memory measurement of {path} crashed ({how}): {last}",
        "the runtime itself failed on this model; try `edgeops benchmark` without memory, "
        "or check the model with `edgeops inspect`",
    )


def _rebuild_error(info: dict) -> errors.EdgeOpsError:
    """The child's EdgeOpsError, as the same class in this process."""
    kind, message, hint = info.get("type"), info.get("message", "unknown error"), info.get("hint")
    if kind == "MissingDependencyError":
        purpose = message.split(" needs the Python package")[0]
        return errors.MissingDependencyError(info.get("package", "?"), info.get("extra", "?"), purpose)
    cls = getattr(errors, kind or "", None)
    if not (isinstance(cls, type) and issubclass(cls, errors.EdgeOpsError)) or cls in (
        errors.ParityError, errors.AccuracyGateError  # they need a report, which the child has none of
    ):
        cls = errors.EdgeOpsError
    return cls(message, hint)


# --------------------------------------------------------------------------- the child


def _status_mb(field: str) -> float | None:
    """A "VmRSS"/"VmHWM" line of /proc/self/status (in kB), or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Restart the kernel's high-water mark of RSS here (Linux >= 4.0), so the peak is the model's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> tuple[float, str]:
    """(peak RSS in MB, where it came from).

    VmHWM first: ru_maxrss would also carry the RSS of the parent at the moment it
    started this process (the kernel folds the replaced memory map's high-water mark
    into it at exec) and import-time spikes, which have nothing to do with the model.
    """
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm, "VmHWM"
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / _MB if sys.platform == "darwin" else peak / 1024), "ru_maxrss"  # bytes on macOS, KiB elsewhere


def _child(argv: list[str]) -> dict:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgeops.bench.memory")
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inputs", default=None)
    parser.add_argument("--input-shapes", default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from ..data import generate  # imported before the baseline: only the model should count
    from ..runtime import detect_format, open_runtime

    fmt = detect_format(args.model)
    if fmt == "onnx":  # import the runtime now so that the baseline includes it
        errors.require("onnxruntime", "onnxruntime", "onnx", "running ONNX models")
    else:
        from ..runtime.tflite import load_interpreter_class

        load_interpreter_class()
    feeds = None
    if args.inputs:
        try:
            with np.load(args.inputs, allow_pickle=False) as npz:
                feeds = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise errors.InputFileError(f"{args.inputs}: cannot read the inputs: {exc}",
                                        "pass an .npz of arrays keyed by input name") from None

    if feeds is None:
        np.random.default_rng(0)  # numpy loads its random module lazily; keep it out of the model's share
    reset = _reset_peak()
    baseline = _status_mb("VmRSS")
    if baseline is None:
        baseline = _peak_rss_mb()[0]  # no /proc: the peak so far is the closest we get
    runtime = open_runtime(args.model, args.threads)
    if feeds is None:
        shapes = {k: tuple(v) for k, v in json.loads(args.input_shapes).items()} if args.input_shapes else None
        feeds = generate(runtime.inputs, shapes, batch=1)
    for _ in range(args.runs):
        runtime.run(feeds)
    peak, source = _peak_rss_mb()
    return {
        "format": fmt,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": max(peak, baseline),
        "peak_source": source + ("" if reset else " (not reset: includes import-time peaks)"),
        "final_rss_mb": _status_mb("VmRSS"),
    }


def main(argv: list[str] | None = None) -> int:
    try:
        result = _child(sys.argv[1:] if argv is None else argv)
    except errors.EdgeOpsError as exc:
        info = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        if isinstance(exc, errors.MissingDependencyError):
            info.update(package=exc.package, extra=exc.extra)
        print(json.dumps({"error": info}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
