"""ONNX -> TFLite through onnx2tf: tiny torch-exported CNN/MLP, NHWC layout, refusals.

Conversions need onnx2tf (installed with --no-deps, docs/onnx-to-tflite.md); without it those
tests skip, while the refusals that never reach onnx2tf still run.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from edgeops.convert import ConvertOptions, convert
from edgeops.errors import InputFileError, MissingDependencyError, UnsupportedModelError
from edgeops.runtime import open_runtime

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
nn = torch.nn


def _onnx2tf_importable() -> bool:
    # Through the converter: a bare `import onnx2tf` would leave the recursion limit at 2**31-1
    # for the rest of the test session (see converters/onnx_tflite.py).
    from edgeops.converters.onnx_tflite import _onnx2tf
    from edgeops.errors import MissingDependencyError

    try:
        _onnx2tf()
    except MissingDependencyError:
        return False
    return True


def test_importing_onnx2tf_keeps_the_recursion_limit():
    if not _onnx2tf_importable():
        pytest.skip("onnx2tf is not installed")
    assert sys.getrecursionlimit() < 100_000


needs_onnx2tf = pytest.mark.skipif(
    not _onnx2tf_importable(),
    reason="onnx2tf is not installed: pip install --no-deps -r requirements-onnx2tf.txt (docs/onnx-to-tflite.md)")


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, 5)

    def forward(self, image):
        features = torch.relu(self.conv(image))
        return self.fc(torch.flatten(self.pool(features), 1)), features  # 2-D logits, 4-D map


def _export(module: nn.Module, example, path, inputs, outputs):
    torch.manual_seed(0)
    module.eval()
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    torch.onnx.export(module, example, str(path), dynamo=False, input_names=inputs,
                      output_names=outputs, dynamic_axes=dynamic)
    return path


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    return _export(TinyCNN(), torch.randn(1, 3, 16, 16), path, ["image"], ["logits", "features"])


@pytest.fixture(scope="module")
def converted_cnn(cnn_onnx, tmp_path_factory):
    if not _onnx2tf_importable():
        pytest.skip("onnx2tf is not installed")
    out = tmp_path_factory.mktemp("cnn_out") / "cnn.tflite"
    return convert(cnn_onnx, "tflite", out)


@needs_onnx2tf
def test_cnn_converts_with_parity_and_nhwc_input(cnn_onnx, converted_cnn):
    result = converted_cnn
    assert result.parity.passed, result.parity.failures()
    assert result.converter == "OnnxToTFLite"
    assert result.metadata["converter"] == "onnx2tf"
    assert result.metadata["layout"] == "NHWC"
    assert result.metadata["tensorflow_version"].startswith("2.")
    by_shape = {o.shape[1:]: o for o in result.parity.outputs}
    assert set(by_shape) == {(5,), (16, 16, 8)}  # the 4-D output is compared channel-last
    for diff in result.parity.outputs:
        assert diff.max_abs is not None and diff.max_abs < 1e-4, diff

    runtime = open_runtime(result.artifact.path)
    (image,) = runtime.inputs
    assert tuple(image.shape) == (None, 16, 16, 3)  # NHWC, the batch stays resizable
    # Feed the same images to both, in their own layouts, and compare by hand as well.
    x = np.random.default_rng(3).standard_normal((4, 3, 16, 16)).astype(np.float32)
    reference = open_runtime(cnn_onnx).run({"image": x})
    got = runtime.run({image.name: x.transpose(0, 2, 3, 1)})
    got_by_rank = {v.ndim: v for v in got.values()}
    np.testing.assert_allclose(got_by_rank[2], reference["logits"], atol=1e-4)
    np.testing.assert_allclose(got_by_rank[4], reference["features"].transpose(0, 2, 3, 1), atol=1e-4)


@needs_onnx2tf
def test_mlp_converts_with_parity_and_fixed_batch(tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    src = _export(mlp, torch.randn(1, 10), tmp_path / "mlp.onnx", ["features"], ["scores"])
    out = tmp_path / "mlp.tflite"
    result = convert(src, "tflite", out, options=ConvertOptions(input_shapes={"features": (4, 10)}))
    assert result.parity.passed, result.parity.failures()
    assert result.parity.samples == 4
    (diff,) = result.parity.outputs
    assert diff.max_abs < 1e-4
    runtime = open_runtime(out)
    assert [tuple(s.shape) for s in runtime.inputs] == [(4, 10)]  # --input-shape fixed it, no transpose
    assert result.metadata["channel_last_inputs"] == []
    assert result.metadata["input_shapes"] == {"features": [4, 10]}
    assert not list(tmp_path.glob(".mlp*"))  # no temporary files left beside the output


def test_sklearn_onnx_is_refused_and_writes_nothing(tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    proto = skl2onnx.to_onnx(model, X[:1], options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    src = tmp_path / "logreg.onnx"
    onnx.save(proto, str(src))
    out = tmp_path / "logreg.tflite"
    with pytest.raises(UnsupportedModelError) as info:
        convert(src, "tflite", out)
    assert "ai.onnx.ml.LinearClassifier" in info.value.message
    assert "--to onnx" in info.value.hint
    assert list(tmp_path.iterdir()) == [src]


def test_truncated_onnx_is_an_input_file_error(cnn_onnx, tmp_path):
    src = tmp_path / "cut.onnx"
    src.write_bytes(cnn_onnx.read_bytes()[:2000])
    with pytest.raises(InputFileError, match="not a valid ONNX model"):
        convert(src, "tflite", tmp_path / "cut.tflite")
    assert not (tmp_path / "cut.tflite").exists()


def test_missing_onnx2tf_names_the_no_deps_install(cnn_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # makes `import onnx2tf` raise ImportError
    out = tmp_path / "cnn.tflite"
    with pytest.raises(MissingDependencyError) as info:
        convert(cnn_onnx, "tflite", out)
    assert info.value.exit_code == 4
    assert "'onnx2tf'" in info.value.message
    assert "pip install --no-deps onnx2tf==" in info.value.hint and "tf-keras==" in info.value.hint
    assert "edgeops[" not in info.value.hint  # no pip extra can install it
    assert not out.exists()


@needs_onnx2tf
def test_operator_onnx2tf_lacks_is_unsupported(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 4])
    like = helper.make_tensor("like", TensorProto.DOUBLE, [1], [0.0])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                               helper.make_node("CastLike", ["r", "like"], ["y"])], "g", [x], [y], [like])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    src = tmp_path / "castlike.onnx"
    onnx.save(proto, str(src))
    before = src.read_bytes()
    with pytest.raises(UnsupportedModelError, match="CastLike OP is not yet implemented"):
        convert(src, "tflite", tmp_path / "castlike.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["castlike.onnx"]
    assert src.read_bytes() == before  # onnx2tf worked on a copy
