"""Small ONNX helpers shared by converters: loading with clear errors, and fitting a model
to what an older onnxruntime on the device loads (opset, ai.onnx.ml opset, IR version)."""
from __future__ import annotations

from pathlib import Path

from .errors import InputFileError, UnsupportedModelError, require


def load_onnx(path: str | Path):
    onnx = require("onnx", "onnx", "onnx", "reading ONNX models")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputFileError(
            f"{path}: not a valid ONNX model: {first[:200]}",
            "the file may be truncated or corrupt; re-export it",
        ) from None
    return model


def opsets(model) -> dict[str, int]:
    """Opset per domain, '' for the default ONNX domain."""
    return {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}


def fit_to_runtime(model, *, opset: int | None = None, max_opset: int | None = None,
                   max_ir_version: int | None = None, max_ml_opset: int | None = None):
    """Return a copy re-targeted to ``opset`` (or down to ``max_opset``) and capped IR/ml opset.

    Raises UnsupportedModelError when the device's runtime cannot load the model at all.
    """
    onnx = require("onnx", "onnx", "onnx", "re-targeting ONNX models")
    from onnx import version_converter

    dedupe_opset_imports(model)
    current = opsets(model).get("", None)
    target = opset or (min(current, max_opset) if current and max_opset else None)
    if current is not None and target is not None and target != current:
        try:
            model = version_converter.convert_version(model, target)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModelError(
                f"cannot move the model from opset {current} to {target}: {first[:200]}",
                "re-export it from the framework with the lower opset (--opset)",
            ) from None
    ml = opsets(model).get("ai.onnx.ml")
    if ml is not None and max_ml_opset is not None and ml > max_ml_opset:
        raise UnsupportedModelError(
            f"the model uses ai.onnx.ml opset {ml}; the device's onnxruntime loads <= {max_ml_opset}",
            "re-convert from the source model with --device so the converter targets the older opset",
        )
    if max_ir_version is not None and model.ir_version > max_ir_version:
        # The IR version only says which file features may appear; the checker tells if lowering is safe.
        lowered = onnx.ModelProto()
        lowered.CopyFrom(model)
        lowered.ir_version = max_ir_version
        try:
            onnx.checker.check_model(lowered)
        except Exception as exc:
            raise UnsupportedModelError(
                f"the model needs ONNX IR {model.ir_version}; the device's onnxruntime loads <= {max_ir_version}",
                f"re-export with an older opset ({str(exc).splitlines()[0][:120]})",
            ) from None
        model = lowered
    return model


def dedupe_opset_imports(model) -> None:
    """Some exporters list a domain twice; keep one entry per domain (the highest version)."""
    best: dict[str, int] = {}
    for o in model.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        best[domain] = max(best.get(domain, 0), o.version)
    if len(best) != len(model.opset_import):
        del model.opset_import[:]
        for domain, version in best.items():
            entry = model.opset_import.add()
            entry.domain, entry.version = domain, version


def save_onnx(model, path: str | Path) -> None:
    onnx = require("onnx", "onnx", "onnx", "writing ONNX models")
    onnx.save_model(model, str(path))
