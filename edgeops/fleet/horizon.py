"""Incremental counts over the evaluation horizon, per (bundle, device), in memory.

Drift is evaluated every few seconds over the last ``horizon`` seconds of windows. Re-reading
every stored window for that would cost O(windows) per evaluation; instead each ingested window
is added once into a time bucket (``horizon / BUCKETS`` wide, by the window's end time) as one
flat numpy vector, and an evaluation sums the few buckets still inside the horizon. The horizon
is therefore exact to one bucket width.

The flat vector's layout comes from the bundle's reference statistics (``Layout``): each feature
and output owns a slice, numeric ones len(edges)+1 bins, categorical/labels one slot per
reference category plus __other__ / __unseen__ (docs/telemetry.md). Request counters, errors,
feedback and the latency histogram sit in a second small vector.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

OTHER = "__other__"
UNSEEN = "__unseen__"
BUCKETS = 6
LATENCY_BUCKETS = 17  # len(LATENCY_BUCKETS_MS) + 1 (telemetry.md)
# extras vector: rows, requests, errors, rejected, labelled, correct, abs_error_sum, squared_error_sum,
# then the latency histogram
ROWS, REQUESTS, ERRORS, REJECTED, LABELLED, CORRECT, ABS_ERR, SQ_ERR = range(8)
EXTRAS = 8 + LATENCY_BUCKETS
SEEN_LIMIT = 4096  # per device: seqs remembered to skip redelivered windows


class Layout:
    """Where each reference feature's / output's counts live in the flat vector."""

    def __init__(self, refstats: dict):
        self.slots: list[tuple[str, str, str, int, int, dict | None]] = []  # section, name, kind, start, stop, keys
        size = 0
        for section in ("features", "outputs"):
            for entry in refstats.get(section) or []:
                kind = entry.get("kind")
                if kind == "numeric":
                    n, keys = len(entry.get("edges") or []) + 1, None
                else:
                    cats = list((entry.get("categories") or {}).keys())
                    if UNSEEN not in cats:
                        cats.append(UNSEEN)
                    n, keys = len(cats), {c: i for i, c in enumerate(cats)}
                self.slots.append((section, str(entry.get("name")), kind, size, size + n, keys))
                size += n
        self.size = size
        self.index = {(s[0], s[1]): s for s in self.slots}
        self.sections = []
        for section in ("features", "outputs"):
            slots = [s for s in self.slots if s[0] == section]
            if slots:
                self.sections.append((section, tuple(s[1] for s in slots), tuple(s[4] - s[3] for s in slots),
                                      slots[0][3], slots[-1][4]))

    def vector(self, payload: dict, packed: dict | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The flat counts of a window; ``packed``: its numeric sections from parsing.pack_section.

        ``out``: a zeroed row to fill (e.g. of one array for a whole batch), else a new array.
        """
        out = np.zeros(self.size, dtype=np.int64) if out is None else out
        for section, names, lengths, start, stop in self.sections:
            pack = (packed or {}).get(section)
            if pack is None:
                self._slow(out, section, payload.get(section) or ())
            elif pack[0] == names and pack[1] == lengths:
                out[start:stop] = pack[2]  # the common case: the reference's own order and bins
            else:
                offset = 0
                for name, n in zip(pack[0], pack[1]):
                    slot = self.index.get((section, name))
                    if slot is not None and slot[5] is None and slot[4] - slot[3] == n:
                        out[slot[3]:slot[4]] = pack[2][offset:offset + n]
                    offset += n
        return out

    def _slow(self, out: np.ndarray, section: str, entries) -> None:
        for e in entries:
            slot = self.index.get((section, e.get("name")))
            if slot is None:
                continue  # a feature the reference does not know: nothing to compare it with
            _, _, kind, start, stop, keys = slot
            counts = e.get("counts")
            if keys is None:
                if isinstance(counts, list) and len(counts) == stop - start:
                    out[start:stop] = counts
            elif isinstance(counts, dict):
                unseen = start + keys[UNSEEN]
                for key, value in counts.items():
                    out[start + keys[key] if key in keys else unseen] += value

    def split(self, vector: np.ndarray, section: str) -> dict[str, object]:
        """{name: counts} of one section: a list for numeric, {category: n} otherwise."""
        result: dict[str, object] = {}
        for sec, name, _, start, stop, keys in self.slots:
            if sec != section:
                continue
            part = vector[start:stop]
            result[name] = part.tolist() if keys is None else {k: int(part[i]) for k, i in keys.items()}
        return result


