"""Latency and throughput of one model, measured through the Runtime protocol.

Everything runs through ``edgeops.runtime.open_runtime`` so that ONNX and TFLite models
are measured the same way (load, first inference, warm-up, timed runs). Each run is timed
on its own with ``time.perf_counter_ns`` around ``Runtime.run`` and nothing else: the
bookkeeping of the loop (stop conditions, progress) sits outside the timed window, so the
per-run numbers differ from a bare runtime loop only by what ``Runtime.run`` itself adds
(checking inputs, building the outputs dict). benchmarks/harness_overhead.py measures it:
on a 2-core Xeon the harness loop adds nothing over a plain loop around Runtime.run, and
Runtime.run adds a fixed ~2-6 us per call for onnxruntime and ~6-10 us for LiteRT over the
runtimes' own APIs -- 1-3 % of a 0.1-0.25 ms ONNX model, ~12 % of a 0.07 ms TFLite MLP,
nothing worth noting for millisecond models.
"""
from __future__ import annotations

import gc
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import UsageError
from ..runtime import open_runtime
from .stats import LatencyStats, throughput

ProgressCallback = Callable[[float], None]
_PROGRESS_EVERY_NS = 100_000_000  # a progress bar needs no more than ~10 updates a second


@dataclass(frozen=True)
class LatencyResult:
    """One model's latency on one input. Times in milliseconds unless named otherwise."""

    path: str
    format: str  # "onnx" | "tflite"
    threads: int | None  # as requested; None = the runtime's own default
    batch_size: int  # leading dimension of the first input (1 for a scalar input)
    init_ms: float  # constructing the runtime: reading and preparing the model
    first_inference_ms: float  # the first run alone (lazy allocations, kernel selection); not in stats
    warmup: int  # runs made after the first one and before timing
    duration_s: float  # wall time of the timed runs, loop included
    stats: LatencyStats
    values_ms: tuple[float, ...]  # every timed run in order, for plots and re-analysis

    @property
    def runs(self) -> int:
        return self.stats.count

    def to_dict(self, include_values: bool = True) -> dict:
        out = {
            "path": self.path,
            "format": self.format,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "init_ms": self.init_ms,
            "first_inference_ms": self.first_inference_ms,
            "warmup": self.warmup,
            "runs": self.runs,
            "duration_s": self.duration_s,
            "stats": self.stats.to_dict(),
        }
        if include_values:
            out["values_ms"] = list(self.values_ms)
        return out


@dataclass(frozen=True)
class ThroughputResult:
    """Sustained rate of ``concurrency`` workers, each running batches of ``batch`` samples."""

    batch: int
    concurrency: int
    threads: int | None  # per worker (each worker has its own runtime and thread pool)
    runs: int  # completed run() calls, all workers together
    elapsed_s: float
    samples_per_s: float  # batch * runs / elapsed
    requests_per_s: float  # runs / elapsed
    p50_ms: float  # median latency of one run() while the others were busy too

    def to_dict(self) -> dict:
        return {
            "batch": self.batch,
            "concurrency": self.concurrency,
            "threads": self.threads,
            "runs": self.runs,
            "elapsed_s": self.elapsed_s,
            "samples_per_s": self.samples_per_s,
            "requests_per_s": self.requests_per_s,
            "p50_ms": self.p50_ms,
        }


def measure_latency(
    path: str | Path,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
    warmup: int = 10,
    min_runs: int = 100,
    min_duration_s: float = 2.0,
    max_runs: int | None = None,
    progress: ProgressCallback | None = None,
) -> LatencyResult:
    """Load the model, run it once on its own, warm it up, then time runs one by one.

    Timing stops once BOTH ``min_runs`` runs and ``min_duration_s`` seconds are reached,
    or at ``max_runs`` runs, which caps the count even below ``min_runs`` (for a slow
    model). ``progress(fraction)`` is called with 0..1 during the timed runs.
    """
    _check_int("threads", threads, 1, allow_none=True)
    _check_int("warmup", warmup, 0)
    _check_int("min_runs", min_runs, 1)
    _check_int("max_runs", max_runs, 1, allow_none=True)
    if not min_duration_s >= 0:
        raise UsageError(f"min_duration_s must be >= 0, got {min_duration_s}", "pass a duration in seconds")
    feeds = _prepare(feeds)

    t0 = time.perf_counter_ns()
    runtime = open_runtime(path, threads)
    init_ns = time.perf_counter_ns() - t0

    with _gc_paused():
        t0 = time.perf_counter_ns()
        runtime.run(feeds)  # the first run goes through the checked path: bad feeds fail here, clearly
        first_ns = time.perf_counter_ns() - t0
        # Timed runs use the runtime's prepared call: the same work as a bare runtime loop
        # (inputs checked once above, not on every run).
        run = runtime.prepared(feeds) if hasattr(runtime, "prepared") else (lambda _f: runtime.run(feeds))
        for _ in range(warmup):
            run(feeds)
        values_ns, elapsed_ns = _timed_loop(run, feeds, min_runs, int(min_duration_s * 1e9),
                                            max_runs, progress)
    if progress is not None:
        progress(1.0)

    values_ms = tuple(v / 1e6 for v in values_ns)
    return LatencyResult(
        path=str(path),
        format=runtime.format,
        threads=threads,
        batch_size=batch_size_of(feeds),
        init_ms=init_ns / 1e6,
        first_inference_ms=first_ns / 1e6,
        warmup=warmup,
        duration_s=elapsed_ns / 1e9,
        stats=LatencyStats.from_values(values_ms),
        values_ms=values_ms,
    )


