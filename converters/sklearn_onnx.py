"""scikit-learn estimators and Pipelines (pickle/joblib) -> ONNX through skl2onnx.

Inputs: a model fit on a plain matrix gets one float input ``input`` [N, n_features]. A model
that selects DataFrame columns by name (ColumnTransformer) gets one input per column, [N, 1],
float32 for numbers and string for text, so mixed tables convert without hand-written types.
Classifiers output ``label`` and ``probabilities`` as plain tensors (no ZipMap).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeops.artifact import TensorSpec
from edgeops.convert import CONVERTERS, ConvertOptions
from edgeops.errors import InputFileError, UnsupportedModelError, require
from edgeops.validate import Tolerance

DEFAULT_OPSET = 18
DEFAULT_ML_OPSET = 3  # IsolationForest needs ai.onnx.ml 3 (ENVIRONMENT.md)
# StringNormalizer (text vectorizers) needs a locale that exists on the device; skl2onnx's
# default en_US.UTF-8 is missing on minimal Debian images, C.UTF-8 is built into glibc >= 2.35.
TEXT_LOCALE = "C.UTF-8"


def _sklearn():
    require("sklearn", "scikit-learn", "sklearn", "converting scikit-learn models")
    return require("skl2onnx", "skl2onnx", "sklearn", "converting scikit-learn models")


def load_estimator(path: Path):
    """Unpickle a model. Unpickling runs code from the file: only load models you trust."""
    _sklearn()
    import joblib
    from sklearn.base import BaseEstimator

    try:
        est = joblib.load(path)
    except ModuleNotFoundError as exc:
        raise UnsupportedModelError(
            f"{path}: the pickle needs the module '{exc.name}', which is not installed",
            "install the package the model was trained with",
        ) from None
    except Exception as exc:  # pickle/joblib raise many types for truncated or foreign files
        raise InputFileError(
            f"{path}: cannot unpickle the model ({type(exc).__name__}: {str(exc)[:150]})",
            "the file may be truncated or not a pickle/joblib file; save it with joblib.dump(model, path)",
        ) from None
    if not isinstance(est, BaseEstimator):
        raise UnsupportedModelError(
            f"{path}: holds a {type(est).__name__}, not a scikit-learn estimator",
            "pickle the fitted estimator or Pipeline itself",
        )
    if not hasattr(est, "n_features_in_") and not hasattr(est, "feature_names_in_"):
        raise UnsupportedModelError(f"{path}: the {type(est).__name__} is not fitted", "fit it, then save it")
    return est


def _walk(est):
    """Yield every estimator inside ``est`` (Pipelines, ColumnTransformers, nested)."""
    yield est
    children = []
    if hasattr(est, "steps"):
        children = [s for _, s in est.steps]
    elif hasattr(est, "transformers_"):
        children = [t for _, t, _ in est.transformers_]
    elif hasattr(est, "transformer_list"):
        children = [t for _, t in est.transformer_list]
    for child in children:
        if child not in ("drop", "passthrough") and child is not None:
            yield from _walk(child)


def _is_text(transformer) -> bool:
    """Does this (fitted) transformer take text? Encoders with string categories, vectorizers, imputers of strings."""
    for est in _walk(transformer):
        if hasattr(est, "vocabulary_"):
            return True
        cats = getattr(est, "categories_", None)
        if cats is not None and any(np.asarray(c).dtype.kind in "OUS" for c in cats):
            return True
        stats = getattr(est, "statistics_", None)
        if stats is not None and np.asarray(stats).dtype.kind in "OUS":
            return True
    return False


def input_specs(est) -> tuple[TensorSpec, ...]:
    column_transformers = [e for e in _walk(est) if hasattr(e, "transformers_")]
    by_name = any(
        isinstance(cols, str) or (isinstance(cols, (list, tuple)) and cols and isinstance(cols[0], str))
        for ct in column_transformers for _, _, cols in ct.transformers_
    )
    names = list(getattr(est, "feature_names_in_", []))
    if by_name and names:
        text = set()
        for ct in column_transformers:
            for _, trans, cols in ct.transformers_:
                if trans in ("drop", "passthrough"):
                    continue
                cols = [cols] if isinstance(cols, str) else list(cols)
                if _is_text(trans):
                    text.update(c for c in cols if isinstance(c, str))
        return tuple(TensorSpec(n, "str" if n in text else "float32", (None, 1)) for n in names)
    if _is_text(est):
        raise UnsupportedModelError(
            "the model takes text but does not select DataFrame columns by name",
            "wrap the text step in a ColumnTransformer that names its column, and fit it on a DataFrame",
        )
    return (TensorSpec("input", "float32", (None, int(est.n_features_in_))),)


class SklearnModel:
    def __init__(self, est, path: Path):
        from sklearn.base import is_classifier, is_outlier_detector

        self.estimator = est
        self.path = path
        self.inputs = input_specs(est)
        self.is_classifier = is_classifier(est)
        self.is_outlier_detector = is_outlier_detector(est)
        labelled = self.is_classifier or self.is_outlier_detector
        self.label_outputs = frozenset({"label"}) if labelled else frozenset()

    def _frame(self, feeds: dict[str, np.ndarray]):
        if len(self.inputs) == 1 and self.inputs[0].name == "input":
            return feeds["input"]
        import pandas as pd

        return pd.DataFrame({s.name: feeds[s.name].reshape(-1) for s in self.inputs})

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._predict(self._frame(feeds))
        except (ValueError, TypeError) as exc:  # scikit-learn's own input validation
            from edgeops.errors import DataError, first_line

            raise DataError(f"scikit-learn rejected the sample inputs: {first_line(exc, 200)}",
                            "check the sample rows: no NaN/inf unless the model imputes, right columns") from None

    def _predict(self, X) -> dict[str, np.ndarray]:
        est = self.estimator
        if self.is_classifier:
            out = {"label": np.asarray(est.predict(X))}
            if hasattr(est, "predict_proba"):
                out["probabilities"] = np.asarray(est.predict_proba(X), dtype=np.float32)
            return out
        if self.is_outlier_detector:  # skl2onnx: label (1 inlier, -1 outlier) and scores
            scores = np.asarray(est.decision_function(X), dtype=np.float32)
            return {"label": np.asarray(est.predict(X)), "scores": scores.reshape(len(scores), -1)}
        if hasattr(est, "predict"):
            pred = np.asarray(est.predict(X))
            return {"variable": pred.reshape(len(pred), -1) if pred.ndim > 1 else pred.reshape(-1, 1)}
        return {"variable": np.asarray(est.transform(X), dtype=np.float32)}


def _options(est) -> dict:
    """Per-estimator skl2onnx options: plain tensors instead of ZipMap, and a locale that exists."""
    options = {}
    for e in _walk(est):
        if hasattr(e, "vocabulary_") and hasattr(e, "build_analyzer"):
            options[id(e)] = {"locale": TEXT_LOCALE}
        elif hasattr(e, "predict_proba") and not hasattr(e, "steps"):
            options[id(e)] = {"zipmap": False}
    return options


def _initial_types(specs):
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [(s.name, StringTensorType([None, 1]) if s.dtype == "str" else FloatTensorType(list(s.shape)))
            for s in specs]


class SklearnToOnnx:
    source, target, extra = "sklearn", "onnx", "sklearn"
    # skl2onnx computes in float32 where scikit-learn uses float64. Probabilities agree to ~1e-6
    # for linear models and MLPs; tree ensembles compare thresholds in float32, so an input that
    # sits next to a split threshold can take the other branch: allow 1% such rows.
    tolerance = Tolerance(atol=1e-4, rtol=1e-3, min_label_agreement=0.99, max_mismatch_rows=0.01)

    def load(self, path: Path, options: ConvertOptions) -> SklearnModel:
        return SklearnModel(load_estimator(path), path)

    def export(self, model: SklearnModel, out: Path, options: ConvertOptions) -> dict:
        skl2onnx = _sklearn()
        from edgeops.onnx_util import fit_to_runtime, opsets, save_onnx

        opset = options.target_opset(DEFAULT_OPSET)
        ml_opset = min(DEFAULT_ML_OPSET, options.max_ml_opset or DEFAULT_ML_OPSET)
        est = model.estimator
        try:
            onx = skl2onnx.to_onnx(est, initial_types=_initial_types(model.inputs), options=_options(est),
                                   target_opset={"": opset, "ai.onnx.ml": ml_opset})
        except Exception as exc:
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "shape calculator" in text or "converter" in text.lower():
                raise UnsupportedModelError(
                    f"skl2onnx cannot convert an estimator in this model: {text[:200]}",
                    "use an estimator that skl2onnx supports, or register a custom converter with skl2onnx",
                ) from None
            raise UnsupportedModelError(f"skl2onnx failed: {type(exc).__name__}: {text[:200]}",
                                        "check the model's steps against skl2onnx's supported list") from None
        onx = fit_to_runtime(onx, max_ir_version=options.max_ir_version, max_ml_opset=options.max_ml_opset)
        save_onnx(onx, out)
        import sklearn

        return {"opset": opsets(onx).get(""), "opsets": opsets(onx), "ir_version": onx.ir_version,
                "skl2onnx_version": skl2onnx.__version__, "sklearn_version": sklearn.__version__,
                "estimator": type(est).__name__}


CONVERTERS.register(("sklearn", "onnx"), SklearnToOnnx())
