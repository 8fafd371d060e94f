"""PyTorch -> ONNX: TorchScript (.pt/.pth) or torch.export programs (.pt2), through torch.onnx.

The file kind is read from the archive's content, not its suffix: TorchScript archives hold
``code/`` and ``constants.pkl``, torch.export archives ``archive_format``, and torch.save
pickles (state_dicts, whole nn.Modules) only ``data.pkl``. Pickles are refused, never
unpickled: they need the model's Python class and run arbitrary code when loaded.

The legacy (TorchScript-based) exporter is used because it writes IR 8 / opset 17 models that
old device runtimes load, in one file, without onnxscript (ENVIRONMENT.md). The batch axis of
every input and output is dynamic, and the export is checked to run at batch sizes 1 and 5.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from edgeops.artifact import TensorSpec
from edgeops.convert import CONVERTERS, ConvertOptions
from edgeops.errors import DataError, InputFileError, UnsupportedModelError, UsageError, require
from edgeops.errors import first_line as _first_line
from edgeops.validate import Tolerance

DEFAULT_OPSET = 17  # the legacy exporter's sweet spot: loads on onnxruntime >= 1.13
CHECK_BATCHES = (1, 5)  # the export must run at both: catches graphs that bake the batch size in

# Measured with random inputs, batch 8, onnxruntime 1.32 vs torch 2.13 CPU, float32: CNNs of
# 2-10 conv-bn-relu(-pool) blocks, 8-64 channels, 16-64 px: max abs 3e-8..6e-8, max rel <= 3e-6;
# MLPs 64->256x3 and 64->1024x6 with logits scaled x100: max abs 4e-8 and 7e-7, max rel <= 1.1e-5
# (summation order in Conv/Gemm differs). atol 1e-4 leaves >100x headroom for deeper nets and
# other CPUs; rtol 1e-3 covers large logits, whose absolute error grows with their magnitude.
TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)

_PICKLE_FIX = ("save a TorchScript file with torch.jit.script(model).save('model.pt') "
               "(or torch.jit.trace(model, example).save(...)), or a .pt2 with "
               "torch.export.save(torch.export.export(model, (example,)), 'model.pt2')")
_SHAPE_FIX = "pass the input shape, batch first, e.g. --input-shape 1,3,224,224 (or NAME=1,3,224,224 per input)"


def _torch():
    return require("torch", "torch", "torch", "converting PyTorch models")




def archive_kind(path: Path) -> str:
    """'torchscript' or 'exported', from the file's content; raises for pickles and broken files."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(b"PK"):
            raise InputFileError(f"{path}: the archive is truncated or corrupt (no zip directory)",
                                 "copy or save the model again")
        if head[:1] == b"\x80":  # pickle protocol >= 2: torch.save's legacy (non-zip) format
            raise UnsupportedModelError(f"{path}: a pickle written by torch.save, not TorchScript", _PICKLE_FIX)
        raise InputFileError(f"{path}: not a PyTorch model file", _PICKLE_FIX)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pickle_name = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            has_code = any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)
            if has_code:
                return "torchscript"
            if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
                return "exported"
            if pickle_name is None:
                raise InputFileError(f"{path}: a zip file, but not a PyTorch archive", _PICKLE_FIX)
            # Only to word the message: a whole-module pickle names torch.nn classes.
            is_module = b"torch.nn.modules" in zf.read(pickle_name)
            what = "a whole nn.Module" if is_module else "a state_dict or checkpoint"
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: cannot read the archive: {_first_line(exc)}",
                             "copy or save the model again") from None
    raise UnsupportedModelError(
        f"{path}: {what} pickled with torch.save, not TorchScript or torch.export; it cannot be "
        "loaded without the model's Python code", _PICKLE_FIX)


def _flatten(out) -> list:
    """The tensors of a model output, in the order the ONNX exporter flattens them."""
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _flatten(item)]
    return [out]


def output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _numpy_dtype(torch_dtype) -> str:
    return str(torch_dtype).removeprefix("torch.")


