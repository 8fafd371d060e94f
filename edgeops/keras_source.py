"""Opening Keras models (.keras, .h5) and TensorFlow SavedModel directories.

``load_keras_source`` gives a callable model with its input specs and output names; both the
Keras converter (converters/keras_tflite.py) and quantization (edgeops/quantize.py) start
from it, and edgeops/tflite_export.py writes it out as TFLite.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .artifact import TensorSpec
from .errors import InputFileError, UnsupportedModelError, require
from .errors import first_line as _first_line
from .procio import quiet_native_stderr

SIGNATURE = "serving_default"
_PURPOSE = "converting Keras / TensorFlow models to TFLite"


# --------------------------------------------------------------------------- TensorFlow import


def import_tensorflow():
    """Import TensorFlow quietly, or raise MissingDependencyError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_native_stderr():
        tf = require("tensorflow", "tensorflow-cpu", "keras", _PURPOSE)
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


def import_keras():
    import_tensorflow()  # keras 3 imports its TensorFlow backend: keep that import quiet too
    return require("keras", "tensorflow-cpu", "keras", _PURPOSE)


# --------------------------------------------------------------------------- loading the source


@dataclass
class KerasSource:
    """A loaded Keras model or SavedModel signature; call it with feeds keyed by input name."""

    path: Path
    kind: str  # "keras" (a .keras/.h5 file) or "saved_model" (a directory)
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    _run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    _model: Any  # keras.Model, or the SavedModel's serving function

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(feeds)

    @contextlib.contextmanager
    def saved_model_dir(self):
        """A SavedModel directory for the TFLite converter (a temporary one for Keras files).

        TFLiteConverter.from_keras_model under Keras 3 itself exports the model to a temporary
        SavedModel (and prints its endpoints to stdout); exporting here takes the same path
        quietly and gives a serving signature whose names we know.
        """
        if self.kind == "saved_model":
            yield self.path
            return
        with tempfile.TemporaryDirectory(prefix="edgeops-keras-") as tmp:
            target = Path(tmp) / "saved_model"
            try:
                with quiet_native_stderr():
                    self._model.export(str(target), verbose=False)
            except (ValueError, TypeError, NotImplementedError) as exc:
                raise UnsupportedModelError(
                    f"{self.path}: Keras cannot export this model for TFLite: {_first_line(exc)}",
                    "check that every layer is serializable and traceable by tf.function") from None
            yield target


def load_keras_source(source: str | Path) -> tuple[KerasSource, tuple[TensorSpec, ...], tuple[str, ...]]:
    """Open a .keras/.h5 file or a SavedModel directory: (callable model, input specs, output names)."""
    path = Path(source)
    if path.is_dir():
        loaded = _load_saved_model(path)
    elif path.is_file():
        loaded = _load_keras_file(path)
    else:
        raise InputFileError(f"{path}: no such file or directory", "check the path")
    return loaded, loaded.inputs, loaded.output_names


def _load_keras_file(path: Path) -> KerasSource:
    _check_container(path)
    keras = import_keras()
    try:
        with quiet_native_stderr():
            model = keras.saving.load_model(str(path), compile=False)
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise InputFileError(f"{path}: cannot read the Keras model: {_first_line(exc)}",
                             "the file may be truncated or corrupt; save it again") from None
    except (ValueError, TypeError) as exc:
        text, full = _first_line(exc), str(exc).lower()
        if any(k in full for k in ("custom", "could not locate", "safe_mode", "deserializ")):
            raise UnsupportedModelError(
                f"{path}: the model uses code Keras cannot load by itself: {text}",
                "export it as a SavedModel directory (model.export(DIR)) and convert that") from None
        raise InputFileError(f"{path}: cannot read the Keras model: {text}",
                             "the file may be truncated or corrupt; save it again") from None
    if not isinstance(model, keras.Model):
        raise UnsupportedModelError(f"{path}: holds a {type(model).__name__}, not a Keras model",
                                    "save a keras.Model")

    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):  # dict inputs: the keys are the names callers use
        names = list(struct)
        tensors = [struct[k] for k in names]
    else:
        tensors = list(model.inputs)
        names = [t.name for t in tensors]
    inputs = tuple(TensorSpec(n, _dtype_name(t.dtype), tuple(t.shape)) for n, t in zip(names, tensors))
    output_names = _keras_output_names(model)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [np.asarray(feeds[s.name], dtype=s.dtype) for s in inputs]
        if isinstance(struct, dict):
            x = dict(zip(names, args))
        else:
            x = args[0] if len(args) == 1 else args
        result = model(x, training=False)
        if isinstance(result, dict):
            values = [result[n] for n in output_names]
        elif isinstance(result, (list, tuple)):
            values = list(result)
        else:
            values = [result]
        return {n: np.asarray(v) for n, v in zip(output_names, values)}

    return KerasSource(path, "keras", inputs, output_names, run, model)


