"""The accuracy gate: does the quantized model still do the float model's job?

Both models run on the same evaluation inputs. The metric depends on what the model
outputs and whether ground-truth labels are given (docs/quantization.md):

  classifier, labels given      accuracy of each model (%); drop = float - quantized
  classifier, no labels         agreement with the float model's predicted classes (%)
  regressor, labels given       R^2 x 100 of each model; drop in the same points
  regressor, no labels          % of predictions within 1% relative or 1e-3 absolute of float

A classifier's prediction comes from a label output (an integer or text output of rank 1)
when the model has one, else from the argmax over axis 1 of the first float output with at
least two columns. A regressor is a model whose first float output has one column.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .errors import DataError, UnsupportedModelError

# A regression prediction "agrees" when it is within either bound of the float prediction.
AGREE_RTOL = 0.01
AGREE_ATOL = 1e-3
EVAL_BATCH = 256  # rows per run: bounds memory on big eval sets

DATA_SOURCES = {
    "eval": "the --eval data",
    "calibration": "the --calibration inputs (no --eval given)",
    "random": "random inputs (no --eval or --calibration given): the result says little about real data",
}


@dataclass(frozen=True)
class GateReport:
    metric: str  # "accuracy" | "agreement" | "r2"
    before: float  # the float model's score, in percent (agreement: 100)
    after: float  # the quantized model's score, in percent
    drop_points: float  # before - after, in percentage points
    max_drop_points: float
    passed: bool
    samples: int
    max_abs: dict[str, float | None] = field(default_factory=dict)  # per output; None for labels
    prediction: str = ""  # which output the metric used, and how
    data: str = "eval"  # "eval" | "calibration" | "random"

    @property
    def note(self) -> str:
        return DATA_SOURCES.get(self.data, self.data)

    def to_dict(self) -> dict:
        return {
            "metric": self.metric, "before": self.before, "after": self.after,
            "drop_points": self.drop_points, "max_drop_points": self.max_drop_points,
            "passed": self.passed, "samples": self.samples, "max_abs": dict(self.max_abs),
            "prediction": self.prediction, "data": self.data, "note": self.note,
        }

    def summary(self) -> str:
        return (f"{self.metric} {self.before:.2f} -> {self.after:.2f} "
                f"(drop {self.drop_points:.2f} points, allowed {self.max_drop_points:g})")


def run_batched(runtime, feeds: dict[str, np.ndarray], batch: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Run ``feeds`` through ``runtime`` in row batches and concatenate each output.

    A model whose batch dimension is fixed (e.g. 1) runs that many rows at a time.
    """
    n = len(next(iter(feeds.values())))
    fixed = [s.shape[0] for s in runtime.inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0]
    step = fixed[0] if fixed else batch
    if fixed and n % step:
        raise DataError(f"the model takes batches of exactly {step} rows but the data has {n}",
                        f"give a multiple of {step} rows")
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, step):
        chunk = {k: _to_input(runtime, k, v[start:start + step]) for k, v in feeds.items()}
        for name, value in runtime.run(chunk).items():
            parts.setdefault(name, []).append(_from_output(runtime, name, np.asarray(value)))
    return {k: (np.concatenate(v) if v[0].ndim else np.asarray(v)) for k, v in parts.items()}


def _to_input(runtime, name: str, value: np.ndarray) -> np.ndarray:
    # A fully integer TFLite model takes int8/uint8 inputs: quantize float data with its scale.
    quant = getattr(runtime, "quantization", None)
    params = quant(name) if quant else None
    if params and value.dtype.kind == "f":
        spec = next(s for s in runtime.inputs if s.name == name)
        info = np.iinfo(np.dtype(spec.dtype))
        scale, zero = params
        return np.clip(np.round(value / scale) + zero, info.min, info.max).astype(spec.dtype)
    return value


def _from_output(runtime, name: str, value: np.ndarray) -> np.ndarray:
    quant = getattr(runtime, "quantization", None)
    params = quant(name) if quant else None
    if params and value.dtype.kind in "iu":
        scale, zero = params
        return (value.astype(np.float32) - zero) * scale
    return value


def _pairs(float_out: dict, quant_out: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from .validate import match_outputs

    return match_outputs(float_out, quant_out)


def _is_label(name: str, arr: np.ndarray, label_outputs) -> bool:
    if label_outputs is not None:
        return name in label_outputs
    rank1 = arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)
    return rank1 and arr.dtype.kind in "iuOUSb"


