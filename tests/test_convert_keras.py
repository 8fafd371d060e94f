"""Keras / SavedModel -> TFLite: parity, names and order, precisions, and errors.

TensorFlow takes seconds to import, so models are built once per module and kept tiny,
except the one the size check needs (~85k parameters).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from edgeops.convert import ConvertOptions, convert  # noqa: E402
from edgeops.errors import DataError, InputFileError, UsageError  # noqa: E402
from edgeops.keras_source import import_keras, load_keras_source  # noqa: E402
from edgeops.runtime import open_runtime  # noqa: E402
from edgeops.tflite_export import export_tflite  # noqa: E402


@pytest.fixture(scope="module")
def keras():
    keras = import_keras()
    keras.utils.set_random_seed(0)
    return keras


@pytest.fixture(scope="module")
def models(keras, tmp_path_factory):
    """Paths of the saved test models, keyed by a short name."""
    root = tmp_path_factory.mktemp("keras_models")
    layers = keras.layers
    paths = {}

    cnn = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(4, 3, activation="relu"),
                            layers.MaxPooling2D(), layers.Flatten(), layers.Dense(3, activation="softmax")])
    paths["cnn.keras"] = root / "cnn.keras"
    cnn.save(paths["cnn.keras"])
    paths["cnn.h5"] = root / "cnn.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is legacy": we test it on purpose
        cnn.save(paths["cnn.h5"])

    features = keras.Input((6,), name="features")
    hidden = layers.Dense(16, activation="relu")(features)
    mlp = keras.Model(features, layers.Dense(1, name="score")(hidden))
    paths["mlp_saved_model"] = root / "mlp_saved_model"
    mlp.export(str(paths["mlp_saved_model"]), verbose=False)

    # Two outputs of the same shape: if they were swapped, only the values would tell.
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    hidden = layers.Dense(8, activation="tanh")(layers.Concatenate()([a, b]))
    two = keras.Model([a, b], [layers.Dense(2, name="zeta")(hidden), layers.Dense(2, name="alpha")(hidden)])
    paths["two.keras"] = root / "two.keras"
    two.save(paths["two.keras"])
    paths["two_saved_model"] = root / "two_saved_model"
    two.export(str(paths["two_saved_model"]), verbose=False)

    big = keras.Sequential([keras.Input((64,), name="x"), layers.Dense(256, activation="relu"),
                            layers.Dense(256, activation="relu"), layers.Dense(10)])
    paths["big.keras"] = root / "big.keras"
    big.save(paths["big.keras"])
    return paths


def _rng_feeds(loaded, batch, seed=1):
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal((batch, *s.shape[1:])).astype(np.float32) for s in loaded.inputs}


@pytest.mark.parametrize("name", ["cnn.keras", "cnn.h5", "mlp_saved_model"])
def test_convert_passes_parity_and_keeps_a_dynamic_batch(models, tmp_path, name):
    out = tmp_path / "model.tflite"
    result = convert(models[name], "tflite", out)

    assert result.parity.passed
    assert all(o.max_abs < 1e-5 for o in result.parity.outputs), result.parity.to_dict()
    assert result.artifact.format == "tflite" and out.is_file()
    assert result.metadata["precision"] == "fp32"
    assert all(s.shape[0] is None for s in result.artifact.inputs)  # batch stays resizable

    loaded, _, output_names = load_keras_source(models[name])
    runtime = open_runtime(out)
    assert [s.name for s in runtime.inputs] == [s.name for s in loaded.inputs]
    for batch in (1, 5):
        feeds = _rng_feeds(loaded, batch)
        got, want = runtime.run(feeds), loaded(feeds)
        assert list(got) == list(output_names)
        for key in output_names:
            assert got[key].shape[0] == batch
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)


@pytest.mark.parametrize("name, outputs", [("two.keras", ["zeta", "alpha"]),
                                           ("two_saved_model", ["output_0", "output_1"])])
def test_two_inputs_two_outputs_keep_names_and_order(models, tmp_path, name, outputs):
    out = tmp_path / "two.tflite"
    # Batch 1: see test_two_inputs_run_at_another_batch for why not the default batch.
    rng = np.random.default_rng(3)
    sample = tmp_path / "sample.npz"
    np.savez(sample, a=rng.standard_normal((1, 4)).astype(np.float32),
             b=rng.standard_normal((1, 3)).astype(np.float32))
    result = convert(models[name], "tflite", out, sample_input=sample)
    assert result.parity.passed

    runtime = open_runtime(out)
    assert [s.name for s in runtime.inputs] == ["a", "b"]
    assert [s.name for s in runtime.outputs] == outputs
    loaded, _, _ = load_keras_source(models[name])
    feeds = _rng_feeds(loaded, 1, seed=4)
    got, want = runtime.run(feeds), loaded(feeds)
    assert list(got) == list(want) == outputs
    for key in outputs:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5)
    assert not np.allclose(want["zeta" if "zeta" in want else "output_0"],
                           want["alpha" if "alpha" in want else "output_1"], atol=1e-3)


def test_two_inputs_run_at_another_batch(models, tmp_path):
    out = tmp_path / "two.tflite"
    export_tflite(models["two.keras"], out, "fp32")
    got = open_runtime(out).run({"a": np.zeros((5, 4), np.float32), "b": np.zeros((5, 3), np.float32)})
    assert [v.shape for v in got.values()] == [(5, 2), (5, 2)]


def test_converted_feeds_match_tflite_default_names(models):
    from edgeops.artifact import TensorSpec
    from edgeops.converters.keras_tflite import KerasToTFLite

    model = KerasToTFLite().load(models["two.keras"], ConvertOptions())
    feeds = {"a": np.ones((1, 4), np.float32), "b": np.zeros((1, 3), np.float32)}
    tflite_inputs = (TensorSpec("serving_default_b:0", "float32", (None, 3)),
                     TensorSpec("serving_default_a:0", "float32", (None, 4)))
    mapped = model.converted_feeds(feeds, tflite_inputs)
    assert mapped["serving_default_a:0"] is feeds["a"] and mapped["serving_default_b:0"] is feeds["b"]


def test_precisions_load_and_shrink(models, tmp_path, capfd):
    loaded, _, _ = load_keras_source(models["big.keras"])
    calibration = {"x": np.random.default_rng(5).standard_normal((300, 64)).astype(np.float32)}
    test_feeds = _rng_feeds(loaded, 5, seed=6)
    reference = loaded(test_feeds)
    sizes, errors = {}, {}
    capfd.readouterr()
    for precision in ("fp32", "dynamic", "fp16", "int8"):
        out = tmp_path / f"big_{precision}.tflite"
        metadata = export_tflite(models["big.keras"], out, precision,
                                 calibration if precision == "int8" else None)
        assert metadata["precision"] == precision
        assert metadata["converter"] == "tf.lite.TFLiteConverter" and metadata["tensorflow_version"]
        sizes[precision] = out.stat().st_size
        runtime = open_runtime(out)
        assert [(s.name, s.dtype) for s in runtime.inputs] == [("x", "float32")]  # float I/O: drop-in
        assert [s.dtype for s in runtime.outputs] == ["float32"]
        assert next(iter(runtime.run({"x": test_feeds["x"][:1]}).values())).shape == (1, 10)
        got = next(iter(runtime.run(test_feeds).values()))
        errors[precision] = float(np.abs(got - next(iter(reference.values()))).max())
    assert "fully_quantize" not in capfd.readouterr().err  # the converter's native logging is muted

    assert errors["fp32"] < 1e-5
    assert errors["fp16"] < 1e-2
    assert errors["dynamic"] < 0.1 and errors["int8"] < 0.2
    assert 0.4 < sizes["fp16"] / sizes["fp32"] < 0.6, sizes
    for precision in ("dynamic", "int8"):
        assert 0.2 < sizes[precision] / sizes["fp32"] < 0.35, sizes


def test_int8_runs_integer_kernels(models, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "mlp_int8.tflite"
    calibration = {"features": np.random.default_rng(7).standard_normal((40, 6)).astype(np.float32)}
    metadata = export_tflite(models["mlp_saved_model"], out, "int8", calibration)
    assert metadata["calibration_samples"] == 40
    dtypes = {np.dtype(t["dtype"]).name for t in Interpreter(model_path=str(out)).get_tensor_details()}
    assert "int8" in dtypes


def test_int8_without_calibration_data_is_refused(models, tmp_path):
    out = tmp_path / "m.tflite"
    with pytest.raises(DataError, match="calibration data") as info:
        export_tflite(models["cnn.keras"], out, "int8")
    assert "--calibration" in info.value.hint
    assert not out.exists()


def test_calibration_data_must_fit_the_inputs(models, tmp_path):
    out = tmp_path / "m.tflite"
    with pytest.raises(DataError, match="features"):
        export_tflite(models["mlp_saved_model"], out, "int8",
                      {"wrong": np.zeros((4, 6), np.float32), "other": np.zeros((4, 6), np.float32)})
    with pytest.raises(DataError, match="dimension 1 must be 6"):
        export_tflite(models["mlp_saved_model"], out, "int8", {"features": np.zeros((4, 5), np.float32)})
    assert not out.exists()


def test_unknown_precision_is_a_usage_error(models, tmp_path):
    with pytest.raises(UsageError, match="int4"):
        export_tflite(models["cnn.keras"], tmp_path / "m.tflite", "int4")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_truncated_model_file_is_an_input_file_error(models, tmp_path, suffix):
    source = models[f"cnn{suffix}"]
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    out = tmp_path / "broken.tflite"
    with pytest.raises(InputFileError, match="broken") as info:
        convert(broken, "tflite", out)
    assert "\n" not in info.value.message
    assert not out.exists() and list(tmp_path.glob("*.tflite")) == []


def test_missing_tensorflow_names_the_extra_and_import_stays_light(models, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import edgeops.keras_source, edgeops.tflite_export as q
        assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "loaded at import"
        sys.modules["tensorflow"] = None  # as if tensorflow-cpu were not installed
        from edgeops.errors import MissingDependencyError
        try:
            q.export_tflite({str(models['cnn.keras'])!r}, {str(tmp_path / "never.tflite")!r}, "fp32")
        except MissingDependencyError as exc:
            print(exc.package, exc.extra)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tensorflow-cpu", "keras"]
    assert not (tmp_path / "never.tflite").exists()
