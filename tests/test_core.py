"""The registry, data binding, packaging and the light-import promise."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from edgeops.artifact import TensorSpec
from edgeops.data import Samples, bind, generate, load_samples, parse_input_shapes
from edgeops.errors import DataError, EdgeOpsError, InputFileError, UnsupportedModelError, UsageError
from edgeops.registry import Registry

from helpers import ROOT


def test_registry_refuses_silent_overwrite_and_lists_known():
    reg = Registry("converter")
    reg.register(("a", "onnx"), 1)
    with pytest.raises(EdgeOpsError, match="already registered"):
        reg.register(("a", "onnx"), 2)
    reg.register(("a", "onnx"), 3, replace=True)
    assert reg.get(("a", "onnx")) == 3
    with pytest.raises(UnsupportedModelError) as err:
        reg.get(("b", "tflite"))
    assert "b -> tflite" in err.value.message and "a -> onnx" in err.value.hint


def test_builtin_converters_are_registered():
    from edgeops.convert import CONVERTERS

    keys = set(CONVERTERS.keys())
    assert {("sklearn", "onnx"), ("torch", "onnx"), ("keras", "tflite"), ("tensorflow", "tflite"),
            ("onnx", "onnx"), ("onnx", "tflite"), ("tflite", "tflite")} <= keys


def test_third_party_converter_through_entry_point(tmp_path):
    """A package on the path with an `edgeops.converters` entry point is picked up."""
    (tmp_path / "myconv.py").write_text(
        "def register(registry):\n    registry.register(('myframework', 'onnx'), 'MY CONVERTER')\n")
    dist = tmp_path / "myconv-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myconv\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[edgeops.converters]\nmine = myconv:register\n")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from edgeops.convert import CONVERTERS\nprint(CONVERTERS.get(('myframework', 'onnx')))") % str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "MY CONVERTER", out.stderr


def test_import_loads_no_framework():
    code = ("import sys, edgeops, edgeops.convert, edgeops.cli.main, edgeops.runtime, edgeops.data\n"
            "from edgeops.convert import CONVERTERS; CONVERTERS.keys()\n"
            "import json; print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'sklearn', 'skl2onnx', 'keras')"
            " if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_bind_checks_names_ranks_dims_and_dtypes():
    spec = (TensorSpec("x", "float32", (None, 4)),)
    ok = bind(Samples({"": np.ones((3, 4), np.float64)}), spec)
    assert ok["x"].dtype == np.float32
    with pytest.raises(DataError, match="dimension 1 must be 4"):
        bind(Samples({"": np.ones((3, 5))}), spec)
    with pytest.raises(DataError, match="rank 2"):
        bind(Samples({"": np.ones((3, 4, 1))}), spec)
    with pytest.raises(DataError, match="takes float32, got"):
        bind(Samples({"": np.array([["a"] * 4])}), spec)
    assert bind(Samples({"keras_tensor": np.ones((3, 4))}), spec)["x"].shape == (3, 4)  # one for one: by position
    two = spec + (TensorSpec("z", "float32", (None, 1)),)
    with pytest.raises(DataError, match="no array for input"):
        bind(Samples({"y": np.ones((3, 4)), "z": np.ones((3, 1))}), two)
    with pytest.raises(DataError, match="takes int64"):
        bind(Samples({"": np.ones((2, 4))}), (TensorSpec("ids", "int64", (None, 4)),))


def test_load_samples_formats(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.ones((2, 3)), labels=np.array([0, 1]))
    s = load_samples(tmp_path / "d.npz")
    assert set(s.tensors) == {"a"} and list(s.labels) == [0, 1]
    (tmp_path / "d.csv").write_text("f1,f2,target\n1,2,0\n3,4,1\n")
    s = load_samples(tmp_path / "d.csv")
    assert s.columns == ["f1", "f2"] and list(s.labels) == [0, 1]
    assert bind(s, (TensorSpec("input", "float32", (None, 2)),))["input"].tolist() == [[1, 2], [3, 4]]
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputFileError, match="cannot read"):
        load_samples(tmp_path / "bad.npy")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(InputFileError, match="unknown data file type"):
        load_samples(tmp_path / "d.txt")


def test_generate_and_input_shapes():
    specs = (TensorSpec("img", "float32", (None, 3, None, None)),)
    with pytest.raises(UsageError, match="dynamic dimension 2"):
        generate(specs)
    feeds = generate(specs, parse_input_shapes(["img=2,3,8,8"]))
    assert feeds["img"].shape == (2, 3, 8, 8)
    assert parse_input_shapes(["1,3,4"]) == {"": (1, 3, 4)}
    with pytest.raises(UsageError):
        parse_input_shapes(["x=1,a"])
    with pytest.raises(UsageError, match="not an input"):
        generate(specs, {"typo": (1, 3, 8, 8)})
    with pytest.raises(UsageError, match="3 dimensions, but the input has 4"):
        generate(specs, {"img": (1, 3, 8)})
    two = specs + (TensorSpec("k", "int64", ()),)
    with pytest.raises(UsageError, match="without a name"):
        generate(two, {"": (1, 3, 8, 8)})


def test_values_outside_the_dtype_range_and_empty_data(tmp_path):
    with pytest.raises(DataError, match="outside"):
        bind(Samples({"": np.array([[300, -1]])}), (TensorSpec("x", "int8", (None, 2)),))
    with pytest.raises(DataError, match="outside"):
        bind(Samples({"": np.array([[1e6]])}), (TensorSpec("x", "float16", (None, 1)),))
    ok = bind(Samples({"": np.array([[np.nan, 1.0]])}), (TensorSpec("x", "float32", (None, 2)),))
    assert np.isnan(ok["x"][0, 0])  # NaN passes through: the parity check or the agent judges it
    with pytest.raises(DataError, match="no rows"):
        bind(Samples({"": np.zeros((0, 2), np.float32)}), (TensorSpec("x", "float32", (None, 2)),))
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputFileError, match="cannot read"):
        load_samples(tmp_path / "cut.npz")


def test_wheel_ships_converters_and_devices(tmp_path):
    import shutil

    src = tmp_path / "src"  # build from a copy: setuptools writes build/ into the source tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "example", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("edgeops-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgeops/converters/sklearn_onnx.py" in names
    assert "edgeops/devices/rpi4.yaml" in names and "edgeops/devices/schema.json" in names


def test_atomic_output_mode_and_cleanup(tmp_path):
    import os

    from edgeops.convert import atomic_output

    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "new" / "dir" / "m.onnx") as tmp:
            tmp.write_bytes(b"x")
        assert oct((tmp_path / "new" / "dir" / "m.onnx").stat().st_mode & 0o777) == "0o644"
        with pytest.raises(RuntimeError):
            with atomic_output(tmp_path / "other" / "sub" / "m.onnx") as tmp:
                tmp.write_bytes(b"x")
                raise RuntimeError("boom")
        assert not (tmp_path / "other").exists()  # directories made for a failed write are removed
        (tmp_path / "file").write_text("")
        with pytest.raises(InputFileError, match="cannot write"):
            with atomic_output(tmp_path / "file" / "m.onnx"):
                pass
    finally:
        os.umask(old)


def test_gate_refuses_bad_labels():
    from edgeops.gate import gate_outputs

    out = {"label": np.array([0, 1, 1]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])}
    with pytest.raises(DataError, match="fractional"):
        gate_outputs(out, out, np.array([0.5, 1.5, 1.5]), 1.0)
    with pytest.raises(DataError, match="NaN"):
        gate_outputs(out, out, np.array([np.nan, 1.0, 1.0]), 1.0)
    with pytest.raises(DataError, match="one label per row"):
        gate_outputs(out, out, np.zeros((3, 2)), 1.0)
    assert gate_outputs(out, out, np.array([0.0, 1.0, 0.0]), 1.0).after == pytest.approx(100 * 2 / 3)
