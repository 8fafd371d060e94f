"""Reference architectures of the published models, rebuilt as ONNX graphs (random weights)
so that benchmarks/estimate_error.py can read their per-op cost with the same
costmodel.analyze_onnx() that reads a user's model. Timing does not depend on weights."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeops.bench.costmodel import ModelCost, analyze_onnx  # noqa: E402

# ------------------------------------------------------------------ reference architectures

class Net:
    """A tiny ONNX graph builder: NCHW, conv + BN-free bias + activation, shapes tracked."""

    def __init__(self, c, h, w, seed=0):
        from onnx import TensorProto, helper

        self.helper, self.tp = helper, TensorProto
        self.nodes, self.inits, self.shape, self.n = [], [], {"x": (c, h, w)}, 0
        self.rng = np.random.default_rng(seed)

    def _name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def _init(self, shape):
        from onnx import numpy_helper

        name = self._name("w")
        arr = (self.rng.standard_normal(shape, dtype=np.float32) * 0.05)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op, inputs, shape, **attrs):
        out = self._name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        self.shape[out] = shape
        return out

    def act(self, x, kind):
        if kind is None:
            return x
        if kind == "relu":
            return self.node("Relu", [x], self.shape[x])
        if kind == "relu6":
            lo, hi = self._const(0.0), self._const(6.0)
            return self.node("Clip", [x, lo, hi], self.shape[x])
        if kind == "hswish":
            return self.node("HardSwish", [x], self.shape[x])
        if kind == "hsigmoid":
            return self.node("HardSigmoid", [x], self.shape[x], alpha=1 / 6, beta=0.5)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], self.shape[x])
        if kind == "silu":
            return self.mul(x, self.node("Sigmoid", [x], self.shape[x]))
        raise ValueError(kind)

    def _const(self, value):
        from onnx import numpy_helper

        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def conv(self, x, cout, k=1, s=1, g=1, act="relu"):
        c, h, w = self.shape[x]
        p = k // 2
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        y = self.node("Conv", [x, self._init((cout, c // g, k, k)), self._init((cout,))],
                      (cout, oh, ow), kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g)
        return self.act(y, act)

    def dw(self, x, k=3, s=1, act="relu"):
        return self.conv(x, self.shape[x][0], k, s, self.shape[x][0], act)

    def add(self, a, b):
        return self.node("Add", [a, b], self.shape[a])

    def mul(self, a, b):
        return self.node("Mul", [a, b], self.shape[a])

    def pool(self, x, k, s, kind="MaxPool"):
        c, h, w = self.shape[x]
        p = k // 2
        return self.node(kind, [x], (c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1),
                         kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)

    def gap(self, x):
        return self.node("GlobalAveragePool", [x], (self.shape[x][0], 1, 1))

    def fc(self, x, n, act=None):
        c = self.shape[x][0]
        flat = self.node("Flatten", [x], (c, 1, 1))
        y = self.node("Gemm", [flat, self._init((n, c)), self._init((n,))], (n, 1, 1), transB=1)
        return self.act(y, act)

    def concat(self, xs):
        c = sum(self.shape[x][0] for x in xs)
        return self.node("Concat", list(xs), (c, *self.shape[xs[0]][1:]), axis=1)

    def split(self, x, parts):
        c, h, w = self.shape[x]
        outs = [self._name("split") for _ in range(parts)]
        self.nodes.append(self.helper.make_node("Split", [x], outs, axis=1, num_outputs=parts))
        for o in outs:
            self.shape[o] = (c // parts, h, w)
        return outs

    def shuffle(self, x, groups=2):
        c, h, w = self.shape[x]
        s1, s2 = self._shape_const([1, groups, c // groups, h, w]), self._shape_const([1, c, h, w])
        r = self.node("Reshape", [x, s1], (c, h, w))
        t = self.node("Transpose", [r], (c, h, w), perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [t, s2], (c, h, w))

    def _shape_const(self, dims):
        from onnx import numpy_helper

        name = self._name("s")
        self.inits.append(numpy_helper.from_array(np.array(dims, np.int64), name))
        return name

    def upsample(self, x):
        c, h, w = self.shape[x]
        scales = self._const([1.0, 1.0, 2.0, 2.0])
        return self.node("Resize", [x, "", scales], (c, 2 * h, 2 * w), mode="nearest")

    def se(self, x, squeeze, act="relu", gate="hsigmoid"):
        s = self.conv(self.gap(x), squeeze, act=act)
        return self.mul(x, self.conv(s, self.shape[x][0], act=gate))

    def model(self, out):
        h, tp = self.helper, self.tp
        c, hh, ww = self.shape["x"]
        graph = h.make_graph(self.nodes, "ref", [h.make_tensor_value_info("x", tp.FLOAT, ["N", c, hh, ww])],
                             [h.make_tensor_value_info(out, tp.FLOAT, None)], self.inits)
        import onnx

        # shape inference fills in the output's type, which the ONNX checker requires
        return onnx.shape_inference.infer_shapes(
            h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=8))


def _div8(v):
    return max(8, int(v + 4) // 8 * 8)


def mobilenet_v1(n):
    x = n.conv("x", 32, 3, 2)
    for c, s in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]:
        x = n.conv(n.dw(x, 3, s), c)
    return n.fc(n.gap(x), 1000)


def mobilenet_v2(n):
    x = n.conv("x", 32, 3, 2, act="relu6")
    for t, c, reps, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                          (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(reps):
            cin = n.shape[x][0]
            y = n.conv(x, cin * t, act="relu6") if t != 1 else x
            y = n.conv(n.dw(y, 3, s if i == 0 else 1, act="relu6"), c, act=None)
            x = n.add(x, y) if (i and cin == c) else y
    return n.fc(n.gap(n.conv(x, 1280, act="relu6")), 1000)


_V3_LARGE = [(3, 16, 16, 0, "relu", 1), (3, 64, 24, 0, "relu", 2), (3, 72, 24, 0, "relu", 1),
             (5, 72, 40, 1, "relu", 2), (5, 120, 40, 1, "relu", 1), (5, 120, 40, 1, "relu", 1),
             (3, 240, 80, 0, "hswish", 2), (3, 200, 80, 0, "hswish", 1), (3, 184, 80, 0, "hswish", 1),
             (3, 184, 80, 0, "hswish", 1), (3, 480, 112, 1, "hswish", 1), (3, 672, 112, 1, "hswish", 1),
             (5, 672, 160, 1, "hswish", 2), (5, 960, 160, 1, "hswish", 1), (5, 960, 160, 1, "hswish", 1)]
_V3_SMALL = [(3, 16, 16, 1, "relu", 2), (3, 72, 24, 0, "relu", 2), (3, 88, 24, 0, "relu", 1),
             (5, 96, 40, 1, "hswish", 2), (5, 240, 40, 1, "hswish", 1), (5, 240, 40, 1, "hswish", 1),
             (5, 120, 48, 1, "hswish", 1), (5, 144, 48, 1, "hswish", 1), (5, 288, 96, 1, "hswish", 2),
             (5, 576, 96, 1, "hswish", 1), (5, 576, 96, 1, "hswish", 1)]


def mobilenet_v3(n, table, last, hidden):
    x = n.conv("x", 16, 3, 2, act="hswish")
    for k, exp, c, se, a, s in table:
        cin = n.shape[x][0]
        y = n.conv(x, exp, act=a) if exp != cin else x
        y = n.dw(y, k, s, act=a)
        if se:
            y = n.se(y, _div8(exp / 4))
        y = n.conv(y, c, act=None)
        x = n.add(x, y) if (s == 1 and cin == c) else y
    x = n.gap(n.conv(x, last, act="hswish"))
    return n.fc(n.fc(x, hidden, act="hswish"), 1000)


def resnet(n, blocks, bottleneck):
    x = n.pool(n.conv("x", 64, 7, 2), 3, 2)
    for stage, reps in enumerate(blocks):
        width = 64 * 2 ** stage
        for i in range(reps):
            s = 2 if (stage and i == 0) else 1
            out = width * (4 if bottleneck else 1)
            if bottleneck:
                y = n.conv(n.conv(n.conv(x, width), width, 3, s), out, act=None)
            else:
                y = n.conv(n.conv(x, width, 3, s), out, 3, act=None)
            short = n.conv(x, out, 1, s, act=None) if (s != 1 or n.shape[x][0] != out) else x
            x = n.act(n.add(y, short), "relu")
    return n.fc(n.gap(x), 1000)


def googlenet(n):
    x = n.pool(n.conv("x", 64, 7, 2), 3, 2)
    x = n.pool(n.conv(n.conv(x, 64), 192, 3), 3, 2)
    table = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "pool",
             (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
             (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "pool",
             (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]
    for row in table:
        if row == "pool":
            x = n.pool(x, 3, 2)
            continue
        a, b1, b2, c1, c2, p = row  # torchvision uses 3x3 in the "5x5" branch
        x = n.concat([n.conv(x, a), n.conv(n.conv(x, b1), b2, 3), n.conv(n.conv(x, c1), c2, 3),
                      n.conv(n.pool(x, 3, 1), p)])
    return n.fc(n.gap(x), 1000)


def shufflenet_v2(n, widths):
    x = n.pool(n.conv("x", 24, 3, 2), 3, 2)
    for reps, out in zip((4, 8, 4), widths[:3]):
        half = out // 2
        for i in range(reps):
            if i == 0:
                left = n.conv(n.dw(x, 3, 2, act=None), half)
                right = n.conv(n.dw(n.conv(x, half), 3, 2, act=None), half)
            else:
                left, right = n.split(x, 2)
                right = n.conv(n.dw(n.conv(right, half), 3, 1, act=None), half)
            x = n.shuffle(n.concat([left, right]))
    return n.fc(n.gap(n.conv(x, widths[3])), 1000)


def efficientnet_b0(n):
    x = n.conv("x", 32, 3, 2, act="silu")
    for e, k, s, c, reps in [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]:
        for i in range(reps):
            cin = n.shape[x][0]
            y = n.conv(x, cin * e, act="silu") if e != 1 else x
            y = n.dw(y, k, s if i == 0 else 1, act="silu")
            y = n.se(y, max(1, cin // 4), act="silu", gate="sigmoid")
            y = n.conv(y, c, act=None)
            x = n.add(x, y) if (i and cin == c) else y
    return n.fc(n.gap(n.conv(x, 1280, act="silu")), 1000)


def yolo11n(n):
    """Ultralytics YOLO11n (scale n: depth 0.5, width 0.25) at 640, from yolo11.yaml."""
    def cv(x, c, k=1, s=1, g=1, act="silu"):
        return n.conv(x, c, k, s, g, act)

    def bottleneck(x, c, shortcut=True, e=1.0):
        y = cv(cv(x, int(c * e), 3), c, 3)
        return n.add(x, y) if shortcut else y

    def c3k(x, c2, reps=2):
        h = c2 // 2
        a = cv(x, h)
        for _ in range(reps):
            a = bottleneck(a, h)
        return cv(n.concat([a, cv(x, h)]), c2)

    def c3k2(x, c2, use_c3k, e=0.5):
        c = int(c2 * e)
        parts = n.split(cv(x, 2 * c), 2)
        y = c3k(parts[-1], c) if use_c3k else bottleneck(parts[-1], c, e=0.5)
        return cv(n.concat(parts + [y]), c2)

    def sppf(x, c2):
        a = cv(x, n.shape[x][0] // 2)
        p1 = n.pool(a, 5, 1)
        p2 = n.pool(p1, 5, 1)
        return cv(n.concat([a, p1, p2, n.pool(p2, 5, 1)]), c2)

    def c2psa(x):
        c1 = n.shape[x][0]
        c = c1 // 2
        a, b = n.split(cv(x, 2 * c), 2)
        _, h, w = n.shape[b]
        qkv = cv(b, 2 * c, act=None)  # heads=2, key_dim=32: q,k 64 ch each, v 128 ch
        tokens = h * w
        q = n.node("Reshape", [qkv, n._shape_const([1, 2, 128, tokens])], (2 * 128, 1, tokens))
        att = n.node("MatMul", [n.node("Transpose", [q], (2 * 128, 1, tokens), perm=[0, 1, 3, 2]), q],
                     (2 * tokens, tokens, 1))  # (tokens x 128) @ (128 x tokens) ~ q^T k with dk 32..128
        att = n.node("Softmax", [att], n.shape[att], axis=-1)
        v = n.node("MatMul", [q, att], (2 * 128, 1, tokens))
        v = n.node("Reshape", [v, n._shape_const([1, 2 * c, h, w])], (2 * c, h, w))
        b = n.add(n.add(b, cv(v, c, act=None)), n.dw(b, 3, act=None))  # proj(attn) + positional dw
        b = n.add(b, cv(cv(b, 2 * c), c, act=None))
        return cv(n.concat([a, b]), c1)

    x = cv(cv("x", 16, 3, 2), 32, 3, 2)
    x = c3k2(x, 64, False, 0.25)
    p3 = c3k2(cv(x, 64, 3, 2), 128, False, 0.25)
    p4 = c3k2(cv(p3, 128, 3, 2), 128, True)
    p5 = c2psa(sppf(c3k2(cv(p4, 256, 3, 2), 256, True), 256))
    h13 = c3k2(n.concat([n.upsample(p5), p4]), 128, False)
    h16 = c3k2(n.concat([n.upsample(h13), p3]), 64, False)
    h19 = c3k2(n.concat([cv(h16, 64, 3, 2), h13]), 128, False)
    h22 = c3k2(n.concat([cv(h19, 128, 3, 2), p5]), 256, True)
    outs = []
    for f in (h16, h19, h22):
        box = n.conv(cv(cv(f, 64, 3), 64, 3), 64, act=None)
        cls = n.conv(cv(cv(cv(cv(f, n.shape[f][0], 3, g=n.shape[f][0]), 80), 80, 3, g=80), 80), 80, act=None)
        outs.append(n.concat([box, cls]))
    return outs[-1]


ARCHS = {  # key -> (builder, input side)
    "mobilenet_v1": (mobilenet_v1, 224), "mobilenet_v2": (mobilenet_v2, 224),
    "mobilenet_v3_large": (lambda n: mobilenet_v3(n, _V3_LARGE, 960, 1280), 224),
    "mobilenet_v3_small": (lambda n: mobilenet_v3(n, _V3_SMALL, 576, 1024), 224),
    "resnet18": (lambda n: resnet(n, (2, 2, 2, 2), False), 224),
    "resnet50": (lambda n: resnet(n, (3, 4, 6, 3), True), 224),
    "googlenet": (googlenet, 224),
    "shufflenet_v2_x0_5": (lambda n: shufflenet_v2(n, (48, 96, 192, 1024)), 224),
    "shufflenet_v2_x1_0": (lambda n: shufflenet_v2(n, (116, 232, 464, 1024)), 224),
    "shufflenet_v2_x1_5": (lambda n: shufflenet_v2(n, (176, 352, 704, 1024)), 224),
    "shufflenet_v2_x2_0": (lambda n: shufflenet_v2(n, (244, 488, 976, 2048)), 224),
    "efficientnet_b0": (efficientnet_b0, 224),
    "yolo11n": (yolo11n, 640),
}


def build(key: str):
    builder, side = ARCHS[key]
    net = Net(3, side, side)
    return net.model(builder(net))


_COSTS: dict[str, ModelCost] = {}


def reference_cost(key: str) -> ModelCost:
    if key not in _COSTS:
        _COSTS[key] = analyze_onnx(build(key), 1)
    return _COSTS[key]


def with_precision(cost: ModelCost, precision: str) -> ModelCost:
    """The fp32 reference graph as the row's precision ran it: MAC ops in that dtype, fewer bytes."""
    import dataclasses

    if precision == "fp32":
        return cost
    shrink = {"int8": 4, "fp16": 2}[precision]
    ops = tuple(dataclasses.replace(op, dtype=precision, weight_bytes=op.weight_bytes // shrink,
                                    input_bytes=op.input_bytes // shrink,
                                    output_bytes=op.output_bytes // shrink) for op in cost.ops)
    return dataclasses.replace(cost, ops=ops)
