"""`edgeops keygen`, `edgeops verify` and the bundle view of `edgeops inspect`."""
from __future__ import annotations

import click

from ..target.cli import run_targets, target_options
from .output import emit_json, fmt_size, status, stdout_console, table


@click.command("keygen", help="Make an Ed25519 key pair for signing bundles (PEM; the private key is mode 0600).\n\n"
                              "Keep the private key off the devices; give the public key to `edgeops verify --key` "
                              "and to the agent.")
@click.option("--out-private", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the private key (refuses to overwrite).")
@click.option("--out-public", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the public key (refuses to overwrite).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def keygen_command(out_private, out_public, as_json):
    from ..bundle.signing import generate_keypair

    fp = generate_keypair(out_private, out_public)
    result = {"private_key": out_private, "public_key": out_public, "public_key_sha256": fp}
    if as_json:
        emit_json(result)
        return
    click.echo(f"wrote {out_private} (private, mode 0600) and {out_public}")
    click.echo(f"public key sha256: {fp}")


@click.command("verify", help="Check a bundle: safe entry names, every file's sha256 and size against the "
                              "manifest, no missing or extra files, and the Ed25519 signature.\n\n"
                              "With --target PROFILE, also run it on that device's platform under qemu emulation "
                              "(a cached Debian root filesystem with the device's Python and runtime wheels): the "
                              "parity of its outputs with this machine's, and the agent's self-test (load, predict, "
                              "telemetry encode). See docs/target-verify.md.\n\n"
                              "Exits 0 if the bundle is intact (and passes on every --target), 9 if it is not "
                              "(tampered, unsafe, badly signed), 10 if it fails on a target, 4 if this machine "
                              "cannot run the target check.")
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--key", type=click.Path(dir_okay=False, path_type=str),
              help="Trusted public key (PEM): the bundle must be signed by it if it is signed.")
@click.option("--require-signature", is_flag=True, help="Fail unless the bundle is signed by --key.")
@click.option("--target", "targets", multiple=True, metavar="PROFILE",
              help="Device profile (name or YAML) to check the bundle on, emulated; repeatable.")
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def verify_command(bundle, key, require_signature, targets, as_json, **target):
    from ..bundle.archive import verify_bundle
    from ..bundle.manifest import BundleError

    try:
        result = verify_bundle(bundle, trusted_key=key, require_signature=require_signature)
    except BundleError as exc:
        if as_json:  # scripts read the verdict from stdout; the exit code still says 9
            emit_json({"path": bundle, "ok": False, "error": exc.message, "hint": exc.hint})
        raise
    if not as_json:
        click.echo(f"{bundle}: ok, {result.files} files match the manifest; signature: {result.signature}")
        if result.key_fingerprint:
            click.echo(f"signing key sha256: {result.key_fingerprint}")
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    reports, failure = run_targets(bundle, targets, quiet=as_json, **target) if targets else ([], None)
    if as_json:
        out = result.to_dict()
        if targets:
            out["targets"] = reports
            out["ok"] = failure is None
        emit_json(out)
    if failure is not None:
        raise failure


def inspect_bundle(path: str, as_json: bool) -> None:
    """What `edgeops inspect BUNDLE.edgepkg` prints: the manifest's contents and the signature status.

    Hashes are not checked here (that is `edgeops verify`); the structure and names are.
    """
    from ..bundle.archive import read_bundle

    bundle = read_bundle(path)
    m = bundle.manifest
    signature = "absent"
    if bundle.signature_info:
        signature = f"present (key sha256 {str(bundle.signature_info.get('public_key_sha256'))[:16]}...; " \
                    "run `edgeops verify --key` to check it)"
    if as_json:
        emit_json({"path": str(path), "manifest": m, "signature": signature,
                   "refstats": _refstats_summary(bundle.refstats), "entries": list(bundle.names)})
        return
    out = stdout_console
    profile = (m.get("profile") or {}).get("name", "-") if isinstance(m.get("profile"), dict) else "-"
    out.print(f"bundle      {path}")
    out.print(f"model       {m['model'].get('name')} {m['model'].get('version')}")
    out.print(f"profile     {profile}")
    out.print(f"created     {m.get('created') or '- (not recorded)'}")
    out.print(f"signature   {signature}")
    out.print(f"source      sha256 {m['lineage'].get('source_sha256') or '-'}")
    out.print(table("files", ["path", "role", "size", "sha256"],
                    [[f["path"], f.get("role", ""), fmt_size(f["size_bytes"]), f["sha256"]] for f in m["files"]]))
    rows = [["input", t["name"], t["dtype"], _shape(t["shape"])] for t in m["signature"].get("inputs", [])]
    rows += [["output", t["name"], t["dtype"], _shape(t["shape"])] for t in m["signature"].get("outputs", [])]
    out.print(table("signature", ["", "name", "dtype", "shape"], rows))
    summary = _refstats_summary(bundle.refstats)
    out.print(table("reference statistics", ["feature", "kind", "summary"],
                    [[s["name"], s["kind"], s["summary"]] for s in summary]))


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _refstats_summary(refstats: dict | None) -> list[dict]:
    rows = []
    for entry in (refstats or {}).get("features", []) + (refstats or {}).get("outputs", []):
        side = "output" if "output" in entry else "input"
        if entry.get("kind") == "numeric":
            text = (f"{len(entry.get('edges', []))} edges, min {_num(entry.get('min'))}, "
                    f"mean {_num(entry.get('mean'))}, max {_num(entry.get('max'))}, "
                    f"missing {_num(entry.get('missing_fraction'))}")
        else:
            cats = entry.get("categories", {})
            text = f"{len(cats)} categories, missing {_num(entry.get('missing_fraction'))}"
        rows.append({"name": f"{side} {entry.get('name')}", "kind": entry.get("kind"), "summary": text})
    return rows


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


PACKAGE_HELP = """Convert, quantize, benchmark and bundle a model for a device, in one command.

\b
Steps (each is the same as its own command):
  1. convert SOURCE (to ONNX, or TFLite for Keras sources) with a parity check on --sample-input;
  2. quantize behind the accuracy gate (--quantize auto|int8|dynamic|fp16|none; --calibration, --eval);
  3. benchmark and estimate the result against --device (or take --benchmark-report, or --no-benchmark);
  4. compute reference statistics of --reference (else of --sample-input) for drift monitoring;
  5. write NAME.edgepkg: model, manifest, reference statistics, benchmark report; signed with --sign-key;
  6. with --verify-target: run it on the device's platform under qemu emulation (docs/target-verify.md).

\b
The same inputs give a byte-identical bundle, except that a live benchmark measures new numbers
each run: pass --benchmark-report (a saved `edgeops benchmark --json` report) or --no-benchmark
for a reproducible bundle. The format is described in docs/bundle-format.md.
"""


@click.command("package", help=PACKAGE_HELP)
@click.argument("source", type=click.Path(path_type=str))
@click.option("--device", required=True, metavar="PROFILE", help="Device profile name or YAML path.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the bundle (.edgepkg).")
@click.option("--to", "target", type=click.Choice(["onnx", "tflite"]),
              help="Model format (default: tflite for Keras/TFLite sources, else onnx).")
@click.option("--quantize", "quant_mode", type=click.Choice(["auto", "int8", "dynamic", "fp16", "none"]),
              default="none", show_default=True, help="Quantization mode, behind the accuracy gate.")
@click.option("--calibration", type=click.Path(path_type=str), help="Calibration inputs for int8.")
@click.option("--eval", "eval_data", type=click.Path(path_type=str), help="Evaluation rows for the gate.")
@click.option("--max-drop", type=float, default=1.0, show_default=True, metavar="POINTS",
              help="Largest allowed drop of the gate metric, in percentage points.")
@click.option("--sample-input", type=click.Path(path_type=str), help="Sample inputs for the parity check.")
@click.option("--reference", type=click.Path(path_type=str),
              help="Training or reference data (.npy, .npz, .csv) for the drift statistics.")
@click.option("--sign-key", type=click.Path(dir_okay=False, path_type=str),
              help="Ed25519 private key (from `edgeops keygen`) to sign the bundle with.")
@click.option("--name", help="Model name (default: the source file's stem).")
@click.option("--model-version", "--version", "model_version", default="1", show_default=True,
              help="Model version recorded in the manifest.")
@click.option("--benchmark-report", type=click.Path(dir_okay=False, path_type=str),
              help="Use this saved benchmark report (JSON) instead of benchmarking now.")
@click.option("--no-benchmark", is_flag=True, help="Skip the benchmark (the manifest records none).")
@click.option("--runs", type=int, default=100, show_default=True, help="Benchmark: timed runs (at least).")
@click.option("--duration", type=float, default=2.0, show_default=True, help="Benchmark: seconds (at least).")
@click.option("--verify-target", is_flag=True,
              help="Step 6: run the bundle on the --device profile's platform under qemu emulation (as "
                   "`edgeops verify --target`); the bundle is written only if it passes (exit 10 otherwise).")
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def package_command(source, device, output, target, quant_mode, calibration, eval_data, max_drop, sample_input,
                    reference, sign_key, name, model_version, benchmark_report, no_benchmark, runs, duration,
                    verify_target, as_json, **target_check):
    from pathlib import Path

    from ..errors import UsageError

    if benchmark_report and no_benchmark:
        raise UsageError("--benchmark-report and --no-benchmark conflict", "pass one of them")
    # With --verify-target the bundle is checked under a temporary name next to the output and moved
    # into place only when it passes, so a failing bundle is never left where a deploy step looks.
    final = Path(output)
    staged = final.with_name(f".{final.name}.target-check") if verify_target else final
    try:
        out = build_package(source, device, staged, target=target, quant_mode=quant_mode, calibration=calibration,
                            eval_data=eval_data, max_drop=max_drop, sample_input=sample_input,
                            reference=reference, sign_key=sign_key, name=name, version=model_version,
                            benchmark_report=benchmark_report, benchmark=not no_benchmark, runs=runs,
                            duration=duration, quiet=as_json)
        reports, failure = [], None
        if verify_target:
            reports, failure = run_targets(str(out), [device], quiet=as_json, **target_check)
            if failure is not None:
                if as_json:
                    emit_json({"ok": False, "bundle": None, "targets": reports})
                raise failure
            out = Path(out).replace(final)
    finally:
        if verify_target and staged.exists():
            staged.unlink()
    from ..bundle.archive import read_bundle
    from ..bundle.manifest import sha256_file

    bundle = read_bundle(out)
    if as_json:
        result = {"ok": True, "bundle": str(out), "sha256": sha256_file(out), "manifest": bundle.manifest}
        if verify_target:
            result["targets"] = reports
        emit_json(result)
        return
    click.echo(f"wrote {out} ({fmt_size(out.stat().st_size)}, signed: {'yes' if bundle.signed else 'no'})")
    for warning in bundle.manifest.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)


