"""convert(): pick a converter from the registry, export, and check parity against the original.

A converter is registered under (source framework, target format). It loads the source
into a SourceModel (the original, runnable, with its input signature) and exports it.
Generic code here never branches on the model type; tolerances live with converters.
"""
from __future__ import annotations

import glob
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from . import data as data_mod
from .artifact import ModelArtifact, TensorSpec
from .errors import EdgeOpsError, InputFileError, ParityError, UnsupportedModelError, UsageError, first_line
from .registry import Registry
from .validate import ParityReport, Tolerance, compare

if TYPE_CHECKING:
    from .profiles import DeviceProfile

TARGETS = ("onnx", "tflite")


@dataclass
class ConvertOptions:
    opset: int | None = None  # explicit --opset; else the profile's runtime limit; else the converter's default
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Shapes of the --sample-input arrays ('' for a single .npy), for converters that cannot read
    # input shapes from the model (TorchScript) when no --input-shape is given.
    sample_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    profile: "DeviceProfile | None" = None

    @property
    def max_opset(self) -> int | None:
        rt = self.profile.onnx_runtime if self.profile else None
        return rt.max_opset if rt else None

    @property
    def max_ir_version(self) -> int | None:
        rt = self.profile.onnx_runtime if self.profile else None
        return rt.max_ir_version if rt else None

    @property
    def max_ml_opset(self) -> int | None:
        rt = self.profile.onnx_runtime if self.profile else None
        return rt.max_ml_opset if rt else None

    def target_opset(self, default: int) -> int:
        """The opset to export with: --opset, capped by what the device's runtime loads."""
        opset = self.opset or default
        if self.max_opset and opset > self.max_opset:
            if self.opset:
                raise UsageError(
                    f"--opset {self.opset} is newer than the device's onnxruntime loads "
                    f"(opset <= {self.max_opset})", f"use --opset {self.max_opset} or lower")
            opset = self.max_opset
        return opset


class SourceModel(Protocol):
    """The original model, loaded and runnable, as a converter sees it."""

    inputs: tuple[TensorSpec, ...]  # what sample data binds to
    label_outputs: frozenset[str]  # outputs that hold class labels

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Reference outputs, in the converted model's output order."""
        ...


class Converter(Protocol):
    source: str  # framework key: sklearn, torch, keras, tensorflow, onnx, tflite
    target: str  # onnx | tflite
    extra: str  # the pip extra that brings the framework
    tolerance: Tolerance

    def load(self, path: Path, options: ConvertOptions) -> SourceModel: ...

    def export(self, model: SourceModel, out: Path, options: ConvertOptions) -> dict:
        """Write the converted model to ``out``; return metadata (opset, converter versions)."""
        ...


