"""quantize(): make a smaller, faster variant of a model, and keep it only if the accuracy gate passes.

ONNX models are quantized with onnxruntime (edgeops/quantize_onnx.py); Keras / SavedModel
sources are exported to TFLite at the chosen precision (edgeops/tflite_export.py). Either
way the quantized model and its float reference run on the same data and the gate
(edgeops/gate.py) compares them. Nothing is written at ``out`` unless the gate passes.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .artifact import ModelArtifact
from .errors import (AccuracyGateError, DataError, InputFileError, MissingDependencyError, UnsupportedModelError,
                     UsageError)
from .gate import GateReport, gate_outputs, run_batched

MODES = ("dynamic", "int8", "fp16", "auto")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
RANDOM_EVAL_ROWS = 64  # rows of generated inputs when no data is given at all


@dataclass(frozen=True)
class CandidateResult:
    """One mode tried by ``auto`` (or the one mode asked for)."""

    mode: str
    status: str  # "passed" | "failed" (gate) | "skipped" | "error" | "no-op" (nothing quantized)
    gate: GateReport | None = None
    size_bytes: int | None = None
    reason: str = ""  # why skipped / the error / why no-op
    warnings: tuple[str, ...] = ()
    chosen: bool = False

    def to_dict(self) -> dict:
        return {"mode": self.mode, "status": self.status, "chosen": self.chosen,
                "size_bytes": self.size_bytes, "reason": self.reason, "warnings": list(self.warnings),
                "gate": self.gate.to_dict() if self.gate else None}


@dataclass(frozen=True)
class QuantizeResult:
    mode: str  # what was asked: dynamic | int8 | fp16 | auto
    chosen_mode: str  # what was written (auto: the candidate kept)
    source: str
    output: ModelArtifact | None  # None only in the result attached to a failed gate's error
    size_before: int  # the float model's size (Keras sources: the fp32 TFLite export)
    size_after: int | None
    gate: GateReport | None
    candidates: tuple[CandidateResult, ...] = ()
    settings: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def size_ratio(self) -> float | None:
        return self.size_after / self.size_before if self.size_after and self.size_before else None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "chosen_mode": self.chosen_mode, "source": self.source,
                "model": self.output.to_dict() if self.output else None,
                "size_before": self.size_before, "size_after": self.size_after,
                "size_ratio": self.size_ratio, "gate": self.gate.to_dict() if self.gate else None,
                "candidates": [c.to_dict() for c in self.candidates],
                "settings": self.settings, "warnings": list(self.warnings)}


def auto_candidates(profile) -> tuple[list[str], str]:
    """Modes to try, best first for the device, and why in that order."""
    gpu = getattr(profile, "gpu", None) if profile is not None else None
    if gpu is not None and getattr(gpu, "fp16", False):
        # A GPU with fast float16 (Jetson): fp16 runs on it natively at half the memory
        # traffic with almost no accuracy cost; int8 on the GPU needs TensorRT's own
        # calibration, so the int8 variants here are CPU fallbacks.
        return ["fp16", "int8", "dynamic"], "GPU with float16: fp16 first"
    cpu = getattr(profile, "cpu", None) if profile is not None else None
    arch = (getattr(cpu, "arch", "") or "").lower()
    if arch.startswith(("arm", "aarch")) and not getattr(cpu, "int8_dot_product", False):
        # Pi 4 (Cortex-A72): no int8 dot-product instructions, yet int8 still cuts the model
        # 4x and XNNPACK / onnxruntime int8 kernels usually still beat fp32 there
        # (ENVIRONMENT.md). fp16 gives a CPU no speed-up, only size: last.
        return ["int8", "dynamic", "fp16"], "ARM CPU without int8 dot product: int8 still first (4x smaller)"
    # x86, ARM with int8 dot product, or no profile: full int8 is the fastest and smallest;
    # dynamic needs no calibration data; fp16 only halves the size on a CPU.
    return ["int8", "dynamic", "fp16"], "CPU: int8, then dynamic, then fp16"


def quantize(model: str | Path, mode: str, out: str | Path, *, calibration: str | Path | None = None,
             eval_data: str | Path | None = None, max_drop: float = 1.0, profile=None,
             calibrate_method: str = "minmax", per_channel: bool = True, label_column: str | None = None,
             progress: Callable[[str], None] | None = None) -> QuantizeResult:
    """Quantize ``model`` in ``mode`` to ``out`` behind the accuracy gate (see module docstring).

    ``profile`` is a DeviceProfile or a profile name/path. ``progress`` receives short
    status messages. Raises AccuracyGateError (with ``.result`` describing every candidate)
    when no variant stays within ``max_drop`` percentage points.
    """
    from . import data as data_mod
    from .convert import atomic_output, detect_source
    from .runtime import open_runtime

    model, out = Path(model), Path(out)
    say = progress or (lambda _msg: None)
    _check_options(mode, calibrate_method, max_drop)
    if isinstance(profile, (str, Path)):
        from .profiles import load_profile

        profile = load_profile(profile)
    framework = detect_source(model)
    backend = _backend(framework, model)
    if out.suffix.lower() != backend.suffix:
        raise UsageError(f"output '{out}' should end in {backend.suffix} for a {framework} model",
                         f"name it e.g. {out.with_suffix(backend.suffix).name}")
    if out.resolve() == model.resolve():
        raise UsageError("the output path is the model itself", "write the quantized model to a new file")
    if mode == "int8" and calibration is None:
        raise DataError("--mode int8 needs calibration data to measure activation ranges",
                        "pass --calibration FILE (.npy/.npz/.csv, ~100-500 representative rows), "
                        "or use --mode dynamic")
    # calibration rows need no labels: a CSV without the --label-column is fine
    cal_samples = data_mod.load_samples(calibration, _label_if_present(calibration, label_column)) \
        if calibration is not None else None
    eval_samples = data_mod.load_samples(eval_data, label_column) if eval_data is not None else None

    with tempfile.TemporaryDirectory(prefix="edgeops-quantize-") as tmp:
        work = Path(tmp)
        say("loading the float model")
        float_path = backend.float_model(work)
        float_rt = open_runtime(float_path)
        cal_feeds = data_mod.bind(cal_samples, float_rt.inputs, "--calibration") if cal_samples is not None else None
        for name, value in (cal_feeds or {}).items():
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise DataError(f"--calibration: input '{name}' contains NaN or infinite values",
                                "calibration measures value ranges: drop or fix those rows")
        eval_feeds, labels, source = _gate_rows(float_rt, eval_samples, cal_feeds)
        float_out = run_batched(float_rt, eval_feeds)

        settings: dict = {"source_format": backend.name, "max_drop_points": max_drop, "eval_data": source}
        if mode == "auto":
            order, why = auto_candidates(profile)
            settings.update(auto_order=order, auto_reason=why, profile=getattr(profile, "name", None))
        else:
            order = [mode]
        candidates: list[CandidateResult] = []
        paths: dict[str, Path] = {}
        details: dict[str, dict] = {}
        for cand in order:
            if cand == "int8" and cal_feeds is None:
                candidates.append(CandidateResult(cand, "skipped", reason="no --calibration data"))
                continue
            say(f"quantizing: {cand}")
            path = work / f"candidate-{cand}{backend.suffix}"
            try:
                details[cand], notes = backend.quantize(cand, path, work, cal_feeds, calibrate_method,
                                                        per_channel, profile)
                say(f"checking accuracy: {cand}")
                quant_out = run_batched(open_runtime(path), eval_feeds)
            except (UnsupportedModelError, MissingDependencyError, InputFileError, DataError) as exc:
                if mode != "auto":  # auto records a broken candidate and tries the next one
                    raise
                candidates.append(CandidateResult(cand, "error", reason=exc.message))
                continue
            report = gate_outputs(float_out, quant_out, labels, max_drop, data=source)
            noop = details[cand].get("weights_converted") == 0
            status = "no-op" if noop else ("passed" if report.passed else "failed")
            candidates.append(CandidateResult(cand, status, report, path.stat().st_size,
                                              reason="nothing quantized" if noop else "", warnings=tuple(notes)))
            paths[cand] = path

        chosen = _choose(mode, candidates)
        if chosen is None:
            _fail(mode, model, backend, candidates, settings)
        candidates = [replace(c, chosen=c.mode == chosen.mode) for c in candidates]
        settings.update(details[chosen.mode])
        with atomic_output(out) as tmp_out:
            shutil.copyfile(paths[chosen.mode], tmp_out)
            out_rt = open_runtime(tmp_out)
        artifact = ModelArtifact(out, backend.name, out_rt.inputs, out_rt.outputs,
                                 {"quantization": chosen.mode, **details[chosen.mode]})
        return QuantizeResult(mode, chosen.mode, str(model), artifact, backend.size_before,
                              out.stat().st_size, chosen.gate, tuple(candidates), settings, chosen.warnings)


def _gate_rows(float_rt, eval_samples, cal_feeds):
    """The gate's rows: --eval (with its labels), else the calibration inputs, else random inputs."""
    from . import data as data_mod

    if eval_samples is not None:
        return data_mod.bind(eval_samples, float_rt.inputs, "--eval"), eval_samples.labels, "eval"
    if cal_feeds is not None:
        return cal_feeds, None, "calibration"
    return data_mod.generate(float_rt.inputs, batch=RANDOM_EVAL_ROWS), None, "random"


