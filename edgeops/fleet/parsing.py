"""Parse and validate raw MQTT messages, and shrink windows for sending them between processes.

``parse_batch`` tries the msgspec fast path of ingest_fast.py on each window and the full checks
(ingest.parse_message) on anything it does not decide. ``compact``/``compact_typed`` reduce a
window to a flat tuple of the fields the store and the drift counts read (flat scalars pickle in
a fraction of the time of nested dicts), and ``expand`` rebuilds a Message from it. The worker
processes that run this are in pool.py.
"""
from __future__ import annotations

from itertools import chain
from operator import itemgetter

import numpy as np

from .ingest import Message, PayloadError, parse_message, parse_window_fast
from .ingest_fast import to_builtins

WINDOW = "window"
SECTIONS = ("features", "outputs")
_NAME, _KIND, _COUNTS = itemgetter("name"), itemgetter("kind"), itemgetter("counts")
_NUMERIC = {"numeric"}


_SHARED: dict[tuple, tuple] = {}  # one object per distinct names/lengths tuple: pickled once per chunk


def _shared(value: tuple) -> tuple:
    if len(_SHARED) > 10000:
        _SHARED.clear()
    return _SHARED.setdefault(value, value)


def pack_section(entries: list) -> tuple[tuple, tuple, np.ndarray] | None:
    """(names, bins per entry, all counts) of a section whose entries are all numeric, else None."""
    if not entries or set(map(_KIND, entries)) != _NUMERIC:
        return None
    counts = list(map(_COUNTS, entries))
    return (_shared(tuple(map(_NAME, entries))), _shared(tuple(map(len, counts))),
            np.fromiter(chain.from_iterable(counts), dtype=np.int64))


def compact(message: Message) -> tuple:
    """A window as a flat tuple of the fields the store and the drift counts read, plus its
    packed sections; ``expand`` rebuilds the payload's dicts from it."""
    p = message.payload
    agent, bundle, variant, window, requests = p["agent"], p["bundle"], p["variant"], p["window"], p["requests"]
    latency = p.get("latency_ms") or {}
    packed, raw = {}, []
    for section in SECTIONS:
        entries = p.get(section) or []
        pack = pack_section(entries)
        if pack is None:
            raw.append(entries)  # categorical / labels: few entries, sent as they are
        else:
            packed[section] = pack
            raw.append(None)
    return (WINDOW, message.device_id, message.received, p["seq"], agent["version"], agent["instance"],
            bundle["id"], bundle["name"], bundle["version"], variant["name"], variant["role"], window["start"],
            window["end"], requests["count"], requests["rows"], requests["errors"], requests["rejected"],
            latency.get("p95"), latency.get("counts"), p.get("accuracy"), raw[0], raw[1]), packed


def compact_typed(device_id: str, w, packed: dict, received: float) -> tuple:
    """``compact`` of a window decoded by the fast path (ingest_fast.Window)."""
    lat = w.latency_ms
    raw = [None if section in packed else to_builtins(entries)
           for section, entries in (("features", w.features), ("outputs", w.outputs))]
    return (WINDOW, device_id, received, w.seq, w.agent.version, w.agent.instance, w.bundle.id, w.bundle.name,
            w.bundle.version, w.variant.name, w.variant.role, w.window.start, w.window.end, w.requests.count,
            w.requests.rows, w.requests.errors, w.requests.rejected, lat.p95, lat.counts,
            None if w.accuracy is None else to_builtins(w.accuracy), raw[0], raw[1])


def expand(flat: tuple, text: str | None) -> Message:
    """The Message (with the fields the store and the drift counts read) of a ``compact`` tuple."""
    (_, device_id, received, seq, agent_version, instance, bundle_id, bundle_name, bundle_version, variant, role,
     start, end, count, rows, errors, rejected, p95, latency_counts, accuracy, features, outputs) = flat
    payload = {"schema_version": 1, "kind": WINDOW, "device_id": device_id, "seq": seq,
               "agent": {"version": agent_version, "instance": instance},
               "bundle": {"id": bundle_id, "name": bundle_name, "version": bundle_version},
               "variant": {"name": variant, "role": role}, "window": {"start": start, "end": end},
               "requests": {"count": count, "rows": rows, "errors": errors, "rejected": rejected},
               "latency_ms": {"p95": p95, "counts": latency_counts}, "accuracy": accuracy,
               "features": features or [], "outputs": outputs or []}
    return Message(WINDOW, device_id, payload, received, text)


def parse_batch(prefix: str, items: list, shrink: bool) -> tuple[list, list]:
    """([(Message, packed | None) or (None, reason)], windows) for [(topic, payload, received)].

    ``shrink``: reduce windows to (``compact`` tuple, packed sections) to send them to another
    process; ``windows`` then lists (index, payload text) of each.
    """
    out = []
    windows = []
    for topic, payload, received in items:
        fast = parse_window_fast(topic, payload, prefix)
        if fast is not None:
            device_id, window, packed, text = fast
            flat = compact_typed(device_id, window, packed, float(received))
            if shrink:
                windows.append((len(out), text))
                out.append((flat, packed))
            else:
                out.append((expand(flat, text), packed))
            continue
        try:
            message = parse_message(topic, payload, prefix, received)
        except PayloadError as exc:
            out.append((None, exc.reason))
            continue
        if message.kind != "window":
            out.append((message, None))
        elif shrink:
            windows.append((len(out), message.text))
            out.append(compact(message))
        else:
            out.append((message, {s: p for s in SECTIONS if (p := pack_section(message.payload.get(s) or []))}))
    return out, windows
