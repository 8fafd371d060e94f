"""ONNX half of costmodel: ``analyze_onnx`` reads an onnx.ModelProto into a ModelCost.

Shape inference runs on a copy with the batch fixed (ONNX's own, then a pass for ai.onnx.ml ops
it skips, then onnxruntime's symbolic inference when a MAC op still has unknown inputs).
costmodel.py's docstring states what is counted, folded and fused.
"""
from __future__ import annotations

import numpy as np

from ..errors import require
from .costmodel import (MAC_CLASSES, ModelCost, OpCost, _dominant, _op_class, _precision_name,
                        _weights_by_precision, summarize)

_ONNX_VIEW = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size",
              "Dropout", "Constant", "ConstantOfShape"}
_ONNX_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Abs", "Neg", "Reciprocal", "Relu",
    "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip",
    "Erf", "Gelu", "Softplus", "Mish", "Max", "Min", "Sum", "Mean", "Where", "Cast", "Floor",
    "Ceil", "Round", "Sign", "Not", "And", "Or", "Xor", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "Sin", "Cos", "QuickGelu", "BiasGelu", "FastGelu",
}
_ONNX_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
              "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
              "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp", "ArgMax", "ArgMin"}
_ONNX_NORM = {"BatchNormalization", "LayerNormalization", "InstanceNormalization",
              "GroupNormalization", "LpNormalization", "Softmax", "LogSoftmax",
              "SkipLayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"}
_ONNX_FUSABLE = {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid",
                 "Tanh", "Add"}
_ONNX_PRODUCERS_THAT_FUSE = {"Conv", "Gemm", "MatMul", "ConvTranspose", "FusedConv"}
_ONNX_INT8_OPS = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul",
                  "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm"}
_ONNX_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _onnx_dtype(elem_type: int) -> tuple[str, int]:
    """(precision name, bytes per element) of an ONNX TensorProto element type."""
    from onnx import helper

    try:
        np_type = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return "other", 4
    return _precision_name(np_type), np_type.itemsize


def _fix_batch(model, batch: int, notes: list[str], input_shapes=None) -> None:
    """Give every symbolic input dimension a value: the given shape's, else the first one
    ``batch`` and others 1."""
    inits = {i.name for i in model.graph.initializer}
    input_shapes = input_shapes or {}
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        given = input_shapes.get(inp.name)
        dims = inp.type.tensor_type.shape.dim
        if given is not None and len(given) == len(dims):
            for dim, value in zip(dims, given):
                dim.Clear()
                dim.dim_value = int(value)
            continue
        for pos, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            label = dim.dim_param or "?"
            value = batch if pos == 0 else 1
            if pos > 0:
                notes.append(f"input {inp.name}: symbolic dimension {label} set to 1")
            dim.Clear()
            dim.dim_value = value


