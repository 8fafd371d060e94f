"""`edgeops benchmark`: measured and estimated latency, memory and throughput, with budget verdicts."""
from __future__ import annotations

from pathlib import Path

import click

from .output import console, emit_json, json_text

HELP = """Benchmark ONNX / TFLite models: latency, throughput and peak memory measured here,
latency and memory estimated for the --device profile, and a verdict per budget.

\b
For each MODEL:
  latency     warm-up, then timed runs until both --runs and --duration are reached:
              p50/p90/p95/p99, mean, std, min, max; load time and first inference apart
  throughput  samples/s at each --batch-sizes x --concurrency (each worker its own runtime)
  memory      peak RSS of loading + running the model, in an isolated child process
  estimate    p50 [low-high] and peak RSS on the device (docs/benchmark-estimate.md)
  verdict     latency, RAM and model-size budgets of the profile (override with --*-budget)

\b
Off the device, latency and RAM are judged on the device estimate; on the device itself
(the board is detected from /proc/device-tree/model) on the measured p95 and peak RSS.

\b
Inputs are random within the input signature; dynamic dimensions other than the batch
need --input-shape NAME=D,D,...; --inputs FILE.npy|FILE.npz feeds real data instead.

\b
--variants: MODEL is a source model (scikit-learn, PyTorch, Keras, ONNX); edgeops builds every
format and precision it can (ONNX fp32/dynamic/int8/fp16, TFLite fp32/dynamic/int8/fp16 for
Keras), gates each against the float model (--eval with labels for accuracy), and benchmarks
them in one table.

\b
Exit codes: 0 all budgets pass, 8 a budget failed (results are still written),
2 usage error, 3 unreadable model or inputs, 4 missing dependency (see docs/exit-codes.md).

\b
Examples:
  edgeops benchmark model.onnx model.int8.onnx --device rpi4 --json report.json
  edgeops benchmark net.tflite --device rpi5 --batch-sizes 1,8 --concurrency 1,2 --plot lat.png
  edgeops benchmark model.joblib --variants --device rpi4 --calibration calib.npz --eval eval.npz
"""


def _ints(text: str | None, flag: str) -> tuple[int, ...]:
    from ..errors import UsageError

    if not text:
        return (1,)
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} '{text}' is not a comma-separated list of integers", f"e.g. {flag} 1,8") from None
    return values