def _label_if_present(path: str | Path, label_column: str | None) -> str | None:
    p = Path(path)
    if label_column and p.suffix.lower() == ".csv" and p.is_file():
        import csv

        with open(p, newline="") as fh:
            header = next(csv.reader(fh), [])
        return label_column if label_column in header else None
    return label_column


def _check_options(mode: str, calibrate_method: str, max_drop: float) -> None:
    if mode not in MODES:
        raise UsageError(f"unknown quantization mode '{mode}'", f"use one of: {', '.join(MODES)}")
    if calibrate_method not in CALIBRATE_METHODS:
        raise UsageError(f"unknown calibration method '{calibrate_method}'",
                         f"use one of: {', '.join(CALIBRATE_METHODS)}")
    # A negative --max-drop is allowed on purpose: it demands an improvement (docs/quantization.md).
    if not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) or not -100 <= max_drop <= 100:
        raise UsageError(f"--max-drop must be -100..100 percentage points, got {max_drop!r}",
                         "for example --max-drop 1.0")


def _choose(mode: str, candidates: list[CandidateResult]) -> CandidateResult | None:
    if mode != "auto":  # one mode: kept if it passed, even when it quantized nothing (it warns)
        c = candidates[0]
        return c if c.gate is not None and c.gate.passed else None
    # auto: the first in preference order that passed and actually changed the model
    return next((c for c in candidates if c.status == "passed"), None)