def analyze_onnx(model, batch: int = 1, input_shapes=None) -> ModelCost:
    """Per-op cost of an in-memory onnx.ModelProto (a copy is shape-inferred)."""
    onnx = require("onnx", "onnx", "onnx", "reading ONNX models")

    notes: list[str] = []
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _fix_batch(work, batch, notes, input_shapes)
    # stale intermediate/output shapes (symbolic batch) would win over the inferred ones
    del work.graph.value_info[:]
    for out in work.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
        work = _propagate_ml_shapes(work, onnx)
        if _mac_inputs_unknown(work):
            work = _symbolic_shapes(work)
    except Exception as exc:  # inference is best effort: unknown shapes are reported below
        notes.append(f"shape inference failed ({str(exc).splitlines()[0][:120]}); MACs undercounted")
    graph = work.graph

    # tensor name -> (shape or None, precision, itemsize)
    info: dict[str, tuple[tuple[int, ...] | None, str, int]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        prec, size = _onnx_dtype(tt.elem_type)
        shape = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            shape = tuple(dims) if all(d >= 0 for d in dims) else None
        info[vi.name] = (shape, prec, size)

    # constants: name -> (stored bytes, stored precision)
    const: dict[str, tuple[int, str]] = {}
    for init in graph.initializer:
        prec, size = _onnx_dtype(init.data_type)
        const[init.name] = (int(np.prod(init.dims)) * size, prec)
        info[init.name] = (tuple(init.dims), prec, size)
    total_weights = _weights_by_precision(const.values())

    def nbytes(name: str) -> int:
        shape, _, size = info.get(name, (None, "other", 4))
        return int(np.prod(shape)) * size if shape is not None else 0

    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name] = consumers.get(name, 0) + 1
    producer_op: dict[str, str] = {}

    ops: list[OpCost] = []
    first_write: dict[str, int] = {i.name: 0 for i in graph.input if i.name not in const}
    last_read: dict[str, int] = {}
    unknown_shapes, subgraphs = 0, 0
    folded_from: dict[str, str] = {}  # tensor -> the op that a fused op merged into
    for node in graph.node:
        inputs = [n for n in node.input if n]
        if node.op_type == "Constant" or (inputs and all(n in const for n in inputs)) \
                or (not inputs and node.op_type in _ONNX_VIEW):
            stored = sum(const[n][0] for n in inputs)
            prec = const[inputs[0]][1] if inputs else "fp32"
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        stored += len(attr.t.raw_data) or 4
                        prec = _onnx_dtype(attr.t.data_type)[0]
                total_weights[prec] += stored
            for out in node.output:
                const[out] = (stored, prec)
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            subgraphs += 1
        act_inputs = [n for n in inputs if n not in const]
        if _fused(node, act_inputs, consumers, producer_op):
            src = act_inputs[0]
            for out in node.output:
                folded_from[out] = folded_from.get(src, src)
            for out in node.output:
                producer_op[out] = producer_op.get(src, "")
            continue
        if node.op_type in _ONNX_QDQ and _qdq_on_activation(node, const):
            src = act_inputs[0] if act_inputs else None
            for out in node.output:
                if src is not None:
                    folded_from[out] = folded_from.get(src, src)
                    producer_op[out] = producer_op.get(src, "")
            continue
        index = len(ops)
        macs, op_class, dtype = _onnx_macs(node, info, const)
        if op_class in MAC_CLASSES and macs == 0:
            unknown_shapes += 1
        # tree ensembles and other ai.onnx.ml ops keep their parameters in attributes
        attr_bytes = _attribute_bytes(node) if node.domain == "ai.onnx.ml" else 0
        total_weights["fp32"] += attr_bytes
        weight_bytes = sum(const[n][0] for n in inputs if n in const) + attr_bytes
        view = node.op_type in _ONNX_VIEW
        in_bytes = 0 if view else sum(nbytes(n) for n in act_inputs)
        out_bytes = 0 if view else sum(nbytes(n) for n in node.output if n)
        ops.append(OpCost(node.name or f"{node.op_type}_{index}", node.op_type, op_class, macs,
                          weight_bytes, in_bytes, out_bytes, dtype,
                          op_class == "conv" and _onnx_winograd(node, info)))
        for n in act_inputs:
            last_read[folded_from.get(n, n)] = index
        for out in node.output:
            if not out:
                continue
            producer_op[out] = node.op_type
            if view and act_inputs:  # a view shares its input's buffer
                folded_from[out] = folded_from.get(act_inputs[0], act_inputs[0])
            else:
                first_write[out] = index
    end = max(len(ops) - 1, 0)
    for out in graph.output:
        last_read[folded_from.get(out.name, out.name)] = end
    live = [(nbytes(name), first, last_read.get(name, first)) for name, first in first_write.items()]
    if unknown_shapes:
        notes.append(f"{unknown_shapes} MAC ops have unknown shapes; MACs undercounted")
    if subgraphs:
        notes.append(f"{subgraphs} control-flow ops (If/Loop/Scan): their bodies are not counted")
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    return summarize(ops, live, format="onnx", weight_bytes=sum(total_weights.values()),
                     weight_dtype=_dominant(total_weights), opset=opsets.get(""),
                     ml_opset=opsets.get("ai.onnx.ml"), ir_version=model.ir_version,
                     notes=tuple(notes))


_MAC_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "QLinearConv",
            "ConvInteger"}


def _mac_inputs_unknown(work) -> bool:
    """Does any MAC op read a tensor whose shape is missing or has an unknown dimension?"""
    known = {v.name for v in list(work.graph.input) + list(work.graph.value_info)
             if v.type.tensor_type.HasField("shape")
             and all(d.HasField("dim_value") and d.dim_value > 0 for d in v.type.tensor_type.shape.dim)}
    known |= {i.name for i in work.graph.initializer}
    return any(n.op_type in _MAC_OPS and any(x and x not in known for x in n.input[:2])
               for n in work.graph.node)


def _symbolic_shapes(work):
    """onnxruntime's symbolic shape inference resolves what ONNX's gives up on (e.g. BERT's
    position-id Slice at batch 1). It saves a scratch file into the current directory when
    incomplete, so it runs in a temporary one; any failure keeps the shapes we had."""
    import tempfile

    from ..procio import working_directory

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return work
    with tempfile.TemporaryDirectory() as tmp, working_directory(tmp):
        try:
            inferred = SymbolicShapeInference.infer_shapes(work, auto_merge=True, guess_output_rank=True)
        except Exception:  # incomplete inference raises a bare Exception
            return work
    return inferred or work


