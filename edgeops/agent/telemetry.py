"""Telemetry windows for the on-device agent: what one model variant saw and did in one window.

The wire format is docs/telemetry.md. Counts are binned on the bundle's reference statistics
(edgeops/bundle/refstats.py) so the fleet monitor can compare them bin by bin.

``record_request`` sits on the request path, where even a few numpy calls cost more than the rest
of a 1-row request. So it only keeps references to the request's arrays in its window's pending
list (O(1) Python under the lock); the binning runs over many requests at once (sketches._Plan.count
stacks them per input) when the pending list reaches a threshold, and at ``snapshot_and_reset``.
"""
from __future__ import annotations

import json
import math
import random
import threading
from collections import Counter, OrderedDict

import numpy as np

from edgeops.bundle.refstats import category_key  # the reference's own text form of a category
from edgeops.errors import DataError

# bin_numeric, count_categories, prediction_values, OTHER, UNSEEN, LATENCY_BUCKETS_MS are part of this
# module's API (contract A).
from .sketches import (LATENCY_BUCKETS_MS, MAX_LATENCIES, OTHER, UNSEEN, LatencySketch, _Plan,  # noqa: F401
                       bin_numeric, count_categories, prediction_values)

REJECT_REASONS = ("shape", "dtype", "missing", "nonfinite", "range", "schema")
SCHEMA_VERSION = 1
MAX_SAMPLES = 20
SYSTEM_KEYS = ("cpu_percent", "rss_bytes", "temperature_c", "load1")
# A window's pending requests are binned together once they reach any of these. Rows and requests
# amortize the numpy calls (a 256-request batch costs about what 3 single requests did); bytes bound
# the memory the pending references keep alive (large rows, e.g. images, flush early). A request
# alone at the row or byte limit is binned at once, by itself.
BATCH_ROWS = 512
BATCH_REQUESTS = 256
BATCH_BYTES = 4 << 20


class _Window:
    __slots__ = ("requests", "rows", "errors", "rejected", "reasons", "latency", "num", "num_missing", "cat",
                 "cat_missing", "violations", "feedback", "labelled", "correct", "abs_sum", "sq_sum", "samples",
                 "samples_seen", "pending", "pending_latency", "pending_rows", "pending_bytes", "binning")

    def __init__(self, plan: _Plan):
        self.requests = self.rows = self.errors = self.rejected = 0
        self.reasons: Counter = Counter()
        self.latency = LatencySketch()
        self.num = [np.zeros(g.width * len(g.sizes), dtype=np.int64) for g in plan.groups]
        self.num_missing = [np.zeros(len(g.sizes), dtype=np.int64) for g in plan.groups]
        self.cat = [Counter() for _ in plan.slots]
        self.cat_missing = [0] * len(plan.slots)
        self.violations: Counter = Counter()
        self.feedback, self.labelled, self.correct, self.abs_sum, self.sq_sum = False, 0, 0, 0.0, 0.0
        self.samples: list = []
        self.samples_seen = 0
        # Recorded, not yet binned: (feeds, outputs) and latencies, in step; the batches being binned
        # right now by other threads (taken from this window, to be added to it).
        self.pending: list[tuple[dict, dict]] = []
        self.pending_latency: list[float] = []
        self.pending_rows = self.pending_bytes = self.binning = 0


