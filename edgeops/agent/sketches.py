"""Sketches: per-request counts binned on the bundle's reference statistics.

``_Plan`` compiles the refstats entries once into arrays (one group per input/output), so a request
costs a few numpy calls per input, not one per feature. Used by telemetry.WindowStats.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from edgeops.bundle.refstats import category_key  # the reference's own text form of a category
from edgeops.errors import DataError

OTHER = "__other__"
UNSEEN = "__unseen__"
_BROADCAST_LIMIT = 1 << 18  # comparisons per call; above it, one searchsorted per column saves memory

def bin_numeric(values, edges) -> np.ndarray:
    """Counts on ``edges`` with open outer bins, len(edges) + 1 of them; NaN excluded.

    searchsorted(side="right") counts the edges <= x, which is numpy.histogram's left-closed bin
    (edges[i-1] <= x < edges[i]) as refstats uses it; +-inf fall in the outer bins as there.
    """
    edges = np.asarray(edges, dtype=np.float64).reshape(-1)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    values = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)


def count_categories(values, ref_categories: dict) -> dict[str, int]:
    """Counts per reference category; others go to OTHER when the reference has it, else UNSEEN."""
    counts, _ = _count_categories(values, frozenset(ref_categories), OTHER if OTHER in ref_categories else UNSEEN)
    return dict(counts)


def _count_categories(values, categories: frozenset, fallback: str) -> tuple[Counter, int]:
    counts: Counter = Counter()
    missing = 0
    for value, n in Counter(np.asarray(values, dtype=object).reshape(-1).tolist()).items():
        key = category_key(value)
        if key is None:
            missing += n
        else:
            counts[key if key in categories else fallback] += n
    return counts, missing


def _as_2d(array: np.ndarray) -> np.ndarray:
    """Rows on axis 0, everything else flattened into columns (refstats' view of a 2-D input)."""
    if array.ndim == 2:
        return array
    if array.ndim <= 1:
        return array.reshape(-1, 1)
    return array.reshape(array.shape[0], -1)


def _argmax(array: np.ndarray) -> np.ndarray:
    table = _as_2d(array)
    if table.dtype.kind == "f" and np.isnan(table).any():
        table = np.where(np.isnan(table), -np.inf, table)  # refstats: NaN never wins
    return np.argmax(table, axis=1)


def prediction_values(refstats: dict, outputs: dict[str, np.ndarray]) -> list:
    """Per-row prediction of the first labels output entry, else of the first numeric one."""
    entries = refstats.get("outputs") or []
    chosen = next((e for e in entries if e["kind"] == "labels"), None) or (entries[0] if entries else None)
    if chosen is None or chosen["output"] not in outputs:
        return []
    table = _as_2d(np.asarray(outputs[chosen["output"]]))
    if chosen["kind"] == "labels":
        if chosen.get("source") == "argmax":
            return [str(i) for i in _argmax(table).tolist()]
        return [category_key(v) for v in table[:, 0].tolist()]
    column = chosen.get("column") or 0
    return [float(v) for v in table[:, column].astype(np.float64).tolist()]


class _NumGroup:
    """Numeric entries read from one input/output, binned together by broadcasting over columns."""

    def __init__(self, source: str, is_output: bool, entries: list[int], columns, edge_lists: list):
        self.source, self.is_output, self.entries = source, is_output, tuple(entries)
        self.columns = None if columns is None else np.asarray(columns, dtype=np.intp)
        self.edge_lists = [np.asarray(e, dtype=np.float64) for e in edge_lists]
        self.sizes = tuple(e.size + 1 for e in self.edge_lists)
        self.width = max(self.sizes)
        # NaN padding: x >= NaN is False, so a padded slot never counts as an edge below x.
        self.edges = np.full((len(self.edge_lists), self.width - 1), np.nan)
        for p, e in enumerate(self.edge_lists):
            self.edges[p, :e.size] = e
        self.offsets = np.arange(len(self.edge_lists), dtype=np.intp) * self.width

    def counts(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(flat counts, missing per position or None)."""
        if array.dtype.kind not in "iuf":
            array = _to_float(array, self.source)
        if self.columns is None:
            values = array.reshape(-1)
            counts = np.bincount(np.searchsorted(self.edge_lists[0], values, side="right"), minlength=self.width)
            if array.dtype.kind == "f":
                missing = np.count_nonzero(np.isnan(values))
                if missing:
                    counts[self.width - 1] -= missing  # NaN sorts after every edge
                    return counts, np.array([missing])
            return counts, None
        values = _as_2d(array)[:, self.columns]
        n, width = values.shape[0], self.width
        if n * self.edges.size <= _BROADCAST_LIMIT:
            bins = np.count_nonzero(values[:, :, None] >= self.edges, axis=2)  # NaN -> bin 0
        else:
            bins = np.empty(values.shape, dtype=np.intp)
            for p, e in enumerate(self.edge_lists):
                bins[:, p] = np.searchsorted(e, values[:, p], side="right")
        missing = None
        if values.dtype.kind == "f":
            nan = np.isnan(values)
            if nan.any():
                missing = np.count_nonzero(nan, axis=0)
                bins[nan] = 0
        counts = np.bincount((bins + self.offsets).reshape(-1), minlength=width * len(self.sizes))
        if missing is not None:
            counts[self.offsets] -= missing
        return counts, missing


class _CatSlot:
    """One categorical feature or labels output: counts per reference category."""

    def __init__(self, source: str, is_output: bool, entry: int, column, categories: dict, argmax: bool):
        self.source, self.is_output, self.entry, self.column, self.argmax = source, is_output, entry, column, argmax
        self.categories = frozenset(categories)
        self.fallback = OTHER if OTHER in categories else UNSEEN

    def counts(self, array: np.ndarray) -> tuple[Counter, int]:
        if self.argmax:
            counts: Counter = Counter()
            for index, n in enumerate(np.bincount(_argmax(array)).tolist()):
                if n:
                    key = str(index)
                    counts[key if key in self.categories else self.fallback] += n
            return counts, 0
        values = array.reshape(-1) if self.column is None else _as_2d(array)[:, self.column]
        return _count_categories(values, self.categories, self.fallback)


def _to_float(array: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"input '{name}' holds non-numeric values where the reference statistics are numeric",
                        "send numbers for this input, or rebuild the bundle's reference statistics") from exc


class _Plan:
    """The refstats entries compiled once: groups of numeric columns and categorical slots."""

    def __init__(self, refstats: dict):
        self.entries: list[dict] = []  # the fixed part of each features[]/outputs[] entry, in order
        self.where: list[tuple] = []  # ("num", group, position) or ("cat", slot)
        self.groups: list[_NumGroup] = []
        self.slots: list[_CatSlot] = []
        self.n_features = len(refstats.get("features") or [])
        self._compile(refstats.get("features") or [], False)
        self._compile(refstats.get("outputs") or [], True)

    def _compile(self, items: list[dict], is_output: bool) -> None:
        pending: dict[str, list] = {}  # source -> [(entry, column, edges)], 2-D numeric columns
        for item in items:
            source = item["output"] if is_output else item["input"]
            index = len(self.entries)
            column = item.get("column")
            self.entries.append({"name": item["name"], ("output" if is_output else "input"): source,
                                 "column": column, "kind": item["kind"]})
            self.where.append(None)
            if item["kind"] == "numeric" and column is None:
                self.where[index] = ("num", len(self.groups), 0)
                self.groups.append(_NumGroup(source, is_output, [index], None, [item.get("edges") or []]))
            elif item["kind"] == "numeric":
                pending.setdefault(source, []).append((index, column, item.get("edges") or []))
            else:
                self.where[index] = ("cat", len(self.slots))
                self.slots.append(_CatSlot(source, is_output, index, column, item.get("categories") or {},
                                           item.get("source") == "argmax"))
        for source, members in pending.items():
            for position, (index, _, _) in enumerate(members):
                self.where[index] = ("num", len(self.groups), position)
            self.groups.append(_NumGroup(source, is_output, [m[0] for m in members], [m[1] for m in members],
                                         [m[2] for m in members]))
