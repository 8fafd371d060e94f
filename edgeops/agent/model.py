"""Loading a bundle on the device: verify, extract safely once, re-check, open the runtime.

Trust comes from the .edgepkg file: it is verified (entry names, every sha256, the signature and
the trust policy) on every start. The extracted copy in BUFFER_DIR/bundles/<bundle id>/ is only a
cache: before it is used again its files are hashed against the manifest, and a copy that was
changed on disk is thrown away and extracted again from the verified file.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..artifact import TensorSpec
from ..bundle.archive import extract_bundle, verify_bundle
from ..bundle.manifest import (MANIFEST_NAME, REFSTATS_NAME, SIGNATURE_INFO_NAME, BundleError, sha256_bytes,
                                sha256_file, validate_manifest)
from ..errors import InputFileError, UsageError
from ..runtime import Runtime, open_runtime

MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class LoadedBundle:
    id: str  # sha256 hex of manifest.json: the key to the reference statistics at the monitor
    path: Path  # the .edgepkg
    directory: Path  # the verified extracted copy
    manifest: dict
    refstats: dict
    runtime: Runtime
    model_file: str
    signature: str  # how the signature was judged, from verify_bundle

    @property
    def name(self) -> str:
        return str(self.manifest["model"].get("name", ""))

    @property
    def version(self) -> str:
        return str(self.manifest["model"].get("version", ""))

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(self.runtime.inputs)

    def info(self) -> dict:
        return {"id": self.id, "name": self.name, "version": self.version}


def bundle_id(path: str | Path) -> str:
    """sha256 hex of the bundle's manifest.json bytes (read, not yet trusted)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(MANIFEST_NAME)
            if info.file_size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{path}: manifest.json claims {info.file_size} bytes",
                                  "the bundle may be malicious: do not use it")
            data = zf.read(info)
    except FileNotFoundError:
        raise InputFileError(f"{path} does not exist", "check the bundle path") from None
    except KeyError:
        raise BundleError(f"{path} has no manifest.json", "a bundle is written by `edgeops package`") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputFileError(f"{path} is not a readable bundle: {exc}",
                             "a bundle is the .edgepkg written by `edgeops package`") from None
    return sha256_bytes(data)


def load_bundle(path: str | Path, buffer_dir: str | Path, *, trusted_key: str | None = None,
                require_signature: bool = False, threads: int | None = None,
                log: Callable[[str], None] = lambda line: None) -> LoadedBundle:
    """Verify ``path``, extract it (once) under ``buffer_dir``/bundles/<id>/, open its model."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a bundle", "pass the .edgepkg file")
    ident = bundle_id(path)
    root = Path(buffer_dir) / "bundles"
    dest = root / ident
    if dest.is_dir():
        # Verify the file itself on every start (extraction below verifies it too): the trust
        # policy (--trusted-key, --require-signature) may have changed since the copy was made.
        verify_bundle(path, trusted_key=trusted_key, require_signature=require_signature)
        problem = check_extracted(dest, ident)
        if problem:
            log(f"warning: the extracted copy of bundle {ident[:12]} was changed on disk ({problem}); "
                "extracting it again")
            shutil.rmtree(dest)
    if not dest.is_dir():
        _extract(path, root, dest, trusted_key, require_signature)
        problem = check_extracted(dest, ident)
        if problem:  # the file was replaced between reading its id and extracting it
            shutil.rmtree(dest, ignore_errors=True)
            raise BundleError(f"{path} changed while it was being loaded ({problem})",
                              "do not modify the bundle while the agent starts; start it again")
    manifest = json.loads((dest / MANIFEST_NAME).read_bytes())
    refstats_path = dest / REFSTATS_NAME
    refstats = json.loads(refstats_path.read_bytes()) if refstats_path.is_file() else {}
    models = [f["path"] for f in manifest["files"] if f.get("role") == "model"]
    if not models:
        raise BundleError(f"{path} lists no model file", "rebuild the bundle with `edgeops package`")
    runtime = open_runtime(dest / models[0], threads=threads)
    _check_signature_matches(path, manifest, runtime)
    signed = (dest / SIGNATURE_INFO_NAME).is_file()
    signature = ("valid (trusted key)" if trusted_key else "valid (key in the bundle, not trusted)") \
        if signed else "absent"
    return LoadedBundle(ident, path, dest, manifest, refstats if isinstance(refstats, dict) else {},
                        runtime, models[0], signature)


def _extract(path: Path, root: Path, dest: Path, trusted_key, require_signature) -> None:
    """Extract into a private temporary directory, then rename: a crash never leaves half a copy
    under the final name, and two agents starting at once cannot interleave their writes."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {root}: {exc.strerror or exc}",
                         "pass a writable --buffer-dir") from None
    tmp = root / f".extract-{dest.name[:16]}-{secrets.token_hex(4)}"
    try:
        extract_bundle(path, tmp, trusted_key=trusted_key, require_signature=require_signature)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not "someone else was faster": a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_extracted(dest: Path, ident: str) -> str | None:
    """What is wrong with an extracted copy (None if every file matches its manifest)."""
    try:
        manifest_bytes = (dest / MANIFEST_NAME).read_bytes()
    except OSError:
        return "manifest.json is missing"
    if sha256_bytes(manifest_bytes) != ident:
        return "manifest.json differs"
    try:
        manifest = validate_manifest(json.loads(manifest_bytes))
    except (ValueError, BundleError):
        return "manifest.json is unreadable"
    for entry in manifest["files"]:
        target = dest / entry["path"]
        if target.is_symlink() or not target.is_file():
            return f"{entry['path']} is missing or not a regular file"
        if target.stat().st_size != entry["size_bytes"] or sha256_file(target) != entry["sha256"]:
            return f"{entry['path']} does not match its sha256"
    return None


def _check_signature_matches(path: Path, manifest: dict, runtime: Runtime) -> None:
    """The model's inputs must be the ones the manifest promises (what clients are told to send)."""
    declared = [t.get("name") for t in manifest.get("signature", {}).get("inputs", [])]
    actual = [t.name for t in runtime.inputs]
    if declared and sorted(declared) != sorted(actual):
        raise BundleError(f"{path}: the manifest declares inputs {declared}, the model has {actual}",
                          "rebuild the bundle with `edgeops package`")


def check_compatible(primary: LoadedBundle, other: LoadedBundle, role: str) -> None:
    """A candidate or shadow must take exactly the primary's inputs: the same request goes to both."""
    mine = {t.name: t for t in primary.inputs}
    theirs = {t.name: t for t in other.inputs}
    if set(mine) != set(theirs):
        raise UsageError(f"the {role} bundle {other.path} takes inputs {sorted(theirs)}, the primary "
                         f"{primary.path} takes {sorted(mine)}",
                         f"a {role} must have the same input signature as the primary bundle")
    for name, a in mine.items():
        b = theirs[name]
        fixed = all(x == y for x, y in zip(a.shape[1:], b.shape[1:]) if isinstance(x, int) and isinstance(y, int))
        if a.dtype != b.dtype or len(a.shape) != len(b.shape) or not fixed:
            raise UsageError(f"input '{name}' is {a.describe()} in the primary bundle but {b.describe()} in "
                             f"the {role} bundle {other.path}",
                             f"a {role} must have the same input signature as the primary bundle")
