"""Latency and peak memory of a model on a device profile, estimated without the device.

Method (docs/benchmark-estimate.md has the formulas, the fitted factors and the measured
error): costmodel.py lists every op with its MACs and bytes; each op takes

    max(MACs / compute rate, bytes / memory bandwidth) + dispatch overhead

on the device, where the compute rate is the core's peak (clock x fp32 MACs per cycle from
its SIMD units) times efficiency factors fitted on published on-device measurements
(benchmarks/calibration/published.yaml): per op class, per core type, per runtime family,
per precision (int8 pays only where the runtime has fast int8 kernels for that CPU), and a
sub-linear thread scaling. The fitted factors live in devices/calibration/fitted.yaml,
written by benchmarks/estimate_error.py. Two optional corrections follow: a damped
model-specific ratio from a measurement of the same model on this machine (``host``), and
the user's own on-device measurements saved with calibration.save_calibration().
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import EdgeOpsError, UsageError
from ..profiles import CpuSpec, DeviceProfile, load_profile
from .costmodel import MAC_CLASSES, OP_CLASSES, ModelCost, analyze

RUNTIME_BY_FORMAT = {"onnx": "onnxruntime", "tflite": "litert"}
_HOST_RATIO_CLIP = (0.125, 8.0)  # a host ratio beyond 8x means a broken measurement, not a model trait


@dataclass(frozen=True)
class HostMeasurement:
    """The same model measured on this machine (the harness's p50), to correct the estimate.

    The host's CPU facts come from ``profile_name`` (a profile describing this machine), or
    ``cpu`` (a CpuSpec), or else /proc/cpuinfo of the machine running the estimate.
    """

    p50_ms: float
    threads: int | None = None
    profile_name: str | None = None
    cpu: CpuSpec | None = None


@dataclass(frozen=True)
class BoardFacts:
    """What the roofline needs about one CPU."""

    name: str
    core: str
    cores: int
    clock_mhz: float
    macs_per_cycle: float  # fp32 multiply-accumulates per cycle per core (SIMD FMA width x pipes)
    bandwidth_gbps: float  # effective DRAM traffic, GB/s
    int8_dot: bool
    fp16: bool
    arch: str = "aarch64"
    assumed: tuple[str, ...] = ()  # facts that had to be guessed


@dataclass(frozen=True)
class Estimate:
    profile: str
    model: str
    runtime: str  # onnxruntime | litert
    threads: int
    batch: int
    macs: int
    p50_ms: float
    low_ms: float
    high_ms: float
    peak_rss_mb: float
    method: str
    calibration: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    per_class_ms: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "model": self.model, "runtime": self.runtime,
            "threads": self.threads, "batch": self.batch, "macs": self.macs,
            "latency_ms": {"p50": self.p50_ms, "low": self.low_ms, "high": self.high_ms},
            "peak_rss_mb": self.peak_rss_mb, "method": self.method,
            "calibration": dict(self.calibration), "warnings": list(self.warnings),
            "per_class_ms": dict(self.per_class_ms),
        }


# ------------------------------------------------------------------ fitted factors

def fitted_path() -> Path:
    return Path(str(resources.files("edgeops.devices") / "calibration" / "fitted.yaml"))


@lru_cache(maxsize=4)
def _load_yaml(path: str) -> dict:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise EdgeOpsError(f"cannot read the estimator's fitted factors {path}: {exc}",
                           "reinstall edgeops, or regenerate the file with "
                           "benchmarks/estimate_error.py --write") from None


def load_factors(path: str | Path | None = None) -> dict:
    """The fitted factors (devices/calibration/fitted.yaml) as a dict."""
    return _load_yaml(str(path or fitted_path()))


def factors_version(factors: dict) -> str:
    """A short digest of the factors, so saved calibrations know what they were compared to."""
    return hashlib.sha256(repr(sorted(factors.get("factors", {}).items())).encode()).hexdigest()[:12]


# ------------------------------------------------------------------ CPU facts

def macs_per_cycle(core: str, arch: str, simd, factors: dict) -> tuple[float, bool]:
    """fp32 MACs per cycle per core, and whether it came from the core table (else a guess)."""
    value = core_value(factors["cores"], core, 0.0)
    if value:
        return value, True
    flags = {s.lower() for s in simd or ()}
    if arch == "x86_64":
        return (32.0 if "avx512f" in flags else 16.0 if {"avx2", "fma"} <= flags else 8.0), False
    return 4.0, False  # every aarch64 core has 128-bit NEON; one FMA pipe is the safe guess


def board_facts(profile: DeviceProfile, factors: dict, clock_mhz: float | None = None) -> BoardFacts:
    cpu = profile.cpu
    return _facts(profile.name, cpu.model, cpu.arch, cpu.cores, clock_mhz or cpu.clock_mhz,
                  cpu.simd, cpu.int8_dot_product, cpu.fp16_arithmetic, factors,
                  factors["boards"].get(profile.name, {}).get("bandwidth_gbps"))


def _facts(name, core, arch, cores, clock, simd, dot, fp16, factors, bandwidth) -> BoardFacts:
    assumed = []
    mpc, known = macs_per_cycle(core, arch, simd, factors)
    if not known:
        assumed.append(f"{mpc:g} fp32 MACs/cycle/core guessed from the SIMD flags of '{core}'")
    if not clock:
        clock = factors["defaults"]["clock_mhz"][arch if arch == "x86_64" else "aarch64"]
        assumed.append(f"clock unknown: {clock} MHz assumed")
    if not bandwidth:
        bandwidth = factors["defaults"]["bandwidth_gbps"][arch if arch == "x86_64" else "aarch64"]
        assumed.append(f"memory bandwidth unknown: {bandwidth} GB/s assumed")
    return BoardFacts(name, core, int(cores), float(clock), mpc, float(bandwidth), bool(dot),
                      bool(fp16), arch, tuple(assumed))


def host_facts(factors: dict, host: HostMeasurement | None = None,
               cpuinfo: str | Path = "/proc/cpuinfo") -> BoardFacts:
    """CPU facts of the machine a host measurement ran on."""
    if host is not None and host.profile_name:
        return board_facts(load_profile(host.profile_name), factors)
    if host is not None and host.cpu is not None:
        c = host.cpu
        return _facts("host", c.model, c.arch, c.cores, c.clock_mhz, c.simd, c.int8_dot_product,
                      c.fp16_arithmetic, factors, None)
    arch = platform.machine().lower()
    arch = "aarch64" if arch in ("aarch64", "arm64") else "x86_64" if arch in ("x86_64", "amd64") else arch
    text = ""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    clock = None
    try:
        clock = float(fields["cpu mhz"])
    except (KeyError, ValueError):
        pass
    model = fields.get("model name") or fields.get("cpu part") or arch
    dot = bool(flags & {"avx512_vnni", "avx_vnni", "asimddp"})
    return _facts("host", model, arch, os.cpu_count() or 1, clock, tuple(flags), dot,
                  "asimdhp" in flags, factors, None)


# ------------------------------------------------------------------ the cost model

def default_threads(runtime: str, board: BoardFacts) -> int:
    # onnxruntime's default intra-op pool is one thread per physical core; LiteRT's Python
    # interpreter runs one thread unless num_threads is given.
    return board.cores if runtime == "onnxruntime" else 1


def op_arrays(cost: ModelCost) -> dict:
    """The ops of a model as numpy columns, so predict() is vectorized (the fitter reuses it)."""
    import numpy as np

    ops = cost.ops
    return {
        "macs": np.array([op.macs for op in ops], dtype=float),
        "bytes": np.array([op.bytes for op in ops], dtype=float),
        "cls": np.array([op.op_class for op in ops], dtype=object),
        "dtype": np.array([op.dtype for op in ops], dtype=object),
        "winograd": np.array([op.winograd for op in ops], dtype=bool),
    }


def predict(cost: ModelCost, board: BoardFacts, runtime: str, threads: int,
            factors: dict) -> tuple[float, dict[str, float]]:
    """(milliseconds, milliseconds per op class) of one inference, before any correction."""
    return predict_arrays(op_arrays(cost), board, runtime, threads, factors)


def predict_arrays(arrays: dict, board: BoardFacts, runtime: str, threads: int,
                   factors: dict) -> tuple[float, dict[str, float]]:
    """predict() on op_arrays(): per op max(compute, memory) + dispatch, summed."""
    import numpy as np

    f = factors["factors"]
    n = max(1, min(int(threads), board.cores))
    serial = min(_get(f["serial_fraction"], runtime), 1.0)
    scale = serial + (1.0 - serial) / n
    clock_hz = board.clock_mhz * 1e6
    peak = clock_hz * board.macs_per_cycle * core_value(f["core_efficiency"], board.core, 1.0) \
        * _get(f["runtime_efficiency"], runtime)
    bandwidth = board.bandwidth_gbps * 1e9 * f["bandwidth_efficiency"]
    # dispatch costs are host-measured cycles; a slower core (scalar IPC < 1) needs more
    ipc = core_value(factors["scalar_ipc"], board.core, factors["scalar_ipc"]["default"])
    dispatch = _get(f["dispatch_cycles"], runtime) / (clock_hz * ipc)
    call = _get(f["call_cycles"], runtime) / (clock_hz * ipc)
    cls, dtype, macs = arrays["cls"], arrays["dtype"], arrays["macs"]
    rate = np.full(len(macs), np.inf)
    for c in MAC_CLASSES:
        for d in set(dtype[cls == c]):
            sel = (cls == c) & (dtype == d)
            rate[sel] = peak * f["class_efficiency"][c] * precision_speedup(d, runtime, board, f)
    # Winograd does a 3x3 conv's work in fewer multiplies; runtimes without it have factor 1
    rate = np.where(arrays["winograd"], rate * _get(f["winograd_speedup"], runtime), rate)
    compute = np.where(macs > 0, macs / rate * scale, 0.0)
    per_op = np.maximum(compute, arrays["bytes"] / bandwidth) + dispatch
    per_class = {c: float(per_op[cls == c].sum()) * 1e3 for c in OP_CLASSES}
    per_class["other"] += call * 1e3
    return sum(per_class.values()), per_class


def precision_speedup(dtype: str, runtime: str, board: BoardFacts, f: dict) -> float:
    if dtype == "int8":
        return _get(f["int8_speedup"]["dot" if board.int8_dot else "no_dot"], runtime)
    if dtype == "fp16":
        return _get(f["fp16_speedup"]["fp16" if board.fp16 else "no_fp16"], runtime)
    return 1.0


def core_value(table: dict, core: str, fallback: float) -> float:
    """A per-core-type value; table keys match as substrings of the CPU model ("Cortex-A72")."""
    for name, value in table.items():
        if name != "default" and name.lower() in (core or "").lower():
            return float(value)
    return fallback


def _get(table: dict, key: str, fallback: float | None = None) -> float:
    if key in table:
        return float(table[key])
    if fallback is not None:
        return fallback
    return float(table["default"])


def peak_rss_mb(cost: ModelCost, runtime: str, factors: dict) -> float:
    m = factors["memory"][runtime]
    mb = 1024 * 1024
    return m["baseline_mb"] + m["weight_factor"] * cost.weight_bytes / mb \
        + m["activation_factor"] * cost.peak_activation_bytes / mb


# ------------------------------------------------------------------ estimate()

def estimate(model_path: str | Path, profile: DeviceProfile | str, *, threads: int | None = None,
             batch: int = 1, host: HostMeasurement | None = None,
             calibration_path: str | Path | None = None, factors: dict | None = None,
             input_shapes: dict[str, tuple[int, ...]] | None = None) -> Estimate:
    """Estimated latency band and peak RSS of ``model_path`` on ``profile``.

    ``threads`` None means the runtime's default (onnxruntime: all cores; LiteRT: 1).
    ``calibration_path`` overrides where the user's saved on-device measurements are read
    (default: calibration.default_path(profile)).
    """
    from . import calibration

    prof = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive integer, got {threads!r}",
                         "pass threads=1 or more, or None for the runtime's default")
    factors = factors or load_factors()
    cost = analyze(model_path, batch=batch, input_shapes=input_shapes)
    runtime = RUNTIME_BY_FORMAT[cost.format]
    board = board_facts(prof, factors)
    n = threads or default_threads(runtime, board)
    p50, per_class = predict(cost, board, runtime, n, factors)
    raw = p50
    info: dict[str, Any] = {"factors": str(fitted_path()) if factors is load_factors() else "given",
                            "factors_version": factors_version(factors),
                            "published_rows": factors["fit"]["rows"],
                            "band_from": factors["fit"]["band_from"]}
    extra_warnings: list[str] = []
    if host is not None:
        if isinstance(host.p50_ms, bool) or not isinstance(host.p50_ms, (int, float)) \
                or not math.isfinite(host.p50_ms) or host.p50_ms <= 0:
            raise UsageError(f"host p50_ms must be a positive number, got {host.p50_ms!r}",
                             "pass the p50 the benchmark measured on this machine, in ms")
        hb = host_facts(factors, host)
        h_threads = host.threads or default_threads(runtime, hb)
        h_est, _ = predict(cost, hb, runtime, h_threads, factors)
        # the fitted factors are for ARM boards: on an x86 host every model is off by a common
        # offset (measured with reference models, host_blend.log_ratio_center); only the rest
        # of the ratio is about this model
        center = factors["host_blend"].get("log_ratio_center", {}).get(runtime, 0.0) \
            if hb.arch == "x86_64" else 0.0
        raw_ratio = host.p50_ms / h_est / math.exp(center)
        ratio = min(max(raw_ratio, _HOST_RATIO_CLIP[0]), _HOST_RATIO_CLIP[1])
        if ratio != raw_ratio:
            extra_warnings.append(
                f"this machine ran the model {raw_ratio:.3g}x off the cost model's prediction (clipped to "
                f"{ratio:g}x): the graph probably has ops or shapes the cost model misreads; "
                "treat the estimate as a lower bound and measure on the device")
        alpha = factors["host_blend"]["alpha"]
        p50 *= ratio ** alpha
        info.update(host_estimate_ms=h_est, host_measured_ms=host.p50_ms, host_ratio=ratio,
                    host_alpha=alpha, host_cpu=hb.core)
    local = calibration.local_adjustment(prof.name, runtime, cost.precision, factors,
                                         path=calibration_path)
    info["local_rows"] = local["rows"]
    if local["rows"]:
        p50 *= local["factor"]
        info.update(local_factor=local["factor"], local_path=local["path"])
    scale = p50 / raw if raw else 1.0
    per_class = {k: v * scale for k, v in per_class.items() if v}
    q_low, q_high = factors["band"]["log_ratio_p10"], factors["band"]["log_ratio_p90"]
    low, high = min(p50 * math.exp(q_low), p50), max(p50 * math.exp(q_high), p50)
    rss = peak_rss_mb(cost, runtime, factors)
    return Estimate(
        profile=prof.name, model=str(model_path), runtime=runtime, threads=n, batch=batch,
        macs=cost.macs, p50_ms=p50, low_ms=low, high_ms=high, peak_rss_mb=rss,
        method=_method_text(runtime, board, host is not None, local["rows"]),
        calibration=info, warnings=tuple(_warnings(cost, prof, board, runtime, rss) + extra_warnings),
        per_class_ms=per_class)


def _method_text(runtime: str, board: BoardFacts, host: bool, local_rows: int) -> str:
    parts = [f"roofline per op on {board.core} x{board.cores} @ {board.clock_mhz:g} MHz "
             f"({board.bandwidth_gbps:g} GB/s), {runtime} factors fitted on published rows"]
    if host:
        parts.append("damped host ratio")
    if local_rows:
        parts.append(f"{local_rows} local calibration rows")
    return "; ".join(parts)


def _warnings(cost: ModelCost, prof: DeviceProfile, board: BoardFacts, runtime: str,
              rss_mb: float) -> list[str]:
    out = []
    ort, lite = prof.runtimes.onnxruntime, prof.runtimes.litert
    if runtime == "onnxruntime" and ort is None:
        out.append(f"{prof.name} lists no onnxruntime for this device: the estimate assumes one; "
                   "convert the model to TFLite or add a runtime to your own profile")
    if runtime == "litert" and lite is None:
        out.append(f"{prof.name} lists no LiteRT/tflite-runtime for this device: the estimate "
                   "assumes one; use the ONNX model or add a runtime to your own profile")
    if runtime == "onnxruntime" and ort is not None:
        newer = []
        if cost.opset and cost.opset > ort.max_opset:
            newer.append(f"opset {cost.opset} > {ort.max_opset}")
        if cost.ir_version and cost.ir_version > ort.max_ir_version:
            newer.append(f"IR {cost.ir_version} > {ort.max_ir_version}")
        if cost.ml_opset and cost.ml_opset > ort.max_ml_opset:
            newer.append(f"ai.onnx.ml opset {cost.ml_opset} > {ort.max_ml_opset}")
        if newer:
            out.append(f"the model needs {', '.join(newer)}, which onnxruntime {ort.version} on "
                       f"{prof.name} cannot load: re-convert it with --device {prof.name}")
    if cost.precision == "int8" and not board.int8_dot:
        out.append(f"int8 model on {board.core}, which has no int8 dot-product instructions: "
                   "int8 speed-ups measured on a host with VNNI/dotprod will not transfer; "
                   "benchmark fp32 against int8 on the device")
    if cost.weight_dtype == "fp16" and not board.fp16:
        out.append(f"fp16 weights on {board.core}, which has no fp16 arithmetic: they are upcast to "
                   "fp32 at load, so fp16 only makes the file smaller; int8 is the way to a speed-up")
    if rss_mb > prof.budgets.ram_mb:
        out.append(f"estimated peak RSS {rss_mb:.0f} MB is over {prof.name}'s budget of "
                   f"{prof.budgets.ram_mb:g} MB: quantize to int8, lower the batch, or pick a "
                   "smaller model")
    if any(ep != "CPUExecutionProvider" for ep in (ort.execution_providers if ort else ())) \
            and runtime == "onnxruntime":
        out.append(f"{prof.name} has a GPU execution provider, which this estimate does not "
                   "model: it is for the CPU execution provider; measure on the device for GPU")
    for note in board.assumed:
        out.append(f"{note}: the estimate is rough; copy the profile and fill in the CPU facts")
    for note in cost.notes:
        out.append(f"{note}: check the model's input shapes (edgeops inspect)")
    return out