class WindowStats:
    """One variant's statistics for the current window; every method is thread-safe.

    Every change to a window happens under ``_lock``; binning happens outside it. A batch taken for
    binning stays attributed to the window it was recorded in (``_Window.binning`` counts such
    batches in flight) and is added to that same window, even if a snapshot swapped it out
    meanwhile: ``snapshot_and_reset`` swaps the window, then waits on ``_done`` (a Condition on the
    same lock) until no batch of the old window is in flight, so a request lands wholly in exactly
    one window, never two or none. The wait is short: at most one batch's binning.
    """

    def __init__(self, refstats: dict, sample_rate: float = 0.0, seed: int | None = None):
        if not 0.0 <= float(sample_rate) <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        self._plan = _Plan(refstats)
        self._sample_rate = float(sample_rate)
        entries = refstats.get("outputs") or []
        first = next((e for e in entries if e["kind"] == "labels"), None) or (entries[0] if entries else None)
        self._feedback_kind = "numeric" if first is not None and first["kind"] == "numeric" else "labels"
        self._random = random.Random(seed)
        self._generator = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._window = _Window(self._plan)
        self.unbinned_requests = 0  # requests whose values could not be binned (left out of the counts)

    def record_request(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
                       latency_ms: float) -> None:
        """One answered request: accepted inputs (batch on axis 0), the model's outputs, its latency.

        The arrays are kept by reference until the window bins them: the caller must not change
        them afterwards. Raises DataError when a batch this call bins held values that cannot be
        binned (those requests are left out of the counts; the rest of the batch counts)."""
        latency = float(latency_ms)
        rows = size = 0
        for array in feeds.values():
            shape = array.shape if isinstance(array, np.ndarray) else np.shape(array)
            n = shape[0] if shape else 1
            rows = n if n > rows else rows
            size += array.nbytes if isinstance(array, np.ndarray) else 0
        for array in outputs.values():
            size += array.nbytes if isinstance(array, np.ndarray) else 0
        picked = self._pick_samples(feeds, rows) if self._sample_rate > 0.0 else ()
        with self._lock:
            w = self._window
            w.requests += 1
            w.rows += rows
            for row in picked:
                self._add_sample(w, row)
            if rows >= BATCH_ROWS or size >= BATCH_BYTES:
                batch, latencies = [(feeds, outputs)], [latency]  # big enough alone: no stacking copy
            else:
                w.pending.append((feeds, outputs))
                w.pending_latency.append(latency)
                w.pending_rows += rows
                w.pending_bytes += size
                if (w.pending_rows < BATCH_ROWS and len(w.pending) < BATCH_REQUESTS
                        and w.pending_bytes < BATCH_BYTES):
                    return
                batch, latencies = w.pending, w.pending_latency
                w.pending, w.pending_latency, w.pending_rows, w.pending_bytes = [], [], 0, 0
            w.binning += 1
        try:
            errors = self._bin(w, batch, latencies)
        finally:
            with self._done:
                w.binning -= 1
                self._done.notify_all()
        if errors:
            raise DataError(f"{len(errors)} request(s) could not be binned for telemetry: {errors[0]}",
                            "check that the bundle's reference statistics match the model's inputs")

    def record_rejection(self, reason: str, features: tuple[str, ...] = ()) -> None:
        """A request refused by validation; ``features`` names the refstats features that broke a rule."""
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; expected one of {', '.join(REJECT_REASONS)}")
        with self._lock:
            w = self._window
            w.rejected += 1
            w.reasons[reason] += 1
            w.violations.update(set(features))

    def record_error(self, latency_ms: float | None = None) -> None:
        """The model failed (HTTP 5xx); a given latency joins the latency histogram (the caller waited)."""
        with self._lock:
            self._window.errors += 1
            if latency_ms is not None:
                self._window.latency.add([float(latency_ms)], self._generator)

    def record_feedback(self, predicted: list, actual: list) -> None:
        """Ground truth for earlier predictions; pairs with a missing side are skipped."""
        if len(predicted) != len(actual):
            raise DataError(f"feedback has {len(actual)} values for {len(predicted)} predictions",
                            "send one actual value per predicted row")
        labelled = correct = 0
        abs_sum = sq_sum = 0.0
        for p, a in zip(predicted, actual):
            if self._feedback_kind == "labels":
                p, a = _label_text(p), _label_text(a)
                if p is not None and a is not None:
                    labelled += 1
                    correct += p == a
            else:
                p, a = _number(p), _number(a)
                if p is not None and a is not None:
                    labelled += 1
                    abs_sum += abs(p - a)
                    sq_sum += (p - a) ** 2
        with self._lock:
            w = self._window
            w.feedback = True
            w.labelled += labelled
            w.correct += correct
            w.abs_sum += abs_sum
            w.sq_sum += sq_sum

    def snapshot_and_reset(self) -> dict:
        """The window's body as in docs/telemetry.md; a new empty window starts.

        Costs O(features + buckets) plus binning the pending requests (bounded by BATCH_*)."""
        fresh = _Window(self._plan)
        with self._done:
            w, self._window = self._window, fresh
            while w.binning:  # batches of w other threads are binning: they add to w, then notify
                self._done.wait()
            batch, latencies = w.pending, w.pending_latency
            w.pending, w.pending_latency, w.pending_rows, w.pending_bytes = [], [], 0, 0
        # w is out of every other thread's reach now: no one records into it or bins for it.
        self._bin(w, batch, latencies)
        return self._render(w)

    def _bin(self, w: _Window, batch: list[tuple[dict, dict]], latencies: list[float]) -> list[str]:
        """Bin a batch taken from w (outside the lock) and add it to w (under it); returns the errors
        of requests left out."""
        num, cat, errors = self._plan.count(batch) if self._plan.groups or self._plan.slots else ([], [], [])
        with self._lock:
            w.latency.add(latencies, self._generator)
            for g, counts, missing in num:
                w.num[g] += counts
                if missing is not None:
                    w.num_missing[g] += missing
            for s, counts, missing in cat:
                w.cat[s].update(counts)
                w.cat_missing[s] += missing
            self.unbinned_requests += len(errors)
        return errors

    def _add_sample(self, w: _Window, row: dict) -> None:
        w.samples_seen += 1  # reservoir over the sampled rows: uniform over the window
        if len(w.samples) < MAX_SAMPLES:
            w.samples.append(row)
        else:
            j = self._random.randrange(w.samples_seen)
            if j < MAX_SAMPLES:
                w.samples[j] = row

    def _pick_samples(self, feeds: dict, rows: int) -> list[dict]:
        picked = np.flatnonzero(self._generator.random(rows) < self._sample_rate).tolist()
        arrays = {name: np.asarray(v) for name, v in feeds.items()}
        return [{name: _plain(a[i] if a.ndim else a) for name, a in arrays.items()
                 if not a.ndim or i < a.shape[0]} for i in picked[:MAX_SAMPLES]]

    def _render(self, w: _Window) -> dict:
        plan = self._plan
        features, outputs = [], []
        for index, (entry, where) in enumerate(zip(plan.entries, plan.where)):
            out = dict(entry)
            if where[0] == "num":
                group = plan.groups[where[1]]
                start = where[2] * group.width
                out["counts"] = w.num[where[1]][start:start + group.sizes[where[2]]].tolist()
                missing = int(w.num_missing[where[1]][where[2]])
            else:
                counts = w.cat[where[1]]
                slot = plan.slots[where[1]]
                out["counts"] = {k: int(counts.get(k, 0)) for k in sorted(slot.categories)}
                if counts.get(UNSEEN):
                    out["counts"][UNSEEN] = int(counts[UNSEEN])
                missing = w.cat_missing[where[1]]
            if index < plan.n_features:
                out["missing"] = missing
                out["violations"] = int(w.violations.get(entry["name"], 0))
                features.append(out)
            else:
                outputs.append(out)
        body = {
            "requests": {"count": w.requests, "rows": w.rows, "errors": w.errors, "rejected": w.rejected,
                         "rejected_reasons": dict(sorted(w.reasons.items()))},
            "latency_ms": w.latency.render(),
            "features": features,
            "outputs": outputs,
            "accuracy": _accuracy(w, self._feedback_kind),
        }
        if self._sample_rate > 0.0:
            body["samples"] = {"rate": self._sample_rate, "rows": list(w.samples)}
        return body