def _prediction(pairs, label_outputs):
    """Pick what the metric compares: ("label"|"argmax"|"regression", name, float, quant)."""
    for name, f, q in pairs:
        if _is_label(name, f, label_outputs):
            return "label", name, f.reshape(-1), q.reshape(-1)
    for name, f, q in pairs:
        if f.dtype.kind == "f" and f.ndim >= 2 and f.shape[1] >= 2:
            return "argmax", name, f.argmax(1), q.reshape(f.shape).argmax(1)
    for name, f, q in pairs:
        if f.dtype.kind == "f" and (f.ndim == 1 or (f.ndim == 2 and f.shape[1] == 1)):
            return "regression", name, f.reshape(-1).astype(np.float64), q.reshape(-1).astype(np.float64)
    shapes = ", ".join(f"{n}{tuple(f.shape)}" for n, f, _ in pairs)
    raise UnsupportedModelError(
        f"the accuracy gate cannot tell what this model predicts (outputs: {shapes})",
        "the gate knows classifiers (label or class-score outputs) and single-column regressors")


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from .validate import same_labels

    return same_labels(a, b)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    y = y.astype(np.float64)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - pred) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def evaluate_gate(float_runtime, quant_runtime, eval_feeds: dict[str, np.ndarray],
                  labels: np.ndarray | None, max_drop: float, *,
                  label_outputs: Sequence[str] | None = None, data: str = "eval") -> GateReport:
    """Run both models on ``eval_feeds`` and compare them (see the module docstring).

    ``label_outputs`` names the outputs that hold class labels; None detects them
    (integer or text outputs of rank 1).
    """
    float_out = run_batched(float_runtime, eval_feeds)
    quant_out = run_batched(quant_runtime, eval_feeds)
    return gate_outputs(float_out, quant_out, labels, max_drop, label_outputs=label_outputs, data=data)


def gate_outputs(float_out: dict[str, np.ndarray], quant_out: dict[str, np.ndarray],
                 labels: np.ndarray | None, max_drop: float, *,
                 label_outputs: Sequence[str] | None = None, data: str = "eval") -> GateReport:
    """The pure part of the gate: score two sets of outputs."""
    pairs = [(n, np.asarray(f), np.asarray(q)) for n, f, q in _pairs(float_out, quant_out)]
    labels_set = frozenset(label_outputs) if label_outputs is not None else None
    kind, name, f_pred, q_pred = _prediction(pairs, labels_set)
    n = len(f_pred)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise DataError(f"the labels have shape {labels.shape}; the gate takes one label per row",
                            "give a 1-D array of labels (class ids, class names or regression targets)")
        if len(labels) != n:
            raise DataError(f"the evaluation data has {len(labels)} labels for {n} predictions",
                            "give one label per row")
        if labels.dtype.kind == "f" and not np.all(np.isfinite(labels)):
            raise DataError("the labels contain NaN or infinite values", "drop or fix those rows")

    if kind == "regression":
        if labels is not None:
            if labels.dtype.kind not in "biuf":
                raise DataError("the labels are text but the model is a regressor",
                                "give numeric targets, or name the right --label-column")
            metric, before, after = "r2", 100 * _r2(labels, f_pred), 100 * _r2(labels, q_pred)
        else:
            close = np.abs(q_pred - f_pred) <= np.maximum(AGREE_ATOL, AGREE_RTOL * np.abs(f_pred))
            metric, before, after = "agreement", 100.0, 100 * float(np.mean(close)) if n else 100.0
        how = f"{name} (regression)"
    else:
        if labels is not None:
            if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
                raise DataError(
                    f"the labels are fractional {labels.dtype.name} values but the model is a classifier ({name})",
                    "give class ids or class names, not scores")
            if kind == "argmax" and labels.dtype.kind not in "biuf":
                raise DataError(
                    f"the labels are {labels.dtype.name} but the model outputs class scores ({name})",
                    "give the labels as class indices 0..K-1")
            metric = "accuracy"
            before = 100 * float(np.mean(_same(f_pred, labels))) if n else 100.0
            after = 100 * float(np.mean(_same(q_pred, labels))) if n else 100.0
        else:
            metric, before = "agreement", 100.0
            after = 100 * float(np.mean(_same(q_pred, f_pred))) if n else 100.0
        how = f"{name} ({'label output' if kind == 'label' else 'argmax over axis 1'})"

    max_abs: dict[str, float | None] = {}
    for out_name, f, q in pairs:
        if f.dtype.kind in "biuf" and q.dtype.kind in "biuf" and f.size == q.size and \
                not _is_label(out_name, f, labels_set):
            diff = np.abs(f.astype(np.float64).reshape(-1) - q.astype(np.float64).reshape(-1))
            diff[np.isnan(diff)] = np.inf  # a NaN on either side is the worst error, not a missing one
            max_abs[out_name] = float(diff.max()) if diff.size else 0.0
        else:
            max_abs[out_name] = None
    drop = before - after
    return GateReport(metric=metric, before=round(before, 4), after=round(after, 4),
                      drop_points=round(drop, 4), max_drop_points=float(max_drop),
                      passed=bool(drop <= max_drop + 1e-9), samples=n, max_abs=max_abs,
                      prediction=how, data=data)
