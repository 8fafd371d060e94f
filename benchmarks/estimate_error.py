"""How wrong is the latency estimator? Leave-one-out on published on-device measurements.

    python benchmarks/estimate_error.py                   # fit, leave-one-out, print the error table
    python benchmarks/estimate_error.py --json out.json   # the same, plus every row, as JSON
    python benchmarks/estimate_error.py --write           # also write devices/calibration/fitted.yaml
    python benchmarks/estimate_error.py --measure-host    # measure runtime memory/overheads here first
    python benchmarks/estimate_error.py --host-blend      # measure whether the host-ratio correction helps
    python benchmarks/estimate_error.py --host-from out.json  # reuse the host measurements of a --json run

Rows: benchmarks/calibration/published.yaml rows with MACs and a CPU runtime (GPU rows, the
ambiguous Orin onnxruntime row and the end-to-end camera row are left out). The published rows
have no model file, so each model is rebuilt here as an ONNX graph of the reference
architecture (random weights: timing does not depend on them) and read by the same
costmodel.analyze_onnx() that reads a user's model. The fitter minimizes the squared log
error of edgeops.bench.estimate.predict_arrays() over the rows, with each factor pulled
toward a prior (so that a factor with one row behind it cannot swing to fit noise); the
leave-one-out loop refits without each row and predicts it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeops.bench import estimate as est  # noqa: E402
from edgeops.profiles import load_profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_archs import Net, build, reference_cost, with_precision  # noqa: E402

PUBLISHED = ROOT / "benchmarks" / "calibration" / "published.yaml"
FITTED = ROOT / "devices" / "calibration" / "fitted.yaml"


# ------------------------------------------------------------------ published rows

def model_key(name: str) -> str | None:
    low = name.lower()
    table = [("mobilenetv3-large", "mobilenet_v3_large"), ("mobilenetv3-small", "mobilenet_v3_small"),
             ("mobilenetv2", "mobilenet_v2"), ("mobilenetv1", "mobilenet_v1"), ("resnet-18", "resnet18"),
             ("resnet-50", "resnet50"), ("googlenet", "googlenet"), ("efficientnet-b0", "efficientnet_b0"),
             ("yolo11n", "yolo11n"), ("shufflenetv2 x0.5", "shufflenet_v2_x0_5"),
             ("shufflenetv2 x1.5", "shufflenet_v2_x1_5"), ("shufflenetv2 x2.0", "shufflenet_v2_x2_0"),
             ("shufflenetv2", "shufflenet_v2_x1_0")]
    for needle, key in table:
        if needle in low.replace(" 1.0", "") or needle in low:
            return key
    return None


def runtime_family(runtime: str) -> str | None:
    r = runtime.lower()
    if "gpu" in r or "tensorrt" in r or "vulkan" in r or "ambiguous" in r:
        return None
    for needle, family in (("qnnpack", "pytorch-qnnpack"), ("pytorch", "pytorch"), ("xnnpack", "litert"),
                           ("tflite", "litert"), ("onnxruntime", "onnxruntime"), ("ncnn", "ncnn"),
                           ("openvino", "openvino"), ("mnn", "mnn")):
        if needle in r:
            return family
    return None


def row_clock(row: dict, profile) -> float:
    """The clock the row ran at, where its notes say (overclocks, 1.5 GHz B0 boards)."""
    notes = (row.get("notes") or "") + " " + (row.get("source_quote_or_location") or "")
    if row["board"] == "rpi4" and "1950" in notes:
        return 1950.0
    if row["board"] == "rpi5" and ("2.9 GHz" in notes or "OVERCLOCKED to 2.9" in notes):
        return 2900.0
    if row["board"] == "rpi4" and any(s in notes for s in ("1500 MHz", "1.5GHz", "1.5 GHz", "BCM2711B0")):
        return 1500.0
    if row["board"] == "jetson-orin-nano" and "Super" in notes:
        return 1700.0
    return float(profile.cpu.clock_mhz)


def load_rows() -> list[dict]:
    import yaml

    rows = yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))["rows"]
    out = []
    for index, row in enumerate(rows):
        family = runtime_family(row["runtime"])
        key = model_key(row["model"])
        if family is None or key is None or row.get("macs_m") is None or "end-to-end" in row["model"]:
            continue
        profile = load_profile(row["board"])
        precision = row["precision"].split()[0]
        precision = "fp16" if precision.startswith("fp16") else precision
        if family == "ncnn" and profile.cpu.fp16_arithmetic:
            precision = "fp16"  # ncnn turns on fp16 arithmetic by itself on ARMv8.2 (README caveat 6)
        out.append({
            "index": index, "board": row["board"], "model": row["model"], "key": key, "family": family,
            "precision": precision, "threads": row["threads"] or profile.cpu.cores,
            "clock_mhz": row_clock(row, profile), "latency_ms": float(row["latency_ms"]),
            "macs_m": row["macs_m"], "statistic": row["statistic"], "profile": profile,
        })
    return out


# ------------------------------------------------------------------ parameters and fit

# (path in the factors dict, prior, sigma of log(value/prior)). Priors: README roofline notes
# and caveats (dense conv ~40% of peak on ncnn, depthwise nets ~half that, XNNPACK int8 2-3x on
# ARMv8.0, ncnn fp16 on ARMv8.2), not fitted numbers.
PARAMS = [
    (("class_efficiency", "conv"), 0.45, 1.0),
    (("class_efficiency", "depthwise_conv"), 0.25, 1.0),
    (("class_efficiency", "matmul"), 0.45, 0.5),
    (("bandwidth_efficiency",), 1.0, 0.7),
    (("core_efficiency", "Cortex-A53"), 1.0, 0.4),
    (("core_efficiency", "Cortex-A57"), 1.0, 0.4),
    (("core_efficiency", "Cortex-A76"), 1.0, 0.4),
    (("core_efficiency", "Cortex-A78"), 1.0, 0.4),
    (("runtime_efficiency", "litert"), 0.8, 1.0),
    (("runtime_efficiency", "pytorch-qnnpack"), 0.8, 1.0),
    (("runtime_efficiency", "onnxruntime"), 0.6, 0.7),
    (("runtime_efficiency", "openvino"), 1.0, 1.0),
    (("runtime_efficiency", "mnn"), 0.8, 1.0),
    (("runtime_efficiency", "pytorch"), 0.3, 1.0),
    (("serial_fraction", "ncnn"), 0.15, 0.7),
    (("serial_fraction", "litert"), 0.25, 0.7),
    (("serial_fraction", "default"), 0.25, 0.7),
    (("int8_speedup", "no_dot", "ncnn"), 1.5, 0.5),
    (("int8_speedup", "no_dot", "litert"), 2.2, 0.3),
    (("fp16_speedup", "fp16", "ncnn"), 1.6, 0.3),
    (("winograd_speedup", "ncnn"), 1.5, 0.5),
    (("dispatch_cycles", "pytorch-qnnpack"), 50000.0, 1.0),
    (("dispatch_cycles", "ncnn"), 3000.0, 1.0),
]

FIXED = {  # not fitted: no published row can tell them apart from the fitted ones
    "runtime_efficiency": {"ncnn": 1.0, "default": 0.6},
    "core_efficiency": {"Cortex-A72": 1.0, "default": 1.0},
    "int8_speedup": {
        # no published int8 rows on dot-product CPUs: 4x the MACs per instruction (SDOT/VNNI vs
        # fp32 FMA) realised at about half, as XNNPACK/ruy report for ARMv8.2
        "dot": {"litert": 2.5, "onnxruntime": 2.0, "default": 2.0},
        # onnxruntime's int8 on ARMv8.0 (no SDOT) runs no faster than fp32 (ENVIRONMENT.md)
        "no_dot": {"onnxruntime": 1.0, "pytorch-qnnpack": 1.0, "default": 1.0},
    },
    "fp16_speedup": {"fp16": {"onnxruntime": 1.0, "litert": 1.0, "default": 1.0},
                     "no_fp16": {"default": 1.0}},
    # onnxruntime (MLAS) and XNNPACK run 3x3 convs as GEMMs; ncnn and MNN use Winograd
    "winograd_speedup": {"onnxruntime": 1.0, "litert": 1.0, "mnn": 1.5, "default": 1.0},
}


def factors_from(theta, base: dict) -> dict:
    import copy

    out = copy.deepcopy(base)
    f = out["factors"]
    for (path, _, _), value in zip(PARAMS, theta):
        node = f
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = float(value)
    return out


def base_factors(host: dict | None) -> dict:
    """Everything but the fitted numbers: CPU tables, bandwidths, host-measured overheads."""
    import copy

    current = est.load_factors(FITTED) if FITTED.is_file() else {}
    f = copy.deepcopy(FIXED)
    for key in ("class_efficiency", "serial_fraction"):
        f.setdefault(key, {})
    measured = host or current.get("host_measured") or DEFAULT_HOST
    f["dispatch_cycles"] = {**measured["dispatch_cycles"], "default": measured["dispatch_cycles"]["litert"]}
    f["call_cycles"] = {**measured["call_cycles"], "default": measured["call_cycles"]["onnxruntime"]}
    return {
        "cores": CORES, "scalar_ipc": SCALAR_IPC, "boards": BOARDS, "defaults": DEFAULTS,
        "factors": f, "memory": measured["memory"], "host_measured": measured,
        "host_blend": current.get("host_blend", {"alpha": 0.5, "evaluated": False}),
        "band": {"log_ratio_p10": -0.5, "log_ratio_p90": 0.5}, "fit": {"rows": 0, "band_from": "prior"},
    }


# fp32 MACs per cycle per core: FMA pipes x 128-bit lanes (INFERRED from Arm's core
# descriptions, as in benchmarks/calibration/README.md "Per-board facts").
CORES = {"Cortex-A53": 2.0, "Cortex-A55": 2.0, "Cortex-A57": 4.0, "Cortex-A72": 4.0, "Cortex-A73": 4.0,
         "Cortex-A76": 8.0, "Cortex-A77": 8.0, "Cortex-A78": 8.0, "Cortex-X1": 16.0, "Neoverse-N1": 8.0}
# Scalar speed per cycle relative to a recent x86 core, for runtime dispatch overheads measured
# here (INFERRED from published SPECint-per-GHz ratios; rough).
SCALAR_IPC = {"Cortex-A53": 0.3, "Cortex-A55": 0.35, "Cortex-A57": 0.45, "Cortex-A72": 0.5,
              "Cortex-A73": 0.5, "Cortex-A76": 0.75, "Cortex-A78": 0.8, "default": 1.0}
# Effective DRAM traffic in GB/s: 2x the measured single-thread memcpy (a copy reads and
# writes every byte), README "Per-board facts"; Orin Nano has no measurement (INFERRED).
BOARDS = {
    "rpi4": {"bandwidth_gbps": 5.0, "source": "sbc-bench memcpy 2,240-2,780 MB/s [S1] x2"},
    "rpi5": {"bandwidth_gbps": 11.5, "source": "tinymembench C copy 5,557-6,155 MB/s [S4] x2"},
    "rpi-zero-2w": {"bandwidth_gbps": 2.6, "source": "sbc-bench memcpy 1,300 MB/s [S1] x2"},
    "jetson-nano": {"bandwidth_gbps": 7.4, "source": "sbc-bench memcpy 3,680-3,730 MB/s [S1] x2"},
    "jetson-orin-nano": {"bandwidth_gbps": 15.0, "source": "INFERRED: no measurement found"},
}
DEFAULTS = {"clock_mhz": {"aarch64": 1500, "x86_64": 2500},
            "bandwidth_gbps": {"aarch64": 5.0, "x86_64": 20.0}}
DEFAULT_HOST = {  # replaced by --measure-host
    "dispatch_cycles": {"onnxruntime": 10000.0, "litert": 3000.0},
    "call_cycles": {"onnxruntime": 50000.0, "litert": 30000.0},
    "memory": {"onnxruntime": {"baseline_mb": 60.0, "weight_factor": 2.0, "activation_factor": 1.5},
               "litert": {"baseline_mb": 40.0, "weight_factor": 1.0, "activation_factor": 1.5}},
}


def prepare(rows: list[dict], base: dict) -> None:
    for row in rows:
        cost = with_precision(reference_cost(row["key"]), row["precision"])
        row["arrays"] = est.op_arrays(cost)
        row["ref_macs_m"] = reference_cost(row["key"]).macs / 1e6
        board = est.board_facts(row["profile"], base, clock_mhz=row["clock_mhz"])
        row["facts"] = board


def predict_row(row: dict, factors: dict) -> float:
    return est.predict_arrays(row["arrays"], row["facts"], row["family"], row["threads"], factors)[0]


def fit(rows: list[dict], base: dict) -> np.ndarray:
    from scipy.optimize import least_squares

    priors = np.array([p for _, p, _ in PARAMS])
    sigmas = np.array([s for _, _, s in PARAMS])
    meas = np.log([r["latency_ms"] for r in rows])
    weights = np.array([0.5 if r["statistic"] != "mean" else 1.0 for r in rows])

    def residuals(z):
        theta = np.exp(z)
        factors = factors_from(theta, base)
        pred = np.log([predict_row(r, factors) for r in rows])
        return np.concatenate([(pred - meas) * weights, (z - np.log(priors)) / sigmas])

    z0 = np.log(priors)
    upper = np.full(len(PARAMS), np.inf)
    for i, (path, _, _) in enumerate(PARAMS):
        if path[0] in ("serial_fraction", "class_efficiency"):
            upper[i] = 0.0  # fractions of peak and serial fractions stay <= 1
    result = least_squares(residuals, z0, bounds=(np.full(len(PARAMS), -np.inf), upper), x_scale=1.0)
    return np.exp(result.x)


def loo(rows: list[dict], base: dict) -> list[float]:
    preds = []
    for i in range(len(rows)):
        theta = fit(rows[:i] + rows[i + 1:], base)
        preds.append(predict_row(rows[i], factors_from(theta, base)))
    return preds


def naive_loo(rows: list[dict]) -> list[float]:
    """The baseline to beat: MACs / (median MAC/s of the board's other rows, any runtime)."""
    preds = []
    for i, row in enumerate(rows):
        rates = [r["macs_m"] / r["latency_ms"] for j, r in enumerate(rows) if j != i and r["board"] == row["board"]]
        rates = rates or [r["macs_m"] / r["latency_ms"] for j, r in enumerate(rows) if j != i]
        preds.append(row["macs_m"] / statistics.median(rates))
    return preds


def summarize(rows: list[dict], preds: list[float]) -> dict:
    def stats(sel):
        err = [abs(p / r["latency_ms"] - 1) * 100 for r, p in sel]
        return {"rows": len(err), "median_abs_pct": round(statistics.median(err), 1),
                "p90_abs_pct": round(float(np.percentile(err, 90)), 1)} if err else {"rows": 0}

    pairs = list(zip(rows, preds))
    out = {"overall": stats(pairs), "by_board": {}, "by_runtime": {}}
    for key, group in (("by_board", "board"), ("by_runtime", "family")):
        for value in sorted({r[group] for r in rows}):
            out[key][value] = stats([(r, p) for r, p in pairs if r[group] == value])
    logs = [math.log(r["latency_ms"] / p) for r, p in pairs]
    out["log_ratio_p10"], out["log_ratio_p90"] = float(np.percentile(logs, 10)), float(np.percentile(logs, 90))
    out["log_ratio_median"] = float(np.median(logs))
    return out


# ------------------------------------------------------------------ host measurements

_RSS_CHILD = r"""
import json, sys, numpy as np
path, kind = sys.argv[1], sys.argv[2]
if kind == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    x = np.random.rand(*shape).astype(np.float32)
    for _ in range(3): s.run(None, {i.name: x})
else:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1); it.allocate_tensors()
    d = it.get_input_details()[0]
    for _ in range(3):
        it.set_tensor(d["index"], np.random.rand(*d["shape"]).astype(d["dtype"])); it.invoke()
# VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's peak
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"peak_mb": int(hwm.split()[1]) / 1024}))
"""


def _peak_rss(path: Path, runtime: str) -> float:
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), runtime], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def _chain_onnx(n_ops: int, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    one = numpy_helper.from_array(np.ones((1, 8), np.float32), "one")
    nodes, x = [], "x"
    for i in range(n_ops):
        nodes.append(helper.make_node("Add", [x, "one"], [f"a{i}"]))
        x = f"a{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8])], [one])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _time_ort(path: Path, threads: int, runs: int = 200) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # keep the Add chain
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    x = np.random.rand(*[d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
    for _ in range(5):
        s.run(None, {i.name: x})
    ts = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        s.run(None, {i.name: x})
        ts.append(time.perf_counter_ns() - t)
    return float(np.median(ts)) / 1e6


def _keras_tflite(build, path: Path) -> None:
    import contextlib
    import io

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints every captured tensor
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(build(tf)).convert())


def _time_tflite(path: Path, threads: int, runs: int = 200) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.rand(*d["shape"]).astype(d["dtype"]))
    for _ in range(5):
        it.invoke()
    ts = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        it.set_tensor(d["index"], np.random.rand(*d["shape"]).astype(d["dtype"]))
        it.invoke()
        it.get_tensor(it.get_output_details()[0]["index"])
        ts.append(time.perf_counter_ns() - t)
    return float(np.median(ts)) / 1e6


def measure_host(base: dict) -> dict:
    """Runtime overheads and memory on this machine (numbers go into fitted.yaml host_measured)."""
    import onnx

    hb = est.host_facts(base)
    cycles_per_ms = hb.clock_mhz * 1e3
    out: dict = {"machine": f"{hb.core} x{hb.cores} @ {hb.clock_mhz:.0f} MHz", "dispatch_cycles": {},
                 "call_cycles": {}, "memory": {}, "rss_points": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _chain_onnx(1, tmp / "c1.onnx")
        _chain_onnx(201, tmp / "c201.onnx")
        t1, t201 = _time_ort(tmp / "c1.onnx", 1), _time_ort(tmp / "c201.onnx", 1)
        out["dispatch_cycles"]["onnxruntime"] = round((t201 - t1) / 200 * cycles_per_ms)
        out["call_cycles"]["onnxruntime"] = round(t1 * cycles_per_ms)

        def chain(n_ops):
            def make(tf):
                inp = tf.keras.Input((8,), batch_size=1)
                x = inp
                for i in range(n_ops):
                    x = tf.keras.layers.Lambda(lambda v, i=i: v * 1.001 + float(i))(x)
                return tf.keras.Model(inp, x)
            return make
        _keras_tflite(chain(1), tmp / "c1.tflite")
        _keras_tflite(chain(101), tmp / "c101.tflite")
        l1, l101 = _time_tflite(tmp / "c1.tflite", 1), _time_tflite(tmp / "c101.tflite", 1)
        from edgeops.bench.costmodel import analyze
        n1, n101 = len(analyze(tmp / "c1.tflite").ops), len(analyze(tmp / "c101.tflite").ops)
        out["dispatch_cycles"]["litert"] = round((l101 - l1) / max(n101 - n1, 1) * cycles_per_ms)
        out["call_cycles"]["litert"] = round(l1 * cycles_per_ms)

        # memory: peak RSS of a child process that loads and runs the model, against the
        # costmodel's weight and peak-activation bytes; least squares for the two factors
        ort_models = {"chain": tmp / "c1.onnx"}
        for key in ("mobilenet_v2", "resnet18", "efficientnet_b0"):
            onnx.save(build(key), str(tmp / f"{key}.onnx"))
            ort_models[key] = tmp / f"{key}.onnx"
        # large activations, few weights: tells the activation factor from the weight factor
        wide = Net(3, 512, 512)
        onnx.save(wide.model(wide.gap(wide.conv(wide.conv(wide.conv("x", 16, 3), 16, 3), 16, 3))),
                  str(tmp / "wide.onnx"))
        ort_models["wide"] = tmp / "wide.onnx"
        lite_models = {"chain": tmp / "c1.tflite"}

        def wide_keras(tf):
            inp = tf.keras.Input((512, 512, 3), batch_size=1)
            x = inp
            for _ in range(3):
                x = tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
            return tf.keras.Model(inp, tf.keras.layers.GlobalAveragePooling2D()(x))
        apps = {"wide": wide_keras,
                "mobilenet_v2": lambda tf: tf.keras.applications.MobileNetV2(weights=None),
                "resnet50": lambda tf: tf.keras.applications.ResNet50(weights=None),
                "efficientnet_b0": lambda tf: tf.keras.applications.EfficientNetB0(weights=None)}
        for key, make in apps.items():
            _keras_tflite(make, tmp / f"{key}.tflite")
            lite_models[key] = tmp / f"{key}.tflite"
        for runtime, models in (("onnxruntime", ort_models), ("litert", lite_models)):
            points = []
            for key, path in models.items():
                cost = analyze(path)
                points.append((key, _peak_rss(path, runtime), cost.weight_bytes / 2**20,
                               cost.peak_activation_bytes / 2**20))
            out["rss_points"] += [{"runtime": runtime, "model": k, "peak_rss_mb": round(r, 1),
                                   "weights_mb": round(w, 2), "activations_mb": round(a, 2)}
                                  for k, r, w, a in points]
            base_mb = points[0][1]
            A = np.array([[w, a] for _, _, w, a in points[1:]])
            y = np.array([r - base_mb for _, r, _, _ in points[1:]])
            from scipy.optimize import nnls
            coef, _ = nnls(A, y)
            out["memory"][runtime] = {"baseline_mb": round(base_mb, 1), "weight_factor": round(float(coef[0]), 2),
                                      "activation_factor": round(float(coef[1]), 2)}
        # the same architectures on the two runtimes here (one thread): how far apart are they
        out["speed_ms"] = {
            "onnxruntime_mobilenet_v2": round(_time_ort(ort_models["mobilenet_v2"], 1, 30), 2),
            "litert_mobilenet_v2": round(_time_tflite(lite_models["mobilenet_v2"], 1, 30), 2),
            "onnxruntime_efficientnet_b0": round(_time_ort(ort_models["efficientnet_b0"], 1, 30), 2),
            "litert_efficientnet_b0": round(_time_tflite(lite_models["efficientnet_b0"], 1, 30), 2),
        }
    return out


def host_blend(rows: list[dict], factors: dict, loo_preds: list[float], threads: int = 2) -> dict:
    """Does scaling by (measured/estimated on this host)^alpha reduce the leave-one-out error?

    Each reference model runs here with onnxruntime (its p50 over 20 runs); its host estimate
    uses the fitted onnxruntime factors and this CPU's facts.
    """
    import onnx

    hb = est.host_facts(factors)
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in sorted({r["key"] for r in rows}):
            path = Path(tmp) / f"{key}.onnx"
            onnx.save(build(key), str(path))
            measured = _time_ort(path, threads, runs=20)
            predicted = est.predict(reference_cost(key), hb, "onnxruntime", threads, factors)[0]
            ratios[key] = {"measured_ms": round(measured, 2), "estimated_ms": round(predicted, 2),
                           "ratio": measured / predicted}
            print(f"  host {key}: measured {measured:.1f} ms, estimated {predicted:.1f} ms", flush=True)
    # The ratios share a machine-wide offset (the fitted factors are for ARM boards, not this
    # x86 host); only a model's ratio relative to the typical one is model-specific.
    center = float(np.median([math.log(v["ratio"]) for v in ratios.values()]))
    out = {"host": f"{hb.core} @ {hb.clock_mhz:.0f} MHz, onnxruntime, {threads} threads",
           "log_ratio_median": center, "models": ratios, "by_alpha": {}, "by_alpha_runtime": {}}
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        preds = [p * (ratios[r["key"]]["ratio"] / math.exp(center)) ** alpha for r, p in zip(rows, loo_preds)]
        s = summarize(rows, preds)
        out["by_alpha"][str(alpha)] = s["overall"]
        out["by_alpha_runtime"][str(alpha)] = s["by_runtime"]
    return out


# ------------------------------------------------------------------ main

def write_fitted(base: dict, theta, summary: dict, rows: list[dict], blend: dict | None) -> None:
    import yaml

    factors = factors_from(theta, base)
    factors["band"] = {"log_ratio_p10": round(summary["log_ratio_p10"], 3),
                       "log_ratio_p90": round(summary["log_ratio_p90"], 3)}
    factors["fit"] = {"rows": len(rows), "band_from": "leave-one-out on published rows",
                      "loo_overall": summary["overall"], "source": "benchmarks/calibration/published.yaml",
                      "command": "python benchmarks/estimate_error.py " + " ".join(sys.argv[1:])}
    if blend is not None:
        # estimate() always compares the same runtime on host and device, so alpha is chosen on
        # the device rows of the host's runtime (onnxruntime), damped to at most 0.5: there is
        # one such row. Rows of other runtimes are reported, not used (their kernels differ).
        same = {a: v.get("onnxruntime", {}).get("median_abs_pct") for a, v in blend["by_alpha_runtime"].items()}
        usable = {a: e for a, e in same.items() if e is not None and float(a) <= 0.5}
        best = min(usable, key=usable.get) if usable else "0.0"
        factors["host_blend"] = {
            "alpha": float(best), "evaluated": True, "chosen_on": "onnxruntime device rows",
            "by_alpha": blend["by_alpha"], "onnxruntime_rows_by_alpha": same,
            # estimate() divides a host ratio by this machine-wide offset, measured here
            "log_ratio_center": {"onnxruntime": round(blend["log_ratio_median"], 3)},
            "measured_on": blend["host"]}
    factors = _rounded(factors)

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    header = ("# Fitted factors of the latency/memory estimator (edgeops/bench/estimate.py).\n"
              "# Written by: python benchmarks/estimate_error.py --write -- do not edit by hand;\n"
              "# the method and the provenance of every number are in docs/benchmark-estimate.md.\n")
    FITTED.parent.mkdir(parents=True, exist_ok=True)
    FITTED.write_text(header + yaml.dump(factors, Dumper=NoAliases, sort_keys=False, width=100),
                      encoding="utf-8")


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the summary and every row here")
    ap.add_argument("--write", action="store_true", help="write devices/calibration/fitted.yaml")
    ap.add_argument("--measure-host", action="store_true", help="measure runtime overheads/memory here")
    ap.add_argument("--host-blend", action="store_true", help="evaluate the host-ratio correction")
    ap.add_argument("--host-from", type=Path, help="host measurements saved by an earlier --json run")
    args = ap.parse_args(argv)

    host = None
    if args.host_from:
        doc = json.loads(args.host_from.read_text(encoding="utf-8"))
        host = doc.get("host_measured") or doc
    if args.measure_host:
        print("measuring runtime overheads and memory on this machine ...", flush=True)
        host = measure_host(base_factors(None))
        print(json.dumps({k: v for k, v in host.items() if k != "rss_points"}, indent=1))
    base = base_factors(host)
    rows = load_rows()
    prepare(rows, base)
    t0 = time.time()
    theta = fit(rows, base)
    print(f"fitted {len(PARAMS)} factors on {len(rows)} rows in {time.time() - t0:.1f} s", flush=True)
    preds = loo(rows, base)
    summary = summarize(rows, preds)
    summary["naive_baseline"] = summarize(rows, naive_loo(rows))["overall"]
    full = factors_from(theta, base)
    blend = host_blend(rows, full, preds) if args.host_blend else None

    print(f"\n{'row':>4} {'board':<17}{'runtime':<16}{'model':<42}{'prec':<5}{'thr':>4}"
          f"{'MACs ref/pub':>14}{'measured':>10}{'LOO est':>10}{'err%':>7}")
    for r, p in zip(rows, preds):
        print(f"{r['index']:>4} {r['board']:<17}{r['family']:<16}{r['model'][:41]:<42}{r['precision']:<5}"
              f"{r['threads']:>4}{r['ref_macs_m']:>8.0f}/{r['macs_m']:<5}{r['latency_ms']:>10.1f}{p:>10.1f}"
              f"{(p / r['latency_ms'] - 1) * 100:>+7.0f}")
    print("\nleave-one-out absolute % error (median / p90, rows):")
    print(f"  overall: {summary['overall']}")
    for key in ("by_board", "by_runtime"):
        for name, s in summary[key].items():
            print(f"  {name:<18} {s}")
    print(f"  naive baseline (MACs / median MAC/s of the board's other rows): {summary['naive_baseline']}")
    print(f"  log(measured/estimated) p10 {summary['log_ratio_p10']:+.3f}, median "
          f"{summary['log_ratio_median']:+.3f}, p90 {summary['log_ratio_p90']:+.3f}")
    print("\nfitted factors (all rows):")
    for (path, prior, _), value in zip(PARAMS, theta):
        print(f"  {'.'.join(path):<40} {value:8.3f}  (prior {prior})")
    if blend:
        print("\nhost blend (device estimate x (host measured/estimated)^alpha), LOO error:")
        for alpha, s in blend["by_alpha"].items():
            print(f"  alpha {alpha}: {s}")
    if args.write:
        write_fitted(base, theta, summary, rows, blend)
        print(f"\nwrote {FITTED.relative_to(ROOT)}")
    if args.json:
        doc = {"summary": summary, "factors": full["factors"], "host_blend": blend, "host_measured": host,
               "rows": [{k: v for k, v in r.items() if k not in ("arrays", "facts", "profile")} | {"loo_estimate_ms": p}
                        for r, p in zip(rows, preds)]}
        args.json.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
