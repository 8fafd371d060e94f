"""TFLite half of costmodel: ``analyze_tflite`` reads a flatbuffer through LiteRT's interpreter
(without delegates) into a ModelCost. costmodel.py's docstring states what is counted."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputFileError
from .costmodel import (ModelCost, OpCost, _dominant, _op_class, _precision_name, _weights_by_precision,
                        summarize)

_TFL_ELEMENTWISE = {
    "ADD", "SUB", "MUL", "DIV", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH",
    "HARD_SWISH", "LEAKY_RELU", "PRELU", "ELU", "GELU", "EXP", "LOG", "SQRT", "RSQRT", "SQUARE",
    "SQUARED_DIFFERENCE", "POW", "ABS", "NEG", "MAXIMUM", "MINIMUM", "FLOOR", "CEIL", "ROUND",
    "SIN", "COS", "SELECT", "SELECT_V2", "CAST", "ADD_N", "EQUAL", "NOT_EQUAL", "LESS", "GREATER",
    "LESS_EQUAL", "GREATER_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT", "FLOOR_DIV",
    "FLOOR_MOD", "SIGN",
}
_TFL_POOL = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D", "MEAN", "SUM", "REDUCE_MAX",
             "REDUCE_MIN", "REDUCE_PROD", "ARG_MAX", "ARG_MIN"}
_TFL_NORM = {"SOFTMAX", "LOG_SOFTMAX", "L2_NORMALIZATION", "LOCAL_RESPONSE_NORMALIZATION"}
_TFL_VIEW = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


def analyze_tflite(path: str | Path, batch: int = 1, input_shapes=None) -> ModelCost:
    """Per-op cost of a TFLite flatbuffer, read through LiteRT's interpreter."""
    from ..runtime.tflite import load_interpreter_class

    Interpreter = load_interpreter_class()
    kwargs = {}
    try:  # no XNNPACK: the delegate would replace the ops we want to see with one DELEGATE op
        from ai_edge_litert.interpreter import OpResolverType

        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    except ImportError:
        pass
    try:
        interp = Interpreter(model_path=str(path), **kwargs)
        for d in interp.get_input_details():
            sig = d.get("shape_signature")
            given = (input_shapes or {}).get(d["name"])
            if given is not None and tuple(given) != tuple(d["shape"]):
                interp.resize_tensor_input(d["index"], list(given))
            elif sig is not None and len(sig) and sig[0] < 0 and batch != d["shape"][0]:
                interp.resize_tensor_input(d["index"], [batch, *list(d["shape"][1:])])
        interp.allocate_tensors()
        tensors = {d["index"]: d for d in interp.get_tensor_details()}
        op_list = interp._get_ops_details()  # noqa: SLF001 -- the only op-level view LiteRT has
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputFileError(f"{path}: LiteRT cannot read this model: {first[:200]}",
                             "check that the file is a complete TFLite flatbuffer") from None
    notes: list[str] = []
    graph_inputs = {d["index"] for d in interp.get_input_details()}
    graph_outputs = {d["index"] for d in interp.get_output_details()}
    produced = {int(t) for op in op_list for t in op["outputs"]}

    def size(i: int) -> int:
        d = tensors[i]
        return int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize if len(d["shape"]) else \
            np.dtype(d["dtype"]).itemsize

    # constants: read by an op, not written by any op and not a graph input (tensors no op
    # reads are the interpreter's scratch buffers)
    read = {int(t) for op in op_list for t in op["inputs"] if int(t) >= 0}
    const: dict[int, tuple[int, str]] = {}
    for i in read - produced - graph_inputs:
        const[i] = (size(i), _precision_name(tensors[i]["dtype"]))
    total_weights = _weights_by_precision(const.values())

    ops: list[OpCost] = []
    first_write = {i: 0 for i in graph_inputs}
    last_read: dict[int, int] = {}
    alias: dict[int, int] = {}
    for op in op_list:
        name = op["op_name"]
        ins = [int(i) for i in op["inputs"] if int(i) >= 0]
        outs = [int(i) for i in op["outputs"]]
        if ins and all(i in const for i in ins):  # e.g. DEQUANTIZE of fp16 weights: once, at load
            stored = sum(const[i][0] for i in ins)
            for o in outs:
                const[o] = (stored, const[ins[0]][1])
            continue
        index = len(ops)
        macs, op_class, dtype = _tflite_macs(name, ins, outs, tensors, const)
        act = [i for i in ins if i not in const]
        view = name in _TFL_VIEW
        ops.append(OpCost(f"{name}_{op['index']}", name, op_class, macs,
                          sum(const[i][0] for i in ins if i in const),
                          0 if view else sum(size(i) for i in act),
                          0 if view else sum(size(o) for o in outs), dtype,
                          name == "CONV_2D" and _tflite_winograd(ins, outs, tensors)))
        for i in act:
            last_read[alias.get(i, i)] = index
        for o in outs:
            if view and act:  # a view shares its input's buffer
                alias[o] = alias.get(act[0], act[0])
            else:
                first_write[o] = index
    end = max(len(ops) - 1, 0)
    for o in graph_outputs:
        last_read[alias.get(o, o)] = end
    live = [(size(i), first, last_read.get(i, first)) for i, first in first_write.items()]
    if any(op["op_name"] in ("DELEGATE", "CUSTOM") for op in op_list):
        notes.append("the model has DELEGATE/CUSTOM ops whose cost is not counted")
    return summarize(ops, live, format="tflite", weight_bytes=sum(total_weights.values()),
                     weight_dtype=_dominant(total_weights), notes=tuple(notes))