def build_package(source, device, output, *, target=None, quant_mode="none", calibration=None, eval_data=None,
                  max_drop=1.0, sample_input=None, reference=None, sign_key=None, name=None, version="1",
                  benchmark_report=None, benchmark=True, runs=100, duration=2.0, quiet=False):
    """The `edgeops package` pipeline as a function; returns the bundle's path."""
    import json
    import tempfile
    from pathlib import Path

    from ..bundle.archive import write_bundle
    from ..bundle.manifest import build_manifest, sha256_file
    from ..convert import ConvertOptions, convert
    from ..errors import InputFileError, UsageError
    from ..profiles import load_profile

    source_path = Path(source)
    profile = load_profile(device)
    if target is None:
        keras_like = source_path.is_dir() or source_path.suffix.lower() in (".keras", ".h5", ".tflite")
        target = "tflite" if keras_like else "onnx"
    if source_path.is_dir():
        raise UsageError(f"{source_path} is a directory (a SavedModel): package its .keras file",
                         "the manifest records the sha256 of one source file")
    if sign_key:  # fail before the slow steps, not after
        from ..bundle.signing import load_private_key

        load_private_key(sign_key)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeops-package-") as work:
        work = Path(work)
        model_name = f"model.{target}"
        with status(f"converting {source}", quiet=quiet):
            conv = convert(source_path, target, work / model_name, sample_input=sample_input,
                           options=ConvertOptions(profile=profile))
        final = conv.artifact.path
        quant = None
        if quant_mode != "none":
            from ..quantize import quantize

            # Keras sources are quantized from the source (the TFLite converter does it), others from the export.
            q_source = source_path if target == "tflite" and source_path.suffix.lower() != ".tflite" else final
            with status(f"quantizing ({quant_mode})", quiet=quiet):
                quant = quantize(q_source, quant_mode, work / f"model-{quant_mode}.{target}",
                                 calibration=calibration, eval_data=eval_data, max_drop=max_drop, profile=profile)
            final = quant.output.path
            warnings.extend(quant.warnings)
        report, bench_summary = None, None
        if benchmark_report:
            try:
                report = json.loads(Path(benchmark_report).read_text())
            except (OSError, ValueError) as exc:
                raise InputFileError(f"cannot read the benchmark report {benchmark_report}: {exc}",
                                     "pass the JSON written by `edgeops benchmark --json`") from None
            bench_summary = {"from_file": Path(benchmark_report).name, "pass": report.get("pass")}
        elif benchmark:
            report, bench_summary = _benchmark(final, profile, runs, duration, quiet)
        feeds, outputs, columns, ref_file = _reference_data(final, reference or sample_input)
        if ref_file is None:
            warnings.append("no --reference or --sample-input: the bundle has no reference statistics "
                            "for drift monitoring")
        elif reference is None:
            warnings.append("reference statistics come from --sample-input; pass --reference with "
                            "training data for meaningful drift monitoring")
        from ..bundle.refstats import reference_stats

        stats = reference_stats(feeds, outputs, feature_names=columns)
        data_files = {"reference": reference, "sample_input": sample_input, "calibration": calibration,
                      "eval": eval_data}
        art = conv.artifact
        manifest = build_manifest(
            name=name or source_path.stem, version=version,
            inputs=[t.to_dict() for t in art.inputs], outputs=[t.to_dict() for t in art.outputs],
            source_sha256=sha256_file(source_path), profile=profile.to_dict(),
            preprocessing={}, conversion={"source_file": source_path.name, "source_framework":
                                          conv.source_framework, "converter": conv.converter,
                                          "format": target, "metadata": conv.metadata},
            quantization=_quant_summary(quant, quant_mode), parity=conv.parity.to_dict(),
            accuracy=quant.gate.to_dict() if quant and quant.gate else None, benchmark=bench_summary,
            data_files={k: v for k, v in data_files.items() if v}, warnings=warnings)
        return write_bundle(output, {model_name: final}, manifest, stats, report, sign_key=sign_key)


