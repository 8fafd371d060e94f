"""Parity between a converted model and its original: per-output errors and label agreement."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """How close a converted model must be. Lives with each converter, never in generic code."""

    atol: float = 1e-4
    rtol: float = 1e-3
    min_label_agreement: float = 1.0  # fraction of labels (or argmax classes) that must match
    # Fraction of rows allowed outside atol/rtol. Non-zero only where a converter has a reason,
    # e.g. float32 tree thresholds that flip a split for values next to a threshold.
    max_mismatch_rows: float = 0.0


@dataclass(frozen=True)
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float | None  # None for label/text outputs
    max_rel: float | None
    label_agreement: float | None  # labels, or argmax of score outputs
    passed: bool

    def to_dict(self) -> dict:
        return {
            "name": self.name, "shape": list(self.shape), "max_abs": self.max_abs,
            "max_rel": self.max_rel, "label_agreement": self.label_agreement, "passed": self.passed,
        }


@dataclass(frozen=True)
class ParityReport:
    samples: int
    tolerance: Tolerance
    outputs: tuple[OutputDiff, ...]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed, "samples": self.samples,
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol,
                          "min_label_agreement": self.tolerance.min_label_agreement,
                          "max_mismatch_rows": self.tolerance.max_mismatch_rows},
            "outputs": [o.to_dict() for o in self.outputs],
        }

    def failures(self) -> list[str]:
        out = []
        for o in self.outputs:
            if o.passed:
                continue
            parts = []
            if o.max_abs is not None:
                parts.append(f"max abs {o.max_abs:.3g}, max rel {o.max_rel:.3g}")
            if o.label_agreement is not None:
                parts.append(f"label agreement {o.label_agreement:.1%}")
            out.append(f"{o.name}: " + ", ".join(parts))
        return out


def match_outputs(reference: dict[str, np.ndarray], converted: dict[str, np.ndarray]):
    """Pair outputs by name when the reference's names are among the converted ones, else by position."""
    if set(reference) <= set(converted):
        return [(name, reference[name], converted[name]) for name in converted if name in reference]
    if len(reference) != len(converted):
        from .errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"the original has {len(reference)} outputs and the converted model {len(converted)}",
            "report this as a converter bug, with the model",
        )
    return [(cname, r, c) for (cname, c), r in zip(converted.items(), reference.values())]


def same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality of labels: numerically when both are numbers (0.0 == 0), else as text."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        return a.astype(np.float64) == b.astype(np.float64)
    return a.astype(str) == b.astype(str)


def compare(reference: dict[str, np.ndarray], converted: dict[str, np.ndarray],
            tolerance: Tolerance, label_outputs: frozenset[str] = frozenset()) -> ParityReport:
    diffs = []
    n = 0
    for name, ref, got in match_outputs(reference, converted):
        ref, got = np.asarray(ref), np.asarray(got)
        n = max(n, len(ref) if ref.ndim else 1)
        if ref.shape != got.shape and ref.size == got.size:
            got = got.reshape(ref.shape)  # e.g. (N,) vs (N, 1) for regressors
        if ref.shape != got.shape:
            diffs.append(OutputDiff(name, tuple(got.shape), None, None, None, False))
            continue
        if name in label_outputs or ref.dtype.kind in "OUSb" or got.dtype.kind in "OUS":
            agree = float(np.mean(same_labels(ref, got))) if ref.size else 1.0
            diffs.append(OutputDiff(name, tuple(got.shape), None, None, agree,
                                    agree >= tolerance.min_label_agreement))
            continue
        r64, g64 = ref.astype(np.float64), got.astype(np.float64)
        err = np.abs(r64 - g64)
        both_nan = np.isnan(r64) & np.isnan(g64)
        err[both_nan] = 0.0
        err[np.isnan(err)] = np.inf  # NaN on one side only is the worst disagreement, never a pass
        max_abs = float(err.max()) if err.size else 0.0
        with np.errstate(invalid="ignore"):
            max_rel = float((err / np.maximum(np.abs(np.nan_to_num(r64)), 1e-12)).max()) if err.size else 0.0
        bad = ~(err <= tolerance.atol + tolerance.rtol * np.abs(np.nan_to_num(r64)))
        bad_rows = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim and len(bad) else bad.reshape(-1)
        close = bool(bad_rows.mean() <= tolerance.max_mismatch_rows) if bad_rows.size else True
        agree = None
        if ref.ndim == 2 and ref.shape[1] >= 2:
            # Class scores: report whether the argmax still agrees. Informational only --
            # near-ties may flip even when every value is within tolerance.
            agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
        diffs.append(OutputDiff(name, tuple(got.shape), max_abs, max_rel, agree, close))
    return ParityReport(n, tolerance, tuple(diffs))
