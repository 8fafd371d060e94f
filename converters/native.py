"""ONNX -> ONNX and TFLite -> TFLite: inspect, validate and (for ONNX) re-target an existing model.

The device's runtime may be older than the one that exported the model; --device or --opset
moves the graph to an opset/IR version it loads, and the parity check proves nothing changed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeops.convert import CONVERTERS, ConvertOptions
from edgeops.errors import UsageError
from edgeops.validate import Tolerance


def label_outputs_of(specs) -> frozenset[str]:
    """Rank-1 integer or text outputs hold class labels."""
    return frozenset(s.name for s in specs if len(s.shape) == 1 and (s.dtype == "str" or "int" in s.dtype))


class RuntimeSource:
    """An ONNX or TFLite file as the reference: run it with its own runtime."""

    def __init__(self, path: Path):
        from edgeops.runtime import open_runtime

        self.path = path
        self.runtime = open_runtime(path)
        self.inputs = self.runtime.inputs
        self.label_outputs = label_outputs_of(self.runtime.outputs)

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runtime.run(feeds)


class OnnxToOnnx:
    source, target, extra = "onnx", "onnx", "onnx"
    # Re-targeting rewrites a few ops (e.g. Split/Reduce attributes to inputs); results stay exact
    # up to float reassociation.
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)

    def load(self, path: Path, options: ConvertOptions) -> RuntimeSource:
        from edgeops.onnx_util import load_onnx

        load_onnx(path)  # structural check with a clear error before onnxruntime sees it
        return RuntimeSource(path)

    def export(self, model: RuntimeSource, out: Path, options: ConvertOptions) -> dict:
        from edgeops.onnx_util import fit_to_runtime, load_onnx, opsets, save_onnx

        proto = load_onnx(model.path)
        before = opsets(proto).get("")
        opset = options.target_opset(before or 1) if options.opset else None  # refuses --opset above the device's
        fitted = fit_to_runtime(proto, opset=opset, max_opset=options.max_opset,
                                max_ir_version=options.max_ir_version, max_ml_opset=options.max_ml_opset)
        save_onnx(fitted, out)
        return {"opset": opsets(fitted).get(""), "opsets": opsets(fitted), "ir_version": fitted.ir_version,
                "retargeted_from_opset": before if before != opsets(fitted).get("") else None}


class TFLiteToTFLite:
    source, target, extra = "tflite", "tflite", "tflite"
    tolerance = Tolerance(atol=0.0, rtol=0.0)  # a byte copy: must be identical

    def load(self, path: Path, options: ConvertOptions) -> RuntimeSource:
        if options.opset:
            raise UsageError("--opset applies to ONNX models only", "drop --opset for a .tflite model")
        return RuntimeSource(path)

    def export(self, model: RuntimeSource, out: Path, options: ConvertOptions) -> dict:
        shutil.copyfile(model.path, out)
        return {"validated": True}


CONVERTERS.register(("onnx", "onnx"), OnnxToOnnx())
CONVERTERS.register(("tflite", "tflite"), TFLiteToTFLite())
