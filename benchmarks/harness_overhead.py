"""How much does edgeops' latency harness add to what it measures?

For each model (an MLP and a small CNN in ONNX, and the MLP again in TFLite), on the same
input and the same thread count, three loops are timed the same way (perf_counter_ns
around each call, the garbage collector paused, as the harness does):

  bare     the runtime's own API: onnxruntime ``sess.run`` / LiteRT set_tensor+invoke+get_tensor
  wrapper  a plain loop over edgeops' ``Runtime.run`` (adds the outputs-dict conversion)
  harness  ``edgeops.bench.harness.measure_latency`` (wrapper + the harness loop)

They run interleaved, in several rounds, each round in a different order, to cancel drift
(other processes, frequency changes). Reported: the median over rounds of each loop's p50,
and, as medians over rounds of the per-round ratios, harness/bare (the target is <= 1.03),
wrapper/bare (what Runtime.run costs) and harness/wrapper (what the harness loop costs).

    python benchmarks/harness_overhead.py [--rounds 5] [--duration 1.0] [--threads 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeops.bench.environment import collect_environment
from edgeops.bench.harness import measure_latency
from edgeops.runtime import open_runtime

TARGET = 1.03


# --------------------------------------------------------------------------- models


def build_mlp_onnx(path: Path, dims=(256, 512, 512, 10), seed=0) -> list[np.ndarray]:
    """MatMul+Relu layers without bias; returns the weights for the TFLite twin."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(dims, dims[1:])]
    nodes, inits, prev = [], [], "x"
    for i, w in enumerate(weights):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        if i == len(weights) - 1:
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], ["y"]))
        else:
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weights


def build_cnn_onnx(path: Path, seed=1) -> None:
    """Conv(3->16) Relu Conv(16->32, s2) Relu Conv(32->64, s2) Relu GlobalAveragePool Flatten Gemm(->10),
    on 1x3x64x64: a small image classifier, several times the MLP's latency."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    channels = (3, 16, 32, 64)
    inits, nodes, prev = [], [], "x"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        inits += [init(f"c{i}w", (cout, cin, 3, 3), 1 / np.sqrt(9 * cin)), init(f"c{i}b", (cout,), 0.1)]
        nodes += [helper.make_node("Conv", [prev, f"c{i}w", f"c{i}b"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   strides=[1, 1] if i == 0 else [2, 2]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    inits += [init("fw", (channels[-1], 10), 0.2), init("fb", (10,), 0.1)]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_mlp_tflite(path: Path, weights: list[np.ndarray], workdir: Path) -> bool:
    """The same MLP (same weights) through Keras and edgeops' TFLite exporter; False without TF."""
    try:
        from edgeops.keras_source import import_keras
        from edgeops.tflite_export import export_tflite

        keras = import_keras()
    except Exception as exc:  # the TFLite row is optional: say why it is missing and go on
        print(f"skipping TFLite: {exc}", file=sys.stderr)
        return False
    inp = keras.Input((weights[0].shape[0],), name="x")
    h = inp
    for i, w in enumerate(weights):
        last = i == len(weights) - 1
        layer = keras.layers.Dense(w.shape[1], use_bias=False, activation=None if last else "relu",
                                   name="y" if last else f"d{i}")
        h = layer(h)
        layer.set_weights([w])
    keras.Model(inp, h).save(workdir / "mlp.keras")
    export_tflite(workdir / "mlp.keras", path, "fp32")
    return True


# --------------------------------------------------------------------------- loops


def _timed(call, warmup: int, min_runs: int, min_ns: int) -> list[int]:
    """The same stop rule and timing as the harness, around an arbitrary call."""
    clock = time.perf_counter_ns
    was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(1 + warmup):
            call()
        values = []
        append = values.append
        start = clock()
        while True:
            t0 = clock()
            call()
            t1 = clock()
            append(t1 - t0)
            if len(values) >= min_runs and t1 - start >= min_ns:
                return values
    finally:
        if was:
            gc.enable()


