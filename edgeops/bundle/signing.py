"""Ed25519 keys and signatures for bundles (the optional ``cryptography`` package).

What is signed is the canonical manifest.json: it holds the sha256 of every other file, so one
signature covers the whole bundle. Ed25519 signatures are deterministic, so a signed bundle is
still byte-identical across builds with the same key.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import InputFileError, UsageError, require
from .manifest import BundleError

PURPOSE = "signing and verifying bundles"


def available() -> bool:
    """Whether signatures can be checked here (the optional ``cryptography`` package)."""
    import importlib.util

    return importlib.util.find_spec("cryptography") is not None


def _crypto():
    require("cryptography", "cryptography", "sign", PURPOSE)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def generate_keypair(private_path: str | Path, public_path: str | Path) -> str:
    """Write a new PEM key pair (private file mode 0600); return the public key's fingerprint."""
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise UsageError("the private and public key paths are the same", "give two different files")
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError(f"{path} exists; refusing to overwrite a key",
                             "choose another path or remove the old key first")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        for path in (private_path, public_path):
            path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never write through a file (or symlink) that appeared since the check above.
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_pem)
        fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(public_pem)
    except OSError as exc:
        raise InputFileError(f"cannot write the key pair: {exc.strerror or exc}",
                             "choose a writable directory") from None
    return fingerprint(key.public_key())


def fingerprint(public_key) -> str:
    """sha256 of the raw 32 public-key bytes, hex."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def raw_public_bytes(public_key) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: str | Path):
    serialization, ed25519 = _crypto()
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"{path} is not an unencrypted PEM private key ({exc})",
                             "make one with `edgeops keygen`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputFileError(f"{path} is not an Ed25519 key", "make one with `edgeops keygen`")
    return key


def load_public_key(path: str | Path):
    serialization, ed25519 = _crypto()
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InputFileError(f"{path} is not a PEM public key ({exc})",
                             "pass the .pub file written by `edgeops keygen`") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InputFileError(f"{path} is not an Ed25519 public key", "pass the key from `edgeops keygen`")
    return key


def public_key_from_raw(raw: bytes):
    _, ed25519 = _crypto()
    try:
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise BundleError("signature.json holds an invalid public key", "rebuild and re-sign the bundle") from None


def sign(payload: bytes, private_key_path: str | Path) -> bytes:
    """The raw 64-byte Ed25519 signature of ``payload``."""
    return load_private_key(private_key_path).sign(payload)


def verify(payload: bytes, signature: bytes, public_key_path) -> bool:
    """True if ``signature`` is valid for ``payload`` under the key (a path or a loaded key)."""
    _crypto()
    from cryptography.exceptions import InvalidSignature

    key = public_key_path if not isinstance(public_key_path, (str, Path)) else load_public_key(public_key_path)
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _read(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(f"cannot read the {what} {path}: {exc.strerror or exc}",
                             "check the path") from None