def feeds_for_converted(model: SourceModel, feeds: dict[str, np.ndarray],
                        converted_inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """The sample feeds for the converted model: a converter may remap them (layout, names)."""
    remap = getattr(model, "converted_feeds", None)
    if remap is not None:
        return remap(feeds, converted_inputs)
    names = [s.name for s in converted_inputs]
    if set(names) == set(feeds):
        return feeds
    if len(names) == len(feeds):  # same inputs, renamed by the converter
        return dict(zip(names, feeds.values()))
    raise InputFileError("the converted model's inputs do not match the original's",
                         "report this as a converter bug")


CONVERTERS: Registry[Converter] = Registry("converter", entry_point_group="edgeops.converters")


def _load_builtin() -> None:
    import edgeops.converters  # noqa: F401  (registers the built-in converters)


CONVERTERS.add_loader(_load_builtin)


# Source detection: by content where it matters, by suffix otherwise.
_SUFFIXES = {
    ".pkl": "sklearn", ".pickle": "sklearn", ".joblib": "sklearn",
    ".pt": "torch", ".pth": "torch", ".pt2": "torch",
    ".keras": "keras", ".h5": "keras", ".hdf5": "keras",
    ".onnx": "onnx", ".tflite": "tflite",
}


def detect_source(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "tensorflow"
        raise InputFileError(f"{path}: a directory, but not a TensorFlow SavedModel (no saved_model.pb)",
                             "pass a model file, or a SavedModel directory")
    if not path.is_file():
        raise InputFileError(f"{path}: no such file", "check the path")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: the file is empty", "re-export the model")
    framework = _SUFFIXES.get(path.suffix.lower())
    if framework in ("onnx", "tflite"):
        from .runtime import detect_format

        framework = detect_format(path)  # by content: a renamed .tflite is still TFLite
    if framework is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise InputFileError(f"{path}: unknown model file type '{path.suffix}'",
                             f"supported: {known}, or a SavedModel directory")
    return framework


@dataclass(frozen=True)
class ConversionResult:
    artifact: ModelArtifact
    source: str
    source_framework: str
    converter: str
    parity: ParityReport
    metadata: dict

    def to_dict(self) -> dict:
        return {"source": self.source, "source_framework": self.source_framework,
                "converter": self.converter, "model": self.artifact.to_dict(),
                "parity": self.parity.to_dict(), "metadata": self.metadata}


def convert(source: str | Path, to: str, out: str | Path, *, sample_input: str | Path | None = None,
            options: ConvertOptions | None = None) -> ConversionResult:
    """Convert ``source`` to ``to`` at ``out``, then check parity; nothing is left at ``out`` on failure."""
    from .runtime import open_runtime

    source, out = Path(source), Path(out)
    options = options or ConvertOptions()
    if to not in TARGETS:
        raise UsageError(f"unknown target format '{to}'", f"use one of: {', '.join(TARGETS)}")
    if out.suffix.lower() != f".{to}":
        raise UsageError(f"output '{out}' should end in .{to}", f"name it e.g. {out.with_suffix('.' + to).name}")
    if out.resolve() == source.resolve():
        raise UsageError("the output path is the source model", "write to a new file")
    framework = detect_source(source)
    converter = CONVERTERS.get((framework, to))
    samples = data_mod.load_samples(sample_input) if sample_input is not None else None
    if samples is not None and samples.columns is None:
        options.sample_shapes = {name: tuple(a.shape) for name, a in samples.tensors.items()}
    model = converter.load(source, options)

    if samples is not None:
        feeds = data_mod.bind(samples, model.inputs, "--sample-input")
    else:
        feeds = data_mod.generate(model.inputs, options.input_shapes)

    with atomic_output(out) as tmp:
        with _framework_errors("exporting the model", "check --input-shape and the sample inputs"):
            metadata = converter.export(model, tmp, options)
        # The reference runs after export, so a converter may learn output names/layouts while exporting.
        with _framework_errors("running the original model on the sample inputs",
                               "check that --input-shape / --sample-input fit the model"):
            reference = model.predict(feeds)
        runtime = open_runtime(tmp)
        converted = runtime.run(feeds_for_converted(model, feeds, runtime.inputs))
        report = compare(reference, converted, converter.tolerance, model.label_outputs)
        if not report.passed:
            raise ParityError(
                f"the converted model disagrees with the original: {'; '.join(report.failures())}",
                report, "check the sample inputs; if they are realistic, report the model to the converter")
        artifact = ModelArtifact(out, to, runtime.inputs, runtime.outputs, metadata)
    return ConversionResult(artifact, str(source), framework, type(converter).__name__, report, metadata)


@contextmanager
def _framework_errors(doing: str, hint: str):
    """A framework (torch, TensorFlow, scikit-learn) failing on the user's model or inputs is a
    user error with a message, not a traceback; converters turn the errors they expect into
    precise EdgeOpsErrors, this catches the rest at the boundary."""
    try:
        yield
    except EdgeOpsError:
        raise
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError, MemoryError) as exc:
        raise UnsupportedModelError(f"{doing} failed: {type(exc).__name__}: {first_line(exc, 250)}", hint) from None


class atomic_output:
    """A temporary path beside ``out`` that is renamed onto ``out`` only if the block succeeds.

    The result gets the mode a new file would get (umask), or that of the file it replaces;
    directories created for it are removed again if the block fails.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created: list[Path] = []

    def __enter__(self) -> Path:
        if self.out.is_dir():
            raise InputFileError(f"cannot write {self.out}: it is a directory", "give a file name")
        missing = [p for p in reversed(self.out.parents) if not p.exists()]
        try:
            for d in missing:
                d.mkdir()
                self.created.append(d)
            fd, name = tempfile.mkstemp(prefix=f".{self.out.stem}.", suffix=self.out.suffix,
                                        dir=self.out.parent)
        except OSError as exc:
            self._remove_created()
            raise InputFileError(f"cannot write {self.out}: {exc.strerror or exc}",
                                 "choose a writable output path") from None
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                os.chmod(self.tmp, self._mode())
                os.replace(self.tmp, self.out)
                return False
            except OSError as err:
                self._cleanup()
                raise InputFileError(f"cannot write {self.out}: {err.strerror or err}",
                                     "choose a writable output path") from None
        self._cleanup()
        return False

    def _mode(self) -> int:
        if self.out.exists():
            return self.out.stat().st_mode & 0o7777
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

    def _cleanup(self) -> None:
        self.tmp.unlink(missing_ok=True)
        for extra in self.tmp.parent.glob(glob.escape(self.tmp.name) + "*"):  # e.g. external-data files
            extra.unlink(missing_ok=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:  # not empty (something else wrote there): leave it
                break
