"""Reading sample, calibration and evaluation data, and fitting it to a model's inputs.

Formats (docs/conversion.md):
  .npy  one array, for a model with one input
  .npz  arrays keyed by input name; an optional ``labels`` array holds ground truth
  .csv  a header row; columns are features (or per-column inputs), an optional
        label column (``--label-column``, default ``label`` or ``target``) holds ground truth
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .artifact import TensorSpec
from .errors import DataError, InputFileError, UsageError, first_line

LABEL_KEYS = ("labels", "label", "target", "y")
MAX_GENERATED_ELEMENTS = 1 << 27  # 512 MB of float32 per input: beyond that it is a typo, not a test


@dataclass
class Samples:
    tensors: dict[str, np.ndarray]  # "" keys the one array of a .npy file
    labels: np.ndarray | None = None
    columns: list[str] | None = None  # CSV: the feature columns, in file order
    source: str = ""

    def __len__(self) -> int:
        first = next(iter(self.tensors.values()))
        return len(first)


def load_samples(path: str | Path, label_column: str | None = None) -> Samples:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{p}: no such data file", "check the path")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
            return Samples({"": arr}, source=str(p))
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            labels = None
            for key in LABEL_KEYS:
                if key in arrays and len(arrays) > 1:
                    labels = arrays.pop(key)
                    break
            if not arrays:
                raise DataError(f"{p}: the .npz holds no arrays", "save inputs keyed by input name")
            return Samples(arrays, labels=labels, source=str(p))
        if suffix == ".csv":
            return _load_csv(p, label_column)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputFileError(
            f"{p}: cannot read data: {first_line(exc, 200)}",
            "write it with numpy.save / numpy.savez, or as a CSV with a header",
        ) from None
    raise InputFileError(
        f"{p}: unknown data file type '{suffix}'", "use .npy, .npz (keyed by input name) or .csv"
    )


def _load_csv(p: Path, label_column: str | None) -> Samples:
    import pandas as pd

    df = pd.read_csv(p)
    if len(df.columns) and all(_is_number(c) for c in df.columns):
        raise DataError(f"{p}: the first row looks like data, not a header",
                        "add a header row naming the columns (the first row would otherwise be lost)")
    if df.empty:
        raise DataError(f"{p}: the CSV has no rows", "add a header and at least one row")
    label = label_column
    if label is None:
        label = next((c for c in ("label", "target") if c in df.columns), None)
    elif label not in df.columns:
        raise DataError(
            f"{p}: no column '{label}'", f"columns are: {', '.join(map(str, df.columns))}"
        )
    labels = df.pop(label).to_numpy() if label else None
    tensors = {}
    for col in df.columns:
        values = df[col]
        if values.dtype.kind in "biuf":
            tensors[str(col)] = values.to_numpy()
        else:  # text (object or pandas StringDtype): keep as str
            tensors[str(col)] = values.astype(str).to_numpy(dtype=object)
    return Samples(tensors, labels=labels, columns=[str(c) for c in df.columns], source=str(p))


def _is_number(text) -> bool:
    try:
        float(str(text))
        return True
    except ValueError:
        return False


def bind(samples: Samples, specs: Sequence[TensorSpec], what: str = "data") -> dict[str, np.ndarray]:
    """Fit samples to a model's inputs: names, ranks, fixed dims and dtypes. Raises DataError."""
    names = [s.name for s in specs]
    tensors = samples.tensors
    if samples.columns is not None:
        tensors = _bind_columns(samples, specs, what)
    elif set(tensors) == {""}:
        if len(specs) != 1:
            raise DataError(
                f"{what} is a single array but the model has {len(specs)} inputs ({', '.join(names)})",
                "save a .npz keyed by input name",
            )
        tensors = {names[0]: tensors[""]}
    if len(specs) == 1 and len(tensors) == 1 and names[0] not in tensors:
        tensors = {names[0]: next(iter(tensors.values()))}  # one array for one input: its name doesn't matter
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DataError(
            f"{what} has no array for input(s) {', '.join(missing)} (it has {', '.join(tensors) or 'none'})",
            "key the arrays by the model's input names",
        )
    feeds = {s.name: _fit(np.asarray(tensors[s.name]), s, what) for s in specs}
    for name, arr in feeds.items():
        if arr.ndim and len(arr) == 0:
            raise DataError(f"{what}: input '{name}' has no rows", "give at least one row of data")
    return feeds


def _bind_columns(samples: Samples, specs: Sequence[TensorSpec], what: str) -> dict[str, np.ndarray]:
    cols = samples.columns or []
    names = [s.name for s in specs]
    if all(n in cols for n in names):  # one model input per column (ColumnTransformer models)
        return {s.name: samples.tensors[s.name].reshape(-1, 1) for s in specs}
    if len(specs) == 1:  # all columns form one feature matrix
        try:
            matrix = np.column_stack([samples.tensors[c] for c in cols]).astype(np.float64)
        except (TypeError, ValueError):
            raise DataError(
                f"{what}: the CSV has non-numeric columns but the model takes one numeric matrix",
                "drop the text columns, or name a label column with --label-column",
            ) from None
        return {names[0]: matrix}
    raise DataError(
        f"{what}: CSV columns ({', '.join(cols)}) do not match the model inputs ({', '.join(names)})",
        "name the CSV columns after the model inputs",
    )


