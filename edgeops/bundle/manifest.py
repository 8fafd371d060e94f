"""The bundle manifest: what a bundle holds, for which device, and where it came from.

A manifest is plain JSON data with a ``schema_version``. Readers refuse versions they do not
know instead of guessing. Nothing in it comes from the wall clock or the host name: the same
inputs must give a byte-identical bundle.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from ..errors import EdgeOpsError

SCHEMA_VERSION = 1
KIND = "edgeops.bundle"
MANIFEST_NAME = "manifest.json"
REFSTATS_NAME = "refstats.json"
REPORT_NAME = "report.json"
SIGNATURE_NAME = "signature.ed25519"
SIGNATURE_INFO_NAME = "signature.json"
# Entries that describe the bundle and so cannot be listed in its own file list.
UNLISTED = (MANIFEST_NAME, SIGNATURE_NAME, SIGNATURE_INFO_NAME)
ROLES = ("model", "refstats", "report", "extra")

# Packages whose versions are recorded as lineage. Read from installed metadata: nothing is imported.
TOOLCHAIN = ("edgeops", "numpy", "onnx", "onnxruntime", "skl2onnx", "scikit-learn", "torch",
             "tensorflow-cpu", "tensorflow", "ai-edge-litert", "onnxconverter-common", "onnx2tf")

REQUIRED = ("schema_version", "kind", "model", "files", "signature", "lineage")


class BundleError(EdgeOpsError):
    """A bundle is invalid: tampered, incomplete, unsafe, badly signed or of an unknown version."""

    exit_code = 9


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    from ..procio import sha256_file as _sha256_file

    return _sha256_file(path)


def toolchain_versions(packages=TOOLCHAIN) -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def created_stamp() -> str | None:
    """The build time, only when the build pins it (SOURCE_DATE_EPOCH, reproducible-builds.org).

    Without it the manifest records no time at all: a wall-clock stamp would make every build
    differ, and a time derived from a hash would look like a date while meaning nothing.
    """
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return None
    try:
        epoch = int(raw)
    except ValueError:
        raise BundleError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
                          "set it to seconds since 1970-01-01 UTC, or unset it") from None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(*, name: str, version: str, inputs: list[dict], outputs: list[dict],
                   source_sha256: str | None, profile: dict | None = None,
                   preprocessing: dict | None = None, conversion: dict | None = None,
                   quantization: dict | None = None, parity: dict | None = None,
                   accuracy: dict | None = None, benchmark: dict | None = None,
                   data_files: dict[str, str | Path] | None = None,
                   toolchain: dict[str, str] | None = None, files: list[dict] | None = None,
                   warnings: list[str] | None = None) -> dict:
    """A manifest dict. ``files`` is normally left empty: write_bundle fills it from the entries.

    ``inputs``/``outputs`` are TensorSpec.to_dict() lists; ``profile`` is {"name": ..., ...};
    ``data_files`` maps a role ("reference", "calibration", "eval", "sample") to a file whose
    sha256 is recorded as lineage. ``warnings`` are notes for whoever deploys the bundle.
    """
    if not name or not str(name).strip():
        raise BundleError("the bundle needs a model name", "pass --name")
    data = {role: {"file": Path(p).name, "sha256": sha256_file(p)}
            for role, p in sorted((data_files or {}).items()) if p is not None}
    return plain({
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "model": {"name": str(name), "version": str(version)},
        "created": created_stamp(),
        "files": list(files or []),
        "signature": {"inputs": list(inputs), "outputs": list(outputs)},
        "preprocessing": preprocessing or {},
        "profile": profile,
        "conversion": conversion,
        "quantization": quantization,
        "parity": parity,
        "accuracy": accuracy,
        "benchmark": benchmark,
        "lineage": {
            "source_sha256": source_sha256,
            "data": data,
            "toolchain": toolchain if toolchain is not None else toolchain_versions(),
        },
        "warnings": list(warnings or []),
    })


def file_entry(path: str, data: bytes, role: str) -> dict:
    return {"path": path, "sha256": sha256_bytes(data), "size_bytes": len(data), "role": role}


def validate_manifest(manifest) -> dict:
    """Check the manifest's shape; raise BundleError naming what is wrong."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest.json is not a JSON object", "the bundle is corrupt: rebuild it")
    if manifest.get("kind") != KIND:
        raise BundleError(f"manifest.json is not an edgeops bundle manifest (kind={manifest.get('kind')!r})",
                          "build the bundle with `edgeops package`")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"bundle manifest schema_version {version!r} is not supported "
                          f"(this edgeops reads version {SCHEMA_VERSION})",
                          "upgrade edgeops on this machine, or rebuild the bundle with this version")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise BundleError(f"manifest.json lacks {', '.join(missing)}", "the bundle is corrupt: rebuild it")
    files = manifest["files"]
    if not isinstance(files, list):
        raise BundleError("manifest.json 'files' is not a list", "the bundle is corrupt: rebuild it")
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size_bytes"), int)):
            raise BundleError(f"manifest.json has a malformed file entry: {entry!r}",
                              "the bundle is corrupt: rebuild it")
    return manifest


def canonical_json(obj) -> bytes:
    """The one serialisation used inside bundles: sorted keys, fixed separators, ASCII, newline."""
    return (json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                       allow_nan=False) + "\n").encode("ascii")


def plain(value):
    """JSON-ready data: numpy scalars to Python, tuples to lists, Paths to str, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return plain(value.item())
    if hasattr(value, "tolist"):  # numpy array
        return plain(value.tolist())
    if hasattr(value, "to_dict"):
        return plain(value.to_dict())
    raise TypeError(f"cannot store {type(value).__name__} in a bundle manifest")