def _tflite_winograd(ins, outs, tensors) -> bool:
    # LiteRT's op details carry no strides: a same-size output means stride 1 (or a padded
    # stride that nobody uses with 3x3 kernels)
    w, x, y = tensors[ins[1]]["shape"], tensors[ins[0]]["shape"], tensors[outs[0]]["shape"]
    return len(w) == 4 and tuple(w[1:3]) == (3, 3) and len(x) == 4 and len(y) == 4 \
        and y[1] >= x[1] - 2 and y[2] >= x[2] - 2


def _tflite_macs(name, ins, outs, tensors, const) -> tuple[int, str, str]:
    out_shape = tensors[outs[0]]["shape"] if outs else ()
    out_elems = int(np.prod(out_shape)) if len(out_shape) else 1
    act = [i for i in ins if i not in const]
    act_prec = _precision_name(tensors[act[0]]["dtype"]) if act else "fp32"

    def weight(pos):
        return ins[pos] if len(ins) > pos else None

    def compute_prec(w):
        # int8 weights mean int8 kernels (full-integer or dynamic-range "hybrid" kernels);
        # fp16 weights were dequantized at load, so the kernels run in fp32.
        if w is not None and w in const and const[w][1] == "int8":
            return "int8"
        return "fp32" if act_prec == "fp16" else act_prec

    if name in ("CONV_2D", "CONV_3D", "DEPTHWISE_CONV_2D"):
        w = weight(1)
        shape = tensors[w]["shape"]
        if name == "DEPTHWISE_CONV_2D":
            return out_elems * int(np.prod(shape[1:-1])), "depthwise_conv", compute_prec(w)
        return out_elems * int(np.prod(shape[1:])), "conv", compute_prec(w)
    if name == "TRANSPOSE_CONV":
        w, x = weight(1), weight(2)
        shape = tensors[w]["shape"]
        return int(np.prod(tensors[x]["shape"])) * int(np.prod(shape[:-1])), "conv", compute_prec(w)
    if name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
        w = weight(1)
        k = int(tensors[w]["shape"][-1]) if name == "FULLY_CONNECTED" else \
            int(tensors[ins[0]]["shape"][-1])
        return out_elems * k, "matmul", compute_prec(w)
    return 0, _op_class(name, _TFL_POOL, _TFL_NORM, _TFL_ELEMENTWISE), act_prec
