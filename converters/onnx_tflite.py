"""ONNX -> TFLite through onnx2tf, for graphs of standard ONNX operators (CNNs, MLPs).

onnx2tf rewrites the graph channel-last: every 3-5-D input becomes NWC/NHWC/NDHWC, and a
3-5-D output may come out channel-last too. The reference (the ONNX model in onnxruntime) is
brought to the converted model's names and layout for the parity check: converted_feeds()
transposes the sample inputs, and predict() returns the outputs keyed and laid out as the
TFLite model gives them (docs/onnx-to-tflite.md). Finding those names and layouts is
converters/onnx2tf_layout.py's job; this module loads, checks and runs onnx2tf.

onnx2tf pins old TensorFlow/onnx/numpy releases, so it is installed with --no-deps next to
tensorflow-cpu (INSTALL_COMMAND); no pip extra can say that, hence the hint is overridden.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np

from edgeops.artifact import TensorSpec
from edgeops.convert import CONVERTERS, ConvertOptions
from edgeops.converters.onnx2tf_layout import (ConvertedLayout, ReferenceOutputs, bind_layout, input_perm,
                                               match_names, transpose)
from edgeops.errors import first_line
from edgeops.errors import DataError, InputFileError, MissingDependencyError, UnsupportedModelError, UsageError
from edgeops.validate import Tolerance

INSTALL_COMMAND = ("pip install --no-deps onnx2tf==1.29.24 tf-keras==2.21.0 onnx-graphsurgeon==0.6.1 "
                   "sng4onnx==2.0.1 psutil==7.2.2")
STANDARD_DOMAINS = ("", "ai.onnx")

# Measured with random inputs, batch 8, onnx2tf 1.29.24 / TF 2.21 / LiteRT 2.3 against onnxruntime
# 1.32, float32: conv-relu-maxpool-linear CNNs max abs 4e-7, MLPs 6e-8 (docs/onnx-to-tflite.md).
# atol 1e-4 leaves >100x headroom for deeper nets; rtol 1e-3 covers large logits.
TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)

# For static-batch 3-channel 4-D inputs onnx2tf runs a trial inference on "sample images" that it
# reads from this file in the working directory, or else downloads (no network on devices/CI).
# A random stand-in in a private working directory keeps it offline; the values only steer its
# internal layout checks.
_SAMPLE_IMAGES = "calibration_image_sample_data_20x128x128x3_float32.npy"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# onnx2tf sets sys.setrecursionlimit(2**31 - 1) when imported. That lasts for the whole process:
# any deep recursion afterwards (a deeply nested JSON body, say) overflows the C stack and kills
# the process with SIGSEGV instead of raising RecursionError. So the limit is put back after the
# import, and raised to a bounded value only while onnx2tf converts (deep graphs recurse).
CONVERT_RECURSION_LIMIT = 20_000


@contextmanager
def _recursion_limit(limit: int | None = None):
    saved = sys.getrecursionlimit()
    if limit is not None:
        sys.setrecursionlimit(max(saved, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(saved)


def _onnx2tf():
    try:
        with _captured_output(), _recursion_limit():  # importing TensorFlow prints C++ log lines
            import onnx2tf
    except (ImportError, AttributeError) as exc:  # AttributeError: onnx-graphsurgeon too old for onnx
        package = (getattr(exc, "name", None) or "onnx2tf").split(".")[0].replace("_", "-")
        err = MissingDependencyError(package, "onnx2tf", "converting ONNX to TFLite")
        if isinstance(exc, AttributeError):
            err.message = f"onnx2tf's dependencies do not fit the installed onnx: {_first_line(exc)}"
            err.args = (err.message,)
        # There is no extra: onnx2tf must be installed without its pinned (old) dependencies.
        err.hint = f"install it with: {INSTALL_COMMAND} (see docs/onnx-to-tflite.md)"
        raise err from None
    return onnx2tf


def _first_line(exc: BaseException) -> str:
    """onnx2tf colours its messages: strip the ANSI codes first."""
    return first_line(Exception(_ANSI.sub("", str(exc)))) if str(exc).strip() else type(exc).__name__


@contextmanager
def _captured_output():
    """Collect everything written to stdout/stderr, by Python and by C++ (TensorFlow logs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    text = StringIO()
    holder = {"text": ""}
    with tempfile.TemporaryFile() as native:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(native.fileno(), 1)
            os.dup2(native.fileno(), 2)
            with redirect_stdout(text), redirect_stderr(text):
                yield holder
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            native.seek(0)
            holder["text"] = text.getvalue() + native.read().decode("utf-8", "replace")


@contextmanager
def _working_directory(path: Path):
    """onnx2tf reads and writes relative to the working directory, and sets
    CUDA_VISIBLE_DEVICES=-1 for the whole process: keep both private."""
    from edgeops.procio import working_directory

    cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        with working_directory(path):
            yield
    finally:
        if cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = cuda


def _error_line(exc: BaseException, log: str) -> str:
    """onnx2tf logs the reason ('ERROR: CastLike OP is not yet implemented.') before raising."""
    errors = [line.split("ERROR:", 1)[1].strip() for line in _ANSI.sub("", log).splitlines()
              if "ERROR:" in line and line.split("ERROR:", 1)[1].strip()]
    if errors:
        return errors[-1][:300]
    if isinstance(exc, SystemExit):
        return "onnx2tf stopped without a message"
    return _first_line(exc)


# --- graph checks --------------------------------------------------------------------------

def _nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If/Loop/Scan bodies
            subgraphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
            for sub in subgraphs:
                yield from _nodes(sub)


def nonstandard_ops(proto) -> list[str]:
    """'domain.OpType' of every operator outside the standard ONNX domain, sorted."""
    return sorted({f"{n.domain}.{n.op_type}" for n in _nodes(proto.graph) if n.domain not in STANDARD_DOMAINS})


def fixed_input_shapes(inputs: tuple[TensorSpec, ...],
                       given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The static shapes to give onnx2tf: those of --input-shape; other inputs stay as they are.

    A dynamic batch is kept: onnx2tf converts it to a resizable TFLite input, whereas a batch
    fixed to 1 gets baked into reshapes, and the model then fails at any other batch size.
    """
    names = {s.name for s in inputs}
    unknown = [n for n in given if n and n not in names]
    if unknown:
        raise DataError(f"--input-shape names {', '.join(unknown)}, not an input of the model",
                        f"inputs are: {', '.join(sorted(names))}")
    shapes = {}
    for spec in inputs:
        shape = given.get(spec.name) or (given.get("") if len(inputs) == 1 else None)
        if shape is None:
            continue
        if len(shape) != len(spec.shape) or any(
                isinstance(d, int) and d > 0 and d != g for d, g in zip(spec.shape, shape)):
            raise DataError(f"--input-shape {','.join(map(str, shape))} does not fit {spec.describe()}",
                            "give the ONNX (channel-first) shape, batch first")
        shapes[spec.name] = tuple(shape)
    return shapes


def _set_input_shapes(proto, shapes: dict[str, tuple[int, ...]]) -> None:
    # onnx2tf's own overwrite_input_shape only works through onnx-simplifier; set the dims here.
    if not shapes:
        return
    for value in proto.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, shapes[value.name]):
                dim.Clear()
                dim.dim_value = int(size)
    del proto.graph.value_info[:]  # stale symbolic shapes would contradict the fixed ones


class OnnxSourceModel:
    """The ONNX model run by onnxruntime: the reference for the converted TFLite model."""

    def __init__(self, path: Path, proto):
        from edgeops.runtime.onnx import OnnxRuntime

        self.path = path
        self.proto = proto
        self.runtime = OnnxRuntime(path)
        self.inputs: tuple[TensorSpec, ...] = self.runtime.inputs
        self.layout: ConvertedLayout | None = None  # set by export()

    @property
    def label_outputs(self) -> frozenset[str]:
        from edgeops.converters.native import label_outputs_of

        labels = label_outputs_of(self.runtime.outputs)
        if self.layout is None:
            return labels
        return frozenset(b.tflite_name for b in self.layout.outputs if b.onnx_name in labels)

    def run_onnx(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runtime.run({s.name: feeds[s.name] for s in self.inputs})

    def predict(self, feeds: dict[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return ReferenceOutputs(self, self.run_onnx(feeds))

    def converted_feeds(self, feeds: dict[str, np.ndarray],
                        converted_inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """The feeds under the TFLite input names, channel-last where the TFLite input is."""
        bound = {b.tflite_name: b for b in self.layout.inputs} if self.layout else {}
        names = match_names([s.name for s in self.inputs], [s.name for s in converted_inputs])
        if not names and len(converted_inputs) == len(self.inputs) == 1:
            names = {converted_inputs[0].name: self.inputs[0].name}
        mapped = {}
        for spec in converted_inputs:
            binding = bound.get(spec.name)
            source = binding.onnx_name if binding else names.get(spec.name)
            if source not in feeds:
                raise InputFileError(
                    f"the converted model's input '{spec.name}' matches none of the original's "
                    f"({', '.join(feeds)})", "report this model as a converter bug")
            array = np.asarray(feeds[source])
            perm = binding.perm if binding else input_perm(array.shape, spec.shape)
            mapped[spec.name] = transpose(array, perm)
        return mapped


class OnnxToTFLite:
    source, target, extra = "onnx", "tflite", "onnx2tf"
    tolerance = TOLERANCE

    def load(self, path: Path, options: ConvertOptions) -> OnnxSourceModel:
        from edgeops.onnx_util import load_onnx

        if options.opset:
            raise UsageError("--opset applies to ONNX output only", "drop --opset when converting to TFLite")
        proto = load_onnx(path)  # truncated/corrupt -> InputFileError
        foreign = nonstandard_ops(proto)
        if foreign:
            listed = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
            raise UnsupportedModelError(
                f"{path}: operators outside the standard ONNX domain cannot go to TFLite: {listed}",
                "onnx2tf converts standard ONNX operators only; scikit-learn models (ai.onnx.ml) "
                "should target ONNX instead: edgeops convert MODEL --to onnx")
        return OnnxSourceModel(path, proto)

    def export(self, model: OnnxSourceModel, out: Path, options: ConvertOptions) -> dict:
        import onnx

        onnx2tf = _onnx2tf()
        shapes = fixed_input_shapes(model.inputs, options.input_shapes)
        with tempfile.TemporaryDirectory(prefix="edgeops-onnx2tf-") as tmp:
            work = Path(tmp)
            proto = onnx.ModelProto()
            proto.CopyFrom(model.proto)  # onnx2tf may rewrite its input file: never hand it the user's
            _set_input_shapes(proto, shapes)
            try:
                onnx.save_model(proto, str(work / "model.onnx"))
            except ValueError as exc:  # e.g. over protobuf's 2 GB limit
                raise UnsupportedModelError(f"cannot prepare the model for onnx2tf: {_first_line(exc)}",
                                            "models over 2 GB are not supported") from None
            np.save(work / _SAMPLE_IMAGES, np.random.default_rng(0).random((20, 32, 32, 3), dtype=np.float32))
            failure = None
            with _captured_output() as log, _working_directory(work), _recursion_limit(CONVERT_RECURSION_LIMIT):
                try:
                    onnx2tf.convert(input_onnx_file_path=str(work / "model.onnx"),
                                    output_folder_path=str(work / "tf"), not_use_onnxsim=True,
                                    non_verbose=True, verbosity="error")
                except (Exception, SystemExit) as exc:  # onnx2tf raises anything, or calls sys.exit(1)
                    failure = exc
            produced = sorted((work / "tf").glob("*_float32.tflite"))
            if failure is not None or not produced:
                reason = _error_line(failure, log["text"]) if failure else "it wrote no float32 .tflite"
                raise UnsupportedModelError(
                    f"onnx2tf cannot convert {model.path.name}: {reason}",
                    "onnx2tf converts standard ONNX operators; fixing dynamic dimensions may help: "
                    "--input-shape NAME=1,3,224,224 (the ONNX, channel-first shape)")
            model.layout = bind_layout(model, produced[0], shapes)
            shutil.copyfile(produced[0], out)
        import tensorflow as tf

        transposed = [b.tflite_name for b in model.layout.inputs if b.perm]
        return {"converter": "onnx2tf", "onnx2tf_version": onnx2tf.__version__,
                "tensorflow_version": tf.__version__, "layout": "NHWC",
                "channel_last_inputs": transposed,
                "input_shapes": {name: list(shape) for name, shape in shapes.items()}}


CONVERTERS.register(("onnx", "tflite"), OnnxToTFLite())
