"""One Runtime protocol over onnxruntime and LiteRT.

The parity check, the accuracy gate, the benchmark and the agent see only this.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..artifact import TensorSpec
from ..errors import InputFileError


class Runtime(Protocol):
    format: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; returns outputs by name, in signature order."""
        ...


def detect_format(path: str | Path) -> str:
    """'onnx' or 'tflite', from the file's content (not only its name)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such model file", "check the path")
    with open(p, "rb") as fh:
        head = fh.read(8)
    # The content decides: a renamed file is still what it is.
    if head[4:8] == b"TFL3":
        return "tflite"
    if p.suffix.lower() == ".tflite":
        raise InputFileError(f"{p}: not a TFLite flatbuffer (no TFL3 identifier)",
                             "if it is an ONNX model, rename it to .onnx; else re-export it")
    if p.suffix.lower() == ".onnx":
        return "onnx"
    raise InputFileError(
        f"{p}: not an ONNX or TFLite model", "pass a .onnx or .tflite file"
    )


def open_runtime(path: str | Path, threads: int | None = None) -> Runtime:
    """Load a model file into the runtime that runs it."""
    fmt = detect_format(path)
    if fmt == "onnx":
        from .onnx import OnnxRuntime

        return OnnxRuntime(path, threads=threads)
    from .tflite import TFLiteRuntime

    return TFLiteRuntime(path, threads=threads)
