"""LiteRT (ai-edge-litert) behind the Runtime protocol, with tflite-runtime as a fallback.

LiteRT is the successor of tflite-runtime and works with numpy 2; tflite-runtime is
only tried for old devices where LiteRT has no wheel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import TensorSpec
from ..errors import DataError, InputFileError, MissingDependencyError


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
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputFileError(
                f"{path}: LiteRT cannot load this model: {first[:300]}",
                "check that the file is a complete TFLite flatbuffer",
            ) from None
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._in)
        self.outputs = tuple(_spec(d) for d in self._out)
        self._shapes = {d["name"]: tuple(d["shape"]) for d in self._in}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = {d["name"]: np.asarray(feeds[d["name"]]) for d in self._in}
            resized = False
            for d in self._in:
                shape = tuple(values[d["name"]].shape)
                if shape != self._shapes[d["name"]]:
                    # TFLite has static shapes: resize every changed input, then allocate once
                    # (allocating between two resizes leaves the graph inconsistent).
                    self.interpreter.resize_tensor_input(d["index"], list(shape))
                    self._shapes[d["name"]] = shape
                    resized = True
            if resized:
                self.interpreter.allocate_tensors()
            for d in self._in:
                self.interpreter.set_tensor(d["index"], values[d["name"]].astype(d["dtype"], copy=False))
            self.interpreter.invoke()
        except KeyError as exc:
            raise DataError(f"missing input {exc}", "feed every input of the model by name") from None
        except (ValueError, RuntimeError) as exc:
            raise DataError(
                f"the model rejected the inputs: {str(exc).splitlines()[0][:300]}",
                "check the inputs' shapes and dtypes against `edgeops inspect`",
            ) from None
        return {d["name"]: np.array(self.interpreter.get_tensor(d["index"])) for d in self._out}

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