class TorchModel:
    """A loaded TorchScript module or ExportedProgram, runnable on numpy feeds."""

    label_outputs = frozenset()

    def __init__(self, path: Path, kind: str, module, inputs: tuple[TensorSpec, ...],
                 example_shapes: dict[str, tuple[int, ...]], fixed_batch: int | None = None, program=None):
        self.path = path
        self.kind = kind  # "torchscript" | "exported"
        self.module = module  # what runs and what is exported
        self.program = program  # the ExportedProgram, for .pt2
        self.inputs = inputs
        self.example_shapes = example_shapes  # concrete shapes to trace the export with
        self.fixed_batch = fixed_batch  # a .pt2 exported with a static batch only runs at that size

    def _run(self, tensors: list) -> list:
        torch = _torch()
        try:
            with torch.no_grad():
                if not self.fixed_batch:
                    return [t.detach() for t in _flatten(self.module(*tensors))]
                return self._run_chunked(tensors)
        except Exception as exc:  # torch raises RuntimeError, AssertionError (guards), TypeError, ...
            raise DataError(f"the PyTorch model rejected the inputs: {_first_line(exc)}",
                            "check --input-shape / --sample-input against the model's inputs") from None

    def _run_chunked(self, tensors: list) -> list:
        """Run a fixed-batch program on any number of samples: chunks of its batch size, last one padded."""
        torch = _torch()
        size, total = self.fixed_batch, len(tensors[0])
        parts = []
        for start in range(0, total, size):
            chunk = [t[start:start + size] for t in tensors]
            short = size - len(chunk[0])
            if short:
                chunk = [torch.cat([c, c[-1:].expand(short, *c.shape[1:])]) for c in chunk]
            outs = [t.detach() for t in _flatten(self.module(*chunk))]
            parts.append([o[:size - short] for o in outs])
        return [torch.cat(column) for column in zip(*parts)]

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _torch()
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[s.name])) for s in self.inputs]
        outs = self._run(tensors)
        return {name: t.numpy() for name, t in zip(output_names(len(outs)), outs)}

    def example_args(self, batch: int | None = None) -> list:
        torch = _torch()
        gen = torch.Generator().manual_seed(0)
        size = batch or self.fixed_batch  # a fixed-batch program's guards refuse other sizes
        args = []
        for spec in self.inputs:
            shape = list(self.example_shapes[spec.name])
            if size is not None:
                shape[0] = size
            if np.dtype(spec.dtype).kind == "f":
                args.append(torch.randn(shape, generator=gen, dtype=getattr(torch, spec.dtype)))
            else:
                args.append(torch.zeros(shape, dtype=getattr(torch, spec.dtype)))
        return args


# -- loading -------------------------------------------------------------------------------------