def _fail(mode: str, model: Path, backend, candidates: list[CandidateResult], settings: dict):
    result = QuantizeResult(mode, "", str(model), None, backend.size_before, None,
                            next((c.gate for c in candidates if c.gate), None), tuple(candidates), settings)
    gated = [c for c in candidates if c.gate is not None and c.status != "no-op"]
    if mode == "auto" and not gated:
        reasons = "; ".join(f"{c.mode}: {c.reason or c.status}" for c in candidates)
        exc = UnsupportedModelError(f"no quantization mode applies to {model.name} ({reasons})",
                                    "none of its operators has int8 or float16 kernels: deploy the float model")
        exc.result = result
        raise exc
    parts = [f"{c.mode}: {c.gate.metric} drop {c.gate.drop_points:.2f} points" if c.gate
             else f"{c.mode}: {c.status} ({c.reason})" for c in candidates]
    exc = AccuracyGateError(
        f"quantization lost more than {settings['max_drop_points']:g} points: " + "; ".join(parts),
        result.gate,
        "raise --max-drop, give more representative --calibration data, or try another --mode "
        "(int8 -> dynamic -> fp16 lose progressively less)")
    exc.result = result
    raise exc


# --------------------------------------------------------------------------- backends


def _backend(framework: str, model: Path):
    if framework == "onnx":
        return _OnnxBackend(model)
    if framework in ("keras", "tensorflow"):
        return _TFLiteBackend(model)
    if framework == "tflite":
        raise UsageError("TFLite models cannot be re-quantized; pass the Keras/SavedModel source",
                         "edgeops quantize model.keras --mode int8 -o model-int8.tflite --calibration data.npy")
    raise UsageError(f"quantize takes an ONNX model or a Keras/SavedModel source, not a {framework} model",
                     f"convert it first: edgeops convert {model.name} --to onnx -o model.onnx")


class _OnnxBackend:
    name, suffix = "onnx", ".onnx"

    def __init__(self, model: Path):
        self.model = model
        self.size_before = model.stat().st_size

    def float_model(self, work: Path) -> Path:
        return self.model

    def quantize(self, mode, path, work, cal_feeds, calibrate_method, per_channel, profile):
        from .quantize_onnx import quantize_onnx

        return quantize_onnx(self.model, path, mode, work_dir=work, calibration=cal_feeds,
                             calibrate_method=calibrate_method, per_channel=per_channel, profile=profile)


class _TFLiteBackend:
    """Keras / SavedModel: the float reference is the fp32 TFLite export, so the gate measures
    quantization alone, not conversion (which the converter's parity check covers)."""

    name, suffix = "tflite", ".tflite"

    def __init__(self, model: Path):
        self.model = model
        self.size_before = 0
        self._loaded = None

    def float_model(self, work: Path) -> Path:
        from .keras_source import load_keras_source
        from .tflite_export import export_loaded

        self._loaded, _, _ = load_keras_source(self.model)
        path = work / "float32.tflite"
        export_loaded(self._loaded, path, "fp32")
        self.size_before = path.stat().st_size
        return path

    def quantize(self, mode, path, work, cal_feeds, calibrate_method, per_channel, profile):
        from .tflite_export import export_loaded

        meta = export_loaded(self._loaded, path, mode, cal_feeds if mode == "int8" else None)
        # TFLiteConverter has no calibration-method or per-channel switch: int8 is per-channel
        # min/max by design, so those options do not apply here.
        return {**meta, "baseline": "fp32 TFLite export of the source"}, []


