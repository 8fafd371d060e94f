"""`benchmark --variants`: from one source model, build every format and precision the
toolchain can produce, score each against the float model, and benchmark them side by side."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..errors import (AccuracyGateError, DataError, EdgeOpsError, InputFileError, MissingDependencyError,
                      UnsupportedModelError)
from .run import BenchOptions, ModelBenchmark, benchmark_model

# The gate only scores variants here: every variant is kept and its drop shown; `passed`
# in the accuracy column compares the drop with --max-drop.
_SCORE_ONLY = 100.0


def benchmark_variants(source, profile, options: BenchOptions, *, calibration=None, eval_data=None,
                       sample_input=None, max_drop: float = 1.0, keep_dir: Path | None = None,
                       say=print) -> tuple[list[ModelBenchmark], list[str]]:
    """Returns the benchmarks and one line per variant that could not be built or measured."""
    from ..convert import detect_source

    source = Path(source)
    framework = detect_source(source)
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeops-variants-") as tmp:  # unused with keep_dir
        work = Path(keep_dir) if keep_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if framework in ("keras", "tensorflow"):
            built = _tflite_variants(source, work, profile, calibration, eval_data, sample_input, skipped, say)
        elif framework == "tflite":
            built = [("tflite fp32", source, None)]
            skipped.append("TFLite precisions need the Keras/SavedModel source: pass that instead")
        else:
            built = _onnx_variants(source, framework, work, profile, calibration, eval_data, sample_input,
                                   skipped, say)
        results = []
        for label, path, gate in built:
            say(f"benchmarking {label}")
            accuracy = None
            if gate is not None:
                accuracy = {**gate.to_dict(), "max_drop_points": max_drop, "passed": gate.drop_points <= max_drop}
            try:
                results.append(benchmark_model(path, profile, options, label=label, accuracy=accuracy))
            except EdgeOpsError as exc:
                skipped.append(f"{label}: not benchmarked: {exc.message}")
        if not keep_dir:  # the files are gone with the temporary directory: name the variant instead
            results = [_renamed(r) for r in results]
    return results, skipped


def _renamed(result: ModelBenchmark) -> ModelBenchmark:
    from dataclasses import replace

    return replace(result, model=f"{result.label} (temporary; keep with --keep-variants DIR)")


def _onnx_variants(source, framework, work, profile, calibration, eval_data, sample_input, skipped, say):
    from ..convert import ConvertOptions, convert

    fp32 = work / "onnx-fp32.onnx"
    if framework == "onnx" and profile is None:
        shutil.copyfile(source, fp32)
    else:
        say(f"converting {source.name} to ONNX")
        convert(source, "onnx", fp32, sample_input=sample_input, options=ConvertOptions(profile=profile))
    built = [("onnx fp32", fp32, _self_score(fp32, eval_data, calibration, skipped))]
    built += _quantized(fp32, "onnx", work, calibration, eval_data, profile, skipped, say)
    tfl = work / "tflite-fp32.tflite"
    try:
        say("converting the ONNX model to TFLite (onnx2tf)")
        convert(fp32, "tflite", tfl, options=ConvertOptions(profile=profile))
        # Not scored: its inputs are NHWC, so the --eval rows (NCHW) do not fit it as they are.
        built.append(("tflite fp32 (onnx2tf)", tfl, None))
    except (UnsupportedModelError, MissingDependencyError) as exc:
        skipped.append(f"tflite fp32: {exc.message}")
    return built


def _tflite_variants(source, work, profile, calibration, eval_data, sample_input, skipped, say):
    from ..convert import ConvertOptions, convert

    fp32 = work / "tflite-fp32.tflite"
    say(f"converting {source.name} to TFLite")
    convert(source, "tflite", fp32, sample_input=sample_input, options=ConvertOptions(profile=profile))
    built = [("tflite fp32", fp32, _self_score(fp32, eval_data, calibration, skipped))]
    return built + _quantized(source, "tflite", work, calibration, eval_data, profile, skipped, say)


def _quantized(model, fmt, work, calibration, eval_data, profile, skipped, say):
    """The dynamic, int8 and fp16 variants of ``model`` in format ``fmt``, each with its gate report."""
    built = []
    for mode in ("dynamic", "int8", "fp16"):
        out = work / f"{fmt}-{mode}.{fmt}"
        gate = _quantize(model, mode, out, calibration, eval_data, profile, skipped, say)
        if gate is not None:
            built.append((f"{fmt} {mode}", out, gate))
    return built


def _quantize(model, mode, out, calibration, eval_data, profile, skipped, say):
    from ..quantize import quantize

    if mode == "int8" and calibration is None:
        skipped.append("int8: needs --calibration data")
        return None
    say(f"quantizing: {mode}")
    try:
        result = quantize(model, mode, out, calibration=calibration, eval_data=eval_data,
                          max_drop=_SCORE_ONLY, profile=profile)
    except (AccuracyGateError, UnsupportedModelError, MissingDependencyError, DataError, InputFileError) as exc:
        skipped.append(f"{mode}: {exc.message}")
        return None
    for warning in result.warnings:
        skipped.append(f"{mode} (built, with a warning): {warning}")
    return result.gate


def _self_score(path, eval_data, calibration, skipped):
    """The float model's own accuracy (with labels) or 100% agreement, as a GateReport."""
    from .. import data as data_mod
    from ..gate import evaluate_gate
    from ..runtime import open_runtime

    rows = eval_data or calibration
    if rows is None:
        return None
    try:
        rt = open_runtime(path)
        samples = data_mod.load_samples(rows)
        feeds = data_mod.bind(samples, rt.inputs, "--eval")
        return evaluate_gate(rt, rt, feeds, samples.labels if rows == eval_data else None, _SCORE_ONLY,
                             data="eval" if rows == eval_data else "calibration")
    except EdgeOpsError as exc:
        skipped.append(f"float model not scored: {exc.message}")
        return None
