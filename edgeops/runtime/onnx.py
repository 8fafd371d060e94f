"""onnxruntime behind the Runtime protocol."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import TensorSpec
from ..errors import DataError, InputFileError, UnsupportedModelError, first_line, require

# ONNX type strings as onnxruntime reports them -> numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint64)": "uint64",
    "tensor(uint32)": "uint32",
    "tensor(uint16)": "uint16",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _dims(shape) -> tuple:
    return tuple(d if isinstance(d, int) else (d or None) for d in shape)


class OnnxRuntime:
    format = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime", "onnxruntime", "onnx", "running ONNX models")
        # What session.run raises for inputs the model rejects; anything else is a bug to surface.
        self._ort_errors = (ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                            ort.capi.onnxruntime_pybind11_state.Fail,
                            ort.capi.onnxruntime_pybind11_state.RuntimeException,
                            ort.capi.onnxruntime_pybind11_state.InvalidGraph, ValueError, TypeError, KeyError)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 4  # errors come back as exceptions; don't also print them in red
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise InputFileError(
                f"{path}: onnxruntime cannot load this model: {first_line(exc)}",
                "check that the file is a complete ONNX model that this onnxruntime supports",
            ) from None
        self.inputs = tuple(
            TensorSpec(i.name, _ORT_TYPES.get(i.type, i.type), _dims(i.shape))
            for i in self.session.get_inputs()
        )
        self.outputs = tuple(
            TensorSpec(o.name, _ORT_TYPES.get(o.type, o.type), _dims(o.shape))
            for o in self.session.get_outputs()
        )
        self._names = [o.name for o in self.outputs]
        odd = [f"{t.name} ({t.dtype})" for t in self.inputs if t.dtype not in _ORT_TYPES.values()]
        if odd:
            raise UnsupportedModelError(f"{path}: input type not supported by edgeops: {', '.join(odd)}",
                                        "use float, integer, bool or string inputs")

    def prepared(self, feeds: dict[str, np.ndarray]):
        """A call that runs these (already checked) feeds exactly as a bare ``session.run`` loop
        would; for timing loops. Call ``run`` once first: errors there are reported clearly."""
        session_run = self.session.run

        def run(_feeds=None):
            return session_run(None, feeds)

        return run

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(None, feeds)
        except (self._ort_errors) as exc:  # bad feeds: wrong name, shape, dtype, or a runtime check
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:2] if line.strip())
            raise DataError(
                f"the model rejected the inputs: {detail[:400] or first_line(exc)}",
                "check the inputs' names, shapes and dtypes against `edgeops inspect`",
            ) from None
        return dict(zip(self._names, values))
