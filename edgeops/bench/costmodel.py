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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputFileError, UsageError, require

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

        return analyze_onnx(load_onnx(path), batch, input_shapes)
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


# ------------------------------------------------------------------ ONNX

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


def _precision_name(np_type) -> str:
    np_type = np.dtype(np_type)
    if np_type == np.float32 or np_type == np.float64:
        return "fp32"
    if np_type == np.float16:
        return "fp16"
    if np_type in (np.dtype(np.int8), np.dtype(np.uint8)):
        return "int8"
    return "other"


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
    total_weights = {"fp32": 0, "fp16": 0, "int8": 0, "other": 0}
    for nbytes, prec in const.values():
        total_weights[prec] += nbytes

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


def _dominant(by_precision: dict[str, int]) -> str:
    best = max(by_precision, key=by_precision.get) if by_precision else "fp32"
    return best if by_precision.get(best) else "fp32"


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
    if op in _ONNX_POOL:
        return 0, "pool", prec
    if op in _ONNX_NORM:
        return 0, "norm", prec
    if op in _ONNX_ELEMENTWISE:
        return 0, "elementwise", prec
    return 0, "other", prec


# ------------------------------------------------------------------ TFLite

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
    total_weights = {"fp32": 0, "fp16": 0, "int8": 0, "other": 0}
    for nbytes, prec in const.values():
        total_weights[prec] += nbytes

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
    if name in _TFL_POOL:
        return 0, "pool", act_prec
    if name in _TFL_NORM:
        return 0, "norm", act_prec
    if name in _TFL_ELEMENTWISE:
        return 0, "elementwise", act_prec
    return 0, "other", act_prec
