"""Worker processes that parse, validate, store and count telemetry for the monitor.

Decoding and validating a window, writing it to the database and turning it into drift counts
are most of its CPU cost, and Python runs them on one core at a time. ``ParserPool`` hands
chunks of each batch to child processes. Each one (``work_batch``):
- parses its chunk (parsing.py: the msgspec fast path first, the full checks for the rest);
- stores the chunk's windows in one transaction of its own (a Store per process);
- turns each window into its counts vector in the bundle's layout (horizon.Layout, from the
  reference statistics in the store) and its extras vector;
- sends back only those vectors, in the smallest integer type that holds them, plus the few
  fields that place them (horizon.Counted).
The monitor's own thread is left with MQTT, adding the vectors up, and the acknowledgements.

A worker that cannot store its chunk (database locked too long, disk full, a bug) says so, and
the monitor stores those windows itself, with its retry and isolation logic (monitor.py), before
anything is acknowledged. A window whose bundle has no reference in the store yet comes back
with its packed sections, for the monitor to place once it knows the reference.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

import numpy as np

from .horizon import Counted, Layout, counted, extras_vector
from .parsing import WINDOW, expand, parse_batch

PARENT_POLL_S = 0.2  # how often a child checks that the monitor still runs
LAYOUT_RETRY_S = 10.0  # a worker looks again for a reference it did not find after this long
MAX_LAYOUTS = 1000  # bundles whose layout a worker remembers


def default_workers() -> int:
    """One parser process per core, up to 4; none on a single core (it would only compete)."""
    cores = os.cpu_count() or 1
    return min(cores, 4) if cores >= 2 else 0


def child_init() -> None:
    """Set up a child process of the monitor (parser or evaluation process).

    Ctrl-C is left to the monitor, which stops its children after its final flush. And a child
    exits when the monitor is gone: if the monitor is killed (SIGKILL, OOM), nothing would ever
    close the pipe its children wait on (they share its ends), and they would live on, orphaned,
    perhaps still waiting to write to the database.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-monitor", daemon=True).start()


class Parsed(NamedTuple):
    """A parsed batch. ``results`` per item: (None, reason) for a rejected message, (Message,
    None) for a heartbeat or status, (Counted, Message | None) for a window, with its Message
    when the monitor has to store it itself; ``new``: windows a worker stored that were new;
    ``errors``: why a worker could not store its chunk."""

    results: list
    new: int = 0
    errors: tuple = ()


class ParserPool:
    """``workers`` child processes parsing and storing chunks of a batch (``work_batch``); 0 parses
    in the calling thread, which then stores too."""

    def __init__(self, prefix: str, workers: int, log=print, db_url: str | None = None):
        self.prefix = prefix
        self.workers = workers
        self.log = log
        self.db_url = db_url
        self._pool = None
        if workers > 0:
            # spawn: forking a process that runs threads (paho, the evaluator) is unsafe.
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=child_init)

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
            futures = [self._pool.submit(work_batch, self.prefix, items[i:i + size], self.db_url)
                       for i in range(0, len(items), size)]
        except (BrokenProcessPool, RuntimeError, OSError) as exc:
            # RuntimeError: a child cannot start (e.g. a main script without the __main__ guard).
            self._broken(exc)
            futures = []
        return ParseJob(self, items, futures)

    def parse(self, items: list) -> Parsed:
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

    def result(self) -> Parsed:
        if self.futures:
            try:
                chunks = [f.result() for f in self.futures]
            except BrokenProcessPool as exc:
                self.pool._broken(exc)
            except Exception as exc:  # noqa: BLE001 - a bug or MemoryError in a worker: this batch is parsed here
                self.pool.log(f"a parser process failed on a batch ({type(exc).__name__}: "
                              f"{str(exc).strip()[:200]}); parsing and storing it in the monitor's thread")
            else:
                return _merge(chunks, self.items)
        out, _ = parse_batch(self.pool.prefix, self.items, shrink=False)
        return Parsed([(counted(m.device_id, m.payload, extra), m) if m is not None and m.kind == WINDOW
                       else (m, extra) for m, extra in out])


def _merge(chunks: list, items: list) -> Parsed:
    """One Parsed of the workers' chunks (``work_batch`` results), in the items' order."""
    results, new, errors = [], 0, []
    for out, storage in chunks:
        offset = len(results)
        for result, item in zip(out, items[offset:offset + len(out)]):
            results.append(_unpack(result, item, not storage["stored"]))
        new += storage["new"]
        if storage["error"]:
            errors.append(storage["error"])
    return Parsed(results, new, tuple(errors))


def _unpack(result: tuple, item: tuple, unstored: bool) -> tuple:
    first, extra = result
    if type(first) is not tuple:
        return result  # a rejection reason, or a heartbeat / status Message
    # The window's JSON text is its payload, already checked to be valid UTF-8; the Message is
    # only needed when the monitor has to store the window itself.
    message = expand(first, bytes(item[1]).decode("utf-8")) if unstored else None
    return unpack_counts(first, extra), message