_SAFE_KINDS = {"f": "biuf", "i": "biu", "u": "bu", "b": "b"}


def _fit(arr: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    if spec.dtype == "str":
        if arr.dtype.kind not in "OUS":
            raise DataError(f"{what}: input '{spec.name}' takes text, got {arr.dtype}", "pass strings")
        arr = arr.astype(object)
    else:
        want = np.dtype(spec.dtype)
        if arr.dtype.kind not in _SAFE_KINDS.get(want.kind, want.kind):
            raise DataError(
                f"{what}: input '{spec.name}' takes {want.name}, got {arr.dtype.name}",
                f"convert the data to {want.name} (numbers only, no text)",
            )
        _check_range(arr, want, spec.name, what)
        arr = arr.astype(want, copy=False)
    if len(spec.shape) and arr.ndim != len(spec.shape):
        raise DataError(
            f"{what}: input '{spec.name}' takes rank {len(spec.shape)} {spec.describe()}, "
            f"got shape {tuple(arr.shape)}",
            "reshape the data to the model's input shape, batch first",
        )
    for axis, (want_d, got_d) in enumerate(zip(spec.shape, arr.shape)):
        if axis and isinstance(want_d, int) and want_d > 0 and want_d != got_d:
            raise DataError(
                f"{what}: input '{spec.name}' takes {spec.describe()}, got shape {tuple(arr.shape)}",
                f"dimension {axis} must be {want_d}",
            )
    return arr


def _check_range(arr: np.ndarray, want: np.dtype, name: str, what: str) -> None:
    """Refuse values the model's dtype cannot hold (they would wrap or turn into inf)."""
    if arr.size == 0 or arr.dtype == want or want.kind == "b":
        return
    info = np.iinfo(want) if want.kind in "iu" else np.finfo(want)
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    if finite.size and (finite.min() < info.min or finite.max() > info.max):
        raise DataError(
            f"{what}: input '{name}' takes {want.name}, but values range over "
            f"[{finite.min()}, {finite.max()}], outside [{info.min}, {info.max}]",
            f"scale or clip the data to the {want.name} range",
        )


def parse_input_shapes(values: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse --input-shape [NAME=]D,D,...; the key is '' when no name is given."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in values:
        name, _, dims = text.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise UsageError(
                f"--input-shape '{text}' is not [NAME=]D,D,...", "for example: --input-shape input=1,3,32,32"
            ) from None
        if any(d <= 0 for d in shape):
            raise UsageError(f"--input-shape '{text}' has a dimension <= 0", "give positive sizes")
        if name in shapes:
            raise UsageError(f"--input-shape given twice for '{name or 'the input'}'", "give it once")
        shapes[name] = shape
    return shapes


def check_shape_names(specs: Sequence[TensorSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    """--input-shape must name real inputs (a nameless one only for a single-input model)."""
    names = [s.name for s in specs]
    for key, shape in shapes.items():
        if key == "" and len(specs) != 1:
            raise UsageError(f"--input-shape without a name, but the model has {len(specs)} inputs",
                             f"name each one: --input-shape NAME=D,D,... for {', '.join(names)}")
        if key and key not in names:
            raise UsageError(f"--input-shape names '{key}', which is not an input of the model",
                             f"inputs are: {', '.join(names)}")
        spec = specs[0] if key == "" else specs[names.index(key)]
        if spec.shape and len(shape) != len(spec.shape):
            raise UsageError(f"--input-shape {key or spec.name}: {len(shape)} dimensions, but the input "
                             f"has {len(spec.shape)} ({spec.describe()})", "give one size per dimension")


def generate(specs: Sequence[TensorSpec], shapes: dict[str, tuple[int, ...]] | None = None,
             batch: int = 8, seed: int = 0, data_flag: str = "--sample-input") -> dict[str, np.ndarray]:
    """Random inputs within the signature, for a parity check when no sample data is given."""
    shapes = shapes or {}
    check_shape_names(specs, shapes)
    rng = np.random.default_rng(seed)
    feeds = {}
    for i, spec in enumerate(specs):
        shape = shapes.get(spec.name) or (shapes.get("") if len(specs) == 1 else None)
        if shape is None:
            shape = []
            for axis, d in enumerate(spec.shape):
                if isinstance(d, int) and d > 0:
                    shape.append(d)
                elif axis == 0:
                    shape.append(batch)
                else:
                    raise UsageError(
                        f"input '{spec.name}' ({spec.describe()}) has a dynamic dimension {axis}",
                        f"pass --input-shape {spec.name}=" + ",".join(
                            str(d if isinstance(d, int) and d > 0 else (batch if a == 0 else 'N'))
                            for a, d in enumerate(spec.shape)) + f" or real inputs with {data_flag} FILE",
                    )
            shape = tuple(shape)
        if int(np.prod(shape, dtype=np.int64)) > MAX_GENERATED_ELEMENTS:
            raise UsageError(f"input '{spec.name}' of shape {tuple(shape)} is too large to generate",
                             f"use a smaller shape (at most {MAX_GENERATED_ELEMENTS:,} elements per input)")
        if spec.dtype == "str":
            raise DataError(
                f"input '{spec.name}' takes text, which cannot be generated",
                f"pass real rows with {data_flag} FILE",
            )
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind == "b":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            # 0/1 only: integer inputs are usually indices (token ids, token types, classes), and
            # every embedding or lookup table has at least two rows.
            feeds[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
    return feeds
