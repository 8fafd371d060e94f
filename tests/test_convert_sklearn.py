"""scikit-learn -> ONNX on real models trained in the test, through the Python API and the CLI."""
from __future__ import annotations

import json

import joblib
import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits, load_diabetes
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest, RandomForestRegressor
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from edgeops.convert import ConvertOptions, convert
from edgeops.errors import DataError, InputFileError, UnsupportedModelError
from edgeops.runtime import open_runtime
from edgeops.validate import Tolerance, compare

from helpers import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A Pipeline with a ColumnTransformer over numeric, categorical and free-text columns."""
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame({
        "age": rng.normal(40, 10, n), "income": rng.normal(50, 8, n),
        "city": rng.choice(["oslo", "lima", "kyiv"], n),
        "review": rng.choice(["good product", "bad service", "great value", "awful", "fine"], n),
    })
    y = ((df.age > 40) ^ (df.city == "lima")).astype(int)
    ct = ColumnTransformer([("num", StandardScaler(), ["age", "income"]),
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                            ("txt", TfidfVectorizer(), "review")])
    pipe = Pipeline([("ct", ct), ("clf", LogisticRegression(max_iter=500))]).fit(df, y)
    d = tmp_path_factory.mktemp("mixed")
    joblib.dump(pipe, d / "model.pkl")
    df.assign(label=y).to_csv(d / "rows.csv", index=False)
    return d, pipe, df


def test_pipeline_classifier_outputs_plain_tensors(tmp_path, digits):
    X, y = digits
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    joblib.dump(model, tmp_path / "m.joblib")
    np.save(tmp_path / "x.npy", X[:100])
    result = convert(tmp_path / "m.joblib", "onnx", tmp_path / "m.onnx", sample_input=tmp_path / "x.npy")
    assert result.parity.passed
    names = [o.name for o in result.artifact.outputs]
    assert names == ["label", "probabilities"]  # no ZipMap
    rt = open_runtime(tmp_path / "m.onnx")
    out = rt.run({"input": X[:50]})
    assert out["probabilities"].shape == (50, 10)
    assert (out["label"] == model.predict(X[:50])).mean() == 1.0
    probs = next(o for o in result.parity.outputs if o.name == "probabilities")
    assert probs.max_abs < 1e-4


def test_mixed_columns_with_text(mixed, tmp_path):
    d, pipe, df = mixed
    result = convert(d / "model.pkl", "onnx", tmp_path / "mixed.onnx", sample_input=d / "rows.csv")
    specs = {s.name: s.dtype for s in result.artifact.inputs}
    assert specs == {"age": "float32", "income": "float32", "city": "str", "review": "str"}
    assert result.parity.passed
    label = next(o for o in result.parity.outputs if o.name == "label")
    assert label.label_agreement == 1.0 and result.parity.samples == len(df)


def test_text_model_without_sample_input_says_what_to_do(mixed, tmp_path):
    d, _, _ = mixed
    with pytest.raises(DataError, match="text"):
        convert(d / "model.pkl", "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_regressor_and_generated_inputs(tmp_path):
    X, y = load_diabetes(return_X_y=True)
    joblib.dump(RandomForestRegressor(10, random_state=0).fit(X, y), tmp_path / "rf.pkl")
    result = convert(tmp_path / "rf.pkl", "onnx", tmp_path / "rf.onnx")  # random inputs from the signature
    assert result.parity.passed and result.parity.samples == 8
    assert result.artifact.outputs[0].name == "variable"


def test_hist_gradient_boosting_and_isolation_forest(tmp_path, digits):
    X, y = digits
    joblib.dump(HistGradientBoostingClassifier(max_iter=10).fit(X, y), tmp_path / "hgb.pkl")
    np.save(tmp_path / "x.npy", X[:200])
    assert convert(tmp_path / "hgb.pkl", "onnx", tmp_path / "hgb.onnx", sample_input=tmp_path / "x.npy").parity.passed
    joblib.dump(IsolationForest(n_estimators=10, random_state=0).fit(X), tmp_path / "iso.pkl")
    res = convert(tmp_path / "iso.pkl", "onnx", tmp_path / "iso.onnx", sample_input=tmp_path / "x.npy")
    assert res.parity.passed


def test_device_profile_caps_opset_and_ir(tmp_path, digits):
    from edgeops.profiles import load_profile

    X, y = digits
    joblib.dump(LogisticRegression(max_iter=200).fit(X, y), tmp_path / "lr.pkl")
    old = load_profile("jetson-nano")  # an old onnxruntime (JetPack 4)
    rt = old.onnx_runtime
    res = convert(tmp_path / "lr.pkl", "onnx", tmp_path / "lr.onnx", options=ConvertOptions(profile=old))
    proto = onnx.load(tmp_path / "lr.onnx")
    assert proto.ir_version <= rt.max_ir_version
    assert {o.domain: o.version for o in proto.opset_import}[""] <= rt.max_opset
    assert res.parity.passed


def test_onnx_retarget_to_older_opset(tmp_path, digits):
    X, y = digits
    joblib.dump(make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(X, y), tmp_path / "m.pkl")
    convert(tmp_path / "m.pkl", "onnx", tmp_path / "m18.onnx", options=ConvertOptions(opset=18))
    res = convert(tmp_path / "m18.onnx", "onnx", tmp_path / "m15.onnx", options=ConvertOptions(opset=15))
    assert {o.domain: o.version for o in onnx.load(tmp_path / "m15.onnx").opset_import}[""] == 15
    assert res.metadata["retargeted_from_opset"] == 18 and res.parity.passed


def test_unsupported_estimator(tmp_path):
    from sklearn.semi_supervised import LabelSpreading

    X, y = load_digits(return_X_y=True)
    joblib.dump(LabelSpreading().fit(X[:100], y[:100]), tmp_path / "ls.pkl")
    with pytest.raises(UnsupportedModelError, match="LabelSpreading"):
        convert(tmp_path / "ls.pkl", "onnx", tmp_path / "ls.onnx")
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".ls*"))


def test_truncated_and_foreign_files(tmp_path, digits):
    X, y = digits
    joblib.dump(LogisticRegression(max_iter=100).fit(X, y), tmp_path / "m.pkl")
    raw = (tmp_path / "m.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputFileError, match="unpickle"):
        convert(tmp_path / "cut.pkl", "onnx", tmp_path / "cut.onnx")
    joblib.dump({"not": "a model"}, tmp_path / "dict.pkl")
    with pytest.raises(UnsupportedModelError, match="not a scikit-learn estimator"):
        convert(tmp_path / "dict.pkl", "onnx", tmp_path / "dict.onnx")
    assert not list(tmp_path.glob("*.onnx"))


def test_parity_failure_is_reported_per_output():
    ref = {"label": np.array([0, 1, 1, 0]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]] * 2)}
    got = {"label": np.array([0, 1, 0, 0]), "probabilities": ref["probabilities"] + 0.05}
    report = compare(ref, got, Tolerance(atol=1e-3, rtol=0), frozenset({"label"}))
    assert not report.passed
    text = " ".join(report.failures())
    assert "label agreement 75.0%" in text and "probabilities: max abs 0.05" in text


def test_cli_convert_json_and_table(mixed, tmp_path):
    d, _, _ = mixed
    proc = run_cli("convert", d / "model.pkl", "--to", "onnx", "-o", tmp_path / "m.onnx",
                   "--sample-input", d / "rows.csv", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["parity"]["passed"] and out["model"]["format"] == "onnx"
    proc = run_cli("convert", d / "model.pkl", "--to", "onnx", "-o", tmp_path / "m2.onnx",
                   "--sample-input", d / "rows.csv")
    assert proc.returncode == 0 and "Parity" in proc.stderr and "review" in proc.stderr
    proc = run_cli("inspect", tmp_path / "m.onnx", "--json")
    assert json.loads(proc.stdout)["metadata"]["opsets"]["ai.onnx.ml"] >= 1


def test_cli_user_errors(tmp_path, digits):
    X, y = digits
    (tmp_path / "model.xyz").write_text("hello")
    assert_clean_error(run_cli("convert", tmp_path / "model.xyz", "--to", "onnx", "-o", tmp_path / "o.onnx"),
                       3, "unknown model file type")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert_clean_error(run_cli("convert", tmp_path / "broken.onnx", "--to", "onnx", "-o", tmp_path / "o.onnx"),
                       3, "not a valid onnx model")
    joblib.dump(LogisticRegression(max_iter=100).fit(X, y), tmp_path / "m.pkl")
    np.save(tmp_path / "bad.npy", X[:10, :20])
    assert_clean_error(run_cli("convert", tmp_path / "m.pkl", "--to", "onnx", "-o", tmp_path / "o.onnx",
                               "--sample-input", tmp_path / "bad.npy"), 3, "dimension 1 must be 64")
    assert_clean_error(run_cli("convert", tmp_path / "m.pkl", "--to", "onnx", "-o", tmp_path / "o.onnx",
                               "--device", "no-such-board"), 2, "rpi4")
    # A missing optional dependency names the extra to install.
    hide = "import sys; sys.modules['skl2onnx'] = None"
    assert_clean_error(run_cli("convert", tmp_path / "m.pkl", "--to", "onnx", "-o", tmp_path / "o.onnx", pre=hide),
                       4, "edgeops[sklearn]")
    assert not (tmp_path / "o.onnx").exists()


def test_parity_catches_nan_and_compares_labels_numerically():
    ref = {"y": np.array([[1.0, 2.0], [np.nan, 3.0]])}
    assert compare(ref, {"y": ref["y"].copy()}, Tolerance()).passed  # NaN where the original has NaN
    broken = {"y": np.array([[1.0, np.nan], [np.nan, 3.0]])}
    report = compare(ref, broken, Tolerance())
    assert not report.passed and report.outputs[0].max_abs == float("inf")
    labels = compare({"label": np.array([0.0, 1.0])}, {"label": np.array([0, 1])}, Tolerance(), frozenset({"label"}))
    assert labels.passed and labels.outputs[0].label_agreement == 1.0


def test_opset_above_the_device_runtime_is_refused(tmp_path, digits):
    from edgeops.errors import UsageError
    from edgeops.profiles import load_profile

    X, y = digits
    joblib.dump(LogisticRegression(max_iter=200).fit(X, y), tmp_path / "lr.pkl")
    convert(tmp_path / "lr.pkl", "onnx", tmp_path / "lr.onnx")
    nano = load_profile("jetson-nano")
    too_new = nano.onnx_runtime.max_opset + 2
    with pytest.raises(UsageError, match=f"--opset {too_new}"):
        convert(tmp_path / "lr.onnx", "onnx", tmp_path / "new.onnx", options=ConvertOptions(opset=too_new, profile=nano))
    assert not (tmp_path / "new.onnx").exists()


def test_nan_sample_rows_are_a_data_error(tmp_path, digits):
    X, y = digits
    joblib.dump(LogisticRegression(max_iter=200).fit(X, y), tmp_path / "lr.pkl")
    bad = X[:5].copy()
    bad[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert_clean_error(run_cli("convert", tmp_path / "lr.pkl", "-o", tmp_path / "o.onnx", "--sample-input",
                               tmp_path / "nan.npy"), 3, "NaN")
