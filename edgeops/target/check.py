"""verify_target: the bundle's parity check and the agent's self-test on an emulated device.

Order matters for the user's time: everything that can fail from the profile alone (no Debian
release for its Python, no qemu, no runtime wheel for its platform) fails before the root
filesystem is built.
"""
from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..profiles import DeviceProfile, load_profile
from .errors import TargetCheckError
from .report import ModelResult, TargetReport

SELFTEST_MODULE = "edgeops.target.selftest"


def verify_target(bundle: str | Path, profile: str | Path | DeviceProfile, *, cache_dir: str | Path | None = None,
                  mirror: str | None = None, timeout: float = 900.0, rows: int = 8, atol: float | None = None,
                  rtol: float | None = None, log=None) -> TargetReport:
    """Run the bundle on the profile's emulated platform and compare with the host; never raises for a
    bundle that fails there (``report.passed`` is False), only for what prevents the check."""
    from ..bundle.archive import extract_bundle, read_bundle
    from ..runtime import detect_format
    from . import emulate, rootfs, wheels
    from .parity import bundle_tolerance
    from .spec import target_spec

    profile = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    spec = target_spec(profile)
    qemu = emulate.check_host(spec)
    cache = Path(cache_dir).expanduser() if cache_dir else rootfs.default_cache_dir()
    manifest = read_bundle(bundle).manifest
    with tempfile.TemporaryDirectory(prefix="edgeops-target-") as tmp:
        run_dir = Path(tmp)
        extract_bundle(bundle, run_dir / "bundle")
        models = [f["path"] for f in manifest["files"] if f.get("role") == "model"]
        formats = sorted({detect_format(run_dir / "bundle" / m) for m in models})
        requirements = [wheels.runtime_requirement(profile, fmt) for fmt in formats]
        site = wheels.ensure_site(spec, profile, requirements + list(wheels.AGENT_PACKAGES), cache, log)
        root = rootfs.ensure_rootfs(spec, cache, mirror, log)
        refstats = _json(run_dir / "bundle" / "refstats.json")
        host_runs = [_host_run(run_dir, i, name, refstats, rows) for i, name in enumerate(models)]
        src = run_dir / "src"
        shutil.copytree(Path(__file__).resolve().parents[1], src / "edgeops",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        emu, found = emulate.start(spec, qemu, root.path, run_dir, [str(site.path), str(src)])
        job = {"models": [{"name": h["name"], "path": h["path"], "inputs": h["inputs"],
                           "outputs": str(run_dir / f"target-{i}.npz")} for i, h in enumerate(host_runs)],
               "refstats": refstats, "report": str(run_dir / "selftest.json"),
               "bundle": {"id": _bundle_id(bundle), "name": manifest["model"].get("name"),
                          "version": manifest["model"].get("version")}}
        (run_dir / "job.json").write_text(json.dumps(job))
        proc = emu.run(["-m", SELFTEST_MODULE, str(run_dir / "job.json")], timeout)
        result = _json(run_dir / "selftest.json")
        error = result.get("error") if result else _crash(proc)
        tolerance = bundle_tolerance(manifest, atol, rtol)
        results = tuple(_model_result(r, h, run_dir / f"target-{i}.npz", tolerance)
                        for i, (r, h) in enumerate(zip((result or {}).get("models", []), host_runs)))
    notes = list(spec.notes)
    if error and "signal" in error:
        notes.append("a crash under emulation can be an emulation artefact: confirm on a device")
    report = TargetReport(
        bundle=str(bundle), profile=profile.name, target=spec.to_dict(),
        platform={**found, **((result or {}).get("platform") or {})},
        host={"machine": platform.machine(), "python": platform.python_version(),
              "runtime": ", ".join(sorted({h["runtime"] for h in host_runs}))},
        models=results, installed=site.installed, error=error, notes=tuple(notes),
        setup={"cache_dir": str(cache), "cpuinfo": emu.mode,
               "rootfs": {"key": root.key, "mirror": root.mirror, "cached": root.cached,
                          "build_seconds": round(root.seconds, 1)},
               "wheels": {"key": site.key, "requirements": list(site.requirements), "cached": site.cached,
                          "build_seconds": round(site.seconds, 1)}})
    return _with_hint(report, profile, {h["name"]: h["opsets"] for h in host_runs})


def raise_for_failure(report: TargetReport) -> None:
    """TargetCheckError (exit 10) naming the first failures, if the report did not pass."""
    if report.passed:
        return
    failures = [f if len(f) <= 240 else f[:237] + "..." for f in report.failures()] or ["no model was checked"]
    more = f" (and {len(failures) - 2} more)" if len(failures) > 2 else ""
    raise TargetCheckError(f"the bundle fails on the emulated {report.profile}: " + "; ".join(failures[:2]) + more,
                           report.hint, report=report)


def _host_run(run_dir: Path, index: int, name: str, refstats: dict | None, rows: int) -> dict:
    """Generate the parity inputs and the reference outputs on the host."""
    from ..runtime import open_runtime
    from .parity import parity_inputs, storable
    from .selftest import _predict, _runtime_version

    runtime = open_runtime(run_dir / "bundle" / name)
    feeds = parity_inputs(runtime.inputs, refstats, rows=rows)
    inputs = run_dir / f"inputs-{index}.npz"
    np.savez(inputs, **storable(feeds))
    return {"name": name, "path": str(run_dir / "bundle" / name), "inputs": str(inputs),
            "outputs": _predict(runtime, feeds, np), "runtime": _runtime_version(runtime.format),
            "opsets": _onnx_opsets(run_dir / "bundle" / name) if runtime.format == "onnx" else None}


def _onnx_opsets(path: Path) -> dict | None:
    """Opset per domain and the IR version of an ONNX file, for the hint; None without the onnx package."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    found = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
    found["ir_version"] = model.ir_version
    return found


def _model_result(result: dict, host: dict, target_npz: Path, tolerance) -> ModelResult:
    from .parity import compare_outputs

    # Errors name the file by its path in the temporary run directory: name it by its bundle entry.
    steps = tuple({**s, "error": s["error"].replace(host["path"], host["name"])} if s.get("error") else s
                  for s in result.get("steps", []))
    parity = None
    if target_npz.is_file():
        with np.load(target_npz, allow_pickle=False) as data:
            target = {k: data[k] for k in data.files}
        host_outputs = {k: (v.astype(str) if v.dtype.kind == "O" else v) for k, v in host["outputs"].items()}
        parity = compare_outputs(host_outputs, target, tolerance)
    return ModelResult(result.get("name", host["name"]), steps, result.get("runtime"), int(result.get("rows", 0)),
                       parity, result.get("telemetry_bytes"))


def _crash(proc) -> str:
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    text = " | ".join(tail) or "(no output)"
    if "uncaught target signal" in text:
        how = "signal " + text.split("uncaught target signal", 1)[1].split("-")[0].strip()
    return f"the emulated self-test died ({how}) before writing its report: {text[:400]}"


def _with_hint(report: TargetReport, profile: DeviceProfile, opsets: dict) -> TargetReport:
    """What to do about the first failure: a model the runtime rejects, or outputs that differ."""
    import dataclasses

    if report.passed:
        return report
    hint = ("compare the per-output differences with the tolerance; if they are rounding, pass "
            "--target-atol/--target-rtol; confirm on a device")
    if report.error and not report.models:
        hint = "see the error; pass a fresh --target-cache DIR if the cached environment is damaged"
    for model in report.models:
        if any(s["step"] == "load" and not s["ok"] for s in model.steps):
            ort, found = profile.runtimes.onnxruntime, opsets.get(model.name)
            if found and ort is not None:
                hint = (f"the model has opset {found.get('ai.onnx', '-')}, ai.onnx.ml {found.get('ai.onnx.ml', '-')}, "
                        f"IR {found['ir_version']}; onnxruntime {ort.version} on {profile.name} loads opset <= "
                        f"{ort.max_opset}, ai.onnx.ml <= {ort.max_ml_opset}, IR <= {ort.max_ir_version}: "
                        f"convert again with --device {profile.name} (caps the opset) or --opset N")
            else:
                hint = "the device's runtime cannot load this model: rebuild it for the device's runtime version"
            break
    return dataclasses.replace(report, hint=hint)


def _bundle_id(bundle) -> str:
    import hashlib
    import zipfile

    with zipfile.ZipFile(bundle) as zf:
        return hashlib.sha256(zf.read("manifest.json")).hexdigest()


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
