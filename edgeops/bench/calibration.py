"""The user's own on-device measurements, kept to correct later estimates for that device.

One JSON object per line in ``$EDGEOPS_HOME/calibration/<profile>.jsonl`` (default
``~/.config/edgeops/calibration/<profile>.jsonl``). Each row keeps the measured p50 next to
what the estimator predicted for the same model, profile and threads before any correction,
so a later estimate can scale by the median measured/estimated ratio (see
local_adjustment) without reading the model file again.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from ..errors import DataError, UsageError

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def default_dir() -> Path:
    home = os.environ.get("EDGEOPS_HOME")
    base = Path(home).expanduser() if home else Path("~/.config/edgeops").expanduser()
    return base / "calibration"


def default_path(profile_name: str) -> Path:
    if not _NAME.match(profile_name or ""):
        raise UsageError(f"profile name {profile_name!r} cannot name a calibration file",
                         "use letters, digits, '.', '_' or '-'")
    return default_dir() / f"{profile_name}.jsonl"


def save_calibration(profile_name: str, model_path: str | Path, measured: dict[str, Any],
                     path: str | Path | None = None, *, factors: dict | None = None) -> Path:
    """Append one on-device measurement; returns the file written.

    ``measured`` needs ``p50_ms``; ``threads``, ``batch``, ``runtime`` and ``precision``
    default to the runtime's default threads, 1, the model's format and its precision.
    Other keys (macs, device notes, ...) are kept as they are.
    """
    from ..profiles import load_profile
    from .costmodel import analyze
    from .estimate import (RUNTIME_BY_FORMAT, board_facts, default_threads, factors_version,
                           load_factors, predict)

    p50 = measured.get("p50_ms") if isinstance(measured, dict) else None
    if isinstance(p50, bool) or not isinstance(p50, (int, float)) or not math.isfinite(p50) or p50 <= 0:
        raise DataError(f"a calibration row needs a positive p50_ms, got {p50!r}",
                        "pass the median latency measured on the device, in milliseconds")
    prof = load_profile(profile_name)
    factors = factors or load_factors()
    batch = int(measured.get("batch") or 1)
    cost = analyze(model_path, batch=batch)
    runtime = measured.get("runtime") or RUNTIME_BY_FORMAT[cost.format]
    board = board_facts(prof, factors)
    threads = int(measured.get("threads") or default_threads(runtime, board))
    estimated, _ = predict(cost, board, runtime, threads, factors)
    row = {
        **{k: v for k, v in measured.items() if _jsonable(v)},
        "profile": prof.name, "model": str(model_path), "model_sha256": _sha256(model_path),
        "runtime": runtime, "precision": measured.get("precision") or cost.precision,
        "threads": threads, "batch": batch, "macs": measured.get("macs") or cost.macs,
        "p50_ms": float(p50), "estimated_ms": estimated,
        "factors_version": factors_version(factors), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(path).expanduser() if path else default_path(prof.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
    # O_APPEND + one write + an exclusive lock: concurrent savers never interleave lines.
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return out


def load_calibrations(profile_name: str, path: str | Path | None = None) -> list[dict]:
    """Saved rows for a profile, oldest first; a missing file is no rows."""
    src = Path(path).expanduser() if path else default_path(profile_name)
    if not src.is_file():
        return []
    rows = []
    for number, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{src}:{number}: not a JSON calibration row ({exc.msg})",
                            "fix or delete that line") from None
        if isinstance(row, dict) and row.get("profile", profile_name) == profile_name:
            rows.append(row)
    return rows


def local_adjustment(profile_name: str, runtime: str, precision: str, factors: dict,
                     path: str | Path | None = None) -> dict:
    """Factor to apply to an estimate from the profile's saved rows for the same runtime.

    Rows of the same precision are used when there are any, else all rows of the runtime.
    The factor is exp(median log(measured/estimated) * n/(n+1)): one row moves an estimate
    halfway (in log terms) toward it, many rows almost all the way. Rows estimated with other
    fitted factors are re-estimated from their model file, or skipped if it is gone.
    """
    src = Path(path).expanduser() if path else default_path(profile_name)
    rows = [r for r in load_calibrations(profile_name, src) if r.get("runtime") == runtime]
    same = [r for r in rows if r.get("precision") == precision]
    rows = same or rows
    from .estimate import factors_version

    version = factors_version(factors)
    ratios = []
    for row in rows:
        estimated = row.get("estimated_ms")
        if row.get("factors_version") != version:
            estimated = _re_estimate(row, factors)
        p50 = row.get("p50_ms")
        if estimated and p50 and estimated > 0 and p50 > 0:
            ratios.append(math.log(p50 / estimated))
    if not ratios:
        return {"rows": 0, "factor": 1.0, "path": str(src)}
    n = len(ratios)
    return {"rows": n, "factor": math.exp(statistics.median(ratios) * n / (n + 1)), "path": str(src)}


def _re_estimate(row: dict, factors: dict) -> float | None:
    from ..profiles import load_profile
    from .costmodel import analyze
    from .estimate import board_facts, predict

    model = Path(row.get("model", ""))
    if not model.is_file():
        return None
    board = board_facts(load_profile(row["profile"]), factors)
    cost = analyze(model, batch=int(row.get("batch") or 1))
    return predict(cost, board, row["runtime"], int(row["threads"]), factors)[0]


def _sha256(path: str | Path) -> str:
    from ..procio import sha256_file

    return sha256_file(path)


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
