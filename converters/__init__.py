"""Built-in converters, one module per source framework, shipped as ``edgeops.converters``.

Each module registers its converters at its bottom and imports its framework only
inside functions, so importing this package stays cheap.
"""
import importlib

BUILTIN = ("native", "sklearn_onnx", "torch_onnx", "keras_tflite", "onnx_tflite")

for _name in BUILTIN:
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:  # DEV ONLY: modules still being written
        if _exc.name != f"{__name__}.{_name}":
            raise
