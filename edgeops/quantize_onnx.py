"""ONNX quantization with onnxruntime.quantization and onnxconverter-common.

Modes:
  dynamic  weights to int8 ahead of time, activations quantized at run time (no calibration data)
  int8     weights and activations to int8 (QDQ format), activation ranges from calibration data
  fp16     weights and compute in float16, inputs/outputs kept float32

Choices that were measured on this project's machines are noted where they are made
(docs/quantization.md has the numbers).
"""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np

from .errors import DataError, EdgeOpsError, UnsupportedModelError, UsageError, require
from .errors import first_line as _first_line
from .procio import working_directory

ONNX_MODES = ("dynamic", "int8", "fp16")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 16  # rows per calibration run, for models with a dynamic batch dimension

_INT8 = 3  # onnx.TensorProto.INT8 / UINT8 / FLOAT16 / FLOAT, without importing onnx here
_UINT8 = 2
_FLOAT16 = 10
_FLOAT = 1


def quantize_onnx(src: Path, dst: Path, mode: str, *, work_dir: Path,
                  calibration: dict[str, np.ndarray] | None = None, calibrate_method: str = "minmax",
                  per_channel: bool = True, profile=None) -> tuple[dict, list[str]]:
    """Write ``src`` quantized in ``mode`` to ``dst``; return (settings, warnings).

    ``calibration`` holds the int8 mode's calibration feeds, already bound to the inputs.
    """
    from .onnx_util import load_onnx, save_onnx

    model = load_onnx(src)
    prepared = work_dir / f"{mode}.prepared.onnx"
    save_onnx(_normalized_opsets(model), prepared)
    settings: dict = {"mode": mode}
    notes: list[str] = []
    if mode == "fp16":
        _fp16(prepared, dst, settings)
    elif not _has_default_domain(model):
        # Only ai.onnx.ml operators (trees, linear models in ML ops): nothing has int8 kernels.
        shutil.copyfile(prepared, dst)
    else:
        source = _pre_process(prepared, work_dir / f"{mode}.pre.onnx", settings)
        with _quiet_ort_logging():
            if mode == "dynamic":
                _dynamic(source, dst, work_dir, settings)
            elif mode == "int8":
                if not calibration:
                    raise DataError("int8 quantization needs calibration data", "pass --calibration FILE")
                _static(source, dst, calibration, calibrate_method, per_channel, profile, settings)
            else:
                raise UsageError(f"unknown ONNX quantization mode '{mode}'", f"use one of {ONNX_MODES}")
    _fit_to_profile(dst, profile, settings)
    counts = _weight_counts(load_onnx(dst), mode)
    settings.update(counts)
    if counts["weights_converted"] == 0:
        ops = sorted({n.op_type for n in model.graph.node})
        notes.append(f"nothing was quantized: this model's operators ({', '.join(ops)}) have no "
                     f"{mode} kernels; the output computes like the float model")
    elif counts["float_weights_left"]:
        notes.append(f"{counts['float_weights_left']} weight tensor(s) stayed float32 "
                     f"(operators the {mode} quantizer skips)")
    return settings, notes


# --------------------------------------------------------------------------- modes


