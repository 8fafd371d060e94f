"""`edgeops benchmark`: JSON schema, verdicts and exit codes, on tiny real models."""
from __future__ import annotations

import json
from importlib import resources

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeops.bench.verdict import judge
from edgeops.profiles import load_profile

from helpers import assert_clean_error, run_cli

FAST = ["--runs", "20", "--duration", "0.05", "--warmup", "2"]


def _mlp(path, batch="N", width=16):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, width)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _two_inputs_int64(path):
    """A float input with a dynamic sequence length and an int64 scalar."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "kf"], ["y"])], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return {"mlp": _mlp(d / "mlp.onnx"), "two": _two_inputs_int64(d / "two.onnx"), "dir": d}


def _schema():
    return json.loads(resources.files("edgeops.bench").joinpath("schema.json").read_text())


def test_json_report_follows_schema(models, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("benchmark", models["mlp"], "--device", "rpi4", *FAST, "--batch-sizes", "1,4",
                   "--json", out, "--markdown", tmp_path / "r.md", "--plot", tmp_path / "r.png")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    jsonschema.validate(report, _schema())
    r = report["results"][0]
    assert r["format"] == "onnx" and r["precision"] == "fp32" and r["latency_ms"]["runs"] >= 20
    lat = r["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert [t["batch"] for t in r["throughput"]] == [1, 4]
    assert r["peak_rss_mb"] > 0 and r["threads"] >= 1
    assert r["estimate"] is not None and r["estimate"]["latency_ms"]["low"] <= r["estimate"]["latency_ms"]["high"]
    assert {c["budget"] for c in r["verdict"]["checks"]} == {"latency_ms", "ram_mb", "model_size_mb"}
    assert report["environment"]["packages"]["onnxruntime"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mlp.onnx |" in (tmp_path / "r.md").read_text()
    assert "mlp.onnx" in proc.stderr  # the table


def test_failed_budget_exits_8_and_still_writes_the_report(models, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("benchmark", models["mlp"], "--device", "rpi4", *FAST, "--no-memory",
                   "--size-budget", "0.0001", "--json", out)
    assert_clean_error(proc, 8, "model size")
    report = json.loads(out.read_text())
    assert report["pass"] is False
    assert any("model size" in f for f in report["results"][0]["verdict"]["failures"])


def test_generous_budget_passes(models):
    proc = run_cli("benchmark", models["mlp"], "--device", "rpi5", *FAST, "--no-memory",
                   "--latency-budget", "100000", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pass"] is True


def test_int64_scalar_and_dynamic_dims(models, tmp_path):
    proc = run_cli("benchmark", models["two"], *FAST, "--no-memory")
    assert_clean_error(proc, 2, "input 'x'", "--input-shape x=", "--inputs FILE")
    proc = run_cli("benchmark", models["two"], *FAST, "--no-memory", "--input-shape", "x=2,5", "--json", "-")
    assert proc.returncode == 0, proc.stderr  # the int64 scalar k is generated
    assert json.loads(proc.stdout)["results"][0]["batch"] == 2
    np.savez(tmp_path / "in.npz", x=np.ones((3, 7), np.float32), k=np.array(2, np.int64))
    proc = run_cli("benchmark", models["two"], *FAST, "--no-memory", "--inputs", tmp_path / "in.npz", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["batch"] == 3


def test_usage_errors(models, tmp_path):
    assert_clean_error(run_cli("benchmark", models["mlp"], "--device", "no-such-board"), 2, "rpi4")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage")
    assert_clean_error(run_cli("benchmark", tmp_path / "bad.onnx", *FAST), 3, "bad.onnx")
    np.save(tmp_path / "x.npy", np.ones((1, 8), np.float32))
    assert_clean_error(run_cli("benchmark", models["mlp"], "--inputs", tmp_path / "x.npy", "--input-shape", "x=1,8"),
                       2, "conflict")
    assert_clean_error(run_cli("benchmark", models["mlp"], "--device", "rpi4", "--save-calibration"), 2, "device")
    assert_clean_error(run_cli("benchmark", models["mlp"], "--latency-budget", "5"), 2, "--device")
    assert_clean_error(run_cli("benchmark", models["mlp"], models["two"], "--variants"), 2, "exactly one")


def test_verdict_on_known_values():
    budgets = load_profile("rpi4").with_budgets(latency_ms=10, ram_mb=100, model_size_mb=1).budgets
    v = judge(budgets, size_bytes=2 * 1024 * 1024, latency_ms=9.9, latency_basis="estimated p50",
              rss_mb=150, rss_basis="estimated")
    assert not v.passed
    assert [c.passed for c in v.checks] == [True, False, False]
    assert len(v.failures) == 2 and "ram 150 MB" in v.failures[0]
    assert judge(None, size_bytes=1, latency_ms=1, latency_basis="", rss_mb=1, rss_basis="").passed


def test_variants_of_a_scikit_learn_model(tmp_path):
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    joblib.dump(MLPClassifier((32,), max_iter=200, random_state=0).fit(X[:1200], y[:1200]), tmp_path / "m.joblib")
    np.savez(tmp_path / "cal.npz", input=X[:100])
    np.savez(tmp_path / "ev.npz", input=X[1200:], labels=y[1200:])
    proc = run_cli("benchmark", tmp_path / "m.joblib", "--variants", "--device", "rpi4", *FAST, "--no-memory",
                   "--calibration", tmp_path / "cal.npz", "--eval", tmp_path / "ev.npz",
                   "--keep-variants", tmp_path / "v", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, _schema())
    by_label = {r["label"]: r for r in report["results"]}
    assert {"onnx fp32", "onnx dynamic", "onnx int8", "onnx fp16"} <= set(by_label)
    assert by_label["onnx fp32"]["accuracy"]["metric"] == "accuracy"
    assert abs(by_label["onnx int8"]["accuracy"]["drop_points"]) <= 1.0
    assert by_label["onnx fp16"]["precision"] == "fp16"
    assert by_label["onnx int8"]["size_bytes"] < by_label["onnx fp32"]["size_bytes"]
    assert (tmp_path / "v" / "onnx-int8.onnx").is_file()
    assert "ai.onnx.ml" in proc.stderr  # why no TFLite variant was built


def test_on_the_device_judges_measurements_and_saves_calibration(models, tmp_path):
    """On a detected board the profile is picked up, measured p95 is judged, and the run can be saved."""
    env = {"EDGEOPS_BOARD": "Raspberry Pi 4 Model B Rev 1.4", "EDGEOPS_HOME": str(tmp_path / "home")}
    proc = run_cli("benchmark", models["mlp"], *FAST, "--save-calibration", "--json", tmp_path / "r.json",
                   env_extra=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["profile"] == "rpi4" and report["on_device"] is True
    checks = {c["budget"]: c for c in report["results"][0]["verdict"]["checks"]}
    assert checks["latency_ms"]["basis"] == "measured p95"
    assert checks["latency_ms"]["value"] == report["results"][0]["latency_ms"]["p95"]
    saved = (tmp_path / "home" / "calibration" / "rpi4.jsonl").read_text().splitlines()
    assert len(saved) == 1 and json.loads(saved[0])["p50_ms"] > 0


def test_a_budget_without_a_number_fails_safe():
    budgets = load_profile("rpi4").budgets
    v = judge(budgets, size_bytes=1, latency_ms=None, latency_basis="", rss_mb=None, rss_basis="skipped: not measured")
    assert not v.passed and [c.budget for c in v.checks] == ["latency_ms", "model_size_mb"]
    assert "not judged" in v.failures[0]


def test_estimate_uses_the_shapes_that_ran(models, tmp_path):
    """A dynamic sequence length benchmarked at 64 must be estimated at 64, not 1."""
    short = run_cli("benchmark", models["two"], "--device", "rpi4", *FAST, "--no-memory", "--input-shape", "x=1,2",
                    "--json", "-")
    long = run_cli("benchmark", models["two"], "--device", "rpi4", *FAST, "--no-memory", "--input-shape",
                   "x=1,4096", "--json", "-")
    assert short.returncode == 0 and long.returncode == 0, short.stderr + long.stderr
    rss = [json.loads(p.stdout)["results"][0]["estimate"]["peak_rss_mb"] for p in (short, long)]
    assert rss[1] > rss[0]  # 4096 floats of activations are counted


def test_fixed_batch_model_refuses_other_batch_sizes(tmp_path):
    path = _mlp(tmp_path / "fixed.onnx", batch=1)
    assert_clean_error(run_cli("benchmark", path, *FAST, "--no-memory", "--batch-sizes", "1,4"), 2, "fixed batch of 1")