@click.command("benchmark", help=HELP)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--device", metavar="PROFILE", help="Device profile name or YAML path (default: the detected board).")
@click.option("--runs", type=int, default=100, show_default=True, help="Minimum timed runs per model.")
@click.option("--duration", type=float, default=2.0, show_default=True, help="Minimum timed seconds per model.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--threads", type=int, help="Runtime threads (default: the profile's cores, at most this machine's).")
@click.option("--batch-sizes", metavar="B,B,...", help="Throughput batch sizes, e.g. 1,8.")
@click.option("--concurrency", metavar="C,C,...", help="Throughput concurrency levels, e.g. 1,2.")
@click.option("--input-shape", multiple=True, metavar="NAME=D,D,...", help="Shape for a dynamic input; repeatable.")
@click.option("--inputs", type=click.Path(path_type=Path), help="Real inputs: .npy or .npz keyed by input name.")
@click.option("--no-memory", is_flag=True, help="Skip the peak-RSS child process.")
@click.option("--latency-budget", type=float, metavar="MS", help="Override the profile's latency budget.")
@click.option("--ram-budget", type=float, metavar="MB", help="Override the profile's RAM budget.")
@click.option("--size-budget", type=float, metavar="MB", help="Override the profile's model-size budget.")
@click.option("--variants", is_flag=True, help="Build and benchmark every format and precision of one source model.")
@click.option("--calibration", type=click.Path(path_type=Path), help="With --variants: calibration data for int8.")
@click.option("--eval", "eval_data", type=click.Path(path_type=Path), help="With --variants: eval data (+labels).")
@click.option("--sample-input", type=click.Path(path_type=Path), help="With --variants: inputs for the conversion check.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="With --variants: accuracy drop (points) a variant may lose and still pass.")
@click.option("--keep-variants", type=click.Path(file_okay=False, path_type=Path),
              help="With --variants: keep the built variant files in this directory.")
@click.option("--save-calibration", is_flag=True,
              help="On the device: save the measurement to improve this profile's estimates.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON ('-' for stdout).")
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), help="Write the report as Markdown ('-' for stdout).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write the latency distribution as a PNG.")
def command(models, device, runs, duration, warmup, threads, batch_sizes, concurrency, input_shape, inputs,
            no_memory, latency_budget, ram_budget, size_budget, variants, calibration, eval_data, sample_input,
            max_drop, keep_variants, save_calibration, json_path, md_path, plot_path):
    from ..bench.environment import collect_environment
    from ..bench.run import BenchOptions, check_options, profile_for_board, report_dict
    from ..data import parse_input_shapes
    from ..errors import BudgetError, UsageError

    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be >= 1", "e.g. --threads 4")
    import os

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is not None and threads > usable:
        console.print(f"note: --threads {threads} is more than this machine's {usable} usable cores: "
                      "runs will oversubscribe them", markup=False, highlight=False)
    if variants and len(models) != 1:
        raise UsageError("--variants takes exactly one source model", "pass one model, or drop --variants")
    if not variants and (calibration or eval_data or sample_input or keep_variants):
        raise UsageError("--calibration, --eval, --sample-input and --keep-variants go with --variants",
                         "add --variants")
    env = collect_environment()
    detected = profile_for_board(env.get("board"))
    profile = None
    if device:
        from ..profiles import load_profile

        profile = load_profile(device)
    elif detected is not None:
        profile = detected
    on_device = profile is not None and detected is not None and detected.name == profile.name
    if save_calibration and not on_device:
        raise UsageError("--save-calibration needs a run on the device itself",
                         f"run it on the {profile.display_name if profile else 'board'}; this machine is "
                         f"{env.get('board') or env.get('cpu_model') or 'not a known board'}")
    if profile is not None:
        profile = profile.with_budgets(latency_budget, ram_budget, size_budget)
    elif any(b is not None for b in (latency_budget, ram_budget, size_budget)):
        raise UsageError("budgets need a device profile", "pass --device PROFILE")
    options = BenchOptions(threads=threads, runs=runs, duration_s=duration, warmup=warmup,
                           batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                           concurrency=_ints(concurrency, "--concurrency"),
                           input_shapes=parse_input_shapes(input_shape), inputs=inputs,
                           memory=not no_memory, on_device=on_device)
    check_options(options)
    _check_output_paths(models, inputs, calibration, eval_data, sample_input,
                        {"--json": json_path, "--markdown": md_path, "--plot": plot_path})

    quiet = any(p is not None and str(p) == "-" for p in (json_path, md_path))
    if json_path is not None and md_path is not None and str(json_path) == str(md_path) == "-":
        raise UsageError("--json - and --markdown - both write to stdout", "write one of them to a file")
    if variants:
        from ..bench.variants import benchmark_variants

        say = (lambda _m: None) if quiet else (lambda m: console.print(m, markup=False, highlight=False))
        results, skipped = benchmark_variants(models[0], profile, options, calibration=calibration,
                                              eval_data=eval_data, sample_input=sample_input, max_drop=max_drop,
                                              keep_dir=keep_variants, say=say)
        for line in skipped:
            say(f"variants: {line}")
    else:
        results = _run_all(models, profile, options, quiet)

    if not results:
        raise UsageError("no variant could be built and benchmarked", "see the lines above")
    report = report_dict(results, profile, env, options, include_values=plot_path is not None)
    if save_calibration:
        from ..bench.calibration import save_calibration as save

        for r in results:
            target = save(profile.name, r.model, {"p50_ms": r.latency.stats.p50, "threads": r.threads,
                                                   "batch": r.batch})
        console.print(f"saved {len(results)} measurement(s) to {target}")
    _write_outputs(report, json_path, md_path, plot_path, quiet)
    if not report["pass"]:
        failures = [f"{r.label}: {f}" for r in results for f in r.verdict.failures]
        raise BudgetError(f"{len(failures)} budget check(s) failed: {'; '.join(failures)}", failures,
                          "pick a smaller or quantized variant, or raise the budget with --latency-budget/"
                          "--ram-budget/--size-budget")


def _check_output_paths(models, *data_and_outputs) -> None:
    """Refuse, before any work, outputs that would overwrite a model, a data file or each other."""
    from ..errors import UsageError

    *data, outputs = data_and_outputs
    protected = {Path(p).resolve(): str(p) for p in [*models, *data] if p is not None}
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if path is None or str(path) == "-":
            continue
        target = Path(path).resolve()
        if target in protected:
            raise UsageError(f"{flag} {path} would overwrite the input {protected[target]}", "write the report elsewhere")
        if target in seen:
            raise UsageError(f"{flag} and {seen[target]} both write {path}", "give each output its own file")
        seen[target] = flag
        if not target.parent.is_dir():
            raise UsageError(f"the directory of {path} does not exist", "create it first")
    plot = outputs.get("--plot")
    if plot is not None and Path(plot).suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: the plot is a PNG file", "name it e.g. latency.png")


def _run_all(models, profile, options, quiet):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench.run import benchmark_model

    from ..bench.run import make_feeds

    for path in models:  # every model loads and takes its inputs before any is measured
        make_feeds(path, options)
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console, disable=quiet or not console.is_terminal) as progress:
        for path in models:
            task = progress.add_task(f"{Path(path).name}", total=1.0)
            results.append(benchmark_model(path, profile, options,
                                           progress=lambda f, t=task: progress.update(t, completed=f)))
            progress.update(task, completed=1.0)
            if not console.is_terminal and not quiet:
                console.print(f"benchmarked {path}")
    return results


def _write_outputs(report, json_path, md_path, plot_path, quiet):
    from ..bench import report as rep
    from ..convert import atomic_output

    if not quiet:
        console.print(rep.terminal_table(report))
        for line in rep.messages(report):
            console.print(line, markup=False, highlight=False)
    if json_path is not None:
        if str(json_path) == "-":
            emit_json(report)
        else:
            with atomic_output(Path(json_path)) as tmp:
                tmp.write_text(json_text(report))
    if md_path is not None:
        if str(md_path) == "-":
            print(rep.markdown(report))
        else:
            with atomic_output(Path(md_path)) as tmp:
                tmp.write_text(rep.markdown(report))
    if plot_path is not None:
        with atomic_output(Path(plot_path)) as tmp:
            rep.plot(report, tmp)