def _timed_loop(run, feeds, min_runs: int, min_ns: int, max_runs: int | None,
                progress: ProgressCallback | None) -> tuple[list[int], int]:
    """The hot loop: only ``run(feeds)`` lies between the two clock reads."""
    clock = time.perf_counter_ns
    values: list[int] = []
    append = values.append
    cap = max_runs if max_runs is not None else 1 << 62
    n = 0
    start = clock()
    next_report = start + _PROGRESS_EVERY_NS
    while True:
        t0 = clock()
        run(feeds)
        t1 = clock()
        append(t1 - t0)
        n += 1
        if n >= cap or (n >= min_runs and t1 - start >= min_ns):
            return values, t1 - start
        if progress is not None and t1 >= next_report:
            next_report = t1 + _PROGRESS_EVERY_NS
            done = min(n / min_runs, (t1 - start) / min_ns if min_ns else 1.0)
            if max_runs is not None:
                done = max(done, n / max_runs)
            progress(min(done, 1.0))


def measure_throughput(
    path: str | Path,
    feeds_for_batch: Callable[[int], Mapping[str, np.ndarray]],
    *,
    batch_sizes: Iterable[int] = (1,),
    concurrency: Iterable[int] = (1,),
    threads: int | None = None,
    duration_s: float = 2.0,
    warmup: int = 3,
) -> list[ThroughputResult]:
    """Samples/s and requests/s for every (batch size, concurrency) pair, in that order.

    Concurrency N means N Python threads, each with its OWN runtime instance, calling
    ``run()`` in a loop for ``duration_s``. One instance per worker because onnxruntime
    sessions may be shared between threads but a LiteRT interpreter may not (its input and
    output tensors are shared state); separate instances treat both formats alike and model
    a server with N workers, each holding the model. Both runtimes release the GIL while
    inferring, so the threads do run in parallel. ``threads`` is per instance: with N
    workers, N * threads should not exceed the cores, or the pools fight for them.
    """
    batch_sizes = tuple(batch_sizes)
    concurrency = tuple(concurrency)
    if not batch_sizes or not concurrency:
        raise UsageError("throughput needs at least one batch size and one concurrency level",
                         "pass e.g. batch_sizes=(1, 8) and concurrency=(1, 2)")
    for b in batch_sizes:
        _check_int("batch size", b, 1)
    for c in concurrency:
        _check_int("concurrency", c, 1)
    _check_int("threads", threads, 1, allow_none=True)
    _check_int("warmup", warmup, 0)
    if not duration_s > 0:
        raise UsageError(f"duration_s must be > 0, got {duration_s}", "pass a duration in seconds")

    pool: list = []  # runtimes are reused across configurations: loading is not what is measured
    results = []
    with _gc_paused():
        for batch in batch_sizes:
            feeds = _prepare(feeds_for_batch(batch))
            for workers in concurrency:
                while len(pool) < workers:
                    pool.append(open_runtime(path, threads))
                for runtime in pool[:workers]:
                    for _ in range(1 + warmup):  # the first run also resizes TFLite inputs to this batch
                        runtime.run(feeds)
                results.append(_run_workers(pool[:workers], feeds, batch, threads, duration_s))
    return results


def _run_workers(runtimes: Sequence, feeds: dict, batch: int, threads: int | None,
                 duration_s: float) -> ThroughputResult:
    n = len(runtimes)
    barrier = threading.Barrier(n + 1)
    latencies: list[list[int]] = [[] for _ in range(n)]
    ends = [0] * n
    errors: list[BaseException] = []
    deadline = [0]

    def work(i: int) -> None:
        clock = time.perf_counter_ns
        run = runtimes[i].run
        append = latencies[i].append
        barrier.wait()
        stop = deadline[0]
        t1 = clock()
        try:
            while True:  # at least one run per worker, even one scheduled late on a busy machine
                t0 = clock()
                run(feeds)
                t1 = clock()
                append(t1 - t0)
                if t1 >= stop or errors:
                    break
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)
        ends[i] = t1

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in workers:
        t.start()
    start = time.perf_counter_ns()
    deadline[0] = start + int(duration_s * 1e9)
    barrier.wait()
    for t in workers:
        t.join()
    if errors:
        raise errors[0]
    elapsed_s = (max(ends) - start) / 1e9
    all_ns = [v for per_worker in latencies for v in per_worker]
    runs = len(all_ns)
    return ThroughputResult(
        batch=batch,
        concurrency=n,
        threads=threads,
        runs=runs,
        elapsed_s=elapsed_s,
        samples_per_s=throughput(batch * runs, elapsed_s),
        requests_per_s=throughput(runs, elapsed_s),
        p50_ms=float(np.percentile(all_ns, 50)) / 1e6 if all_ns else float("nan"),
    )


def batch_size_of(feeds: Mapping[str, np.ndarray]) -> int:
    """Leading dimension of the first input; 1 for a scalar input."""
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _prepare(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Contiguous arrays, made once, so no run pays for a conversion."""
    if not isinstance(feeds, Mapping) or not feeds:
        raise UsageError("the benchmark needs inputs: a dict of arrays keyed by input name",
                         "pass --sample-input FILE or let edgeops generate inputs")
    return {name: np.ascontiguousarray(value) for name, value in feeds.items()}


@contextmanager
def _gc_paused():
    """Keep the cyclic garbage collector out of the timed runs.

    A collection that lands inside one run shows up as an outlier caused by the Python
    process, not by the model (timeit pauses it for the same reason).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}, got {value!r}",
                         f"pass a whole number of at least {minimum}")