def _dynamic(src: Path, dst: Path, work_dir: Path, settings: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    # QInt8 weights: faster than QUInt8 for MatMul on this CPU (ENVIRONMENT.md).
    # But Conv with int8 weights runs ConvInteger's slow generic kernel: 5x slower than fp32
    # at batch 1 (the dyn-s8conv row of benchmarks/quantize_speed.py), while uint8 Conv
    # weights run near fp32 speed. So Conv is quantized in a second pass with QUInt8 weights.
    ops = [t for t in IntegerOpsRegistry if t != "Conv"]
    has_conv = any(n.op_type == "Conv" for n in _load(src).graph.node)
    first = work_dir / "dynamic.pass1.onnx" if has_conv else dst
    _call(quantize_dynamic, src, first, weight_type=QuantType.QInt8, op_types_to_quantize=ops)
    if has_conv:
        _call(quantize_dynamic, first, dst, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    settings.update(weight_type="QInt8 (Conv: QUInt8)" if has_conv else "QInt8", per_channel=False)


def int8_types(profile) -> dict:
    """Activation/weight types and reduce_range for static int8 on the profile's CPU.

    x86 (or no profile): uint8 activations, int8 weights. Measured here (AVX-512 VNNI Xeon):
    QUInt8 activations ran the CNN and MLP faster than QInt8 (benchmarks/quantize_speed.py);
    onnxruntime's guidance says the same for x86. On x86 without VNNI the u8s8 kernels can
    saturate, so weights use 7 bits (reduce_range), as onnxruntime recommends.
    ARM: int8 activations and weights, onnxruntime's guidance for ARM kernels (not measured
    here: emulated timings are meaningless).
    """
    arch = (getattr(getattr(profile, "cpu", None), "arch", "") or "").lower()
    if arch.startswith(("arm", "aarch")):
        return {"activation_type": "QInt8", "weight_type": "QInt8", "reduce_range": False}
    reduce_range = bool(profile is not None and arch.startswith(("x86", "amd64", "x64"))
                        and not profile.cpu.int8_dot_product)
    return {"activation_type": "QUInt8", "weight_type": "QInt8", "reduce_range": reduce_range}


def _static(src: Path, dst: Path, calibration: dict[str, np.ndarray], method: str,
            per_channel: bool, profile, settings: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATE_METHODS:
        raise UsageError(f"unknown calibration method '{method}'", f"use one of {CALIBRATE_METHODS}")
    types = int8_types(profile)
    reader, rows = _reader(src, calibration, equal_batches=method != "minmax")
    _call(quantize_static, src, dst, reader, what="calibration data", quant_format=QuantFormat.QDQ,
          per_channel=per_channel,
          activation_type=getattr(QuantType, types["activation_type"]),
          weight_type=getattr(QuantType, types["weight_type"]), reduce_range=types["reduce_range"],
          calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                            "percentile": CalibrationMethod.Percentile}[method])
    settings.update(types, per_channel=per_channel, calibrate_method=method, format="QDQ",
                    calibration_samples=rows)


def _reader(model_path: Path, feeds: dict[str, np.ndarray], equal_batches: bool):
    """A CalibrationDataReader over ``feeds`` in row batches; returns (reader, rows used).

    A model with a fixed batch size gets batches of exactly that size. The histogram methods
    (entropy, percentile) stack all batches into one array, so they need equal batches too:
    the rows past the last full batch are left out.
    """
    from onnxruntime.quantization import CalibrationDataReader

    fixed = [i.type.tensor_type.shape.dim[0].dim_value for i in _load(model_path).graph.input
             if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_value > 0]
    n = len(next(iter(feeds.values())))
    step = fixed[0] if fixed else min(CALIBRATION_BATCH, max(n, 1))
    rows = n - n % step if (fixed or equal_batches) else n

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._starts = iter(range(0, rows, step))

        def get_next(self):
            start = next(self._starts, None)
            if start is None:
                return None
            return {k: v[start:start + step] for k, v in feeds.items()}

    if fixed and n < step:
        raise DataError(f"calibration data has {n} rows but the model takes batches of {step}",
                        f"give at least {step} rows")
    return Reader(), rows


def _fp16(src: Path, dst: Path, settings: dict) -> None:
    require("onnxconverter_common", "onnxconverter-common", "onnx", "float16 conversion")
    from onnxconverter_common.float16 import convert_float_to_float16

    from .onnx_util import save_onnx

    model = _load(src)
    original_outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    _noop_casts_to_identity(model)
    try:
        with warnings.catch_warnings():  # one warning per weight clamped to float16's range
            warnings.simplefilter("ignore", UserWarning)
            converted = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot handle
        raise UnsupportedModelError(f"float16 conversion failed: {_first_line(exc)}",
                                    "use --mode dynamic or int8 for this model") from None
    _restore_float_outputs(converted, original_outputs)
    _casts_to_declared_float16(converted)
    _pack_float16(converted)
    save_onnx(converted, dst)
    ort = require("onnxruntime", "onnxruntime", "onnx", "checking the float16 model")
    try:  # the converter can leave mixed float/float16 inputs on a node: check it loads
        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UnsupportedModelError(f"the float16 model does not load in onnxruntime: {_first_line(exc)}",
                                    "use --mode dynamic or int8 for this model") from None
    settings.update(keep_io_types=True, converter="onnxconverter_common.float16")


def _noop_casts_to_identity(model) -> None:
    """Cast(to=float) on a float tensor (scikit-learn models start with one) -> Identity.

    The float16 converter leaves such a Cast producing float32, which then meets float16
    weights in the next MatMul and the model no longer loads.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == _FLOAT and types.get(node.input[0]) == _FLOAT:
            node.op_type = "Identity"
            del node.attribute[:]


def _casts_to_declared_float16(model) -> None:
    """A Cast(to=float) whose output the converter re-typed float16 must cast to float16.

    It happens after a blocked ai.onnx.ml op (e.g. the Scaler of a scikit-learn pipeline),
    whose output shape inference leaves untyped, so the converter neither casts nor rewrites it.
    """
    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != _FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == _FLOAT:
                attr.i = _FLOAT16


def _pack_float16(model) -> None:
    """Store float16 weights as raw bytes. The converter fills int32_data (a varint per value,
    ~2.4 bytes for float16's 2), which left a scikit-learn MLP at 62% of its float size."""
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if init.data_type == _FLOAT16 and len(init.int32_data):
            packed = numpy_helper.from_array(numpy_helper.to_array(init), init.name)
            model.graph.initializer[i].CopyFrom(packed)


def _restore_float_outputs(model, original: dict[str, int]) -> None:
    """keep_io_types misses outputs of blocked ops (ai.onnx.ml): cast those back to float32."""
    from onnx import helper

    for out in model.graph.output:
        if original.get(out.name) == _FLOAT and out.type.tensor_type.elem_type == _FLOAT16:
            inner = f"{out.name}_float16"
            for node in model.graph.node:
                node.output[:] = [inner if x == out.name else x for x in node.output]
                node.input[:] = [inner if x == out.name else x for x in node.input]
            model.graph.node.append(helper.make_node("Cast", [inner], [out.name], to=_FLOAT,
                                                     name=f"{out.name}_to_float32"))
            out.type.tensor_type.elem_type = _FLOAT


# --------------------------------------------------------------------------- shared steps


def _pre_process(src: Path, dst: Path, settings: dict) -> Path:
    """onnxruntime's recommended pre-processing (shape inference), without its optimizer.

    The optimizer step adds opsets old device runtimes reject (ENVIRONMENT.md), hence
    skip_optimization. Shape inference fails on some graphs (ai.onnx.ml ops); quantizing
    without it still works, so the failure is recorded, not raised.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # When inference is incomplete, onnxruntime saves "sym_shape_infer_temp.onnx" into the
        # current directory: run it from the work directory so nothing lands in the user's.
        with _quiet_ort_logging(), working_directory(dst.parent):
            quant_pre_process(str(src.resolve()), str(dst.resolve()), skip_optimization=True)
    except Exception as exc:  # symbolic shape inference raises plain Exception
        settings["pre_process"] = f"failed ({_first_line(exc)}); quantized without it"
        return src
    settings["pre_process"] = "ok (shape inference, optimization skipped)"
    return dst


def _normalized_opsets(model):
    """One opset import per domain (skl2onnx can list the default domain twice, which the
    quantizer rejects with 'Failed to find proper ai.onnx domain')."""
    from .onnx_util import dedupe_opset_imports

    dedupe_opset_imports(model)
    return model


def _has_default_domain(model) -> bool:
    return any(n.domain in ("", "ai.onnx") for n in model.graph.node)


def _fit_to_profile(path: Path, profile, settings: dict) -> None:
    """Quantization can raise the opset (QDQ per-channel needs 13): keep within the device's runtime."""
    rt = getattr(profile, "onnx_runtime", None) if profile is not None else None
    if rt is None:
        return
    from .onnx_util import fit_to_runtime, load_onnx, save_onnx

    model = load_onnx(path)
    fitted = fit_to_runtime(model, max_opset=rt.max_opset, max_ir_version=rt.max_ir_version,
                            max_ml_opset=rt.max_ml_opset)
    if fitted is not model:
        save_onnx(fitted, path)
        settings["fitted_to"] = f"onnxruntime {rt.version} (opset <= {rt.max_opset}, IR <= {rt.max_ir_version})"


# The input that holds the weights, per compute operator.
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1, "Gather": 0, "LSTM": 1}


def _weight_counts(model, mode: str) -> dict:
    """Weight tensors the mode converted, and float weights left in compute operators."""
    want = {_FLOAT16} if mode == "fp16" else {_INT8, _UINT8}
    inits = {i.name: i for i in model.graph.initializer}
    # int8 weights are >= 2-D; 1-D int8 tensors are per-channel zero points
    converted = sum(1 for i in inits.values() if i.data_type in want and
                    (len(i.dims) >= 2 or (mode == "fp16" and _numel(i) > 1)))
    left = set()
    for node in model.graph.node:
        idx = _WEIGHT_INPUT.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] in inits \
                and inits[node.input[idx]].data_type == _FLOAT:
            left.add(node.input[idx])
    return {"weights_converted": converted, "float_weights_left": len(left)}


def _numel(init) -> int:
    return int(np.prod(init.dims)) if len(init.dims) else 1


def _load(path: Path):
    import onnx

    return onnx.load(str(path))


def _call(fn, *args, what: str | None = None, **kwargs) -> None:
    """Run an onnxruntime quantization function; its exceptions become one-line errors."""
    try:
        fn(*[str(a) if isinstance(a, Path) else a for a in args], **kwargs)
    except EdgeOpsError:
        raise
    except Exception as exc:  # the quantizer raises ValueError, RuntimeError, ORT's Fail, ...
        text = str(exc)
        if what and ("INVALID_ARGUMENT" in text or "invalid dimensions" in text.lower()):
            raise DataError(f"the model rejected the {what}: {_first_line(exc)}",
                            "give rows shaped like the model's inputs, batch first") from None
        raise UnsupportedModelError(f"onnxruntime could not quantize the model: {_first_line(exc)}",
                                    "try another --mode, or --no-per-channel") from None


@contextlib.contextmanager
def _quiet_ort_logging():
    """onnxruntime.quantization logs advice on the root logger ('WARNING:root:...') and prints
    calibration progress to stdout (which --json reserves for the result): hide both."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


