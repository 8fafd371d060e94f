"""A loaded Keras model or SavedModel -> TFLite at a chosen precision (fp32, dynamic, int8, fp16).

Both the Keras converter (converters/keras_tflite.py) and quantization use this module:
``load_keras_source`` (edgeops/keras_source.py) opens the original, ``export_tflite`` /
``export_loaded`` write the .tflite.

The written model is normalized so that it looks like its source from outside: its
inputs and outputs carry the source model's names ("image", "scores" instead of
"serving_default_image:0", "StatefulPartitionedCall_1:0") and come in the source's
order. The TFLite converter orders outputs unpredictably, so without this a runtime's
output list could not be paired with the original's by position.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import DataError, UnsupportedModelError, UsageError
from .errors import first_line as _first_line
from .keras_source import SIGNATURE, KerasSource, import_tensorflow, load_keras_source, signature_output_name
from .procio import quiet_native_stderr

PRECISIONS = ("fp32", "dynamic", "int8", "fp16")
MAX_CALIBRATION_SAMPLES = 200  # TF's own guidance: ~100-500 samples; more only slows calibration down


# --------------------------------------------------------------------------- exporting


def export_tflite(source: str | Path, out: str | Path, precision: str,
                  representative: dict[str, np.ndarray] | None = None) -> dict:
    """Convert a .keras/.h5 file or SavedModel directory to a TFLite file at ``precision``."""
    check_precision(precision, representative)
    loaded, _, _ = load_keras_source(source)
    return export_loaded(loaded, out, precision, representative)


def check_precision(precision: str, representative) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown TFLite precision '{precision}'", f"use one of: {', '.join(PRECISIONS)}")
    if precision == "int8" and representative is None:
        raise DataError("full-integer int8 needs calibration data", "pass --calibration FILE")


def export_loaded(loaded: KerasSource, out: str | Path, precision: str,
                  representative: dict[str, np.ndarray] | None = None) -> dict:
    """Like export_tflite, for a source already opened with load_keras_source."""
    from .convert import atomic_output

    check_precision(precision, representative)
    tf = import_tensorflow()
    calibration = _calibration_feeds(loaded, representative) if precision == "int8" else None
    with loaded.saved_model_dir() as saved_model:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
        _configure(tf, converter, precision, calibration)
        flatbuffer = _run_converter(converter, loaded)
    flatbuffer = normalize_io(flatbuffer, loaded)
    with atomic_output(Path(out)) as tmp:
        tmp.write_bytes(flatbuffer)
    metadata = {"precision": precision, "tensorflow_version": tf.__version__,
                "converter": "tf.lite.TFLiteConverter"}
    if calibration is not None:
        metadata["calibration_samples"] = len(calibration)
    return metadata


def _configure(tf, converter, precision: str, calibration: list[dict[str, np.ndarray]] | None) -> None:
    if precision == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.representative_dataset = lambda: iter(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Inputs and outputs stay float32: the int8 model is then a drop-in replacement for the
        # fp32 one (same feeds, same outputs); the (de)quantize steps at the edges cost little.
        # Integer-only accelerators (Edge TPU, some NPUs) would want int8 I/O instead.
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32


def _run_converter(converter, loaded: KerasSource) -> bytes:
    from tensorflow.lite.python.convert_phase import ConverterError

    try:
        with quiet_native_stderr(), warnings.catch_warnings():
            # int8 calibration runs the deprecated tf.lite.Interpreter internally; not our concern
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            return converter.convert()
    except ConverterError as exc:
        raise UnsupportedModelError(
            f"{loaded.path}: the TFLite converter failed: {_converter_message(exc)}",
            "the model likely uses an operator TFLite builtins lack; replace that layer") from None
    except (ValueError, RuntimeError) as exc:
        raise UnsupportedModelError(f"{loaded.path}: the TFLite converter failed: {_first_line(exc)}",
                                    "check that the model runs with batch size 1") from None


def _calibration_feeds(loaded: KerasSource, representative: dict[str, np.ndarray]) -> list[dict]:
    """One dict per sample, batch 1, keyed by signature input name (what the converter asks for)."""
    from .data import Samples, bind

    if not representative:
        raise DataError("full-integer int8 needs calibration data", "pass --calibration FILE")
    feeds = bind(Samples(dict(representative)), loaded.inputs, "calibration data")
    counts = {name: len(arr) for name, arr in feeds.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"calibration data: inputs have different sample counts ({counts})",
                        "give every input the same number of rows")
    n = next(iter(counts.values()))
    if n == 0:
        raise DataError("calibration data holds no samples", "pass at least a few dozen representative rows")
    # Spread the picks over the whole file: data is often sorted (by class, by time).
    picks = np.unique(np.linspace(0, n - 1, min(n, MAX_CALIBRATION_SAMPLES)).round().astype(int))
    return [{name: arr[i:i + 1] for name, arr in feeds.items()} for i in picks]


# --------------------------------------------------------------------------- normalizing I/O


def normalize_io(flatbuffer: bytes, loaded: KerasSource) -> bytes:
    """Name and order the model's inputs/outputs like the source model's (see module docstring)."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(flatbuffer), 0))
    sig = next((s for s in model.signatureDefs or [] if _text(s.signatureKey) == SIGNATURE), None)
    if sig is None:
        raise UnsupportedModelError(f"{loaded.path}: the converted model has no '{SIGNATURE}' signature",
                                    "report this model as a converter bug")
    in_index = {_text(t.name): t.tensorIndex for t in sig.inputs}
    out_index = {signature_output_name(_text(t.name), loaded.output_names): t.tensorIndex for t in sig.outputs}
    want_in = [s.name for s in loaded.inputs]
    if sorted(in_index) != sorted(want_in) or sorted(out_index) != sorted(loaded.output_names):
        raise UnsupportedModelError(
            f"{loaded.path}: cannot match the TFLite signature ({', '.join(in_index)} -> "
            f"{', '.join(out_index)}) to the model's ({', '.join(want_in)} -> {', '.join(loaded.output_names)})",
            "report this model as a converter bug")
    subgraph = model.subgraphs[sig.subgraphIndex]
    order_in = [in_index[n] for n in want_in]
    order_out = [out_index[n] for n in loaded.output_names]
    if sorted(order_in) != sorted(_ints(subgraph.inputs)) or sorted(order_out) != sorted(_ints(subgraph.outputs)):
        raise UnsupportedModelError(f"{loaded.path}: the converted model's inputs/outputs are not its signature's",
                                    "report this model as a converter bug")
    subgraph.inputs = np.array(order_in, dtype=np.int32)
    subgraph.outputs = np.array(order_out, dtype=np.int32)
    if len(set(order_in + order_out)) == len(order_in) + len(order_out):  # one tensor, one name
        for name, index in zip(want_in + list(loaded.output_names), order_in + order_out):
            subgraph.tensors[index].name = name.encode()
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# --------------------------------------------------------------------------- small helpers


def _ints(values) -> list[int]:
    return [int(v) for v in (values if values is not None else [])]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _converter_message(exc: BaseException) -> str:
    """The converter's error text is a wall of MLIR; keep the line that names the problem."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]