# -- the worker side --------------------------------------------------------------------------

_STORES: dict = {}   # db url -> this process's Store
_LAYOUTS: dict = {}  # (db url, bundle id) -> (Layout | None, when looked up)


def work_batch(prefix: str, items: list, db_url: str | None) -> tuple[list, dict]:
    """Parse, store and count one chunk: (results, storage) for ``_merge``.

    results per item: (None, reason), (heartbeat/status Message, None), or for a window
    (its ``compact`` tuple, counts) where counts is ("v", dtype, vector bytes, extras bytes) or
    ("p", packed sections as bytes) when the bundle's reference is unknown here.
    storage: {"stored": bool, "new": int, "error": str | None}.
    """
    # A chunk's decoded windows are trees of a few thousand objects each, freed by reference
    # counting; the cycle collector finds nothing in them but, triggered by every few hundred
    # new objects, kept walking them: it doubled the cost of decoding (measured: 150 -> 72 us
    # per 9 KB window). So it is off while a chunk is handled.
    gc.disable()
    try:
        return _work(prefix, items, db_url)
    finally:
        gc.enable()


def _work(prefix: str, items: list, db_url: str | None) -> tuple[list, dict]:
    out, windows = parse_batch(prefix, items, shrink=True)
    messages = [expand(out[i][0], text) for i, text in windows]
    storage = {"stored": False, "new": 0, "error": None}
    if db_url and messages:
        storage = _store(db_url, messages)
    for (i, _), message in zip(windows, messages):
        flat, packed = out[i]
        layout = _layout(db_url, flat[6]) if db_url else None
        if layout is None:
            out[i] = (flat, ("p", {s: (p[0], p[1], p[2].tobytes()) for s, p in packed.items()}))
        else:
            vector = _smallest(layout.vector(message.payload, packed))
            # Stored already: the monitor needs only the fields that place the vectors (up to
            # the window's end), not the rest of the tuple.
            out[i] = (flat[:13] if storage["stored"] else flat,
                      ("v", vector.dtype.str, vector.tobytes(), extras_vector(message.payload).tobytes()))
    return out, storage


def _smallest(vector: np.ndarray) -> np.ndarray:
    """Bin counts are small: uint16 (or uint32) is a quarter (a half) of the bytes to send."""
    top = int(vector.max()) if vector.size else 0
    if top < 2**16:
        return vector.astype(np.uint16)
    return vector.astype(np.uint32) if top < 2**32 else vector


def _store(db_url: str, messages: list) -> dict:
    from .store import open_store

    try:
        store = _STORES.get(db_url)
        if store is None:
            store = _STORES[db_url] = open_store(db_url)
        return {"stored": True, "new": store.insert_windows(messages), "error": None}
    except Exception as exc:  # noqa: BLE001 - the monitor stores them instead, and reports it
        _drop_store(db_url)
        return {"stored": False, "new": 0, "error": f"{type(exc).__name__}: {exc}"}


def _drop_store(db_url: str) -> None:
    bad = _STORES.pop(db_url, None)
    if bad is not None:
        try:
            bad.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close too
            pass


def _layout(db_url: str, bundle_id: str) -> Layout | None:
    if len(_LAYOUTS) > MAX_LAYOUTS:  # windows with made-up bundle ids must not grow it without end
        _LAYOUTS.clear()
    cached = _LAYOUTS.get((db_url, bundle_id))
    if cached is not None and (cached[0] is not None or time.monotonic() - cached[1] < LAYOUT_RETRY_S):
        return cached[0]
    layout = None
    try:
        store = _STORES.get(db_url)
        saved = store.reference(bundle_id) if store is not None else None
        layout = Layout(saved["refstats"]) if saved else None
    except Exception:  # noqa: BLE001 - without it the monitor places the counts itself
        _drop_store(db_url)
    _LAYOUTS[(db_url, bundle_id)] = (layout, time.monotonic())
    return layout


def unpack_counts(flat: tuple, counts: tuple) -> Counted:
    """The Counted of a worker's window (the monitor side of ``work_batch``)."""
    device_id, seq, instance, bundle_id, role, end = flat[1], flat[3], flat[5], flat[6], flat[10], flat[12]
    if counts[0] == "v":
        return Counted(device_id, bundle_id, seq, instance, end, role, np.frombuffer(counts[2], dtype=counts[1]),
                       np.frombuffer(counts[3], dtype=np.float64))
    packed = {s: (names, lengths, np.frombuffer(data, dtype=np.int64)) for s, (names, lengths, data) in counts[1].items()}
    return counted(device_id, expand(flat, None).payload, packed)