def _quant_summary(quant, mode: str) -> dict | None:
    if quant is None:
        return None
    d = quant.to_dict()
    d.pop("model", None)  # the path of a temporary file: meaningless in the bundle, breaks byte-identity
    d.pop("source", None)
    return {"requested": mode, **d}


def _benchmark(path, profile, runs: int, duration: float, quiet: bool):
    from ..bench.environment import collect_environment
    from ..bench.run import BenchOptions, benchmark_model, check_options, report_dict

    options = BenchOptions(runs=runs, duration_s=duration)
    check_options(options)
    with status("benchmarking", quiet=quiet):
        result = benchmark_model(path, profile, options, label=path.name)
    report = report_dict([result], profile, collect_environment(), options, include_values=False)
    report.pop("created_unix", None)
    for r in report["results"]:
        r["model"] = path.name  # not the temporary directory's path
    summary = {k: report["results"][0].get(k) for k in
               ("latency_ms", "peak_rss_mb", "throughput_per_s", "estimate", "verdict", "size_bytes")}
    summary["pass"] = report["pass"]
    return report, summary


def _reference_data(model_path, data_path):
    """(feeds, outputs, column names, file) of the reference data run through the final model."""
    import numpy as np

    from ..data import bind, load_samples
    from ..runtime import open_runtime

    if data_path is None:
        return {}, {}, None, None
    runtime = open_runtime(model_path)
    samples = load_samples(data_path)
    feeds = bind(samples, runtime.inputs, "reference data")
    # Models with a fixed batch of 1 run row by row; others in chunks that bound memory.
    fixed_one = any(t.shape and t.shape[0] == 1 for t in runtime.inputs)
    rows = len(next(iter(feeds.values())))
    step = 1 if fixed_one else 1024
    parts: dict[str, list] = {}
    for start in range(0, rows, step):
        chunk = runtime.run({k: v[start:start + step] for k, v in feeds.items()})
        for k, v in chunk.items():
            parts.setdefault(k, []).append(np.asarray(v))
    outputs = {k: np.concatenate(v) for k, v in parts.items()}
    columns = samples.columns if samples.columns and len(feeds) == 1 else None
    if columns is not None:
        width = next(iter(feeds.values())).shape
        if len(width) != 2 or width[1] != len(columns):
            columns = None
    return feeds, outputs, columns, data_path
