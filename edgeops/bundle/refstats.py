"""Reference statistics of the data a model was built with, for drift monitoring on the device.

Pure numpy. The result is plain JSON-ready data (no NaN, no numpy types) and depends only on the
input arrays, so two runs on the same data give the same bytes.

Numeric features: one per column of a 2-D input, the input itself when it is 1-D (or [n, 1]).
An input of rank > 2 (an image, a sequence) is summarised as one feature over all its elements:
the channel layout (NCHW or NHWC) cannot be told from the array, and a pooled histogram still
shows a change of brightness, scale or sensor.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

SCHEMA_VERSION = 1
TOP_CATEGORIES = 50
OTHER = "__other__"
MAX_COLUMN_HISTOGRAMS = 10  # float outputs with more columns are summarised by their argmax


def reference_stats(feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None,
                    feature_names=None, bins: int = 10) -> dict:
    """Statistics per input feature and per output.

    ``feature_names``: a list naming the columns of the only 2-D input, or a dict
    {input name: [column names]}. ``bins``: the number of quantile bins (10 = deciles).
    """
    if bins < 2:
        raise ValueError("bins must be at least 2")
    features = []
    for input_name in sorted(feeds):
        array = np.asarray(feeds[input_name])
        names = _column_names(input_name, array, feature_names, len(feeds))
        for column, (name, values) in enumerate(zip(names, _columns(array))):
            entry = {"input": input_name, "name": name, "column": column if array.ndim == 2 else None}
            entry.update(_feature(values, bins))
            features.append(entry)
    outs = []
    for output_name in sorted(outputs or {}):
        outs.extend(_output(output_name, np.asarray(outputs[output_name]), bins))
    return {"schema_version": SCHEMA_VERSION, "bins": bins, "features": features, "outputs": outs}


def _columns(array: np.ndarray) -> list[np.ndarray]:
    if array.ndim <= 1:
        return [array.reshape(-1)]
    if array.ndim == 2:
        return [array[:, j] for j in range(array.shape[1])]
    return [array.reshape(-1)]


def _column_names(input_name: str, array: np.ndarray, feature_names, n_inputs: int) -> list[str]:
    count = array.shape[1] if array.ndim == 2 else 1
    given = None
    if isinstance(feature_names, dict):
        given = feature_names.get(input_name)
    elif feature_names is not None and n_inputs == 1:
        given = list(feature_names)
    if given is not None:
        if len(given) != count:
            raise ValueError(f"{len(given)} feature names for {count} columns of input '{input_name}'")
        return [str(n) for n in given]
    if array.ndim == 2 and count > 1:
        return [f"{input_name}[{j}]" for j in range(count)]
    return [input_name]


def _is_numeric(values: np.ndarray) -> bool:
    return values.dtype.kind in "iuf"


def _feature(values: np.ndarray, bins: int) -> dict:
    if _is_numeric(values):
        return {"kind": "numeric", **numeric_summary(values.astype(np.float64), bins)}
    return {"kind": "categorical", **categorical_summary(values)}


def numeric_summary(values: np.ndarray, bins: int = 10) -> dict:
    """Quantile edges (inner, deduplicated) and counts over them with open outer bins.

    Bin i holds edges[i-1] <= x < edges[i] (numpy.histogram's convention), with edges[-1] = -inf
    and edges[len] = +inf; so there are len(edges) + 1 counts.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    missing = np.isnan(values)
    finite = values[~missing & np.isfinite(values)]
    total = int(values.size)
    out = {"count": total, "missing_fraction": _float(missing.mean()) if total else 0.0}
    if finite.size == 0:
        out.update({"edges": [], "counts": [int((~missing).sum())], "min": None, "max": None,
                    "mean": None, "std": None})
        return out
    probs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = np.unique(np.quantile(finite, probs))
    present = values[~missing]
    counts, _ = np.histogram(present, bins=np.concatenate(([-np.inf], edges, [np.inf])))
    out.update({
        "edges": [_float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "min": _float(finite.min()), "max": _float(finite.max()),
        "mean": _float(finite.mean()), "std": _float(finite.std()),
    })
    return out


def categorical_summary(values, top: int = TOP_CATEGORIES) -> dict:
    """Frequencies of the ``top`` most common categories; the rest are pooled under "__other__"."""
    items = [category_key(v) for v in np.asarray(values, dtype=object).reshape(-1)]
    present = [v for v in items if v is not None]
    total = len(items)
    counts = Counter(present)
    # Ties are broken by the category's text, so the selection does not depend on input order.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:top])
    other = sum(c for _, c in ranked[top:])
    if other:
        kept[OTHER] = other
    n = len(present)
    return {
        "count": total,
        "missing_fraction": _float((total - n) / total) if total else 0.0,
        "categories": {k: int(c) for k, c in kept.items()},
        "frequencies": {k: _float(c / n) for k, c in kept.items()} if n else {},
    }


def category_key(value):
    """The text under which a category value is counted (None for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (np.bool_, bool)):
        return "true" if value else "false"
    return str(value)


def _output(name: str, array: np.ndarray, bins: int) -> list[dict]:
    array = np.atleast_1d(array)
    squeezed = array.reshape(len(array), -1) if array.ndim > 1 else array.reshape(-1, 1)
    if array.dtype.kind != "f":
        # Labels (int, str, bool): class frequencies.
        return [{"output": name, "name": name, "kind": "labels", "source": "values",
                 **categorical_summary(squeezed[:, 0] if squeezed.shape[1] == 1 else squeezed.reshape(-1))}]
    if squeezed.shape[1] <= MAX_COLUMN_HISTOGRAMS:
        names = [name] if squeezed.shape[1] == 1 else [f"{name}[{j}]" for j in range(squeezed.shape[1])]
        return [{"output": name, "name": n, "column": j if squeezed.shape[1] > 1 else None,
                 "kind": "numeric", **numeric_summary(squeezed[:, j], bins)}
                for j, n in enumerate(names)]
    winners = np.argmax(np.nan_to_num(squeezed, nan=-np.inf), axis=1)
    return [{"output": name, "name": name, "kind": "labels", "source": "argmax",
             **categorical_summary(winners)}]


def _float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
