"""edgeops quantize: modes, calibration checks, the accuracy gate, auto mode and the CLI.

Models are built here: a small PyTorch CNN exported to ONNX, and scikit-learn models on
the digits data set converted with skl2onnx.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeops.errors import AccuracyGateError, DataError, UnsupportedModelError, UsageError
from edgeops.gate import gate_outputs
from edgeops.quantize import auto_candidates, quantize
from edgeops.runtime import open_runtime

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def cnn(work):
    """conv(3->16)-relu-conv(16->32)-relu-pool-linear: ~86k weights, so int8 is ~1/4 of the size."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 32, 3, padding=1)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = torch.nn.Linear(32 * 16 * 16, 10)

        def forward(self, x):
            x = torch.relu(self.c2(torch.relu(self.c1(x))))
            return self.fc(self.pool(x).flatten(1))

    path = work / "cnn.onnx"
    torch.onnx.export(CNN().eval(), torch.randn(1, 3, 32, 32), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    cal = work / "cnn_cal.npy"
    np.save(cal, np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    return path, cal


@pytest.fixture(scope="module")
def digits(work):
    """An MLP on digits (skl2onnx, no ZipMap), calibration rows and a labelled eval set."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    clf = MLPClassifier((128,), max_iter=300, random_state=0).fit(X[:1200], y[:1200])
    path = work / "mlp.onnx"
    path.write_bytes(to_onnx(clf, X[:1], options={"zipmap": False}).SerializeToString())
    cal, ev = work / "digits_cal.npy", work / "digits_eval.npz"
    np.save(cal, X[:200])
    np.savez(ev, X=X[1200:], labels=y[1200:])
    return path, cal, ev, 100 * clf.score(X[1200:], y[1200:])


def _leftovers(directory: Path, stem: str) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith((stem, f".{stem}"))]


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["dynamic", "int8", "fp16"])
def test_cnn_modes_write_loadable_models(cnn, tmp_path, mode):
    model, cal = cnn
    out = tmp_path / f"cnn-{mode}.onnx"
    # an untrained net's class scores are near ties: a few argmax flips are expected
    result = quantize(model, mode, out, calibration=cal, max_drop=15.0)
    assert out.is_file() and result.output.path == out and result.chosen_mode == mode
    rt = open_runtime(out)
    x = np.load(cal)[:4]
    logits = rt.run({"image": x})["logits"]
    reference = open_runtime(model).run({"image": x})["logits"]
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()
    assert result.size_before == model.stat().st_size and result.size_after == out.stat().st_size
    assert result.settings["weights_converted"] >= 3 and not result.warnings
    # no --eval: the gate compared predictions on the calibration rows
    assert result.gate.metric == "agreement" and result.gate.data == "calibration"
    if mode == "int8":
        assert result.size_after <= 0.30 * result.size_before
        assert result.settings["format"] == "QDQ" and result.settings["per_channel"] is True
    if mode == "fp16":
        assert result.size_after <= 0.6 * result.size_before


def test_dynamic_quantizes_conv_weights_as_uint8(cnn, tmp_path):
    # ConvInteger with int8 weights is slow in onnxruntime; the module uses uint8 for Conv only
    import onnx

    model, _ = cnn
    out = tmp_path / "dyn.onnx"
    result = quantize(model, "dynamic", out, max_drop=15.0)
    inits = {i.name: i.data_type for i in onnx.load(str(out)).graph.initializer}
    assert inits["c1.weight_quantized"] == onnx.TensorProto.UINT8
    assert any(t == onnx.TensorProto.INT8 for n, t in inits.items() if n.startswith("fc.weight"))
    assert result.gate.data == "random"  # neither --eval nor --calibration


def test_no_per_channel_and_calibration_methods(digits, tmp_path):
    model, cal, ev, _ = digits
    for method in ("entropy", "percentile"):
        result = quantize(model, "int8", tmp_path / f"{method}.onnx", calibration=cal, eval_data=ev,
                          calibrate_method=method, per_channel=False, max_drop=3.0)
        assert result.settings["calibrate_method"] == method and result.settings["per_channel"] is False
        assert result.gate.passed


# --------------------------------------------------------------------------- the gate


@pytest.mark.parametrize("mode", ["int8", "dynamic"])
def test_gate_on_digits_accuracy_drop_within_one_point(digits, tmp_path, mode):
    model, cal, ev, sklearn_accuracy = digits
    result = quantize(model, mode, tmp_path / "q.onnx", calibration=cal, eval_data=ev, max_drop=1.0)
    gate = result.gate
    assert gate.metric == "accuracy" and gate.samples == 597 and gate.data == "eval"
    assert gate.before == pytest.approx(sklearn_accuracy, abs=0.2)  # the float ONNX model = sklearn
    assert gate.drop_points <= 1.0 and gate.passed
    assert "label" in gate.prediction
    assert gate.max_abs["probabilities"] is not None and gate.max_abs["label"] is None
    assert result.size_after < 0.45 * result.size_before  # small model: scales and names weigh in
    # the same numbers through the runtime-level API
    from edgeops.gate import evaluate_gate

    with np.load(ev) as z:
        again = evaluate_gate(open_runtime(model), open_runtime(result.output.path), {"X": z["X"]},
                              z["labels"], 1.0)
    assert (again.metric, again.before, again.after) == (gate.metric, gate.before, gate.after)


def test_failed_gate_raises_and_writes_nothing(digits, tmp_path):
    model, cal, ev, _ = digits
    out = tmp_path / "strict.onnx"
    with pytest.raises(AccuracyGateError) as info:
        quantize(model, "int8", out, calibration=cal, eval_data=ev, max_drop=-50.0)
    assert not out.exists() and _leftovers(tmp_path, "strict") == []
    assert info.value.exit_code == 7 and not info.value.report.passed
    assert info.value.result.output is None and info.value.result.candidates[0].status == "failed"
    assert "int8: accuracy drop" in info.value.message


def test_gate_metrics_pure():
    labels = np.array([0, 1, 2, 1, 0])
    scores = np.eye(3)[labels].astype(np.float32)
    worse = scores.copy()
    worse[0] = [0, 0, 1]  # one of five rows now predicts class 2
    report = gate_outputs({"s": scores}, {"s": worse}, labels, 25.0)
    assert (report.metric, report.before, report.after, report.drop_points) == ("accuracy", 100.0, 80.0, 20.0)
    assert report.passed and report.max_abs == {"s": 1.0}
    assert not gate_outputs({"s": scores}, {"s": worse}, labels, 19.9).passed
    assert gate_outputs({"s": scores}, {"s": worse}, None, 1.0).metric == "agreement"

    from sklearn.metrics import r2_score

    y = np.array([1.0, 2.0, 3.0, 4.0])
    f, q = np.array([[1.1], [1.9], [3.2], [3.9]]), np.array([[1.2], [1.8], [3.4], [3.7]])
    r2 = gate_outputs({"y": f}, {"y": q}, y, 100.0)
    assert r2.metric == "r2"
    assert r2.before == pytest.approx(100 * r2_score(y, f[:, 0]), abs=1e-3)
    assert r2.drop_points == pytest.approx(100 * (r2_score(y, f[:, 0]) - r2_score(y, q[:, 0])), abs=1e-3)
    # without labels: within 1% relative or 1e-3 absolute of the float prediction
    near = gate_outputs({"y": np.array([100.0, 1.0, 0.0])}, {"y": np.array([100.5, 1.2, 0.0005])}, None, 50.0)
    assert near.metric == "agreement" and near.after == pytest.approx(200 / 3, abs=1e-3)
    with pytest.raises(DataError):  # text labels cannot be compared with class indices
        gate_outputs({"s": scores}, {"s": worse}, np.array(["a", "b", "c", "b", "a"]), 1.0)


def test_csv_eval_with_label_column(digits, tmp_path):
    import pandas as pd

    model, cal, ev, sklearn_accuracy = digits
    with np.load(ev) as z:
        X, y = z["X"], z["labels"]
    cols = [f"p{i}" for i in range(64)]
    pd.DataFrame(X, columns=cols).assign(digit=y).to_csv(tmp_path / "eval.csv", index=False)
    pd.DataFrame(np.load(cal), columns=cols).to_csv(tmp_path / "cal.csv", index=False)  # no labels
    result = quantize(model, "int8", tmp_path / "q.onnx", calibration=tmp_path / "cal.csv",
                      eval_data=tmp_path / "eval.csv", label_column="digit")
    assert result.gate.metric == "accuracy" and result.gate.samples == len(y)
    assert result.gate.before == pytest.approx(sklearn_accuracy, abs=0.2)


# --------------------------------------------------------------------------- data errors


def test_int8_without_calibration_is_a_data_error(digits, tmp_path):
    with pytest.raises(DataError, match="calibration") as info:
        quantize(digits[0], "int8", tmp_path / "x.onnx")
    assert "--calibration" in info.value.hint


def test_wrong_shape_calibration(digits, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 5), np.float32))
    with pytest.raises(DataError) as info:
        quantize(digits[0], "int8", tmp_path / "x.onnx", calibration=bad)
    assert "\n" not in str(info.value) and "64" in str(info.value)
    assert not (tmp_path / "x.onnx").exists()


def test_text_calibration_is_a_data_error(digits, tmp_path):
    bad = tmp_path / "text.npy"
    np.save(bad, np.full((10, 64), "a"))
    with pytest.raises(DataError) as info:
        quantize(digits[0], "int8", tmp_path / "x.onnx", calibration=bad)
    assert "\n" not in str(info.value) and "float32" in str(info.value)


def test_usage_errors(digits, tmp_path):
    model = digits[0]
    with pytest.raises(UsageError, match="model itself"):
        quantize(model, "dynamic", model)
    with pytest.raises(UsageError, match="mode"):
        quantize(model, "int4", tmp_path / "x.onnx")
    with pytest.raises(UsageError, match=r"\.onnx"):
        quantize(model, "dynamic", tmp_path / "x.tflite")
    fake = tmp_path / "m.tflite"
    fake.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 32)
    with pytest.raises(UsageError, match="cannot be re-quantized"):
        quantize(fake, "int8", tmp_path / "y.tflite")


def test_tree_model_nothing_quantized(work, tmp_path):
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    forest = RandomForestClassifier(4, max_depth=4, random_state=0).fit(X, y)
    model = tmp_path / "forest.onnx"
    model.write_bytes(to_onnx(forest, X[:1], options={"zipmap": False}).SerializeToString())
    result = quantize(model, "dynamic", tmp_path / "forest-q.onnx")
    assert result.warnings and result.warnings[0].startswith("nothing was quantized")
    assert result.settings["weights_converted"] == 0
    with pytest.raises(UnsupportedModelError, match="no quantization mode applies"):
        quantize(model, "auto", tmp_path / "forest-auto.onnx")
    assert not (tmp_path / "forest-auto.onnx").exists()


# --------------------------------------------------------------------------- auto


def test_auto_order_follows_the_device():
    from edgeops.profiles import load_profile

    assert auto_candidates(None)[0] == ["int8", "dynamic", "fp16"]
    assert auto_candidates(load_profile("rpi4"))[0][0] == "int8"
    assert auto_candidates(load_profile("jetson-orin-nano"))[0][0] == "fp16"


def test_auto_picks_first_passing_and_reports_all(digits, tmp_path):
    model, cal, ev, _ = digits
    result = quantize(model, "auto", tmp_path / "auto.onnx", calibration=cal, eval_data=ev, profile="rpi4")
    assert [c.mode for c in result.candidates] == ["int8", "dynamic", "fp16"]
    assert all(c.gate is not None and c.size_bytes for c in result.candidates)
    assert result.chosen_mode == "int8" and [c.chosen for c in result.candidates] == [True, False, False]
    assert result.settings["profile"] == "rpi4" and result.settings["activation_type"] == "QInt8"  # ARM
    fp16 = result.candidates[2]
    assert fp16.size_bytes <= 0.55 * result.size_before  # float16 weights stored packed, 2 bytes each

    # no calibration data: int8 is skipped (and says why), dynamic is kept
    result = quantize(model, "auto", tmp_path / "auto2.onnx", eval_data=ev)
    assert result.candidates[0].status == "skipped" and "calibration" in result.candidates[0].reason
    assert result.chosen_mode == "dynamic"


def test_auto_with_no_passing_candidate(digits, tmp_path):
    model, cal, ev, _ = digits
    with pytest.raises(AccuracyGateError) as info:
        quantize(model, "auto", tmp_path / "none.onnx", calibration=cal, eval_data=ev, max_drop=-50)
    message = info.value.message
    assert all(f"{m}: accuracy drop" in message for m in ("int8", "dynamic", "fp16"))
    assert not (tmp_path / "none.onnx").exists()


# --------------------------------------------------------------------------- TFLite (Keras source)


def test_keras_source_to_int8_tflite(tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="relu"),
                            keras.layers.Dense(64, activation="relu"), keras.layers.Dense(5)])
    source = tmp_path / "net.keras"
    net.save(source)
    cal = tmp_path / "cal.npy"
    np.save(cal, np.random.default_rng(1).standard_normal((64, 20)).astype(np.float32))
    out = tmp_path / "net-int8.tflite"
    result = quantize(source, "int8", out, calibration=cal, max_drop=10.0)
    assert out.is_file() and result.output.format == "tflite"
    assert result.gate.metric == "agreement" and result.gate.passed
    assert result.size_after < 0.6 * result.size_before  # fp32 TFLite export is the baseline
    assert open_runtime(out).run({result.output.inputs[0].name: np.load(cal)[:1]})


# --------------------------------------------------------------------------- CLI


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "edgeops.cli.main", "quantize", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_cli_json_and_failed_gate(digits, tmp_path):
    model, cal, ev, _ = digits
    out = tmp_path / "cli.onnx"
    proc = _cli(model, "--mode", "int8", "-o", out, "--calibration", cal, "--eval", ev, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert payload["ok"] and payload["gate"]["metric"] == "accuracy" and out.is_file()
    assert payload["size_ratio"] < 0.45

    bad = tmp_path / "fail.onnx"
    proc = _cli(model, "--mode", "dynamic", "-o", bad, "--eval", ev, "--max-drop", "-50")
    assert proc.returncode == 7 and not bad.exists()
    assert "Traceback" not in proc.stderr
    if proc.stderr:  # subprocess run: the gate table and a one-line error
        assert "FAIL" in proc.stderr and "error:" in proc.stderr


def test_cli_help_and_data_error(digits, tmp_path):
    proc = _cli("--help")
    assert proc.returncode == 0
    for needle in ("dynamic", "int8", "fp16", "auto", ".npz", "labels", "--label-column", "Exit codes", "7"):
        assert needle in proc.stdout, needle
    proc = _cli(digits[0], "--mode", "int8", "-o", tmp_path / "x.onnx")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr


def test_fp16_after_a_scikit_learn_scaler(tmp_path):
    """StandardScaler becomes an ai.onnx.ml Scaler, which float16 conversion must leave in float32."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=200, random_state=0)).fit(X[:1200], y[:1200])
    src = tmp_path / "pipe.onnx"
    src.write_bytes(to_onnx(pipe, X[:1], options={"zipmap": False}).SerializeToString())
    np.savez(tmp_path / "ev.npz", X=X[1200:], labels=y[1200:])
    result = quantize(src, "fp16", tmp_path / "pipe16.onnx", eval_data=tmp_path / "ev.npz")
    assert result.gate.passed and result.gate.drop_points <= 1.0
    assert result.size_after < 0.7 * result.size_before


def test_nan_calibration_is_a_data_error(digits, tmp_path):
    model, cal, ev, _ = digits
    rows = np.load(cal)
    rows[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", rows)
    with pytest.raises(DataError, match="NaN"):
        quantize(model, "int8", tmp_path / "q.onnx", calibration=tmp_path / "nan.npy")
    assert not (tmp_path / "q.onnx").exists()
