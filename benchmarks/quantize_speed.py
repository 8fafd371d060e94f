"""int8 / fp16 against fp32 in onnxruntime: size, latency and accuracy, measured in one run.

Two models are trained here on scikit-learn's digits (8x8 images of 0-9, 1797 rows):
  cnn  PyTorch conv(1->32)-pool-conv(32->64)-pool-fc(4096->128)-fc(10) on the digits
       upsampled to 32x32, exported with the legacy exporter (opset as torch gives it)
  mlp  scikit-learn MLPClassifier(512, 256) on the 64 pixels, converted with skl2onnx
Each is quantized with edgeops.quantize() in every mode (dynamic int8, static int8 with
200 calibration rows, fp16) -- which also runs the accuracy gate on the 597 held-out
rows, so each variant's accuracy comes from the same call that made it. Two extra variants
(EXTRA below) show why edgeops picks uint8 activations on x86 and uint8 Conv weights in
dynamic mode.

Latency: one onnxruntime session per variant and thread count (1 and 2), warm-up runs,
then timed runs of one batch, interleaved across the variants in rounds (so drift from
other processes hits every variant alike) until each has >= 200 runs and >= 2 s. Reported:
p50 per variant, speed-up = fp32 p50 / variant p50. Numbers hold for this CPU only: the
int8 kernels differ per CPU (VNNI on x86, dot-product on ARM), see docs/quantization.md.

    python benchmarks/quantize_speed.py [--json FILE] [--min-runs 200] [--min-seconds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("fp32", "dynamic", "int8", "fp16")
# Two variants edgeops does not write by default, kept here because they justify its choices:
#   int8-s8act   static int8 with int8 activations (what edgeops uses for ARM profiles);
#                on x86 edgeops uses uint8 activations
#   dyn-s8conv   dynamic with int8 Conv weights (onnxruntime's default); edgeops uses uint8
#                for Conv weights because ConvInteger's int8 path is slow
EXTRA = ("int8-s8act", "dyn-s8conv")


def digits_data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return X[:1200], y[:1200], X[1200:], y[1200:]


def build_mlp(work: Path):
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    X, y, Xt, yt = digits_data()
    clf = MLPClassifier((512, 256), max_iter=200, random_state=0).fit(X, y)
    path = work / "mlp.onnx"
    path.write_bytes(to_onnx(clf, X[:1], options={"zipmap": False}).SerializeToString())
    return path, X[:200], Xt, yt


def build_cnn(work: Path):
    import torch

    torch.manual_seed(0)
    X, y, Xt, yt = digits_data()
    up = lambda a: np.kron(a.reshape(-1, 1, 8, 8), np.ones((1, 1, 4, 4), np.float32))  # 32x32 images
    X, Xt = up(X), up(Xt)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 8 * 8, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    xs, ys = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(6):
        for i in torch.randperm(len(xs)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xs[i]), ys[i]).backward()
            opt.step()
    path = work / "cnn.onnx"
    torch.onnx.export(net.eval(), xs[:1], str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return path, X[:200], Xt, yt


def make_variants(name: str, model: Path, cal: np.ndarray, xt: np.ndarray, yt: np.ndarray, work: Path):
    """{mode: (path, size, gate dict)} with fp32 = the model itself."""
    from edgeops.quantize import quantize

    cal_path, eval_path = work / f"{name}_cal.npy", work / f"{name}_eval.npz"
    np.save(cal_path, cal)
    np.savez(eval_path, **{_input_name(model): xt, "labels": yt})
    variants = {"fp32": (model, model.stat().st_size, None)}
    for mode in MODES[1:]:
        out = work / f"{name}-{mode}.onnx"
        # max_drop=100: measure every variant, whatever its accuracy
        result = quantize(model, mode, out, calibration=cal_path, eval_data=eval_path, max_drop=100.0)
        variants[mode] = (out, result.size_after, result.gate.to_dict())
    result = quantize(model, "int8", work / f"{name}-int8-s8act.onnx", calibration=cal_path,
                      eval_data=eval_path, max_drop=100.0, profile="rpi4")  # ARM: QInt8 activations
    variants["int8-s8act"] = (result.output.path, result.size_after, result.gate.to_dict())
    if any(n.op_type == "Conv" for n in _load(model).graph.node):
        variants["dyn-s8conv"] = _dynamic_all_s8(model, work / f"{name}-dyn-s8conv.onnx", xt, yt)
    # the float model's accuracy is the gate's "before"
    variants["fp32"] = (model, result.size_before, {**result.gate.to_dict(), "after": result.gate.before,
                                                    "drop_points": 0.0})
    return variants


def _dynamic_all_s8(model: Path, out: Path, xt: np.ndarray, yt: np.ndarray):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgeops.gate import evaluate_gate
    from edgeops.runtime import open_runtime

    quantize_dynamic(str(model), str(out), weight_type=QuantType.QInt8)
    gate = evaluate_gate(open_runtime(model), open_runtime(out), {_input_name(model): xt}, yt, 100.0)
    return out, out.stat().st_size, gate.to_dict()


def _load(model: Path):
    import onnx

    return onnx.load(str(model))


def _input_name(model: Path) -> str:
    return _load(model).graph.input[0].name


def measure(paths: dict[str, Path], feeds: dict[str, np.ndarray], threads: int, min_runs: int,
            min_seconds: float, warmup: int = 30, chunk: int = 25) -> dict[str, dict]:
    """p50/p90 latency per variant, interleaved in rounds of ``chunk`` runs."""
    import onnxruntime as ort

    sessions = {}
    for mode, path in paths.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            sess.run(None, feeds)
        sessions[mode] = sess
    times: dict[str, list[float]] = {m: [] for m in sessions}
    spent = {m: 0.0 for m in sessions}
    while any(len(times[m]) < min_runs or spent[m] < min_seconds for m in sessions):
        for mode, sess in sessions.items():
            for _ in range(chunk):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                dt = time.perf_counter() - t0
                times[mode].append(dt)
                spent[mode] += dt
    return {m: {"p50_ms": 1e3 * float(np.percentile(t, 50)), "p90_ms": 1e3 * float(np.percentile(t, 90)),
                "runs": len(t)} for m, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--min-runs", type=int, default=200)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    # batch 1 is the edge case (one camera frame / one sensor reading); a batch of 64 rows
    # shows the MLP where compute, not per-call overhead, dominates
    batches = {"cnn": [1], "mlp": [1, 64]}

    import onnxruntime

    rows, models = [], {}
    with tempfile.TemporaryDirectory(prefix="edgeops-qbench-") as tmp:
        work = Path(tmp)
        for name, build in (("cnn", build_cnn), ("mlp", build_mlp)):
            print(f"building and quantizing {name} ...", file=sys.stderr)
            model, cal, xt, yt = build(work)
            variants = make_variants(name, model, cal, xt, yt, work)
            models[name] = {m: {"size_bytes": s, "gate": g} for m, (_, s, g) in variants.items()}
            for batch in batches[name]:
                feeds = {_input_name(model): xt[:batch]}
                for t in threads:
                    print(f"  timing {name} batch {batch}, {t} thread(s) ...", file=sys.stderr)
                    lat = measure({m: p for m, (p, _, _) in variants.items()}, feeds, t,
                                  args.min_runs, args.min_seconds)
                    base = lat["fp32"]["p50_ms"]
                    for mode in [m for m in MODES + EXTRA if m in variants]:
                        size, gate = variants[mode][1], variants[mode][2]
                        rows.append({
                            "model": name, "mode": mode, "batch": batch, "threads": t,
                            "size_bytes": size, "size_ratio": size / variants["fp32"][1],
                            **lat[mode], "speedup": base / lat[mode]["p50_ms"],
                            "accuracy": gate["after"], "accuracy_drop_points": gate["drop_points"],
                        })
    result = {"benchmark": "quantize_speed", "onnxruntime": onnxruntime.__version__,
              "environment": _environment(), "min_runs": args.min_runs, "min_seconds": args.min_seconds,
              "rows": rows, "models": models}
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _environment() -> dict:
    try:
        from edgeops.bench.environment import collect_environment

        env = collect_environment()
    except ImportError:
        import platform

        env = {"machine": platform.machine(), "logical_cores": os.cpu_count()}
    env["load_average"] = os.getloadavg()
    return env


def _print_table(rows: list[dict]) -> None:
    header = ("model", "variant", "batch", "thr", "size", "x fp32", "p50 ms", "speed-up", "acc %", "drop")
    print(" | ".join(f"{h:>10}" for h in header))
    for r in rows:
        cells = (r["model"], r["mode"], r["batch"], r["threads"], f"{r['size_bytes'] / 1024:.0f}K",
                 f"{r['size_ratio']:.2f}", f"{r['p50_ms']:.3f}", f"{r['speedup']:.2f}",
                 f"{r['accuracy']:.2f}", f"{r['accuracy_drop_points']:+.2f}")
        print(" | ".join(f"{c:>10}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