def _accuracy(w: _Window, kind: str) -> dict | None:
    if not w.feedback:
        return None
    if kind == "labels":
        return {"kind": "labels", "labelled": w.labelled, "correct": w.correct}
    return {"kind": "numeric", "labelled": w.labelled, "abs_error_sum": w.abs_sum, "squared_error_sum": w.sq_sum}


def _label_text(value) -> str | None:
    """A class as text, the way refstats keys it; 3.0 from a JSON body matches class "3"."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return category_key(value)


def _number(value) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"feedback value {value!r} is not a number", "send numbers for a numeric model") from exc
    return number if math.isfinite(number) else None


class FeedbackCache:
    """request_id -> (variant, predicted values): the last ``max_requests`` requests, least recent dropped."""

    def __init__(self, max_requests: int = 10000):
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self._max = int(max_requests)
        self._items: OrderedDict[str, tuple[str, list]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, request_id: str, variant: str, predicted: list) -> None:
        with self._lock:
            self._items[request_id] = (variant, list(predicted))
            self._items.move_to_end(request_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def pop(self, request_id: str) -> tuple[str, list] | None:
        with self._lock:
            return self._items.pop(request_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


def build_window_payload(*, device_id: str, seq: int, agent: dict, bundle: dict, variant: dict,
                         start: float, end: float, body: dict, system: dict, outbox: dict) -> dict:
    """The complete ``window`` payload of docs/telemetry.md (``body`` from snapshot_and_reset)."""
    if not float(start) <= float(end):
        raise ValueError(f"window start {start} is after its end {end}")
    payload = {
        "schema_version": SCHEMA_VERSION, "kind": "window", "device_id": device_id, "seq": int(seq),
        "agent": dict(agent), "bundle": dict(bundle), "variant": dict(variant),
        "window": {"start": float(start), "end": float(end)},
    }
    for key in ("requests", "latency_ms", "features", "outputs"):
        payload[key] = body[key]
    payload["accuracy"] = body.get("accuracy")
    if "samples" in body:
        payload["samples"] = body["samples"]
    payload["system"] = {key: system.get(key) for key in SYSTEM_KEYS}
    payload["outbox"] = {"pending": int(outbox["pending"]), "dropped_total": int(outbox["dropped_total"])}
    return payload


def encode_payload(payload: dict) -> bytes:
    """Compact UTF-8 JSON; NaN and inf become null so strict readers accept every payload."""
    return json.dumps(_plain(payload), separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode("utf-8")


def _plain(value):
    """JSON-ready: numpy scalars/arrays to Python, non-finite floats to None, bytes to text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
