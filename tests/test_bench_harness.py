"""edgeops.bench harness, memory and environment, on real onnxruntime and LiteRT.

No timing assertions: only logic properties (run counts, stop rules, ordering, that 20 MB
of weights are resident). Models are built here: ONNX with onnx.helper, TFLite through
Keras and edgeops' exporter (one TensorFlow import for the whole module).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeops.bench.environment import collect_environment, cpu_model_from_cpuinfo, detect_board
from edgeops.bench.harness import LatencyResult, ThroughputResult, measure_latency, measure_throughput
from edgeops.bench.memory import MemoryResult, _parse_child, measure_memory
from edgeops.errors import DataError, EdgeOpsError, InputFileError, UsageError

# --------------------------------------------------------------------------- models


def _save(graph, path):
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _mlp(path, n_in=16, hidden=32, n_out=4, seed=0):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((n_in, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, n_out)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])], [w1, w2])
    return _save(graph, path)


def _two_inputs(path):
    """ids (int64 [batch, 4]) -> embedding sum, plus dense (float32 [batch, 8])."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(80, dtype=np.float32).reshape(10, 8), "table")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("ReduceSum", ["emb", "axes"], ["pooled"], keepdims=0),
             helper.make_node("Add", ["pooled", "dense"], ["y"])]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4]),
         helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [table, axes])
    return _save(graph, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_models")
    corrupt = d / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf model" * 50)
    return {
        "mlp": _mlp(d / "mlp.onnx"),
        "big": _mlp(d / "big.onnx", n_in=2048, hidden=2560, n_out=4),  # 2048*2560 floats = 21 MB
        "two": _two_inputs(d / "two.onnx"),
        "corrupt": corrupt,
    }


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    from edgeops.keras_source import import_keras
    from edgeops.tflite_export import export_tflite

    keras = import_keras()
    d = tmp_path_factory.mktemp("bench_tflite")
    inp = keras.Input((16,), name="x")
    out = keras.layers.Dense(4, name="y")(keras.layers.Dense(32, activation="relu")(inp))
    keras.Model(inp, out).save(d / "mlp.keras")
    export_tflite(d / "mlp.keras", d / "mlp.tflite", "fp32")
    return d / "mlp.tflite"


def _x(batch=1):
    return {"x": np.random.default_rng(0).standard_normal((batch, 16)).astype(np.float32)}


# --------------------------------------------------------------------------- latency


def test_min_runs_is_honoured_and_first_inference_is_separate(models):
    r = measure_latency(models["mlp"], _x(), threads=1, warmup=0, min_runs=37, min_duration_s=0)
    assert isinstance(r, LatencyResult)
    # with no warm-up and no minimum duration, exactly min_runs are timed: the first run is not among them
    assert r.runs == r.stats.count == len(r.values_ms) == 37
    assert r.first_inference_ms > 0 and r.init_ms > 0
    assert r.format == "onnx" and r.threads == 1 and r.batch_size == 1 and r.warmup == 0
    assert r.stats.min == min(r.values_ms) and r.stats.max == max(r.values_ms)
    assert sum(r.values_ms) / 1e3 <= r.duration_s  # the timed windows lie inside the loop's wall time


def test_min_duration_is_honoured(models):
    r = measure_latency(models["mlp"], _x(), warmup=2, min_runs=1, min_duration_s=0.15)
    assert r.duration_s >= 0.15
    assert r.runs > 1  # one ~0.05 ms run cannot fill 0.15 s


def test_max_runs_caps_both_minimums(models):
    r = measure_latency(models["mlp"], _x(), min_runs=10_000, min_duration_s=60.0, max_runs=25)
    assert r.runs == 25


def test_progress_goes_from_zero_to_one(models):
    seen = []
    measure_latency(models["mlp"], _x(), min_runs=10, min_duration_s=0.35, progress=seen.append)
    assert seen[-1] == 1.0
    assert len(seen) >= 2  # at least one update while running, then the final 1.0
    assert all(0.0 <= f <= 1.0 for f in seen)
    assert seen == sorted(seen)


def test_result_is_frozen_and_json_ready(models):
    r = measure_latency(models["mlp"], _x(batch=4), min_runs=5, min_duration_s=0)
    assert r.batch_size == 4
    with pytest.raises(AttributeError):
        r.init_ms = 0.0  # type: ignore[misc]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["runs"] == 5 and len(d["values_ms"]) == 5 and d["stats"]["count"] == 5
    assert "values_ms" not in r.to_dict(include_values=False)


def test_tflite_runs_through_the_same_harness(tflite_model):
    r = measure_latency(tflite_model, _x(), threads=1, warmup=1, min_runs=20, min_duration_s=0)
    assert r.format == "tflite" and r.runs == 20 and r.first_inference_ms > 0


def test_int64_and_two_inputs(models):
    feeds = {"ids": np.array([[1, 2, 3, 4]], dtype=np.int64), "dense": np.ones((1, 8), np.float32)}
    r = measure_latency(models["two"], feeds, min_runs=5, min_duration_s=0)
    assert r.runs == 5 and r.batch_size == 1


@pytest.mark.parametrize("kwargs", [{"min_runs": 0}, {"warmup": -1}, {"max_runs": 0},
                                    {"threads": 0}, {"min_duration_s": -1.0}, {"min_runs": 2.5}])
def test_bad_options_are_usage_errors(models, kwargs):
    with pytest.raises(UsageError):
        measure_latency(models["mlp"], _x(), **kwargs)


def test_wrong_inputs_and_bad_files_are_clean_errors(models, tmp_path):
    with pytest.raises(DataError):
        measure_latency(models["mlp"], {"nope": np.ones((1, 16), np.float32)}, min_runs=1, min_duration_s=0)
    with pytest.raises(InputFileError):
        measure_latency(models["corrupt"], _x(), min_runs=1, min_duration_s=0)
    with pytest.raises(InputFileError):
        measure_latency(tmp_path / "missing.onnx", _x())
    with pytest.raises(UsageError):
        measure_latency(models["mlp"], {})


# --------------------------------------------------------------------------- throughput


def test_throughput_shape_and_arithmetic(models):
    res = measure_throughput(models["mlp"], _x, batch_sizes=(1, 4), concurrency=(1, 2), threads=1, duration_s=0.1)
    assert [(r.batch, r.concurrency) for r in res] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    for r in res:
        assert isinstance(r, ThroughputResult)
        assert r.runs >= 1 and r.elapsed_s >= 0.1 and r.threads == 1
        assert r.samples_per_s == pytest.approx(r.batch * r.runs / r.elapsed_s)
        assert r.requests_per_s == pytest.approx(r.runs / r.elapsed_s)
        assert r.p50_ms > 0
        assert json.loads(json.dumps(r.to_dict()))["batch"] == r.batch


def test_throughput_tflite_resizes_per_batch_and_uses_separate_interpreters(tflite_model):
    res = measure_throughput(tflite_model, _x, batch_sizes=(1, 3), concurrency=(2,), threads=1, duration_s=0.1)
    assert [(r.batch, r.concurrency) for r in res] == [(1, 2), (3, 2)]
    assert all(r.runs >= 2 and r.samples_per_s == pytest.approx(r.batch * r.requests_per_s) for r in res)


def test_throughput_errors(models):
    with pytest.raises(UsageError):
        measure_throughput(models["mlp"], _x, batch_sizes=())
    with pytest.raises(UsageError):
        measure_throughput(models["mlp"], _x, concurrency=(0,))
    with pytest.raises(DataError):  # a batch the model rejects is the runtime's clean error
        measure_throughput(models["mlp"], lambda b: {"x": np.ones((b, 3), np.float32)}, duration_s=0.05)


# --------------------------------------------------------------------------- memory (child process)


def test_memory_bigger_weights_show_up(models):
    tiny = measure_memory(models["mlp"], None, threads=1, runs=3)
    big = measure_memory(models["big"], None, threads=1, runs=3)
    for m in (tiny, big):
        assert isinstance(m, MemoryResult)
        assert m.peak_rss_mb >= m.baseline_rss_mb > 0
        assert m.model_rss_mb == pytest.approx(m.peak_rss_mb - m.baseline_rss_mb)
        assert m.format == "onnx" and m.runs == 3
    assert big.size_bytes == models["big"].stat().st_size > 20_000_000
    assert big.model_rss_mb > tiny.model_rss_mb + 10  # 20 MB of weights must be resident
    assert json.loads(json.dumps(big.to_dict()))["size_bytes"] == big.size_bytes


def test_memory_feeds_int64_two_inputs_and_npz(models, tmp_path):
    feeds = {"ids": np.array([[0, 1, 2, 9]] * 2, dtype=np.int64), "dense": np.zeros((2, 8), np.float32)}
    m = measure_memory(models["two"], feeds, runs=2)
    assert m.peak_rss_mb >= m.baseline_rss_mb
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **feeds)
    assert measure_memory(models["two"], npz, runs=1).format == "onnx"
    with pytest.raises(DataError):  # the child's DataError comes back as the same class
        measure_memory(models["two"], {"ids": feeds["ids"]}, runs=1)


