"""Built-in converters, one module per source framework, shipped as ``edgeops.converters``.

Each module registers its converters at its bottom and imports its framework only
inside functions, so importing this package stays cheap.
"""
from edgeops.convert import CONVERTERS

from . import native, sklearn_onnx, torch_onnx, keras_tflite, onnx_tflite  # noqa: F401,E402
