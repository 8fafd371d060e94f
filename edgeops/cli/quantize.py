"""`edgeops quantize`."""
from __future__ import annotations

import click

from .output import console, emit_json, fmt_size, status, table, verdict

QUANTIZE_HELP = """Quantize a model, and keep the result only if it passes the accuracy gate.

\b
MODEL is an ONNX model (.onnx -> .onnx) or a Keras / TensorFlow source (.keras, .h5, or a
SavedModel directory -> .tflite). A .tflite file cannot be re-quantized: pass its source.

\b
Modes:
  dynamic  int8 weights, activations quantized at run time; no calibration data needed.
           Good for MLPs, RNNs and transformers (MatMul-heavy models).
  int8     int8 weights and activations (static, QDQ); needs --calibration data.
           Smallest and usually fastest on CPUs (x86, Raspberry Pi, Jetson's CPU).
  fp16     float16 weights (and compute where supported), float32 inputs/outputs.
           Half the size; faster only on GPUs with float16 (Jetson), not on CPUs.
  auto     quantize and gate every mode, and keep the first that passes in the best order
           for --device (the table shows them all):
           GPU with float16 (Jetson): fp16, int8, dynamic; CPUs (x86, Pi 4, Pi 5, none):
           int8 (only with --calibration), dynamic, fp16.

\b
The accuracy gate runs the float and the quantized model on the same rows:
  with labels:    accuracy (classifiers) or R^2 x 100 (regressors) of both;
  without labels: agreement of the quantized model's predictions with the float model's.
The drop (float minus quantized, in percentage points) must be <= --max-drop.
Rows come from --eval, else from --calibration (agreement only), else random inputs
(the report says so: a gate on random inputs says little about real data).

\b
Data files (--calibration, --eval):
  .npy  one array, for a model with one input (batch first)
  .npz  arrays keyed by input name; an optional "labels" array holds ground truth
  .csv  a header row; one column per feature; the label column (--label-column,
        default "label" or "target") holds ground truth

\b
Exit codes: 0 written; 2 bad options or device profile; 3 unreadable file or data that
does not fit the model; 4 missing optional dependency; 5 the model cannot be quantized;
7 accuracy gate failed (nothing is written).

\b
Examples:
  edgeops quantize model.onnx --mode int8 -o model-int8.onnx --calibration cal.npy --eval test.npz
  edgeops quantize model.onnx --mode auto -o model-q.onnx --calibration cal.npy --device rpi4
  edgeops quantize net.keras --mode fp16 -o net-fp16.tflite --eval test.npz --max-drop 0.5
"""


def _ignored_options(mode, calibration, label_column, calibrate_method, no_per_channel, *data) -> list[str]:
    """Options that the chosen mode does not use: say so instead of ignoring them silently."""
    notes = []
    eval_data = data[-1]
    if calibration and eval_data and mode in ("dynamic", "fp16"):  # without --eval it feeds the gate
        notes.append(f"--calibration is not used by --mode {mode} (only int8 and auto calibrate)")
    if mode in ("dynamic", "fp16") and (calibrate_method != "minmax" or no_per_channel):
        notes.append(f"--calibrate-method / --no-per-channel apply to int8 only, not --mode {mode}")
    if label_column and not any(str(d).lower().endswith(".csv") for d in data if d):
        notes.append("--label-column applies to .csv data only; .npz files carry a 'labels' array")
    return notes


@click.command("quantize", help=QUANTIZE_HELP)
@click.argument("model", type=click.Path(path_type=str))
@click.option("--mode", required=True, type=click.Choice(["dynamic", "int8", "fp16", "auto"]),
              help="Quantization mode (see above).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the quantized model (only if the gate passes).")
@click.option("--calibration", type=click.Path(path_type=str),
              help="Representative inputs for int8 (~100-500 rows): .npy, .npz or .csv.")
@click.option("--eval", "eval_data", type=click.Path(path_type=str),
              help="Evaluation rows for the gate, with labels for accuracy: .npy, .npz or .csv.")
