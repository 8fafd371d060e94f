"""Benchmark one or more models against a device profile: measure, estimate, judge.

Results are data (ModelBenchmark.to_dict, schema in edgeops/bench/schema.json, documented in
docs/benchmark.md); tables, Markdown and plots only render them (report.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import __version__
from ..errors import DataError, EdgeOpsError, UsageError
from .harness import LatencyResult, ThroughputResult, measure_latency, measure_throughput
from .memory import MemoryResult, measure_memory
from .verdict import Verdict, judge

SCHEMA_VERSION = 1


@dataclass
class BenchOptions:
    threads: int | None = None  # None: the profile's cores, capped by this machine's
    runs: int = 100
    duration_s: float = 2.0
    warmup: int = 10
    batch_sizes: tuple[int, ...] = (1,)
    concurrency: tuple[int, ...] = (1,)
    throughput_duration_s: float = 1.0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    inputs: Path | None = None  # real inputs: .npy / .npz
    memory: bool = True
    on_device: bool = False  # measuring on the profile's own board: judge the measured numbers


@dataclass(frozen=True)
class ModelBenchmark:
    model: str
    label: str  # the model's name in tables (a variant name with --variants)
    format: str
    precision: str
    size_bytes: int
    threads: int | None
    batch: int
    latency: LatencyResult
    throughput: tuple[ThroughputResult, ...]
    memory: MemoryResult | None
    estimate: object | None  # bench.estimate.Estimate
    verdict: Verdict
    accuracy: dict | None = None  # from --variants: the gate's metric against the float model
    notes: tuple[str, ...] = ()

    def throughput_per_s(self) -> float:
        """Best samples/s over the batch sizes and concurrency levels measured."""
        if self.throughput:
            return max(t.samples_per_s for t in self.throughput)
        return 1000.0 * self.batch / self.latency.stats.p50

    def to_dict(self, include_values: bool = True) -> dict:
        s = self.latency.stats
        est = self.estimate
        return {
            "model": self.model, "label": self.label, "format": self.format, "precision": self.precision,
            "size_bytes": self.size_bytes, "threads": self.threads, "batch": self.batch,
            "latency_ms": {"p50": s.p50, "p90": s.p90, "p95": s.p95, "p99": s.p99, "mean": s.mean,
                           "std": s.std, "min": s.min, "max": s.max, "runs": s.count},
            "init_ms": self.latency.init_ms,
            "first_inference_ms": self.latency.first_inference_ms,
            "throughput_per_s": self.throughput_per_s(),
            "throughput": [t.to_dict() for t in self.throughput],
            "peak_rss_mb": self.memory.peak_rss_mb if self.memory else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "estimate": est.to_dict() if est is not None else None,
            "verdict": self.verdict.to_dict(),
            "accuracy": self.accuracy,
            "notes": list(self.notes),
            **({"latency_values_ms": list(self.latency.values_ms)} if include_values else {}),
        }


def default_threads(profile) -> int | None:
    if profile is None:
        return None
    host = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(profile.cpu.cores, host))


def profile_for_board(board: str | None):
    """The shipped profile whose device-tree model the running board matches, if any."""
    if not board:
        return None
    from ..profiles import list_profiles

    for p in list_profiles():
        if p.device_tree_model and board.startswith(p.device_tree_model):
            return p
    return None


def make_feeds(path: str | Path, options: BenchOptions, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs for one run: the --inputs file as it is, or random within the signature."""
    from .. import data
    from ..runtime import open_runtime

    specs = open_runtime(path).inputs
    if options.inputs is not None:
        return data.bind(data.load_samples(options.inputs), specs, "--inputs")
    return data.generate(specs, dict(options.input_shapes), batch=batch, data_flag="--inputs")


