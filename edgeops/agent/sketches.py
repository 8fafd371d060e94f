"""Sketches: counts binned on the bundle's reference statistics, and the latency histogram.

``_Plan`` compiles the refstats entries once into arrays (one group per input/output), so a batch
of requests costs a few numpy calls per input, not one per feature. ``_Plan.count`` bins many
requests at once (their arrays stacked along axis 0): telemetry.WindowStats defers the binning
of requests to batches because a few numpy calls cost more than the rest of a 1-row request.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from edgeops.bundle.refstats import category_key  # the reference's own text form of a category
from edgeops.errors import DataError

OTHER = "__other__"
UNSEEN = "__unseen__"
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
                                         5000, 10000)
MAX_LATENCIES = 10_000  # exact percentiles up to this many requests, a uniform reservoir beyond
_COMPARE_EDGES = 32  # up to this many edges per column, one comparison pass per edge; beyond, searchsorted
_BINNING_ERRORS = (ValueError, TypeError, IndexError, DataError)  # what odd inputs raise while binned

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


_CHOSEN: dict[int, tuple] = {}  # id(refstats) -> (refstats, output name, how to read it, column)


def _prediction_entry(refstats: dict) -> tuple:
    """(output name, "argmax" | "values" | "numeric", column) of the first labels output entry, else
    of the first output entry; output None without outputs. Cached per refstats object (checked by
    identity) because prediction_values runs on every request."""
    hit = _CHOSEN.get(id(refstats))
    if hit is not None and hit[0] is refstats:
        return hit[1:]
    entries = refstats.get("outputs") or []
    chosen = next((e for e in entries if e["kind"] == "labels"), None) or (entries[0] if entries else None)
    if chosen is None:
        found = (None, "values", 0)
    elif chosen["kind"] == "labels":
        found = (chosen["output"], "argmax" if chosen.get("source") == "argmax" else "values", 0)
    else:
        found = (chosen["output"], "numeric", chosen.get("column") or 0)
    if len(_CHOSEN) >= 64:  # one entry per loaded bundle in the agent; bounded for everything else
        _CHOSEN.clear()
    _CHOSEN[id(refstats)] = (refstats, *found)
    return found


def prediction_values(refstats: dict, outputs: dict[str, np.ndarray]) -> list:
    """Per-row prediction of the first labels output entry, else of the first numeric one."""
    name, how, column = _prediction_entry(refstats)
    array = None if name is None else outputs.get(name)
    if array is None:
        return []
    if not isinstance(array, np.ndarray):
        array = np.asarray(array)
    if how == "argmax":
        return [str(i) for i in _argmax(array).tolist()]
    values = (array if array.ndim == 1 and not column else _as_2d(array)[:, column]).tolist()
    if how == "numeric":
        return [float(v) for v in values]
    return [str(v) if type(v) is int or type(v) is str else category_key(v) for v in values]


class _NumGroup:
    """Numeric entries read from one input/output, binned together by broadcasting over columns."""

    def __init__(self, source: str, is_output: bool, entries: list[int], columns, edge_lists: list):
        self.source, self.is_output, self.entries = source, is_output, tuple(entries)
        self.columns = None if columns is None else np.asarray(columns, dtype=np.intp)
        self.all_columns = columns is not None and list(columns) == list(range(len(columns)))
        self.edge_lists = [np.asarray(e, dtype=np.float64) for e in edge_lists]
        self.sizes = tuple(e.size + 1 for e in self.edge_lists)
        self.width = max(self.sizes)
        # NaN padding: x >= NaN is False, so a padded slot never counts as an edge below x.
        self.edges = np.full((len(self.edge_lists), self.width - 1), np.nan)
        for p, e in enumerate(self.edge_lists):
            self.edges[p, :e.size] = e
        self.offsets = np.arange(len(self.edge_lists), dtype=np.intp) * self.width
        self.edge_slots = [np.ascontiguousarray(self.edges[:, j:j + 1]) for j in range(self.width - 1)]

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
        # One row per column, float64 (what refstats compared in), contiguous: each pass below is one
        # SIMD sweep over a batch, where broadcasting rows x columns x edges ran a slow inner loop.
        table = _as_2d(array)
        wanted = len(self.sizes)
        picked = table.T[:wanted] if self.all_columns and table.shape[1] >= wanted else table.T[self.columns]
        values = np.asarray(picked, dtype=np.float64, order="C")
        if len(self.edge_slots) <= _COMPARE_EDGES:
            bins = np.zeros(values.shape, dtype=np.uint8)  # number of edges <= x; NaN -> 0
            hit = np.empty(values.shape, dtype=bool)
            for edge in self.edge_slots:  # edge: one edge of every column, as a column vector
                np.greater_equal(values, edge, out=hit)
                np.add(bins, hit.view(np.uint8), out=bins)
        else:
            bins = np.empty(values.shape, dtype=np.intp)
            for p, e in enumerate(self.edge_lists):
                bins[p] = np.searchsorted(e, values[p], side="right")
        missing = None
        if table.dtype.kind == "f":
            nan = np.isnan(values)
            if nan.any():
                missing = np.count_nonzero(nan, axis=1)
                bins[nan] = 0
        counts = np.bincount((bins + self.offsets[:, None]).reshape(-1), minlength=self.width * len(self.sizes))
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

    # -- binning requests ----------------------------------------------------------------------

    def count(self, requests: list[tuple[dict, dict]]) -> tuple[list, list, list[str]]:
        """Counts of a batch of (feeds, outputs) requests: ([(group, counts, missing)], [(slot, Counter,
        missing)], [errors]); a group or slot may appear more than once (add them all). The batch is
        stacked per input along axis 0 and binned once; if the requests do not stack (e.g. a dynamic
        dimension that differs) they are binned one by one, and a request whose values cannot be
        binned is left out, its error returned instead of raised: the other requests must count."""
        if len(requests) > 1:
            try:
                return (*self._count_stacked(requests), [])
            except _BINNING_ERRORS:
                pass
        num, cat, errors = [], [], []
        for feeds, outputs in requests:
            try:
                one_num, one_cat = self._count_one(feeds, outputs)
            except _BINNING_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
                continue
            num.extend(one_num)
            cat.extend(one_cat)
        return num, cat, errors

    def _count_one(self, feeds: dict, outputs: dict) -> tuple[list, list]:
        num = []
        for g, group in enumerate(self.groups):
            array = (outputs if group.is_output else feeds).get(group.source)
            if array is not None:
                num.append((g, *group.counts(np.asarray(array))))
        cat = []
        for s, slot in enumerate(self.slots):
            array = (outputs if slot.is_output else feeds).get(slot.source)
            if array is not None:
                cat.append((s, *slot.counts(np.asarray(array))))
        return num, cat

    def _count_stacked(self, requests: list[tuple[dict, dict]]) -> tuple[list, list]:
        stacked: dict[tuple, np.ndarray | None] = {}

        def stack(is_output: bool, source: str, flat: bool, numeric: bool) -> np.ndarray | None:
            key = (is_output, source, flat, numeric)
            if key not in stacked:
                stacked[key] = _stack([r[is_output].get(source) for r in requests], flat, numeric)
            return stacked[key]

        num = []
        for g, group in enumerate(self.groups):
            array = stack(group.is_output, group.source, group.columns is None, True)
            if array is not None:
                num.append((g, *group.counts(array)))
        cat = []
        for s, slot in enumerate(self.slots):
            array = stack(slot.is_output, slot.source, slot.column is None and not slot.argmax, slot.argmax)
            if array is not None:
                cat.append((s, *slot.counts(array)))
        return num, cat


def _stack(arrays: list, flat: bool, numeric: bool) -> np.ndarray | None:
    """One input of many requests along axis 0, in the form its entries read it: flattened, or as
    rows x columns (what each request's own array is reshaped to). Mixed dtypes are stacked as
    Python objects unless they are all numbers read as numbers: numpy's promotion would change a
    value's category text (1 -> "1.0", True -> "1") from what it is in a one-request count. Read as
    categories, they are stacked as that text: 2 and 2.0 (or 1 and True) are one key when counted."""
    parts = [a for a in arrays if a is not None]
    if not parts:
        return None
    try:
        dtypes = {p.dtype for p in parts}
    except AttributeError:  # not arrays (lists, say): as arrays
        parts = [np.asarray(p) for p in parts]
        dtypes = {p.dtype for p in parts}
    if len(dtypes) > 1 and not (numeric and all(d.kind in "iuf" for d in dtypes)):
        parts = [_CATEGORY_TEXT(p) if not numeric else np.asarray(p).astype(object) for p in parts]
    try:
        joined = np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
    except ValueError:  # 0-d arrays, or shapes beyond axis 0 that differ: reshape each first
        parts = [np.asarray(p) for p in parts]
        joined = np.concatenate([p.reshape(-1) if flat else _as_2d(p) for p in parts])
    return joined.reshape(-1) if flat else _as_2d(joined)


_CATEGORY_TEXT = np.frompyfunc(category_key, 1, 1)  # elementwise, into an object array of the same shape


class LatencySketch:
    """Latency histogram on LATENCY_BUCKETS_MS, count, sum, max, and exact percentiles up to
    MAX_LATENCIES values (a uniform reservoir beyond). Not thread-safe: the window's lock guards it."""

    __slots__ = ("counts", "seen", "total", "max", "values")

    def __init__(self):
        self.counts = np.zeros(len(LATENCY_BUCKETS_MS) + 1, dtype=np.int64)
        self.seen, self.total, self.max, self.values = 0, 0.0, None, []

    def add(self, latencies: list[float], rng: np.random.Generator) -> None:
        """Non-finite values are skipped, negative ones count as 0."""
        values = np.asarray(latencies, dtype=np.float64)
        values = np.maximum(values[np.isfinite(values)], 0.0)
        if not values.size:
            return
        # searchsorted left: value <= buckets[i] and > buckets[i-1] counts in bin i
        self.counts += np.bincount(np.searchsorted(LATENCY_BUCKETS_MS, values, side="left"),
                                   minlength=self.counts.size)
        self.total += float(values.sum())
        top = float(values.max())
        self.max = top if self.max is None else max(self.max, top)
        room = MAX_LATENCIES - len(self.values)  # values hold min(seen, MAX_LATENCIES): room >= 0
        self.values.extend(values[:room].tolist())
        rest = values[room:]
        if rest.size:  # reservoir: the k-th value seen replaces a random slot with probability MAX/k
            seen = np.arange(self.seen + room + 1, self.seen + values.size + 1)  # k of each value in rest
            slots = (rng.random(rest.size) * seen).astype(np.int64)
            for value, slot in zip(rest.tolist(), slots.tolist()):
                if slot < MAX_LATENCIES:
                    self.values[slot] = value
        self.seen += int(values.size)

    def render(self) -> dict:
        out = {"buckets": list(LATENCY_BUCKETS_MS), "counts": self.counts.tolist(), "count": self.seen,
               "sum": self.total, "max": self.max}
        if self.values:
            p50, p90, p95, p99 = np.percentile(np.asarray(self.values), (50, 90, 95, 99)).tolist()
            out.update({"p50": p50, "p90": p90, "p95": p95, "p99": p99})
        else:
            out.update({"p50": None, "p90": None, "p95": None, "p99": None})
        return out
