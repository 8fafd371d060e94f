"""Keras models (.keras, .h5) and TensorFlow SavedModel directories -> TFLite.

The conversion itself lives in edgeops.keras_source (loading) and edgeops.tflite_export
(writing), shared with quantization; this module adapts it to the converter protocol. The
exported model carries the source's input/output names in the source's order, so the parity
check pairs outputs by name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeops.artifact import TensorSpec
from edgeops.convert import CONVERTERS, ConvertOptions
from edgeops.errors import InputFileError
from edgeops.validate import Tolerance


class KerasSourceModel:
    """A loaded Keras model or SavedModel signature, as the converter protocol sees it."""

    label_outputs: frozenset[str] = frozenset()  # Keras outputs are tensors, never label strings

    def __init__(self, loaded):
        self.loaded = loaded  # edgeops.keras_source.KerasSource
        self.inputs: tuple[TensorSpec, ...] = loaded.inputs
        self.output_names: tuple[str, ...] = loaded.output_names

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.loaded(feeds)

    def converted_feeds(self, feeds: dict[str, np.ndarray],
                        converted_inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """Feeds keyed by the TFLite input names.

        Our export names TFLite inputs after the source's; a .tflite written by TF's own
        tools names them "serving_default_<name>:0", which is matched too.
        """
        mapped = {}
        for spec in converted_inputs:
            key = _source_name(spec.name)
            if key not in feeds:
                break
            mapped[spec.name] = feeds[key]
        else:
            return mapped
        if len(converted_inputs) == len(feeds) == 1:
            return {converted_inputs[0].name: next(iter(feeds.values()))}
        raise InputFileError(
            f"the converted model's inputs ({', '.join(s.name for s in converted_inputs)}) do not match "
            f"the original's ({', '.join(feeds)})", "report this model as a converter bug")


def _source_name(tflite_name: str) -> str:
    name = tflite_name
    if name.startswith("serving_default_"):
        name = name[len("serving_default_"):]
    if name.endswith(":0"):
        name = name[:-2]
    return name


class KerasToTFLite:
    source = "keras"
    target = "tflite"
    extra = "keras"
    # fp32 TFLite vs Keras measured 1e-7..1e-6 max abs on small conv nets and MLPs
    # (different kernels, same float32 math); 1e-4 leaves room for deep models.
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)

    def load(self, path: Path, options: ConvertOptions) -> KerasSourceModel:
        from edgeops.errors import UsageError
        from edgeops.keras_source import load_keras_source

        if options.opset:
            raise UsageError("--opset applies to ONNX output only", "drop --opset when converting to TFLite")

        loaded, _, _ = load_keras_source(path)
        return KerasSourceModel(loaded)

    def export(self, model: KerasSourceModel, out: Path, options: ConvertOptions) -> dict:
        from edgeops.tflite_export import export_loaded

        return export_loaded(model.loaded, out, "fp32")


class SavedModelToTFLite(KerasToTFLite):
    """A SavedModel directory: its serving_default signature is what gets converted."""

    source = "tensorflow"


CONVERTERS.register(("keras", "tflite"), KerasToTFLite())
CONVERTERS.register(("tensorflow", "tflite"), SavedModelToTFLite())