# ai.onnx.ml ops whose output has their input's shape. ONNX shape inference leaves their
# outputs unknown, which would hide the MACs of everything after them (a scikit-learn
# StandardScaler in front of an MLP).
_ML_SAME_SHAPE = {"Scaler", "Normalizer", "Imputer", "Binarizer"}


def _propagate_ml_shapes(work, onnx, rounds: int = 3):
    for _ in range(rounds):
        known = {vi.name: vi for vi in list(work.graph.input) + list(work.graph.value_info)}
        added = False
        for node in work.graph.node:
            if (node.domain == "ai.onnx.ml" and node.op_type in _ML_SAME_SHAPE and node.input
                    and node.input[0] in known and node.output[0] not in known):
                vi = onnx.ValueInfoProto()
                vi.CopyFrom(known[node.input[0]])
                vi.name = node.output[0]
                vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT  # these ops always output float
                work.graph.value_info.append(vi)
                added = True
        if not added:
            break
        work = onnx.shape_inference.infer_shapes(work, strict_mode=False, data_prop=True)
    return work


def _attribute_bytes(node) -> int:
    total = 0
    for a in node.attribute:
        total += 4 * len(a.floats) + 8 * len(a.ints) + sum(len(x) for x in a.strings)
        if a.HasField("t"):
            total += len(a.t.raw_data)
    return total


def _fused(node, act_inputs, consumers, producer_op) -> bool:
    if node.op_type not in _ONNX_FUSABLE or len(act_inputs) != 1:
        return False
    src = act_inputs[0]
    if producer_op.get(src) not in _ONNX_PRODUCERS_THAT_FUSE or consumers.get(src, 0) != 1:
        return False
    # Add fuses only as a bias (its other input a constant); activations fuse always.
    return node.op_type != "Add" or len(node.input) == 2


def _qdq_on_activation(node, const) -> bool:
    return bool(node.input) and node.input[0] not in const


def _shape(info, name):
    return info.get(name, (None, "other", 4))[0]


def _onnx_winograd(node, info) -> bool:
    if node.op_type not in ("Conv", "FusedConv", "QLinearConv", "ConvInteger"):
        return False
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    w = _shape(info, node.input[3] if node.op_type == "QLinearConv" else node.input[1])
    kernel = attrs.get("kernel_shape") or (list(w[2:]) if w is not None else [])
    return kernel == [3, 3] and set(attrs.get("strides", [1])) == {1} \
        and set(attrs.get("dilations", [1])) == {1}


def _onnx_macs(node, info, const) -> tuple[int, str, str]:
    """(MACs, op class, compute precision) of one runtime ONNX node."""
    op = node.op_type
    attrs = {a.name: a for a in node.attribute}
    out = _shape(info, node.output[0]) if node.output else None
    out_elems = int(np.prod(out)) if out is not None else 0
    prec = info.get(node.output[0], (None, "fp32", 4))[1] if node.output else "fp32"

    def weight_prec(name):
        if name in const and const[name][1] in ("int8", "fp16"):
            return const[name][1]
        return None

    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv", "ConvTranspose"):
        w_name = node.input[3] if op == "QLinearConv" else node.input[1]
        w = _shape(info, w_name)
        group = attrs["group"].i if "group" in attrs else 1
        dtype = "int8" if op in _ONNX_INT8_OPS else (weight_prec(w_name) or prec)
        if w is None or out is None:
            return 0, "conv", dtype
        kernel = int(np.prod(w[2:]))
        if op == "ConvTranspose":
            x = _shape(info, node.input[0])
            macs = int(np.prod(x)) * w[1] * kernel if x is not None else 0
            return macs, "conv", dtype
        macs = out_elems * w[1] * kernel
        cls = "depthwise_conv" if group > 1 and w[1] == 1 else "conv"
        return macs, cls, dtype
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Gemm",
              "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm"):
        a = _shape(info, node.input[0])
        b_name = node.input[3] if op == "QLinearMatMul" else node.input[1]
        dtype = "int8" if op in _ONNX_INT8_OPS else (weight_prec(b_name) or prec)
        if a is None or out is None or not a:
            return 0, "matmul", dtype
        k = a[-1]
        if op in ("Gemm", "QGemm") and "transA" in attrs and attrs["transA"].i:
            k = a[0]
        return out_elems * k, "matmul", dtype
    if op in _RNN_GATES:
        w, r = _shape(info, node.input[1]), _shape(info, node.input[2])
        x = _shape(info, node.input[0])
        if w is None or r is None or x is None:
            return 0, "matmul", prec
        seq, bat = (x[1], x[0]) if "layout" in attrs and attrs["layout"].i else (x[0], x[1])
        return seq * bat * w[0] * w[1] * (w[2] + r[2]), "matmul", weight_prec(node.input[1]) or prec
    return 0, _op_class(op, _ONNX_POOL, _ONNX_NORM, _ONNX_ELEMENTWISE), prec
