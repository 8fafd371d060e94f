"""Start-up time of the `edgeops` command, against bare Python references in the same run.

    python benchmarks/startup_time.py [--repeat 10] [--json FILE]

Each command runs --repeat times, interleaved round by round so that machine noise hits all of
them alike; the median wall time is reported with its ratio to the reference:

  python -c pass                       the interpreter alone
  edgeops --version / --help           CLI start-up (must not import any framework)
  python -c 'import onnxruntime; load + run a tiny model'   the bare runtime doing one inference
  edgeops benchmark tiny.onnx (1 run)  the same job through the CLI (+ environment, report)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_model(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny.onnx"
        tiny_model(model)
        bare = (f"import numpy as np, onnxruntime as ort; s = ort.InferenceSession({str(model)!r}, "
                "providers=['CPUExecutionProvider']); s.run(None, {'x': np.ones((1, 8), np.float32)})")
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "edgeops --version": [py, "-m", "edgeops.cli.main", "--version"],
            "edgeops --help": [py, "-m", "edgeops.cli.main", "--help"],
            "bare onnxruntime: load + 1 run": [py, "-c", bare],
            "edgeops benchmark (1 run, no memory)": [py, "-m", "edgeops.cli.main", "benchmark", str(model), "--runs",
                                                     "1", "--duration", "0", "--warmup", "0", "--no-memory"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    sys.exit(f"{name} failed: {proc.stderr[-500:]}")
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    refs = {"edgeops --version": "python -c pass", "edgeops --help": "python -c pass",
            "edgeops benchmark (1 run, no memory)": "bare onnxruntime: load + 1 run"}
    print(f"{'command':40s} {'median ms':>10s}  ratio to reference")
    rows = []
    for name, ms in med.items():
        ref = refs.get(name)
        ratio = ms / med[ref] if ref else None
        rows.append({"command": name, "median_ms": ms, "reference": ref, "ratio": ratio})
        print(f"{name:40s} {ms:10.1f}  " + (f"{ratio:.2f}x {ref}" if ref else "(reference)"))
    if args.json:
        args.json.write_text(json.dumps({"repeat": args.repeat, "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
