"""Cost model (MACs, bytes, liveness) and the device latency/memory estimator."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeops.bench.calibration import load_calibrations, save_calibration  # noqa: E402
from edgeops.bench.costmodel import analyze, analyze_onnx  # noqa: E402
from edgeops.bench.estimate import (HostMeasurement, estimate, host_facts,  # noqa: E402
                                    load_factors)
from edgeops.errors import DataError, EdgeOpsError  # noqa: E402
from edgeops.profiles import CpuSpec, load_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def _init(name, shape, dtype=np.float32):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.1).astype(dtype), name)


def conv_gemm_model(opset=17):
    """x[N,3,32,32] -> Conv 3->16 k3 pad 1 -> Relu -> Flatten -> Gemm 16384->10."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "G", "GB"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [_init("W", (16, 3, 3, 3)), _init("B", (16,)), _init("G", (10, 16 * 32 * 32)), _init("GB", (10,))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def cnn_model(width, depth=3, side=32, dtype=np.float32, opset=17):
    """A small conv net whose MACs grow with width**2 (inner convs)."""
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes, inits, x, cin = [], [], "x", 3
    for i in range(depth):
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        inits.append(_init(f"w{i}", (width, cin, 3, 3), dtype))
        x, cin = f"r{i}", width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["p"]))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", elem, [1, 3, side, side])],
                              [helper.make_tensor_value_info("p", elem, [1, width, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp_model(hidden=256, inputs=64):
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [_init("W1", (inputs, hidden)), _init("W2", (hidden, 4))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save(model, path):
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("estimate")
    return {
        "small": save(cnn_model(16), d / "small.onnx"),
        "big": save(cnn_model(32), d / "big.onnx"),
        "conv_gemm": save(conv_gemm_model(), d / "conv_gemm.onnx"),
        "opset22": save(cnn_model(16, opset=22), d / "opset22.onnx"),
        "fp16": save(cnn_model(16, dtype=np.float16), d / "fp16.onnx"),
        "mlp": save(mlp_model(), d / "mlp.onnx"),
        "huge": save(mlp_model(hidden=8192, inputs=4096), d / "huge.onnx"),
        "dir": d,
    }


@pytest.fixture(scope="module")
def int8_model(models):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = models["dir"] / "mlp_int8.onnx"
    quantize_dynamic(str(models["mlp"]), str(out), weight_type=QuantType.QInt8)
    return out


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    pytest.importorskip("tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    inp = tf.keras.Input((32, 32, 3), batch_size=None)
    x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(10)(x)
    path = tmp_path_factory.mktemp("tfl") / "m.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out)).convert())
    return path


# ------------------------------------------------------------------ cost model

def test_conv_gemm_macs_bytes_and_liveness():
    cost = analyze_onnx(conv_gemm_model(), batch=1)
    conv_macs, gemm_macs = 16 * 3 * 9 * 32 * 32, 16 * 32 * 32 * 10
    assert [op.op_type for op in cost.ops] == ["Conv", "Flatten", "Gemm"]  # Relu fused into Conv
    assert cost.ops[0].macs == conv_macs and cost.ops[0].op_class == "conv" and cost.ops[0].winograd
    assert cost.ops[2].macs == gemm_macs and cost.ops[2].op_class == "matmul"
    assert cost.macs == conv_macs + gemm_macs
    assert cost.ops[0].weight_bytes == (16 * 27 + 16) * 4
    assert cost.ops[0].input_bytes == 3 * 32 * 32 * 4 and cost.ops[0].output_bytes == 16 * 32 * 32 * 4
    # input + conv output live together; Flatten is a view of the conv output
    assert cost.peak_activation_bytes == (3 + 16) * 32 * 32 * 4
    assert cost.weight_bytes == (16 * 27 + 16 + 10 * 16384 + 10) * 4
    assert cost.precision == "fp32" and cost.opset == 17
    batch4 = analyze_onnx(conv_gemm_model(), batch=4)
    assert batch4.macs == 4 * cost.macs
    assert batch4.peak_activation_bytes == 4 * cost.peak_activation_bytes


def test_depthwise_and_int8_classes(int8_model):
    dw = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=8, pads=[1, 1, 1, 1], strides=[2, 2])], "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [_init("W", (8, 1, 3, 3))])
    cost = analyze_onnx(helper.make_model(dw, opset_imports=[helper.make_opsetid("", 17)]))
    assert cost.ops[0].op_class == "depthwise_conv" and cost.macs == 8 * 8 * 8 * 9
    assert not cost.ops[0].winograd  # stride 2
    q = analyze(int8_model)
    assert q.precision == "int8" and q.weight_dtype == "int8"
    assert q.macs == analyze_onnx(mlp_model()).macs == 64 * 256 + 256 * 4


def test_tflite_macs_match_hand_count(tflite_model):
    cost = analyze(tflite_model, batch=2)
    by_type = {op.op_type: op for op in cost.ops}
    assert by_type["CONV_2D"].macs == 2 * 16 * 27 * 32 * 32
    assert by_type["DEPTHWISE_CONV_2D"].macs == 2 * 16 * 9 * 32 * 32
    assert by_type["DEPTHWISE_CONV_2D"].op_class == "depthwise_conv"
    assert by_type["FULLY_CONNECTED"].macs == 2 * 16 * 10
    assert by_type["MEAN"].op_class == "pool" and by_type["MEAN"].macs == 0
    assert cost.format == "tflite" and cost.precision == "fp32"
    assert cost.weight_bytes >= (16 * 27 + 16 * 9 + 160) * 4
    assert cost.peak_activation_bytes == 2 * 2 * 16 * 32 * 32 * 4  # conv out + depthwise out


def test_reference_architectures_match_published_macs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import estimate_error
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert estimate_error.reference_cost("mobilenet_v2").macs / 1e6 == pytest.approx(300, rel=0.01)
    assert estimate_error.reference_cost("resnet18").macs / 1e6 == pytest.approx(1814, rel=0.01)


# ------------------------------------------------------------------ estimate()

def test_estimate_band_and_dict(models):
    e = estimate(models["small"], "rpi4")
    assert 0 < e.low_ms <= e.p50_ms <= e.high_ms
    assert e.low_ms < e.high_ms
    d = e.to_dict()
    assert set(d["latency_ms"]) == {"p50", "low", "high"}
    assert d["peak_rss_mb"] > 0 and d["method"] and isinstance(d["warnings"], list)
    assert sum(d["per_class_ms"].values()) == pytest.approx(e.p50_ms)
    assert d["runtime"] == "onnxruntime" and d["threads"] == 4  # onnxruntime default: all cores
    assert d["calibration"]["local_rows"] == 0 and d["calibration"]["published_rows"] > 20
    json.dumps(d)


def test_estimate_scales_with_macs(models):
    small, big = analyze(models["small"]), analyze(models["big"])
    assert big.macs > 3.5 * small.macs
    t_small = estimate(models["small"], "rpi4").p50_ms
    t_big = estimate(models["big"], "rpi4").p50_ms
    assert t_big > 2 * t_small


def test_faster_boards_estimate_faster(models):
    t = {name: estimate(models["big"], name, threads=4).p50_ms for name in ("rpi5", "rpi4", "rpi-zero-2w")}
    assert t["rpi5"] < t["rpi4"] < t["rpi-zero-2w"]
    assert estimate(models["big"], "rpi4", threads=1).p50_ms > t["rpi4"]


def test_int8_warning_only_without_dot_product(int8_model):
    rpi4 = estimate(int8_model, "rpi4")
    rpi5 = estimate(int8_model, "rpi5")
    assert any("int8" in w and "dot-product" in w for w in rpi4.warnings)
    assert not any("dot-product" in w for w in rpi5.warnings)


def test_no_runtime_warning(tflite_model, models, tmp_path):
    nano = estimate(tflite_model, "jetson-nano")
    assert nano.runtime == "litert" and nano.threads == 1
    assert any("lists no LiteRT" in w for w in nano.warnings)
    assert not any("lists no" in w for w in estimate(tflite_model, "rpi4").warnings)
    text = (ROOT / "devices" / "rpi4.yaml").read_text().replace("name: rpi4", "name: no-ort")
    start = text.index("  onnxruntime:")
    end = text.index("  litert:")
    own = tmp_path / "no-ort.yaml"
    own.write_text(text[:start] + "  onnxruntime: null\n" + text[end:])
    e = estimate(models["small"], load_profile(own))
    assert any("lists no onnxruntime" in w for w in e.warnings)


def test_opset_fp16_and_ram_warnings(models):
    newer = estimate(models["opset22"], "rpi4")
    assert any("opset 22 > 21" in w and "--device rpi4" in w for w in newer.warnings)
    assert not any("opset" in w for w in estimate(models["small"], "rpi4").warnings)
    assert any("fp16 weights" in w for w in estimate(models["fp16"], "rpi4").warnings)
    assert not any("fp16 weights" in w for w in estimate(models["fp16"], "rpi5").warnings)
    huge = estimate(models["huge"], "rpi-zero-2w")  # 128 MB of fp32 weights, 128 MB budget
    assert huge.peak_rss_mb > 128 + load_factors()["memory"]["onnxruntime"]["baseline_mb"]
    assert any("over rpi-zero-2w's budget" in w for w in huge.warnings)
    assert not any("budget" in w for w in estimate(models["small"], "rpi-zero-2w").warnings)


def test_host_measurement_moves_estimate(models):
    # an ARM host (a board used as the host): no x86 offset applies to its ratio
    cpu = CpuSpec(arch="aarch64", model="Cortex-A72", cores=4, clock_mhz=1500, int8_dot_product=False,
                  fp16_arithmetic=False, simd=("asimd",))
    plain = estimate(models["big"], "rpi4")
    slow = estimate(models["big"], "rpi4", host=HostMeasurement(p50_ms=1e9, threads=2, cpu=cpu))
    info = slow.calibration
    assert info["host_ratio"] == 8.0  # clipped
    assert slow.p50_ms == pytest.approx(plain.p50_ms * 8.0 ** info["host_alpha"])
    host_est = info["host_estimate_ms"]
    same = estimate(models["big"], "rpi4", host=HostMeasurement(p50_ms=host_est, threads=2, cpu=cpu))
    assert same.p50_ms == pytest.approx(plain.p50_ms)
    assert host_facts(load_factors()).cores >= 1  # this machine, from /proc/cpuinfo


# ------------------------------------------------------------------ calibration

def test_calibration_save_load_moves_estimate(models, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPS_HOME", str(tmp_path / "home"))
    before = estimate(models["small"], "rpi4")
    path = save_calibration("rpi4", models["small"], {"p50_ms": 2 * before.p50_ms, "threads": 4,
                                                       "device": "lab pi"})
    assert path == tmp_path / "home" / "calibration" / "rpi4.jsonl"
    rows = load_calibrations("rpi4")
    assert len(rows) == 1 and rows[0]["device"] == "lab pi" and rows[0]["runtime"] == "onnxruntime"
    assert rows[0]["estimated_ms"] == pytest.approx(before.p50_ms)
    after = estimate(models["small"], "rpi4")
    assert before.p50_ms * 1.2 < after.p50_ms <= 2 * before.p50_ms
    assert after.calibration["local_rows"] == 1
    # other profiles and other runtimes are not moved
    assert estimate(models["small"], "rpi5").calibration["local_rows"] == 0
    save_calibration("rpi4", models["small"], {"p50_ms": 2 * before.p50_ms, "threads": 4})
    again = estimate(models["small"], "rpi4")
    assert again.p50_ms > after.p50_ms and again.calibration["local_rows"] == 2
    own = tmp_path / "own.jsonl"
    save_calibration("rpi4", models["small"], {"p50_ms": before.p50_ms / 2}, path=own)
    assert estimate(models["small"], "rpi4", calibration_path=own).p50_ms < before.p50_ms


def test_bad_inputs_are_user_errors(models, tmp_path):
    with pytest.raises(DataError):
        save_calibration("rpi4", models["small"], {"p50_ms": -1}, path=tmp_path / "x.jsonl")
    with pytest.raises(EdgeOpsError):
        estimate(models["small"], "rpi4", threads=0)
    with pytest.raises(EdgeOpsError):
        estimate(models["small"], "rpi4", batch=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_calibrations("rpi4", path=bad)


def test_macs_after_a_scikit_learn_scaler(tmp_path):
    """ONNX shape inference stops at ai.onnx.ml ops; the MLP behind a StandardScaler still counts."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from edgeops.bench.costmodel import analyze

    X, y = load_digits(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=50)).fit(X[:300], y[:300])
    path = tmp_path / "pipe.onnx"
    path.write_bytes(to_onnx(pipe, X[:1].astype("float32"), options={"zipmap": False}).SerializeToString())
    cost = analyze(path)
    assert cost.macs == 64 * 32 + 32 * 10 and not cost.notes
