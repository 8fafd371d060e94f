"""What a model costs to run, read from the model file: per-op MACs, bytes and precision.

``analyze(path, batch=1)`` reads an ONNX model (onnx + shape inference) or a TFLite model
(LiteRT's interpreter, without delegates) into a ``ModelCost``: one ``OpCost`` per operator
the runtime executes, in execution order, plus totals. No timing here: estimate.py turns
this into milliseconds for a device.

Conventions (docs/benchmark-estimate.md has the details):
  * ``macs`` counts multiply-accumulates of conv, depthwise conv and matmul-like ops only,
    the way published model tables count them; pools, norms and elementwise ops have
    ``macs = 0`` and are costed by the bytes they move.
  * Constant folding: an op whose inputs are all constants (weights, Constant nodes,
    DequantizeLinear of a weight, TFLite DEQUANTIZE of fp16 weights) runs once at load, so
    it is not listed; its stored bytes count as the consumer's weight bytes.
  * Fusion: BatchNormalization, an activation or a bias Add straight after the only use of a
    Conv/Gemm/MatMul output is fused by the runtimes (onnxruntime's graph optimizer, TFLite's
    converter), so it is not listed either. QuantizeLinear/DequantizeLinear on activations of
    a QDQ model are assumed fused into the quantized kernels.
  * Peak activation bytes: a liveness walk over the listed ops in order. A tensor is live
    from the op that writes it (graph inputs from the start) to its last reader (graph
    outputs to the end); the peak is the largest sum of live tensor sizes. Runtimes with an
    arena planner reuse memory about this well; estimate.py scales it by a factor measured
    on this machine.

This module holds the result types and what both formats share; cost_onnx.py and
cost_tflite.py read the files (imported on first use, so importing this loads neither onnx
nor LiteRT).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError

OP_CLASSES = ("conv", "depthwise_conv", "matmul", "elementwise", "pool", "norm", "other")
MAC_CLASSES = ("conv", "depthwise_conv", "matmul")


@dataclass(frozen=True)
class OpCost:
    name: str
    op_type: str
    op_class: str  # one of OP_CLASSES
    macs: int
    weight_bytes: int  # constants this op reads, as stored in the file
    input_bytes: int  # activations read
    output_bytes: int  # activations written
    dtype: str  # compute precision: fp32 | fp16 | int8 | other
    winograd: bool = False  # a dense 3x3 stride-1 conv: some runtimes (ncnn, MNN) use Winograd

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes


@dataclass(frozen=True)
class ModelCost:
    format: str  # onnx | tflite
    ops: tuple[OpCost, ...]
    peak_activation_bytes: int
    weight_bytes: int  # every constant in the file (shared weights once)
    weight_dtype: str  # dtype of most weight bytes: fp32 | fp16 | int8 | other
    opset: int | None = None  # ONNX default-domain opset
    ml_opset: int | None = None
    ir_version: int | None = None
    notes: tuple[str, ...] = field(default=())  # what the analysis had to guess

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @property
    def precision(self) -> str:
        """Compute precision of most MACs (fp32 when the model has no MAC ops)."""
        by = {}
        for op in self.ops:
            if op.op_class in MAC_CLASSES:
                by[op.dtype] = by.get(op.dtype, 0) + max(op.macs, 1)
        return max(by, key=by.get) if by else "fp32"

    def class_macs(self) -> dict[str, int]:
        out = dict.fromkeys(OP_CLASSES, 0)
        for op in self.ops:
            out[op.op_class] += op.macs
        return out

    def to_dict(self) -> dict:
        return {
            "format": self.format, "ops": len(self.ops), "macs": self.macs,
            "class_macs": self.class_macs(), "weight_bytes": self.weight_bytes,
            "peak_activation_bytes": self.peak_activation_bytes, "precision": self.precision,
            "weight_dtype": self.weight_dtype, "opset": self.opset, "ml_opset": self.ml_opset,
            "ir_version": self.ir_version, "notes": list(self.notes),
        }


def analyze(path: str | Path, batch: int = 1,
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> ModelCost:
    """Per-op cost of an ONNX or TFLite model file at the given batch size, or at the exact
    ``input_shapes`` (by input name) that a benchmark ran with."""
    from ..runtime import detect_format

    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise UsageError(f"batch must be a positive integer, got {batch!r}", "pass batch=1 or more")
    if detect_format(path) == "onnx":
        from ..onnx_util import load_onnx
        from .cost_onnx import analyze_onnx

        return analyze_onnx(load_onnx(path), batch, input_shapes)
    from .cost_tflite import analyze_tflite

    return analyze_tflite(path, batch, input_shapes)


def summarize(ops: list[OpCost], live: list[tuple[int, int, int]], **kw) -> ModelCost:
    """Build a ModelCost; ``live`` is (bytes, first op index, last op index) per activation."""
    return ModelCost(ops=tuple(ops), peak_activation_bytes=peak_live_bytes(live, len(ops)), **kw)


def peak_live_bytes(live: list[tuple[int, int, int]], n_ops: int) -> int:
    """Largest sum of sizes of tensors live at the same op (inclusive intervals)."""
    if not live:
        return 0
    delta = np.zeros(max(n_ops, 1) + 2, dtype=np.int64)
    for size, first, last in live:
        first = min(max(first, 0), n_ops)
        last = min(max(last, first), n_ops)
        delta[first] += size
        delta[last + 1] -= size
    return int(np.cumsum(delta).max())


# ------------------------------------------------------------------ shared by both formats

def _precision_name(np_type) -> str:
    np_type = np.dtype(np_type)
    if np_type == np.float32 or np_type == np.float64:
        return "fp32"
    if np_type == np.float16:
        return "fp16"
    if np_type in (np.dtype(np.int8), np.dtype(np.uint8)):
        return "int8"
    return "other"


def _weights_by_precision(consts) -> dict[str, int]:
    """Stored bytes per precision of (bytes, precision) constants."""
    total = {"fp32": 0, "fp16": 0, "int8": 0, "other": 0}
    for nbytes, prec in consts:
        total[prec] += nbytes
    return total


def _dominant(by_precision: dict[str, int]) -> str:
    best = max(by_precision, key=by_precision.get) if by_precision else "fp32"
    return best if by_precision.get(best) else "fp32"


def _op_class(op_type: str, pool, norm, elementwise) -> str:
    """Class of an op without MACs, given the format's op-name sets."""
    if op_type in pool:
        return "pool"
    if op_type in norm:
        return "norm"
    if op_type in elementwise:
        return "elementwise"
    return "other"


# analyze_onnx / analyze_tflite stay importable from here. Their modules import the names
# above, so importing them at load time would be a cycle: they load on first access instead.
_READERS = {"analyze_onnx": "cost_onnx", "analyze_tflite": "cost_tflite"}


def __getattr__(name: str):
    if name in _READERS:
        from importlib import import_module

        return getattr(import_module(f".{_READERS[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
