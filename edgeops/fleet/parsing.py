"""Parse and validate batches of raw MQTT messages, optionally in worker processes.

JSON decoding and validation (ingest.parse_message) are most of a window's CPU cost, and Python
runs them on one core at a time. ``ParserPool`` runs them in child processes so the monitor's
ingestion thread only stores, counts and acknowledges. Only what the monitor needs comes back
(pickled): the payload's small fields, its JSON text (the store keeps it as received), and each
all-numeric section (features, outputs) packed as names + bin counts in one int64 array, which
is a fraction of the cost of sending the decoded payload back.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import chain
from operator import itemgetter

import numpy as np

from .ingest import Message, PayloadError, parse_message

WINDOW = "window"
SECTIONS = ("features", "outputs")
_NAME, _KIND, _COUNTS = itemgetter("name"), itemgetter("kind"), itemgetter("counts")
_NUMERIC = {"numeric"}


def ignore_interrupts() -> None:
    """Child processes leave Ctrl-C to the monitor, which stops them after its final flush."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """One parser process per core, up to 4; none on a single core (it would only compete)."""
    cores = os.cpu_count() or 1
    return min(cores, 4) if cores >= 2 else 0


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
    """A window as a flat tuple of the fields the monitor reads, plus its packed sections.

    Flat scalars pickle in a fraction of the time of the nested dicts; ``expand`` rebuilds them.
    """
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
            packed[section] = (pack[0], pack[1], pack[2].tobytes())
            raw.append(None)
    return (WINDOW, message.device_id, message.received, p["seq"], agent["version"], agent["instance"],
            bundle["id"], bundle["name"], bundle["version"], variant["name"], variant["role"], window["start"],
            window["end"], requests["count"], requests["rows"], requests["errors"], requests["rejected"],
            latency.get("p95"), latency.get("counts"), p.get("accuracy"), raw[0], raw[1]), packed


def expand(flat: tuple, text: str) -> tuple[Message, dict]:
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


def parse_batch(prefix: str, items: list, shrink: bool) -> list:
    """[(Message, packed | None) or (None, reason)] for [(topic, payload, received)].

    ``shrink``: reduce windows with ``compact`` (for sending them to another process).
    """
    out = []
    for topic, payload, received in items:
        try:
            message = parse_message(topic, payload, prefix, received)
        except PayloadError as exc:
            out.append((None, exc.reason))
            continue
        if message.kind != "window":
            out.append((message, None))
        elif shrink:
            out.append(compact(message))
        else:
            out.append((message, {s: p for s in SECTIONS if (p := pack_section(message.payload.get(s) or []))}))
    return out


class ParserPool:
    """``workers`` child processes parsing chunks of a batch; 0 parses in the calling thread."""

    def __init__(self, prefix: str, workers: int, log=print):
        self.prefix = prefix
        self.workers = workers
        self.log = log
        self._pool = None
        if workers > 0:
            # spawn: forking a process that runs threads (paho, the evaluator) is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=ignore_interrupts)

    def warm_up(self, timeout: float = 60.0) -> None:
        """Start every worker process now (imports take a moment), not when messages wait."""
        if self._pool is None:
            return
        try:
            for future in [self._pool.submit(time.sleep, 0.2) for _ in range(self.workers)]:
                future.result(timeout)
        except (BrokenProcessPool, RuntimeError, OSError, TimeoutError) as exc:
            self._broken(exc)

    def submit(self, items: list) -> "ParseJob":
        """Start parsing ``items`` [(topic, payload, received)]; the job's result() waits for it."""
        if self._pool is None or len(items) < 8:
            return ParseJob(self, items, [])
        size = -(-len(items) // self.workers)
        try:
            futures = [self._pool.submit(parse_batch, self.prefix, items[i:i + size], True)
                       for i in range(0, len(items), size)]
        except (BrokenProcessPool, RuntimeError, OSError) as exc:
            # RuntimeError: a child cannot start (e.g. a main script without the __main__ guard).
            self._broken(exc)
            futures = []
        return ParseJob(self, items, futures)

    def parse(self, items: list) -> list:
        return self.submit(items).result()

    def _broken(self, exc: BaseException) -> None:
        if self._pool is not None:
            self.log(f"parser process failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}): "
                     "parsing in the ingestion thread from now on")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class ParseJob:
    """A batch being parsed by the pool (futures), or to be parsed in-thread on result()."""

    def __init__(self, pool: ParserPool, items: list, futures: list):
        self.pool, self.items, self.futures = pool, items, futures

    def result(self) -> list:
        if self.futures:
            try:
                results = [r for f in self.futures for r in f.result()]
            except BrokenProcessPool as exc:
                self.pool._broken(exc)
            else:
                return [_unpack(result, item) for result, item in zip(results, self.items)]
        return parse_batch(self.pool.prefix, self.items, shrink=False)


def _unpack(result: tuple, item: tuple) -> tuple:
    first, extra = result
    if type(first) is not tuple:
        return result  # a rejection reason, or a heartbeat / status Message
    # The window's JSON text is its payload, already checked to be valid UTF-8.
    packed = {section: (names, lengths, np.frombuffer(data, dtype=np.int64))
              for section, (names, lengths, data) in extra.items()}
    return expand(first, bytes(item[1]).decode("utf-8")), packed