def test_memory_generated_inputs_with_shapes(models):
    m = measure_memory(models["mlp"], None, runs=1, input_shapes={"x": (3, 16)})
    assert m.peak_rss_mb >= m.baseline_rss_mb


def test_memory_tflite(tflite_model):
    m = measure_memory(tflite_model, {"x": np.ones((1, 16), np.float32)}, threads=1, runs=2)
    assert m.format == "tflite" and m.peak_rss_mb >= m.baseline_rss_mb


def test_memory_corrupt_model_is_a_clean_error(models, tmp_path):
    with pytest.raises(InputFileError, match="cannot load"):
        measure_memory(models["corrupt"], None)
    with pytest.raises(InputFileError):
        measure_memory(tmp_path / "missing.onnx", None)
    with pytest.raises(UsageError):
        measure_memory(models["mlp"], None, runs=0)


def test_crashed_child_reports_its_last_stderr_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.stderr.write('warming up\\nSegmentation fault in kernel X\\n');"
                               "sys.exit(139)"], capture_output=True, text=True)
    with pytest.raises(EdgeOpsError, match="Segmentation fault in kernel X") as info:
        _parse_child(proc, tmp_path / "m.onnx")
    assert "exit code 139" in str(info.value) and info.value.hint


def test_memory_child_imports_no_framework(models):
    # the child's baseline must hold numpy + one runtime, never TensorFlow, torch or scikit-learn
    code = ("import sys; sys.argv = ['m', sys.argv[1], '--runs', '1'];"
            "import edgeops.bench.memory as m; m.main(sys.argv[1:]);"
            "bad = [x for x in ('tensorflow', 'torch', 'sklearn', 'onnx') if x in sys.modules];"
            "print('HEAVY', bad)")
    out = subprocess.run([sys.executable, "-c", code, str(models["mlp"])], capture_output=True, text=True).stdout
    assert "HEAVY []" in out, out


