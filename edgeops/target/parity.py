"""Inputs for the host-vs-target parity check, and the comparison itself.

A bundle need not carry sample data, so the inputs are generated, deterministically (fixed
seeds), from the model's signature and the bundle's reference statistics: numeric features are
drawn from a normal with the reference mean and standard deviation, clipped to the reference
min and max (so tree thresholds and activations see realistic values, not N(0, 1) noise);
categorical features from the reference categories in their reference proportions. Features
without statistics fall back to edgeops.data.generate.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..artifact import TensorSpec
from ..data import generate
from ..errors import DataError, UsageError
from ..validate import ParityReport, Tolerance, compare

OTHER = "__other__"
# Same model, same inputs, another CPU and runtime build: only rounding should differ.
DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)


def parity_inputs(specs: tuple[TensorSpec, ...], refstats: dict | None, rows: int = 8,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """``rows`` deterministic input rows for a model (a fixed batch of 1 still gets ``rows`` rows:
    the caller runs those models row by row)."""
    shapes = {}
    for spec in specs:
        if spec.shape and spec.shape[0] == 1 and all(isinstance(d, int) and d > 0 for d in spec.shape[1:]):
            shapes[spec.name] = (rows, *spec.shape[1:])
    plain = [s for s in specs if s.dtype != "str"]
    feeds = generate(plain, {k: v for k, v in shapes.items() if k in {s.name for s in plain}},
                     batch=rows, seed=seed, data_flag="--reference when packaging")
    entries = (refstats or {}).get("features", [])
    for spec in specs:
        if spec.dtype == "str":
            feeds[spec.name] = np.empty(_text_shape(spec, rows), dtype=object)
    rng = np.random.default_rng(seed + 1)
    filled = set()
    for entry in entries:
        name = entry.get("input")
        if name not in feeds:
            continue
        array, column = feeds[name], entry.get("column")
        target_shape = array[:, column].shape if column is not None and array.ndim == 2 else array.shape
        values = _draw(entry, target_shape, array.dtype, rng)
        if values is None:
            continue
        if column is not None and array.ndim == 2:
            array[:, column] = values
        else:
            feeds[name] = values.reshape(array.shape)
        filled.add(name)
    for spec in specs:
        if spec.dtype == "str" and spec.name not in filled:
            raise DataError(f"input '{spec.name}' takes text, and the bundle's reference statistics have no "
                            "categories for it to draw from", "package the bundle with --reference data")
    return feeds


def _text_shape(spec: TensorSpec, rows: int) -> tuple[int, ...]:
    shape = []
    for axis, d in enumerate(spec.shape or (None,)):
        if isinstance(d, int) and d > 0 and axis:
            shape.append(d)
        elif axis == 0:
            shape.append(rows)
        else:
            raise UsageError(f"input '{spec.name}' ({spec.describe()}) has a dynamic dimension {axis}",
                             "the target check cannot choose its size; export the model with a fixed size")
    return tuple(shape)


def _draw(entry: dict, shape: tuple[int, ...], dtype: np.dtype, rng) -> np.ndarray | None:
    if entry.get("kind") == "numeric" and dtype.kind in "fiu":
        mean, std, low, high = (entry.get(k) for k in ("mean", "std", "min", "max"))
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (mean, std, low, high)):
            return None
        values = np.clip(rng.normal(mean, max(std, 0.0), size=shape), low, high)
        if dtype.kind in "iu":
            values = np.rint(values)
        return values.astype(dtype)
    if entry.get("kind") == "categorical":
        counts = {k: v for k, v in (entry.get("categories") or {}).items() if k != OTHER and v > 0}
        if not counts:
            return None
        names = sorted(counts)
        p = np.array([counts[n] for n in names], dtype=np.float64)
        picked = rng.choice(len(names), size=shape, p=p / p.sum())
        if dtype.kind == "b":
            return np.array([names[i] == "True" for i in picked.reshape(-1)]).reshape(shape)
        if dtype.kind == "O":
            out = np.empty(shape, dtype=object)
            out.reshape(-1)[:] = [names[i] for i in picked.reshape(-1)]
            return out
    return None


def bundle_tolerance(manifest: dict, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The bundle's own parity tolerance (from its conversion), else DEFAULT_TOLERANCE; atol/rtol override."""
    given = ((manifest.get("parity") or {}).get("tolerance")) or {}
    fields = {f.name for f in dataclasses.fields(Tolerance)}
    values = {k: float(v) for k, v in given.items()
              if k in fields and isinstance(v, (int, float)) and not isinstance(v, bool)}
    tolerance = Tolerance(**values) if values else DEFAULT_TOLERANCE
    if atol is not None:
        tolerance = dataclasses.replace(tolerance, atol=float(atol))
    if rtol is not None:
        tolerance = dataclasses.replace(tolerance, rtol=float(rtol))
    return tolerance


def compare_outputs(host: dict[str, np.ndarray], target: dict[str, np.ndarray],
                    tolerance: Tolerance) -> ParityReport:
    """Per-output max differences of the target's outputs against the host's (the reference)."""
    missing = sorted(set(host) - set(target))
    if missing:
        raise DataError(f"the target run returned no output(s) {', '.join(missing)}",
                        "the runtime on the target names its outputs differently: report this")
    return compare(host, {k: target[k] for k in host}, tolerance)


def storable(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays np.savez can write without pickle: text (object) arrays become fixed-width unicode."""
    out = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        out[name] = value.astype(str) if value.dtype.kind == "O" else value
    return out
