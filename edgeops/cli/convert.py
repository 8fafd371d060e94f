"""`edgeops convert` and `edgeops inspect`."""
from __future__ import annotations

import click

from .output import console, emit_json, fmt_num, fmt_size, status, stdout_console, table, verdict

CONVERT_HELP = """Convert a trained model to ONNX or TFLite, then check it against the original.

\b
SOURCE may be:
  scikit-learn estimator or Pipeline  .pkl .pickle .joblib   -> onnx
  PyTorch TorchScript / torch.export  .pt .pth / .pt2        -> onnx
  Keras model / TF SavedModel         .keras .h5 / directory -> tflite
  ONNX model                          .onnx                  -> onnx (validate, re-target), tflite (onnx2tf)
  TFLite model                        .tflite                -> tflite (validate)

Every conversion ends with a parity check: the original and the converted model run on the
--sample-input data (or random inputs made from the input signature) and each output's max
absolute and relative error, and the label agreement of classifiers, must be within the
converter's tolerance. Otherwise the command fails with exit code 6 and writes nothing.

\b
Sample data: .npy (one input), .npz (arrays keyed by input name), or .csv with a header
(one column per feature; for models fit on a DataFrame, columns named like the training data).

\b
Examples:
  edgeops convert model.joblib --to onnx -o model.onnx --sample-input rows.csv
  edgeops convert cnn.pt --to onnx -o cnn.onnx --input-shape 1,3,32,32 --device rpi4
  edgeops convert net.keras --to tflite -o net.tflite
"""


@click.command("convert", help=CONVERT_HELP)
@click.argument("source", type=click.Path(path_type=str))
@click.option("--to", "target", type=click.Choice(["onnx", "tflite"]),
              help="Target format (default: from the output's suffix, .onnx or .tflite).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the converted model (written only if the parity check passes).")
@click.option("--sample-input", type=click.Path(path_type=str),
              help="Sample inputs for the parity check: .npy, .npz or .csv.")
@click.option("--input-shape", multiple=True, metavar="[NAME=]D,D,...",
              help="Input shape for models whose shape cannot be read (TorchScript); repeat per input.")
@click.option("--opset", type=int, help="ONNX opset to export with (default: the converter's, capped by --device).")
@click.option("--device", "device", metavar="PROFILE",
              help="Device profile name or YAML path: targets the runtime version the device has.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def command(source, target, output, sample_input, input_shape, opset, device, as_json):
    from ..convert import ConvertOptions, convert
    from ..data import parse_input_shapes
    from ..errors import ParityError, UsageError

    if target is None:
        target = {".onnx": "onnx", ".tflite": "tflite"}.get(output.lower()[output.rfind("."):])
        if target is None:
            raise UsageError(f"cannot tell the target format from '{output}'", "pass --to onnx or --to tflite")
    if opset is not None and not 1 <= opset <= 30:
        raise UsageError(f"--opset {opset} is not an ONNX opset", "use a value such as 13, 17 or 18")
    profile = None
    if device:
        from ..profiles import load_profile

        profile = load_profile(device)
    options = ConvertOptions(opset=opset, input_shapes=parse_input_shapes(input_shape), profile=profile)
    try:
        with status(f"converting {source} to {target}", quiet=as_json):
            result = convert(source, target, output, sample_input=sample_input, options=options)
    except ParityError as exc:
        if as_json:
            emit_json({"ok": False, "error": exc.message, "parity": exc.report.to_dict()})
        else:
            console.print(parity_table(exc.report))
        raise
    if as_json:
        emit_json({"ok": True, **result.to_dict()})
        return
    art = result.artifact
    console.print(f"[green]converted[/] {source} ({result.source_framework}) -> {art.path} "
                  f"({art.format}, {fmt_size(art.size_bytes)})")
    console.print(signature_table(art.inputs, art.outputs))
    console.print(parity_table(result.parity))


def parity_table(report):
    rows = [[o.name, "x".join(map(str, o.shape)), fmt_num(o.max_abs), fmt_num(o.max_rel),
             "-" if o.label_agreement is None else f"{o.label_agreement:.2%}",
             verdict(o.passed)] for o in report.outputs]
    tol = report.tolerance
    title = (f"Parity on {report.samples} samples (atol {tol.atol:g}, rtol {tol.rtol:g}, "
             f"label agreement >= {tol.min_label_agreement:.0%})")
    return table(title, ["output", "shape", "max abs err", "max rel err", "label agreement", "result"], rows)


def signature_table(inputs, outputs):
    rows = [["input", s.name, s.dtype, _shape(s.shape)] for s in inputs]
    rows += [["output", s.name, s.dtype, _shape(s.shape)] for s in outputs]
    return table("Signature", ["", "name", "dtype", "shape"], rows)


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


@click.command("inspect", help="Show a model's format, signature, opsets and size; validates that it loads.")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def inspect_command(model, as_json):
    from ..artifact import ModelArtifact
    from ..runtime import detect_format, open_runtime

    if model.lower().endswith(".edgepkg"):
        from .bundle import inspect_bundle

        return inspect_bundle(model, as_json)
    fmt = detect_format(model)
    meta = {}
    if fmt == "onnx":
        from ..onnx_util import load_onnx, opsets

        proto = load_onnx(model)
        meta = {"ir_version": proto.ir_version, "opsets": opsets(proto), "producer":
                f"{proto.producer_name} {proto.producer_version}".strip(),
                "operators": _op_counts(proto)}
    rt = open_runtime(model)
    art = ModelArtifact(model, fmt, rt.inputs, rt.outputs, meta)
    if as_json:
        emit_json(art.to_dict())
        return
    stdout_console.print(f"{model}: {fmt}, {fmt_size(art.size_bytes)}")
    for key in ("ir_version", "opsets", "producer"):
        if key in meta:
            stdout_console.print(f"  {key}: {meta[key]}")
    stdout_console.print(signature_table(art.inputs, art.outputs))
    if meta.get("operators"):
        ops = sorted(meta["operators"].items(), key=lambda kv: -kv[1])
        stdout_console.print(table("Operators", ["op", "count"], [[k, v] for k, v in ops]))


def _op_counts(proto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        key = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts
