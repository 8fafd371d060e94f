"""Built-in converters, one module per source framework, shipped as ``edgeops.converters``.

Each module registers its converters at its bottom and imports its framework only
inside functions, so importing this package stays cheap.
"""
from . import keras_tflite, native, onnx_tflite, sklearn_onnx, torch_onnx  # noqa: F401