def _keras_output_names(model) -> tuple[str, ...]:
    names = getattr(model, "output_names", None)  # Functional models; Sequential has none
    if not names:
        names = [o._keras_history.operation.name for o in model.outputs]
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # two outputs from one layer would share its name
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name] - 1}")
    return tuple(unique)


def signature_output_name(key: str, output_names: tuple[str, ...]) -> str:
    """Signature output key -> the source's output name (Keras exports them as output_0, output_1, ...)."""
    if key in output_names:
        return key
    match = re.fullmatch(r"output_(\d+)", key)
    if match and int(match.group(1)) < len(output_names):
        return output_names[int(match.group(1))]
    return key


def _load_saved_model(path: Path) -> KerasSource:
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        raise InputFileError(f"{path}: a directory, but not a TensorFlow SavedModel (no saved_model.pb)",
                             "pass a SavedModel directory, or a .keras/.h5 file")
    tf = import_tensorflow()
    try:
        with quiet_native_stderr():
            loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as exc:
        raise InputFileError(f"{path}: cannot read the SavedModel: {_first_line(exc)}",
                             "the directory may be incomplete; export it again") from None
    signatures = dict(loaded.signatures)
    if SIGNATURE not in signatures:
        raise UnsupportedModelError(
            f"{path}: the SavedModel has no '{SIGNATURE}' signature "
            f"(it has: {', '.join(signatures) or 'none'})",
            "export it with a serving_default signature (Keras: model.export(DIR))")
    fn = signatures[SIGNATURE]
    specs = fn.structured_input_signature[1]
    inputs = tuple(TensorSpec(name, _dtype_name(spec.dtype), tuple(spec.shape.as_list()))
                   for name, spec in sorted(specs.items()))
    output_names = tuple(sorted(fn.structured_outputs, key=_natural_key))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {s.name: tf.constant(np.asarray(feeds[s.name], dtype=s.dtype)) for s in inputs}
        result = fn(**args)
        return {n: result[n].numpy() for n in output_names}

    return KerasSource(path, "saved_model", inputs, output_names, run, fn)


def _check_container(path: Path) -> None:
    """Reject truncated or foreign files before Keras prints a long traceback about them."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: the file is empty", "save the model again")
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise InputFileError(f"{path}: not a valid .keras file (not a complete zip archive)",
                                 "the file may be truncated; save it again with model.save()")
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                names = set(zf.namelist())
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputFileError(f"{path}: not a valid .keras file: {_first_line(exc)}",
                                 "the file may be truncated; save it again with model.save()") from None
        if bad is not None or "config.json" not in names:
            raise InputFileError(f"{path}: the .keras archive is damaged or incomplete",
                                 "save the model again with model.save()")
    elif suffix in (".h5", ".hdf5"):
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head != b"\x89HDF\r\n\x1a\n":
            raise InputFileError(f"{path}: not an HDF5 file", "save the model again with model.save('*.h5')")


# --------------------------------------------------------------------------- small helpers


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or str(dtype)
    if name == "string":
        return "str"
    try:
        return np.dtype(name).name
    except TypeError:  # bfloat16 and other types numpy does not know: keep TF's name
        return name
