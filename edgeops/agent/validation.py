"""Checking a request's inputs against the model's signature and its reference data.

Everything that does not depend on the request (dtypes, fixed dimensions, per-column bounds,
which features may be missing, feature names) is computed once per variant when the bundle is
loaded, so a request costs a handful of vectorised numpy operations.

Order of the checks: body schema, shape (rank, fixed dimensions, rows), dtype (numbers vs text vs
true/false), missing values (only where the reference had them), non-finite values, and values
far outside the reference range: beyond [min - K*w, max + K*w] with w = max - min (the reference
range's width; for a constant feature w = max(|value|, 1)) and K = --range-tolerance (default 3).
K is generous on purpose: a reference sample's min and max understate the real range of sparse
or heavy-tailed features (on scikit-learn's digits, K = 1 rejected 1 legitimate test row in 540),
while a broken sensor or wrong units land far beyond it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..artifact import TensorSpec

MAX_REPORTED = 3  # violations named in an error message


class Rejection(Exception):
    """A request refused before it reached the model: HTTP ``status`` with a JSON error and hint.

    ``reason`` is one of the telemetry reasons (shape, dtype, missing, nonfinite, range, schema);
    ``features`` names the reference features that broke a rule (for the window's violations).
    """

    def __init__(self, status: int, reason: str, message: str, hint: str, features: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.hint = hint
        self.features = features


@dataclass(frozen=True)
class _Input:
    name: str
    kind: str  # "f" float, "i" integer, "b" bool, "s" text
    dtype: object  # numpy dtype the model takes (object for text)
    rank: int  # 0: the model does not say
    fixed: tuple[tuple[int, int], ...]  # (axis, size) for every fixed dimension after the batch axis
    batch: int | None  # a fixed batch size, or None
    columns: bool  # rank 2: one feature per column; else one feature over all elements
    names: tuple[str, ...]  # feature names (per column, or the one pooled feature)
    lo: np.ndarray | None  # lower bound per feature (-inf where unknown); None: no range check
    hi: np.ndarray | None
    allow_missing: np.ndarray  # per feature: the reference had missing values
    describe: str


def _input(spec: TensorSpec, refstats: dict, tolerance: float = 3.0) -> _Input:
    dtype = object if spec.dtype == "str" else np.dtype(spec.dtype)
    kind = "s" if dtype is object else {"f": "f", "i": "i", "u": "i", "b": "b"}.get(dtype.kind, "f")
    rank = len(spec.shape)
    fixed = tuple((axis, d) for axis, d in enumerate(spec.shape) if axis and isinstance(d, int) and d > 0)
    batch = spec.shape[0] if rank and isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
    entries = [f for f in refstats.get("features", []) if isinstance(f, dict) and f.get("input") == spec.name]
    columns = rank == 2
    if columns:
        width = spec.shape[1] if isinstance(spec.shape[1], int) and spec.shape[1] > 0 else None
        if width is None:
            width = 1 + max((f["column"] for f in entries if isinstance(f.get("column"), int)), default=-1)
        by_column = {f.get("column"): f for f in entries}
        per = [by_column.get(j) for j in range(width)]
        names = tuple(str(f["name"]) if f else f"{spec.name}[{j}]" for j, f in enumerate(per))
    else:
        per = entries[:1] or [None]
        names = (str(per[0]["name"]) if per[0] else spec.name,)
    lo, hi = _bounds(per, tolerance) if kind in "fi" else (None, None)
    allow = np.array([bool(f and (f.get("missing_fraction") or 0) > 0) for f in per], dtype=bool)
    shape = "[" + ",".join("?" if not isinstance(d, int) or d < 0 else str(d) for d in spec.shape) + "]"
    return _Input(spec.name, kind, dtype, rank, fixed, batch, columns, names, lo, hi, allow, f"{spec.dtype}{shape}")


def _bounds(entries, tolerance: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    lo = np.full(len(entries), -np.inf)
    hi = np.full(len(entries), np.inf)
    for j, f in enumerate(entries):
        if not f or f.get("kind") != "numeric" or f.get("min") is None or f.get("max") is None:
            continue
        low, high = float(f["min"]), float(f["max"])
        width = high - low or max(abs(high), 1.0)
        lo[j], hi[j] = low - tolerance * width, high + tolerance * width
    if not (np.isfinite(lo).any() or np.isfinite(hi).any()):
        return None, None
    return lo, hi


class Validator:
    """Turns the JSON ``inputs`` of a request into model feeds, or raises Rejection."""

    def __init__(self, specs: tuple[TensorSpec, ...], refstats: dict | None, range_check: str = "reject",
                 max_rows: int = 1024, range_tolerance: float = 3.0):
        self.inputs = tuple(_input(s, refstats or {}, range_tolerance) for s in specs)
        self.names = tuple(i.name for i in self.inputs)
        self.range_check = range_check
        self.max_rows = max_rows
        # A model with a fixed batch of 1 takes a batch one row at a time.
        self.row_by_row = any(i.batch == 1 for i in self.inputs)

    def bind(self, inputs, maybe_bools: bool = True) -> tuple[dict[str, np.ndarray], int, list[str]]:
        """(feeds, rows, warnings). ``maybe_bools``: the body may hold true/false literals
        (when False, a scan for booleans among numbers is skipped)."""
        if isinstance(inputs, list):
            if len(self.inputs) != 1:
                raise Rejection(422, "schema", f"the model takes {len(self.inputs)} inputs "
                                               f"({', '.join(self.names)}), got one list",
                                'send {"inputs": {"NAME": [rows...], ...}} with one entry per input')
            items = [(self.inputs[0], inputs)]
        elif isinstance(inputs, dict):
            missing = [n for n in self.names if n not in inputs]
            extra = [str(n) for n in inputs if n not in self.names]
            if missing or extra:
                what = (f"missing input(s) {', '.join(missing)}" if missing else "") + \
                       ("; " if missing and extra else "") + (f"unknown input(s) {', '.join(extra)}" if extra else "")
                raise Rejection(422, "schema", what, f"the model takes: {', '.join(self.names)}")
            items = [(i, inputs[i.name]) for i in self.inputs]
        else:
            raise Rejection(400, "schema", '"inputs" must be a list of rows or an object of lists',
                            'send {"inputs": [[...], ...]} (batch first)')
        rows = None
        feeds = {}
        for spec, value in items:
            if not isinstance(value, list):
                raise Rejection(422, "schema", f"input '{spec.name}' is not a list of rows",
                                f"send a list, batch first: {spec.describe}")
            n = len(value)
            if n == 0:
                raise Rejection(422, "shape", f"input '{spec.name}' has no rows", "send at least one row")
            if n > self.max_rows:
                raise Rejection(413, "shape", f"input '{spec.name}' has {n} rows, more than the limit "
                                              f"of {self.max_rows}", "split the batch into smaller requests")
            if rows is not None and n != rows:
                raise Rejection(422, "shape", f"the inputs have different numbers of rows ({rows} and {n})",
                                "send the same number of rows for every input")
            rows = n
            feeds[spec.name] = _convert(spec, value, maybe_bools)
        warnings: list[str] = []
        for spec in self.inputs:
            if spec.kind in "fi":
                self._check_values(spec, feeds[spec.name], warnings)
        return feeds, rows or 0, warnings

    def _check_values(self, spec: _Input, x: np.ndarray, warnings: list[str]) -> None:
        if spec.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                nan = np.isnan(x)
                inf = ~finite & ~nan
                if inf.any():
                    raise _violation(spec, inf, x, 422, "nonfinite", "infinite, or too large for "
                                     f"{np.dtype(spec.dtype).name})", "send finite numbers")
                bad = nan & ~_per_feature(spec, spec.allow_missing, x, False)
                if bad.any():
                    raise _violation(spec, bad, x, 422, "missing", "missing (null/NaN), but the reference "
                                     "data had no missing values there)", "fill in the missing values")
        if spec.lo is None or self.range_check == "off":
            return
        lo, hi = _per_feature(spec, spec.lo, x, -np.inf), _per_feature(spec, spec.hi, x, np.inf)
        out = (x < lo) | (x > hi)
        if out.any():
            if self.range_check == "reject":
                raise _violation(spec, out, x, 422, "range", "far outside the reference range)",
                                 "check the sensor or the units; the agent's --range-check sets this rule")
            warnings.append(_violation(spec, out, x, 422, "range", "far outside the reference range)", "").message)


def _per_feature(spec: _Input, values: np.ndarray, x: np.ndarray, fill):
    """Per-feature values broadcast against a batch (a scalar for a pooled feature). Columns of a
    dynamic-width input that the reference does not cover get ``fill`` (no rule)."""
    if not spec.columns:
        return values[0]
    width = x.shape[1]
    if width == len(values):
        return values
    if width < len(values):
        return values[:width]
    return np.concatenate([values, np.full(width - len(values), fill, dtype=values.dtype)])


def _violation(spec: _Input, mask: np.ndarray, x: np.ndarray, status: int, reason: str, what: str,
               hint: str) -> Rejection:
    where = np.argwhere(mask)
    features, parts = [], []
    for index in where:
        row = int(index[0])
        column = int(index[1]) if spec.columns else None
        if column is None:
            name = spec.names[0]
        else:
            name = spec.names[column] if column < len(spec.names) else f"{spec.name}[{column}]"
        if name not in features:
            features.append(name)
        if len(parts) < MAX_REPORTED:
            value = x[tuple(index)]
            bound = ""
            if reason == "range":
                j = column if spec.columns else 0
                if j < len(spec.lo):
                    bound = f", accepted [{spec.lo[j]:.6g}, {spec.hi[j]:.6g}]"
            parts.append(f"row {row} feature '{name}' = {_fmt(value)}{bound}")
    more = f" (and {len(where) - len(parts)} more)" if len(where) > len(parts) else ""
    message = f"input '{spec.name}': {'; '.join(parts)}{more} ({what}"
    return Rejection(status, reason, message, hint, tuple(features))


def _fmt(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _convert(spec: _Input, value: list, maybe_bools: bool) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise Rejection(422, "shape", f"input '{spec.name}' is not a rectangular array (rows of different "
                                      f"lengths or nested too deeply)", f"send rows shaped {spec.describe}") from None
    if spec.rank and arr.ndim != spec.rank and arr.dtype.kind != "O":
        raise _shape_error(spec, arr.shape)
    kind = arr.dtype.kind
    if kind == "O":
        arr = _convert_objects(spec, arr, value)
        if spec.rank and arr.ndim != spec.rank:
            raise _shape_error(spec, arr.shape)
    elif spec.kind == "s":
        _check_all_text(spec, arr, value)
        arr = arr.astype(object)
    elif spec.kind == "b":
        if kind != "b":
            raise _dtype_error(spec, "true/false", _kind_name(kind))
    else:
        if kind not in "fiu":
            raise _dtype_error(spec, "numbers", _kind_name(kind))
        if maybe_bools and kind in "iu" and _contains_bool(value):
            raise _dtype_error(spec, "numbers", "true/false")
        arr = _to_number_dtype(spec, arr)
    for axis, size in spec.fixed:
        if arr.shape[axis] != size:
            raise _shape_error(spec, arr.shape)
    if spec.batch is not None and spec.batch != 1 and arr.shape[0] != spec.batch:
        raise Rejection(422, "shape", f"input '{spec.name}' takes exactly {spec.batch} rows, got {arr.shape[0]}",
                        f"send {spec.batch} rows ({spec.describe})")
    return arr


def _to_number_dtype(spec: _Input, arr: np.ndarray) -> np.ndarray:
    want = spec.dtype
    if spec.kind == "i":
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            if not finite.all() or (arr != np.floor(arr)).any():
                raise _dtype_error(spec, "whole numbers", "numbers with a fraction")
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise Rejection(422, "dtype", f"input '{spec.name}' takes {want.name}: values range over "
                                          f"[{arr.min()}, {arr.max()}], outside [{info.min}, {info.max}]",
                            f"send values that fit {want.name}")
        return arr.astype(want, copy=False)
    if arr.dtype == want:
        return arr
    with np.errstate(over="ignore"):  # too large for float32 -> inf, rejected as non-finite next
        return arr.astype(want)


def _convert_objects(spec: _Input, arr: np.ndarray, value: list) -> np.ndarray:
    """The slow path: nulls, out-of-range integers, or mixed types among the values."""
    flat = arr.reshape(-1)
    types = {type(v) for v in flat}
    if list in types or tuple in types:
        raise Rejection(422, "shape", f"input '{spec.name}' is not a rectangular array",
                        f"send rows shaped {spec.describe}")
    has_none = type(None) in types
    types.discard(type(None))
    if spec.kind == "s":
        if has_none:
            raise Rejection(422, "missing", f"input '{spec.name}' holds null values",
                            "the model takes text only: send a string for every value", _names_of(spec))
        if types - {str}:
            raise _dtype_error(spec, "text", "numbers or true/false")
        return arr
    wanted = {"b": {bool}, "i": {int}, "f": {int, float}}[spec.kind]
    if types - wanted:
        got = "text" if str in types else "true/false" if bool in types else "objects"
        raise _dtype_error(spec, {"b": "true/false", "i": "whole numbers", "f": "numbers"}[spec.kind], got)
    if has_none and spec.kind != "f":
        raise Rejection(422, "missing", f"input '{spec.name}' holds null values, which {spec.describe} "
                                        "cannot represent", "send a value for every element", _names_of(spec))
    if spec.kind == "b":
        return arr.astype(bool)
    numbers = np.asarray(value, dtype=np.float64 if spec.kind == "f" else object)  # null -> NaN
    if spec.kind == "i":
        info = np.iinfo(spec.dtype)
        if any(v < info.min or v > info.max for v in flat):
            raise Rejection(422, "dtype", f"input '{spec.name}' takes {spec.dtype.name}: a value is outside "
                                          f"[{info.min}, {info.max}]", f"send values that fit {spec.dtype.name}")
        return numbers.astype(spec.dtype)
    with np.errstate(over="ignore"):
        return numbers.astype(spec.dtype)


def _check_all_text(spec: _Input, arr: np.ndarray, value: list) -> None:
    if arr.dtype.kind != "U":
        raise _dtype_error(spec, "text", _kind_name(arr.dtype.kind))
    # numpy turns [1, "a"] into two strings: only a scan of the parsed JSON tells a number apart.
    if _contains_non_str(value):
        raise _dtype_error(spec, "text", "numbers or true/false")


def _contains_bool(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        for v in item:
            if v is True or v is False:
                return True
            if isinstance(v, list):
                stack.append(v)
    return False


def _contains_non_str(value) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        for v in item:
            if isinstance(v, list):
                stack.append(v)
            elif not isinstance(v, str):
                return True
    return False


def _names_of(spec: _Input) -> tuple[str, ...]:
    return spec.names if not spec.columns else ()


def _kind_name(kind: str) -> str:
    return {"U": "text", "S": "text", "b": "true/false", "f": "numbers", "i": "whole numbers",
            "u": "whole numbers"}.get(kind, "other values")


def _dtype_error(spec: _Input, want: str, got: str) -> Rejection:
    return Rejection(422, "dtype", f"input '{spec.name}' takes {want} ({spec.describe}), got {got}",
                     f"send {want} for '{spec.name}'")


def _shape_error(spec: _Input, shape: tuple) -> Rejection:
    return Rejection(422, "shape", f"input '{spec.name}' takes {spec.describe}, got shape {list(shape)}",
                     "send rows with the model's shape, batch first (a list of rows, even for one row)")
