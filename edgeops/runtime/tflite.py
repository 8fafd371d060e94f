"""LiteRT (ai-edge-litert) behind the Runtime protocol, with tflite-runtime as a fallback.

LiteRT is the successor of tflite-runtime and works with numpy 2; tflite-runtime is
only tried for old devices where LiteRT has no wheel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import TensorSpec
from ..errors import DataError, InputFileError, MissingDependencyError, first_line
from ..procio import quiet_native_stderr


def load_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # old devices only

        return Interpreter
    except ImportError:
        raise MissingDependencyError("ai-edge-litert", "tflite", "running TFLite models") from None


class TFLiteRuntime:
    format = "tflite"

    def __init__(self, path: str | Path, threads: int | None = None):
        Interpreter = load_interpreter_class()
        self.path = Path(path)
        try:
            with quiet_native_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
                self.interpreter.allocate_tensors()
        except Exception as exc:
            if "custom op" in str(exc).lower():
                from ..errors import UnsupportedModelError

                raise UnsupportedModelError(
                    f"{path}: the model needs a custom operator LiteRT does not have: {first_line(exc)}",
                    "rebuild it with builtin ops only, or use the runtime of the project that made it") from None
            raise InputFileError(
                f"{path}: LiteRT cannot load this model: {first_line(exc)}",
                "check that the file is a complete TFLite flatbuffer",
            ) from None
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._in)
        self.outputs = tuple(_spec(d) for d in self._out)
        # Plain tuples for the hot path: (name, index, dtype) per input, (name, index) per output.
        self._feed = [(d["name"], int(d["index"]), np.dtype(d["dtype"])) for d in self._in]
        self._fetch = [(d["name"], int(d["index"])) for d in self._out]
        self._shapes = {d["name"]: tuple(int(x) for x in d["shape"]) for d in self._in}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        interp = self.interpreter
        try:
            values = [(name, index, dtype, np.asarray(feeds[name])) for name, index, dtype in self._feed]
            for name, _, dtype, value in values:
                # Same rule as onnxruntime: the caller feeds the model's dtype (edgeops.data.bind casts safely).
                if value.dtype != dtype:
                    raise DataError(f"input '{name}' takes {dtype.name}, got {value.dtype.name}",
                                    f"cast the input to {dtype.name}")
            resized = False
            for name, index, _, value in values:
                if value.shape != self._shapes[name]:
                    # TFLite has static shapes: resize every changed input, then allocate once
                    # (allocating between two resizes leaves the graph inconsistent).
                    interp.resize_tensor_input(index, list(value.shape))
                    self._shapes[name] = value.shape
                    resized = True
            if resized:
                interp.allocate_tensors()
            for _, index, dtype, value in values:
                interp.set_tensor(index, value)
            interp.invoke()
        except KeyError as exc:
            raise DataError(f"missing input {exc}", "feed every input of the model by name") from None
        except (ValueError, RuntimeError) as exc:
            raise DataError(
                f"the model rejected the inputs: {first_line(exc)}",
                "check the inputs' shapes and dtypes against `edgeops inspect`",
            ) from None
        # get_tensor already returns a copy.
        return {name: interp.get_tensor(index) for name, index in self._fetch}

    def prepared(self, feeds: dict[str, np.ndarray]):
        """A call that runs these (already checked) feeds exactly as a bare LiteRT loop would:
        set_tensor, invoke, get_tensor. For timing loops; call ``run`` once first (it resizes)."""
        interp = self.interpreter
        set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
        inputs = [(index, np.asarray(feeds[name])) for name, index, _ in self._feed]
        outputs = [index for _, index in self._fetch]

        def run(_feeds=None):
            for index, value in inputs:
                set_tensor(index, value)
            invoke()
            return [get_tensor(index) for index in outputs]

        return run

    def quantization(self, name: str) -> tuple[float, int] | None:
        """(scale, zero_point) of a quantized input/output, or None for float tensors."""
        for d in list(self._in) + list(self._out):
            if d["name"] == name:
                scale, zero = d.get("quantization", (0.0, 0))
                return (float(scale), int(zero)) if scale else None
        return None


def _spec(d) -> TensorSpec:
    sig = d.get("shape_signature")
    shape = sig if sig is not None and len(sig) else d["shape"]
    return TensorSpec(
        d["name"], np.dtype(d["dtype"]).name, tuple(int(x) if x >= 0 else None for x in shape)
    )