def bare_p50(path: Path, feeds: dict, threads: int, warmup: int, min_runs: int, min_ns: int) -> float:
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        run = sess.run

        def call():
            run(None, feeds)
    else:
        from edgeops.runtime.tflite import load_interpreter_class

        interp = load_interpreter_class()(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
        (inp,), out = interp.get_input_details(), interp.get_output_details()
        index, x = inp["index"], feeds[inp["name"]]
        outs = [d["index"] for d in out]
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor

        def call():
            set_tensor(index, x)
            invoke()
            for o in outs:
                get_tensor(o)
    return float(np.median(_timed(call, warmup, min_runs, min_ns))) / 1e6


def wrapper_p50(path: Path, feeds: dict, threads: int, warmup: int, min_runs: int, min_ns: int) -> float:
    run = open_runtime(path, threads).run
    return float(np.median(_timed(lambda: run(feeds), warmup, min_runs, min_ns))) / 1e6


def harness_p50(path: Path, feeds: dict, threads: int, warmup: int, min_runs: int, min_ns: int) -> float:
    return measure_latency(path, feeds, threads=threads, warmup=warmup, min_runs=min_runs,
                           min_duration_s=min_ns / 1e9).stats.p50


LOOPS = {"bare": bare_p50, "wrapper": wrapper_p50, "harness": harness_p50}


def compare(path: Path, feeds: dict, threads: int, rounds: int, duration_s: float) -> dict:
    p50s: dict[str, list[float]] = {name: [] for name in LOOPS}
    order = list(LOOPS)
    for r in range(rounds):
        # rotate the order every round so that no loop always runs first (or right after another)
        names = order[r % len(order):] + order[:r % len(order)]
        if r % 2:
            names.reverse()
        for name in names:
            p50s[name].append(LOOPS[name](path, feeds, threads, 20, 200, int(duration_s * 1e9)))
    med = {name: statistics.median(v) for name, v in p50s.items()}

    def paired(a: str, b: str) -> float:
        # loops of one round ran seconds apart: their ratio cancels slow drift, the median over
        # rounds drops the rounds that another process disturbed
        return statistics.median(x / y for x, y in zip(p50s[a], p50s[b]))

    return {
        "model": path.name,
        "p50_ms_by_round": p50s,
        "median_p50_ms": med,
        "min_p50_ms": {name: min(v) for name, v in p50s.items()},
        "harness_over_bare": paired("harness", "bare"),
        "wrapper_over_bare": paired("wrapper", "bare"),
        "harness_over_wrapper": paired("harness", "wrapper"),
        "wrapper_cost_us": statistics.median(w - b for w, b in zip(p50s["wrapper"], p50s["bare"])) * 1e3,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--duration", type=float, default=0.4, help="seconds per loop per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-tflite", action="store_true", help="skip the TFLite model (no TensorFlow import)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="edgeops-overhead-") as tmp:
        work = Path(tmp)
        weights = build_mlp_onnx(work / "mlp.onnx")
        build_cnn_onnx(work / "cnn.onnx")
        x_mlp = rng.standard_normal((1, weights[0].shape[0])).astype(np.float32)
        cases = [(work / "mlp.onnx", {"x": x_mlp}),
                 (work / "cnn.onnx", {"x": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)})]
        if not args.no_tflite and build_mlp_tflite(work / "mlp.tflite", weights, work):
            cases.append((work / "mlp.tflite", {"x": x_mlp}))

        results = []
        print(f"{'model':<12} {'bare p50 ms':>12} {'wrapper':>10} {'harness':>10} "
              f"{'harness/bare':>13} {'wrapper/bare':>13} {'harness/wrapper':>16} {'wrapper cost':>13}")
        for path, feeds in cases:
            res = compare(path, feeds, args.threads, args.rounds, args.duration)
            results.append(res)
            m = res["median_p50_ms"]
            flag = "ok" if res["harness_over_bare"] <= TARGET else "over target"
            print(f"{res['model']:<12} {m['bare']:>12.4f} {m['wrapper']:>10.4f} {m['harness']:>10.4f} "
                  f"{res['harness_over_bare']:>13.3f} {res['wrapper_over_bare']:>13.3f} "
                  f"{res['harness_over_wrapper']:>16.3f} {res['wrapper_cost_us']:>10.2f} us  {flag}")

    report = {"target_ratio": TARGET, "threads": args.threads, "rounds": args.rounds,
              "duration_s": args.duration, "results": results, "environment": collect_environment()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
