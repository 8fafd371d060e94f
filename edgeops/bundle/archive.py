"""Write, read, verify and extract .edgepkg bundles (a deterministic zip).

Determinism: entries sorted by name, timestamps 1980-01-01 00:00:00, mode 0644, Unix "made by",
DEFLATE at level 9, JSON in canonical form. The same inputs give the same bytes (given the same
zlib, which every CPython ships).

Verification trusts nothing in the archive until checked: entry names are safe relative paths,
every listed file is present with its sha256 and size, nothing unlisted is present, and the
signature (if any) covers the manifest that lists those hashes.
"""
from __future__ import annotations

import json
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import InputFileError, UsageError
from .manifest import (MANIFEST_NAME, REFSTATS_NAME, REPORT_NAME, SIGNATURE_INFO_NAME, SIGNATURE_NAME,
                       UNLISTED, BundleError, canonical_json, file_entry, sha256_bytes,
                       validate_manifest)

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--
COMPRESS_LEVEL = 9
RESERVED = (MANIFEST_NAME, REFSTATS_NAME, REPORT_NAME, SIGNATURE_NAME, SIGNATURE_INFO_NAME)
MAX_ENTRY_BYTES = 4 << 30  # refuse to inflate a single entry beyond 4 GiB (zip bombs)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    refstats: dict | None
    report: dict | None
    names: tuple[str, ...]
    signature_info: dict | None = None

    @property
    def signed(self) -> bool:
        return self.signature_info is not None


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    files: int
    signed: bool
    signature: str  # "valid (trusted key)", "valid (key in the bundle, not trusted)", "absent"
    key_fingerprint: str | None = None
    trusted: bool = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "ok": True, "files": self.files, "signed": self.signed,
                "signature": self.signature, "key_fingerprint": self.key_fingerprint,
                "trusted": self.trusted, "warnings": list(self.warnings)}


def write_bundle(out: str | Path, model_files: dict[str, str | Path], manifest: dict, refstats: dict,
                 report: dict | None = None, sign_key: str | Path | None = None) -> Path:
    """Write the bundle atomically; the manifest's file list is filled from the entries."""
    from ..convert import atomic_output

    if not model_files:
        raise UsageError("a bundle needs at least one model file")
    entries: dict[str, bytes] = {}
    files = []
    for arcname, path in sorted(model_files.items()):
        check_name(arcname)
        if arcname in RESERVED:
            raise UsageError(f"'{arcname}' is a reserved name inside a bundle", "rename the model file")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputFileError(f"cannot read {path}: {exc.strerror or exc}", "check the path") from None
        entries[arcname] = data
        files.append(file_entry(arcname, data, "model"))
    entries[REFSTATS_NAME] = canonical_json(refstats)
    files.append(file_entry(REFSTATS_NAME, entries[REFSTATS_NAME], "refstats"))
    if report is not None:
        entries[REPORT_NAME] = canonical_json(report)
        files.append(file_entry(REPORT_NAME, entries[REPORT_NAME], "report"))
    manifest = dict(manifest, files=sorted(files, key=lambda f: f["path"]))
    validate_manifest(manifest)
    entries[MANIFEST_NAME] = canonical_json(manifest)
    if sign_key is not None:
        from . import signing

        key = signing.load_private_key(sign_key)
        public = key.public_key()
        entries[SIGNATURE_NAME] = key.sign(entries[MANIFEST_NAME])
        entries[SIGNATURE_INFO_NAME] = canonical_json({
            "schema_version": 1, "algorithm": "ed25519", "signed_file": MANIFEST_NAME,
            "public_key": signing.raw_public_bytes(public).hex(),
            "public_key_sha256": signing.fingerprint(public)})
    out = Path(out)
    with atomic_output(out) as tmp:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.create_system = 3  # Unix, so external_attr holds a mode on every host
                info.external_attr = FILE_MODE << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, entries[name], compress_type=zipfile.ZIP_DEFLATED,
                            compresslevel=COMPRESS_LEVEL)
    return out