def _shapes_for(path: Path, names: list[str], given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Match --input-shape values to input names; '' names the only input."""
    unknown = [n for n in given if n and n not in names]
    if unknown:
        raise UsageError(f"--input-shape names unknown input(s) {', '.join(unknown)}",
                        f"the model's inputs are: {', '.join(names)}")
    if "" in given:
        if len(names) != 1:
            raise UsageError(f"--input-shape without a name, but the model has {len(names)} inputs "
                            f"({', '.join(names)})", "name each one: --input-shape NAME=D,D,...")
        return {names[0]: given[""]}
    missing = [n for n in names if n not in given]
    if missing:
        example = " ".join(f"--input-shape {n}=1,3,224,224" for n in names) if len(names) > 1 else \
            "--input-shape 1,3,224,224"
        raise UsageError(f"{path}: a TorchScript file does not record input shapes; no shape given for "
                        f"{', '.join(missing)}", f"pass them batch first, e.g. {example}, or real inputs "
                        "with --sample-input FILE")
    return {n: given[n] for n in names}


def load_torchscript(path: Path, options: ConvertOptions) -> TorchModel:
    torch = _torch()
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError for corrupt archives, others for odd files
        raise InputFileError(f"{path}: cannot load the TorchScript archive: {_first_line(exc)}",
                             "the file may be truncated; save it again with torch.jit.save") from None
    module.eval()
    names = []
    for arg in module.forward.schema.arguments[1:]:  # [0] is self, whatever it is called
        if arg.type.kind() == "TensorType":
            names.append(arg.name)
        elif not arg.has_default_value():
            raise UnsupportedModelError(
                f"{path}: forward() takes '{arg.name}: {arg.type}', which is not a tensor",
                "wrap the model so that forward() takes tensors only")
    if not names:
        raise UnsupportedModelError(f"{path}: forward() takes no tensor inputs", "export a model that takes tensors")
    # --input-shape, else the shapes of the --sample-input arrays
    shapes = _shapes_for(path, names, options.input_shapes or options.sample_shapes)
    # TorchScript records no dtypes either; float32 is what CNNs and MLPs take.
    inputs = tuple(TensorSpec(n, "float32", (None, *shapes[n][1:])) for n in names)
    return TorchModel(path, "torchscript", module, inputs, shapes)


def load_exported(path: Path, options: ConvertOptions) -> TorchModel:
    torch = _torch()
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # corrupt or version-mismatched archives raise many types
        raise InputFileError(f"{path}: cannot load the torch.export archive: {_first_line(exc)}",
                             "save it again with torch.export.save, with this torch version") from None
    user_inputs = list(program.graph_signature.user_inputs)
    metas = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    specs, shapes, batches = [], {}, set()
    for name in user_inputs:
        val = metas.get(name)
        if not isinstance(val, torch.Tensor):
            raise UnsupportedModelError(f"{path}: input '{name}' is not a tensor ({type(val).__name__})",
                                        "export a model whose inputs are all tensors")
        dims = [d if isinstance(d, int) else None for d in val.shape]  # SymInt: a dynamic dim
        if not dims:
            raise UnsupportedModelError(f"{path}: input '{name}' is a scalar; there is no batch axis",
                                        "give every input a leading batch dimension")
        batches.add(dims[0])
        specs.append(TensorSpec(name, _numpy_dtype(val.dtype), (None, *dims[1:])))
        shapes[name] = tuple(d if d is not None else 2 for d in dims)  # 2: torch.export specializes 0 and 1
    given = options.input_shapes
    if given:
        shapes.update(_shapes_for(path, user_inputs, given))
    fixed = next(iter(batches)) if len(batches) == 1 and None not in batches else None
    return TorchModel(path, "exported", program.module(), tuple(specs), shapes, fixed_batch=fixed, program=program)


# -- export --------------------------------------------------------------------------------------

def _export_onnx(model: TorchModel, out: Path, opset: int) -> None:
    import warnings

    torch = _torch()
    args = model.example_args()
    with torch.no_grad():
        count = len(_flatten(model.module(*args)))
    in_names = [s.name for s in model.inputs]
    out_names = output_names(count)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice is not for our users
            torch.onnx.export(
                model.module, tuple(args), str(out), dynamo=False, opset_version=opset,
                input_names=in_names, output_names=out_names,
                dynamic_axes={n: {0: "batch"} for n in in_names + out_names},
                # PRESERVE: the module is already in eval mode, and an ExportedProgram's module
                # refuses the train(False) call that EVAL makes.
                training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    except Exception as exc:  # unsupported operators, tracing errors: many exception types
        raise UnsupportedModelError(f"torch.onnx cannot export the model: {_first_line(exc)}",
                                    f"try another --opset (now {opset}), or replace the operator it names") from None


def _cap_ir_version(out: Path, max_ir: int | None):
    """Load the export, refuse external data, lower the IR version to what the device loads."""
    onnx = require("onnx", "onnx", "torch", "converting PyTorch models")
    proto = onnx.load(str(out), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise UnsupportedModelError("the model is larger than 2 GB and needs an external .onnx.data file",
                                    "edge devices take single-file models: shrink or quantize the model first")
    if max_ir and proto.ir_version > max_ir:
        need = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
        if need > max_ir:
            raise UnsupportedModelError(
                f"the export needs ONNX IR version {need}, the device's onnxruntime loads IR <= {max_ir}",
                "pass a lower --opset")
        proto.ir_version = max_ir  # valid: the opsets used are all defined at this IR version
        onnx.save(proto, str(out))
    return proto


def _check_batches(model: TorchModel, out: Path) -> None:
    """Run the export at several batch sizes: a graph that bakes the batch in fails here, not on the device."""
    from edgeops.runtime import open_runtime

    fix = ("the graph fixes the batch size (e.g. x.view(1, -1) under torch.jit.trace): use x.flatten(1) "
           "or torch.jit.script; for .pt2, export with dynamic_shapes and a torch.export.Dim for the batch")
    batch = CHECK_BATCHES[0]
    try:
        runtime = open_runtime(out)
    except InputFileError as exc:  # e.g. an --opset too old for onnxruntime's kernels
        raise UnsupportedModelError(f"onnxruntime cannot load the exported model: {exc.message.split(': ', 1)[-1]}",
                                    "try the default opset (drop --opset) or a newer one") from None
    try:
        for batch in CHECK_BATCHES:
            feeds = {s.name: a.numpy() for s, a in zip(model.inputs, model.example_args(batch))}
            wrong = [f"{name} {tuple(v.shape)}" for name, v in runtime.run(feeds).items()
                     if not v.ndim or v.shape[0] != batch]
            if wrong:
                raise UnsupportedModelError(
                    f"the exported ONNX model, given batch size {batch}, returns {', '.join(wrong)}", fix)
    except (InputFileError, DataError) as exc:
        raise UnsupportedModelError(
            f"the exported ONNX model does not run at batch size {batch}: {exc.message}", fix) from None


class TorchOnnxConverter:
    source = "torch"
    target = "onnx"
    extra = "torch"
    tolerance = TOLERANCE

    def load(self, path: Path, options: ConvertOptions) -> TorchModel:
        path = Path(path)
        kind = archive_kind(path)
        if kind == "exported":
            return load_exported(path, options)
        return load_torchscript(path, options)

    def export(self, model: TorchModel, out: Path, options: ConvertOptions) -> dict:
        torch = _torch()
        opset = options.target_opset(DEFAULT_OPSET)
        _export_onnx(model, out, opset)
        proto = _cap_ir_version(out, options.max_ir_version)
        _check_batches(model, out)
        return {
            "opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset),
            "ir_version": proto.ir_version,
            "exporter": "torch.onnx (legacy)",
            "torch_version": torch.__version__,
            "source_kind": "torch.export" if model.kind == "exported" else "torchscript",
        }


CONVERTERS.register(("torch", "onnx"), TorchOnnxConverter())
