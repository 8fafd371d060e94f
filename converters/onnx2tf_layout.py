"""Which tensor of an onnx2tf-converted TFLite model is which ONNX tensor, and in what layout.

onnx2tf rewrites the graph channel-last: every 3-5-D input becomes NWC/NHWC/NDHWC, and a
3-5-D output may come out channel-last too; it also renames tensors. ``bind_layout`` pairs the
converted model's inputs and outputs with the ONNX ones and records, per tensor, the transpose
that takes the ONNX array into the TFLite layout (docs/onnx-to-tflite.md). The converter in
converters/onnx_tflite.py uses it to bring the reference to the converted model's names and layout.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeops.errors import EdgeOpsError, InputFileError, UnsupportedModelError

if TYPE_CHECKING:
    from edgeops.converters.onnx_tflite import OnnxSourceModel


def channel_last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def _fits(source_shape, converted_shape, perm) -> bool:
    """Whether transposing ``source_shape`` by ``perm`` can give ``converted_shape`` (batch aside)."""
    if len(source_shape) != len(converted_shape):
        return False
    return all(not isinstance(c, int) or not isinstance(source_shape[p], int) or c == source_shape[p]
               for c, p in list(zip(converted_shape, perm))[1:])


def input_perm(source_shape, converted_shape) -> tuple[int, ...] | None:
    """onnx2tf makes every 3-5-D input channel-last (unless told otherwise); None keeps the array."""
    rank = len(source_shape)
    if 3 <= rank <= 5 and _fits(source_shape, converted_shape, channel_last(rank)):
        return channel_last(rank)
    return None


def transpose(array: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, perm)) if perm else array


@dataclass(frozen=True)
class Binding:
    """One tensor of the ONNX model and its counterpart in the converted model."""

    onnx_name: str
    tflite_name: str
    perm: tuple[int, ...] | None  # transposes the ONNX array into the TFLite layout


@dataclass(frozen=True)
class ConvertedLayout:
    inputs: tuple[Binding, ...]
    outputs: tuple[Binding, ...]  # in the TFLite model's output order


def _normalized(name: str) -> str:
    name = name.removeprefix("serving_default_").removesuffix(":0").replace("__", ":")
    return re.sub(r"[^0-9a-z]", "", name.lower())


def match_names(onnx_names: list[str], keys: list[str]) -> dict[str, str]:
    """key -> ONNX name: exact, then after onnx2tf's sanitizing (':' -> '__'), then normalized."""
    found = {}
    for key in keys:
        for name in onnx_names:
            if key in (name, name.replace(":", "__")) or _normalized(key) == _normalized(name):
                found[key] = name
                break
    return found if len(set(found.values())) == len(found) else {}


class ReferenceOutputs(Mapping):
    """The ONNX reference outputs, keyed and laid out as the converted model gives them.

    convert() asks for the reference before export, when the converted names and layouts are
    not known; it reads the values only after export, so the view resolves them on access.
    """

    def __init__(self, model: "OnnxSourceModel", values: dict[str, np.ndarray]):
        self._model = model
        self._values = values
        self._resolved: tuple[ConvertedLayout, dict] | None = None

    def _view(self) -> dict[str, np.ndarray]:
        layout = self._model.layout
        if layout is None:
            return self._values
        if self._resolved is None or self._resolved[0] is not layout:
            view = {b.tflite_name: transpose(self._values[b.onnx_name], b.perm) for b in layout.outputs}
            self._resolved = (layout, view)
        return self._resolved[1]

    def __getitem__(self, key: str) -> np.ndarray:
        return self._view()[key]

    def __iter__(self):
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())


def _max_error(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def bind_layout(model: OnnxSourceModel, tflite_path: Path, shapes: dict) -> ConvertedLayout:
    """Pair the TFLite model's tensors with the ONNX ones, and find each output's layout."""
    from edgeops.data import generate
    from edgeops.runtime.tflite import TFLiteRuntime

    try:
        runtime = TFLiteRuntime(tflite_path)
    except InputFileError as exc:  # e.g. Flex (select TensorFlow) ops that LiteRT does not run
        raise UnsupportedModelError(f"the model onnx2tf wrote does not load in LiteRT: {exc.message}",
                                    "the graph needs TensorFlow ops that TFLite lacks") from None
    interpreter = runtime.interpreter
    sig_in, sig_out = {}, {}
    if interpreter.get_signature_list():  # signature keys are the ONNX names; tensor names are not
        runner = interpreter.get_signature_runner()
        sig_in = {d["name"]: key for key, d in runner.get_input_details().items()}
        sig_out = {d["name"]: key for key, d in runner.get_output_details().items()}
    onnx_in = [s.name for s in model.inputs]
    onnx_out = [s.name for s in model.runtime.outputs]
    in_names = match_names(onnx_in, [sig_in.get(s.name, s.name) for s in runtime.inputs])
    out_names = match_names(onnx_out, [sig_out.get(s.name, s.name) for s in runtime.outputs])

    inputs = []
    for position, spec in enumerate(runtime.inputs):
        name = in_names.get(sig_in.get(spec.name, spec.name))
        if name is None:
            if len(runtime.inputs) != len(onnx_in):
                raise UnsupportedModelError("onnx2tf changed the model's inputs", "report this model")
            name = onnx_in[position]
        source = next(s for s in model.inputs if s.name == name)
        inputs.append(Binding(name, spec.name, input_perm(shapes.get(name, source.shape), spec.shape)))
    named_out = [out_names.get(sig_out.get(s.name, s.name)) for s in runtime.outputs]
    if None in named_out:
        if len(runtime.outputs) != len(onnx_out):
            raise UnsupportedModelError("onnx2tf changed the model's outputs", "report this model")
        named_out = onnx_out

    # Which outputs came out channel-last cannot be told from shapes alone (C == H == W):
    # run both models once and keep, per output, the layout that fits and agrees best.
    layout = ConvertedLayout(tuple(inputs), ())
    try:
        feeds = generate(model.inputs, shapes, batch=1, seed=1)
        reference = model.run_onnx(feeds)
        bound = {b.tflite_name: transpose(feeds[b.onnx_name], b.perm) for b in layout.inputs}
        got = runtime.run(bound)
    except EdgeOpsError:
        reference = got = None  # no probe (e.g. dynamic dims): decide by shape below
    outputs = []
    for spec, name in zip(runtime.outputs, named_out):
        source = next(s for s in model.runtime.outputs if s.name == name)
        rank = len(source.shape)
        candidates = [None] + ([channel_last(rank)] if 3 <= rank <= 5 else [])
        if reference is not None:
            ref, conv = reference[name], got[spec.name]
            fitting = [p for p in candidates if transpose(ref, p).shape == conv.shape]
            perm = min(fitting, key=lambda p: _max_error(transpose(ref, p), conv), default=None)
        else:
            fitting = [p for p in candidates if _fits(source.shape, spec.shape, p or tuple(range(rank)))]
            perm = fitting[-1] if fitting else None  # channel-last when both fit: onnx2tf's habit
        outputs.append(Binding(name, spec.name, perm))
    return ConvertedLayout(tuple(inputs), tuple(outputs))