def check_name(name: str) -> None:
    """Refuse entry names that could land outside the extraction directory."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        raise BundleError(f"unsafe entry name {name!r} in the bundle: absolute path or backslash",
                          "the bundle may be malicious: do not use it")
    if len(name) > 1 and name[1] == ":":
        raise BundleError(f"unsafe entry name {name!r} in the bundle: a drive letter",
                          "the bundle may be malicious: do not use it")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") for p in parts) or name.endswith("/") or "//" in name:
        raise BundleError(f"unsafe entry name {name!r} in the bundle: '..', '.' or an empty component",
                          "the bundle may be malicious: do not use it")


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputFileError(f"{path} does not exist", "check the path") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputFileError(f"{path} is not a readable bundle: {exc}",
                             "a bundle is the .edgepkg written by `edgeops package`") from None


def _check_entries(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        if name in infos:
            raise BundleError(f"the bundle holds '{name}' twice", "the bundle may be malicious: do not use it")
        check_name(name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(f"'{name}' in the bundle is a symbolic link",
                              "the bundle may be malicious: do not use it")
        if info.is_dir() or (mode and not stat.S_ISREG(mode)):
            raise BundleError(f"'{name}' in the bundle is not a regular file",
                              "a bundle holds only files: rebuild it")
        if info.file_size > MAX_ENTRY_BYTES:
            raise BundleError(f"'{name}' in the bundle claims {info.file_size} bytes", "do not use the bundle")
        infos[name] = info
    return infos


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int | None = None) -> bytes:
    limit = info.file_size if limit is None else limit
    try:
        with zf.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:  # CRC mismatch, bad deflate data
        raise BundleError(f"'{info.filename}' in the bundle is corrupt: {exc}",
                          "the bundle was damaged or tampered with: fetch or rebuild it") from None
    if len(data) > limit:
        raise BundleError(f"'{info.filename}' in the bundle is larger than declared",
                          "the bundle was damaged or tampered with: fetch or rebuild it")
    return data


def _json_entry(zf, infos, name: str):
    if name not in infos:
        return None
    data = _read_entry(zf, infos[name])
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{name} in the bundle is not valid JSON: {exc}", "rebuild the bundle") from None


def read_bundle(path: str | Path) -> Bundle:
    """The manifest, reference statistics and report of a bundle (structure checked, hashes not)."""
    path = Path(path)
    with _open(path) as zf:
        infos = _check_entries(zf)
        if MANIFEST_NAME not in infos:
            raise BundleError(f"{path} has no manifest.json", "a bundle is written by `edgeops package`")
        manifest = validate_manifest(_json_entry(zf, infos, MANIFEST_NAME))
        return Bundle(path, manifest, _json_entry(zf, infos, REFSTATS_NAME), _json_entry(zf, infos, REPORT_NAME),
                      tuple(sorted(infos)), _json_entry(zf, infos, SIGNATURE_INFO_NAME))


def verify_bundle(path: str | Path, trusted_key: str | Path | None = None,
                  require_signature: bool = False) -> VerifyResult:
    """Check names, hashes, sizes, completeness and the signature; raise BundleError on any failure."""
    path = Path(path)
    if require_signature and trusted_key is None:
        raise UsageError("requiring a signature needs the trusted public key", "pass --key PUBLIC.pem")
    with _open(path) as zf:
        return _verify(path, zf, trusted_key, require_signature)[0]


def _verify(path: Path, zf: zipfile.ZipFile, trusted_key, require_signature):
    """(VerifyResult, {name: ZipInfo}, {listed name: manifest entry}) of an open bundle."""
    infos = _check_entries(zf)
    if MANIFEST_NAME not in infos:
        raise BundleError(f"{path} has no manifest.json", "a bundle is written by `edgeops package`")
    manifest_bytes = _read_entry(zf, infos[MANIFEST_NAME])
    try:
        manifest = json.loads(manifest_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}", "rebuild the bundle") from None
    validate_manifest(manifest)
    listed = {}
    for entry in manifest["files"]:
        if entry["path"] in listed:
            raise BundleError(f"manifest.json lists '{entry['path']}' twice", "rebuild the bundle")
        check_name(entry["path"])
        listed[entry["path"]] = entry
    missing = sorted(set(listed) - set(infos))
    if missing:
        raise BundleError(f"the bundle lacks listed file(s): {', '.join(missing)}",
                          "the bundle is incomplete: fetch or rebuild it")
    extra = sorted(set(infos) - set(listed) - set(UNLISTED))
    if extra:
        raise BundleError(f"the bundle holds file(s) not in its manifest: {', '.join(extra)}",
                          "the bundle was tampered with: do not use it")
    for name, entry in sorted(listed.items()):
        info = infos[name]
        if info.file_size != entry["size_bytes"]:
            raise BundleError(f"'{name}' is {info.file_size} bytes, the manifest says {entry['size_bytes']}",
                              "the bundle was tampered with: do not use it")
        data = _read_entry(zf, info)
        if sha256_bytes(data) != entry["sha256"]:
            raise BundleError(f"sha256 of '{name}' does not match the manifest",
                              "the bundle was tampered with or damaged: do not use it")
    result = _check_signature(path, zf, infos, manifest_bytes, trusted_key, require_signature,
                              files=len(listed))
    return result, infos, listed


def _check_signature(path, zf, infos, manifest_bytes, trusted_key, require_signature, files) -> VerifyResult:
    has_sig, has_info = SIGNATURE_NAME in infos, SIGNATURE_INFO_NAME in infos
    if not has_sig and not has_info:
        if require_signature:
            raise BundleError(f"{path} is not signed, and a signature is required",
                              "sign it with `edgeops package --sign-key PRIVATE.pem`")
        return VerifyResult(path, files, False, "absent")
    if has_sig != has_info:
        raise BundleError("the bundle has only one of signature.ed25519 and signature.json",
                          "the bundle was tampered with: do not use it")
    from . import signing

    if trusted_key is None and not signing.available():
        # A key that travels inside the bundle proves nothing about who signed it, and the
        # file hashes are checked anyway; so a device with no trusted key configured and no
        # `cryptography` (the agent's minimal install) serves the bundle and says so.
        return VerifyResult(path, files, True, "present, not checked (no trusted key; 'cryptography' not installed)",
                            None, False, ["signed, but the signature was not checked: configure a trusted key "
                                          "and install 'edgeops[sign]' to check it"])
    signature = _read_entry(zf, infos[SIGNATURE_NAME], limit=64)
    info = _json_entry(zf, infos, SIGNATURE_INFO_NAME)
    if not isinstance(info, dict) or info.get("algorithm") != "ed25519" or len(signature) != 64:
        raise BundleError("the bundle's signature is malformed (expected a 64-byte Ed25519 signature)",
                          "re-sign the bundle")
    try:
        embedded = signing.public_key_from_raw(bytes.fromhex(str(info.get("public_key", ""))))
    except ValueError:
        raise BundleError("signature.json holds an invalid public key", "re-sign the bundle") from None
    fp = signing.fingerprint(embedded)
    if info.get("public_key_sha256") != fp:
        raise BundleError("signature.json's key fingerprint does not match its key",
                          "the bundle was tampered with: do not use it")
    if trusted_key is not None:
        trusted = signing.load_public_key(trusted_key)
        if signing.fingerprint(trusted) != fp:
            raise BundleError(f"the bundle was signed by key {fp[:16]}..., not by the trusted key "
                              f"{signing.fingerprint(trusted)[:16]}...",
                              "verify with the public key that belongs to the signer")
        if not signing.verify(manifest_bytes, signature, trusted):
            raise BundleError("the bundle's signature is invalid for its manifest",
                              "the manifest was changed after signing: do not use the bundle")
        return VerifyResult(path, files, True, "valid (trusted key)", fp, True)
    if not signing.verify(manifest_bytes, signature, embedded):
        raise BundleError("the bundle's signature is invalid for its manifest",
                          "the manifest was changed after signing: do not use the bundle")
    return VerifyResult(path, files, True, "valid (key in the bundle, not trusted)", fp, False,
                        ["signed, but no trusted key was given: pass --key to check who signed it"])


def extract_bundle(path: str | Path, dest: str | Path, trusted_key: str | Path | None = None,
                   require_signature: bool = False) -> Path:
    """Verify, then write every entry under ``dest`` (which must not exist or be empty)."""
    path, dest = Path(path), Path(dest)
    if require_signature and trusted_key is None:
        raise UsageError("requiring a signature needs the trusted public key", "pass --key PUBLIC.pem")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"{dest} exists and is not an empty directory", "extract into a new directory")
    with _open(path) as zf:
        # Verified and extracted through one open handle, so a file swapped on disk in between
        # cannot slip through; each listed file is hashed again as it is written.
        _, infos, listed = _verify(path, zf, trusted_key, require_signature)
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for name in sorted(infos):
            target = (root / name).resolve()
            if root not in target.parents:
                raise BundleError(f"'{name}' would be written outside {dest}", "do not use the bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = _read_entry(zf, infos[name])
            if name in listed and sha256_bytes(data) != listed[name]["sha256"]:
                raise BundleError(f"sha256 of '{name}' changed while extracting", "do not use the bundle")
            # O_EXCL | O_NOFOLLOW: never write through a file or link that is already there.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    return dest