@click.option("--label-column", metavar="NAME", help="CSV column holding the labels.")
@click.option("--max-drop", type=float, default=1.0, show_default=True, metavar="POINTS",
              help="Largest allowed drop of the gate metric, in percentage points.")
@click.option("--device", metavar="PROFILE", help="Device profile name or YAML path (auto's order, int8 types).")
@click.option("--calibrate-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="How int8 activation ranges are taken from the calibration data.")
@click.option("--no-per-channel", is_flag=True, help="int8: one scale per weight tensor instead of per channel.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(model, mode, output, calibration, eval_data, label_column, max_drop, device, calibrate_method,
            no_per_channel, as_json):
    from ..errors import EdgeOpsError
    from ..quantize import quantize

    profile = None
    if device:
        from ..profiles import load_profile

        profile = load_profile(device)

    def progress(message: str) -> None:
        if not as_json:
            console.print(f"[dim]{message}[/]")

    for note in _ignored_options(mode, calibration, label_column, calibrate_method, no_per_channel,
                                 calibration, eval_data):
        console.print(f"note: {note}", markup=False, highlight=False)

    try:
        with status(f"quantizing {model} ({mode})", quiet=as_json):
            result = quantize(model, mode, output, calibration=calibration, eval_data=eval_data,
                              max_drop=max_drop, profile=profile, calibrate_method=calibrate_method,
                              per_channel=not no_per_channel, label_column=label_column, progress=progress)
    except EdgeOpsError as exc:
        failed = getattr(exc, "result", None)
        if failed is not None:
            if as_json:
                emit_json({"ok": False, "error": exc.message, **failed.to_dict()})
            else:
                _print_result(failed)
        raise
    if as_json:
        emit_json({"ok": True, **result.to_dict()})
        return
    _print_result(result)
    console.print(f"[green]wrote[/] {result.output.path} ({result.chosen_mode}, "
                  f"{fmt_size(result.size_after)}, {result.size_ratio:.0%} of the float model)")


def _print_result(result) -> None:
    if len(result.candidates) > 1 or result.mode == "auto":
        console.print(candidates_table(result))
    elif result.gate is not None:
        console.print(gate_table(result))
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


def gate_table(result):
    g = result.gate
    rows = [[g.metric, f"{g.before:.2f}", f"{g.after:.2f}", f"{g.drop_points:.2f}", f"{g.max_drop_points:g}",
             verdict(g.passed)]]
    after = result.size_after or result.candidates[0].size_bytes
    rows.append(["size", fmt_size(result.size_before), fmt_size(after) if after else "-",
                 f"{after / result.size_before:.0%} of float" if after else "-", "", ""])
    title = f"Accuracy gate: {result.mode} on {g.samples} rows of {g.note}; prediction: {g.prediction}"
    return table(title, ["", "float", "quantized", "drop (points)", "allowed", "result"], rows)


def candidates_table(result):
    rows = []
    for c in result.candidates:
        g = c.gate
        rows.append([c.mode + (" *" if c.chosen else ""), verdict(True) if c.status == "passed" else
                     verdict(False) if c.status == "failed" else c.status,
                     g.metric if g else "-", f"{g.before:.2f}" if g else "-", f"{g.after:.2f}" if g else "-",
                     f"{g.drop_points:.2f}" if g else "-",
                     fmt_size(c.size_bytes) if c.size_bytes else "-",
                     f"{c.size_bytes / result.size_before:.0%}" if c.size_bytes else "-", c.reason])
    order = result.settings.get("auto_reason", "")
    g = result.gate
    data = f" on {g.samples} rows of {g.note}" if g else ""
    title = (f"Quantization candidates{data} (float model {fmt_size(result.size_before)}; "
             f"allowed drop {result.settings.get('max_drop_points', ''):g} points; * = written). {order}")
    return table(title, ["mode", "status", "metric", "float", "quantized", "drop (points)", "size", "of float",
                         "note"], rows)