def extras_vector(payload: dict, out: np.ndarray | None = None) -> np.ndarray:
    """Request counters, feedback sums and the latency histogram of a window (into ``out`` if given)."""
    out = np.zeros(EXTRAS, dtype=np.float64) if out is None else out
    requests = payload.get("requests") or {}
    out[ROWS] = requests.get("rows", 0)
    out[REQUESTS] = requests.get("count", 0)
    out[ERRORS] = requests.get("errors", 0)
    out[REJECTED] = requests.get("rejected", 0)
    accuracy = payload.get("accuracy")
    if accuracy:
        out[LABELLED] = accuracy.get("labelled", 0)
        out[CORRECT] = accuracy.get("correct", 0) or 0
        out[ABS_ERR] = accuracy.get("abs_error_sum", 0) or 0
        out[SQ_ERR] = accuracy.get("squared_error_sum", 0) or 0
    counts = (payload.get("latency_ms") or {}).get("counts") or ()
    if len(counts) == LATENCY_BUCKETS:
        out[8:] = counts
    return out


class Counted(NamedTuple):
    """One window as the horizon counts it. ``vector`` and ``extras``: its counts in the bundle's
    Layout and its extras vector, when a worker process computed them (pool.py); otherwise the
    monitor computes them from ``payload`` and ``packed`` (parsing.pack_section)."""

    device_id: str
    bundle_id: str
    seq: int
    instance: str  # the agent's instance: (device, instance, seq) identifies a window (telemetry.md)
    end: float
    role: str
    vector: np.ndarray | None = None
    extras: np.ndarray | None = None
    payload: dict | None = None
    packed: dict | None = None


def counted(device_id: str, payload: dict, packed: dict | None = None) -> Counted:
    """The Counted of a window payload (validated, or read back from the store)."""
    return Counted(device_id, payload["bundle"]["id"], payload["seq"], payload["agent"]["instance"],
                   payload["window"]["end"], payload["variant"]["role"], payload=payload, packed=packed)


class HorizonCounts:
    """Per (bundle id, device id): time buckets of (counts vector, extras vector)."""

    def __init__(self, horizon_s: float, buckets: int = BUCKETS):
        self.horizon_s = float(horizon_s)
        self.width = self.horizon_s / buckets
        self.series: dict[tuple[str, str], dict[int, list]] = {}
        self._seen: dict[tuple[str, str], OrderedDict] = {}
        self._floor: dict[tuple[str, str], int] = {}

    def is_new(self, device_id: str, seq: int, instance: str = "") -> bool:
        """False for a window already counted (a redelivery); remembers ``seq`` otherwise.

        Per agent instance: an agent whose buffer directory was wiped starts again at seq 1 with a
        new instance, and its windows are new, not redeliveries (telemetry.md)."""
        key = (device_id, instance)
        if seq <= self._floor.get(key, 0):
            return False
        seen = self._seen.setdefault(key, OrderedDict())
        if seq in seen:
            return False
        seen[seq] = None
        if len(seen) > SEEN_LIMIT:
            # Forget the oldest half; anything at or below the floor now counts as seen: a
            # window that old is redelivered only after a long outage and is past the horizon.
            for _ in range(SEEN_LIMIT // 2):
                old, _ = seen.popitem(last=False)
                self._floor[key] = max(self._floor.get(key, 0), old)
        return True

    def add(self, bundle_id: str, device_id: str, end: float, vector: np.ndarray, extras: np.ndarray) -> None:
        if not math.isfinite(end):
            return
        index = int(end // self.width)
        buckets = self.series.setdefault((bundle_id, device_id), {})
        bucket = buckets.get(index)
        if bucket is None:
            # int64 whatever the window's own type: worker vectors travel as uint16 (pool.py),
            # and a sum in that type would wrap at 65,536.
            buckets[index] = [vector.astype(np.int64), extras.astype(np.float64)]
        else:
            bucket[0] += vector
            bucket[1] += extras

    def prune(self, now: float) -> None:
        oldest = int((now - self.horizon_s) // self.width) + 1
        for key in list(self.series):
            buckets = self.series[key]
            for index in [i for i in buckets if i < oldest]:
                del buckets[index]
            if not buckets:
                del self.series[key]

    def totals(self, now: float) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """{bundle id: {device id: (counts, extras)}} summed over the horizon ending at ``now``."""
        self.prune(now)
        result: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for (bundle_id, device_id), buckets in self.series.items():
            parts = list(buckets.values())
            counts = parts[0][0].copy()
            extras = parts[0][1].copy()
            for vec, ext in parts[1:]:
                counts += vec
                extras += ext
            result.setdefault(bundle_id, {})[device_id] = (counts, extras)
        return result