# --------------------------------------------------------------------------- environment


def test_environment_has_every_key_and_is_json():
    env = collect_environment()
    keys = {"board", "cpu_model", "machine", "logical_cores", "usable_cores", "cpu_governor",
            "cpu_cur_freq_mhz", "cpu_max_freq_mhz", "throttled", "thermal_zones_c", "total_ram_mb",
            "os", "python", "python_implementation", "packages"}
    assert keys <= set(env)
    assert set(env["packages"]) == {"numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime", "onnx", "edgeops"}
    assert env["packages"]["numpy"] == np.__version__
    assert env["logical_cores"] >= 1 and env["python"].count(".") == 2
    assert json.loads(json.dumps(env)) == env


def test_detect_board_override(monkeypatch):
    """$EDGEOPS_BOARD stands in for a hidden device tree; it wins and is stripped."""
    monkeypatch.setenv("EDGEOPS_BOARD", "  Raspberry Pi 5 Model B Rev 1.0 ")
    assert detect_board() == "Raspberry Pi 5 Model B Rev 1.0"
    assert collect_environment()["board"] == "Raspberry Pi 5 Model B Rev 1.0"


def test_cpu_model_from_cpuinfo():
    pi4 = ("processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
           "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    assert cpu_model_from_cpuinfo(pi4, "Raspberry Pi 4 Model B Rev 1.4") == \
        "Cortex-A72 (Raspberry Pi 4 Model B Rev 1.4)"
    assert cpu_model_from_cpuinfo("model name\t: Intel(R) Xeon(R) CPU\nflags : avx\n") == "Intel(R) Xeon(R) CPU"
    assert cpu_model_from_cpuinfo("", "Some Board") == "Some Board"
    assert cpu_model_from_cpuinfo("") is None