def _batch_feeds(path, options: BenchOptions) -> Callable[[int], dict]:
    from ..runtime import open_runtime

    for spec in open_runtime(path).inputs:
        fixed = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
        wrong = [b for b in options.batch_sizes if fixed is not None and b != fixed]
        if wrong:
            raise UsageError(f"input '{spec.name}' has a fixed batch of {fixed}; --batch-sizes asks for "
                             f"{', '.join(map(str, wrong))}", f"use --batch-sizes {fixed}, or export the model "
                             "with a dynamic batch dimension")
    base = make_feeds(path, options, batch=1)

    def feeds_for_batch(batch: int) -> dict:
        if options.inputs is not None or options.input_shapes:
            out = {}
            for name, value in base.items():  # repeat the given rows up to the batch
                if value.ndim == 0:
                    out[name] = value
                else:
                    reps = -(-batch // len(value))
                    out[name] = np.concatenate([value] * reps)[:batch]
            return out
        return make_feeds(path, options, batch=batch)

    return feeds_for_batch


def benchmark_model(path: str | Path, profile=None, options: BenchOptions | None = None, *,
                    label: str | None = None, accuracy: dict | None = None,
                    progress: Callable[[float], None] | None = None) -> ModelBenchmark:
    from ..runtime import detect_format

    options = options or BenchOptions()
    path = Path(path)
    fmt = detect_format(path)
    threads = options.threads if options.threads is not None else default_threads(profile)
    feeds = make_feeds(path, options)
    latency = measure_latency(path, feeds, threads=threads, warmup=options.warmup, min_runs=options.runs,
                              min_duration_s=options.duration_s, progress=progress)
    notes: list[str] = []
    throughput: tuple[ThroughputResult, ...] = ()
    if options.batch_sizes != (1,) or options.concurrency != (1,):
        feeds_for_batch = _batch_feeds(path, options)
        try:
            throughput = tuple(measure_throughput(path, feeds_for_batch, batch_sizes=options.batch_sizes,
                                                  concurrency=options.concurrency, threads=threads,
                                                  duration_s=options.throughput_duration_s))
        except DataError as exc:
            raise DataError(f"throughput at batch {options.batch_sizes}: {exc.message}",
                            "this model may have a fixed batch size: drop --batch-sizes") from None
    memory = None
    if options.memory and any(v.dtype.kind in "OUS" for v in feeds.values()):
        # The memory child takes its inputs through a pickle-free .npz, which cannot hold text.
        notes.append("peak RSS not measured: text inputs cannot be passed to the memory child process")
    elif options.memory:
        memory = measure_memory(path, feeds, threads=threads)
    estimate, precision = None, "unknown"
    try:
        from .costmodel import analyze

        precision = analyze(path, input_shapes={name: tuple(v.shape) for name, v in feeds.items()}).precision
    except EdgeOpsError as exc:
        notes.append(f"cost model: {exc.message}")
    if profile is not None:
        try:
            from .estimate import HostMeasurement, estimate as estimate_fn

            host = None if options.on_device else HostMeasurement(latency.stats.p50, threads=threads)
            shapes = {name: tuple(v.shape) for name, v in feeds.items()}  # what actually ran
            estimate = estimate_fn(path, profile, threads=threads, batch=latency.batch_size, host=host,
                                   input_shapes=shapes)
        except EdgeOpsError as exc:
            notes.append(f"no estimate: {exc.message}")
    verdict = _judge(profile, path, latency, memory, estimate, options)
    return ModelBenchmark(str(path), label or path.name, fmt, precision, path.stat().st_size, threads,
                          latency.batch_size, latency, throughput, memory, estimate, verdict, accuracy,
                          tuple(notes))


def _judge(profile, path: Path, latency: LatencyResult, memory, estimate, options: BenchOptions) -> Verdict:
    if profile is None:
        return Verdict(())
    if options.on_device:
        lat, lat_basis = latency.stats.p95, "measured p95"
        rss, rss_basis = (memory.peak_rss_mb, "measured peak RSS") if memory else (None, "skipped: not measured")
    elif estimate is not None:
        lat, lat_basis = estimate.p50_ms, f"estimated p50 on {profile.name}"
        rss, rss_basis = estimate.peak_rss_mb, f"estimated on {profile.name}"
    else:
        lat, lat_basis, rss, rss_basis = None, "", None, ""
    return judge(profile.budgets, size_bytes=path.stat().st_size, latency_ms=lat, latency_basis=lat_basis,
                 rss_mb=rss, rss_basis=rss_basis)


def report_dict(results: list[ModelBenchmark], profile, environment: dict, options: BenchOptions,
                include_values: bool = True) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "edgeops", "version": __version__},
        "created_unix": int(time.time()),
        "profile": profile.name if profile is not None else None,
        "budgets": dict(vars(profile.budgets)) if profile is not None else None,
        "on_device": options.on_device,
        "settings": {"runs": options.runs, "duration_s": options.duration_s, "warmup": options.warmup,
                     "batch_sizes": list(options.batch_sizes), "concurrency": list(options.concurrency),
                     "inputs": str(options.inputs) if options.inputs else None,
                     "input_shapes": {k: list(v) for k, v in options.input_shapes.items()}},
        "environment": environment,
        "results": [r.to_dict(include_values) for r in results],
        "pass": all(r.verdict.passed for r in results),
    }


def check_options(options: BenchOptions) -> None:
    import math

    if not 1 <= options.runs <= 1_000_000 or options.warmup < 0:
        raise UsageError("--runs must be 1..1000000 and --warmup >= 0", "e.g. --runs 100 --warmup 10")
    if not (math.isfinite(options.duration_s) and 0 <= options.duration_s <= 3600):
        raise UsageError(f"--duration {options.duration_s} must be 0..3600 seconds", "e.g. --duration 2")
    if any(b < 1 for b in options.batch_sizes) or any(c < 1 for c in options.concurrency):
        raise UsageError("batch sizes and concurrency levels must be >= 1", "e.g. --batch-sizes 1,8 --concurrency 1,2")
    if options.inputs is not None and options.input_shapes:
        raise UsageError("--inputs and --input-shape conflict: real inputs carry their own shapes",
                         "pass one of them")
