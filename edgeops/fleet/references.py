"""Reference statistics for the monitor: read from bundles (--bundle FILE, --registry DIR).

A window names its bundle by id: the sha256 of the bundle's manifest.json bytes. The monitor keys
each bundle's refstats by that id, so windows from any device running the bundle find them.
Bundles are verified (hashes, names, signature if present) before their statistics are trusted.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..bundle.archive import read_bundle, verify_bundle
from ..bundle.manifest import MANIFEST_NAME, BundleError, sha256_bytes
from ..errors import InputFileError, UsageError

BUNDLE_SUFFIX = ".edgepkg"


@dataclass(frozen=True)
class Reference:
    bundle_id: str
    name: str
    version: str
    manifest: dict
    refstats: dict
    path: str | None = None

    def bundle(self) -> dict:
        return {"id": self.bundle_id, "name": self.name, "version": self.version}


def bundle_id(path: str | Path) -> str:
    """sha256 of the manifest.json bytes inside the bundle (the id agents put in their windows)."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(MANIFEST_NAME)
    except KeyError:
        raise BundleError(f"{path} has no manifest.json", "a bundle is written by `edgeops package`") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputFileError(f"{path} is not a readable bundle: {exc}",
                             "a bundle is the .edgepkg written by `edgeops package`") from None
    return sha256_bytes(data)


def load_bundle_reference(path: str | Path, trusted_key: str | Path | None = None) -> Reference:
    """Verify one bundle and return its reference statistics."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path} does not exist or is not a file", "pass the .edgepkg of `edgeops package`")
    # With a trusted key, an unsigned bundle is refused too: the key is a promise about every bundle.
    verify_bundle(path, trusted_key=trusted_key, require_signature=trusted_key is not None)
    bundle = read_bundle(path)
    if not bundle.refstats:
        raise BundleError(f"{path} holds no reference statistics (refstats.json)",
                          "package it again with --reference DATA so the monitor can detect drift")
    model = bundle.manifest.get("model") or {}
    return Reference(bundle_id(path), str(model.get("name", "")), str(model.get("version", "")),
                     bundle.manifest, bundle.refstats, str(path))


def load_references(bundles: list[str] | tuple[str, ...] = (), registry: str | None = None,
                    trusted_key: str | Path | None = None) -> dict[str, Reference]:
    """{bundle id: Reference} of every --bundle file and every *.edgepkg under --registry DIR."""
    paths = [Path(p) for p in bundles]
    if registry is not None:
        root = Path(registry)
        if not root.is_dir():
            raise UsageError(f"--registry {registry} is not a directory",
                             "pass a directory that holds .edgepkg bundles")
        found = sorted(p for p in root.rglob(f"*{BUNDLE_SUFFIX}") if p.is_file())
        if not found:
            raise UsageError(f"--registry {registry} holds no {BUNDLE_SUFFIX} bundle",
                             "put the bundles the devices run there, or pass --bundle FILE")
        paths.extend(found)
    references: dict[str, Reference] = {}
    for path in paths:
        ref = load_bundle_reference(path, trusted_key)
        references.setdefault(ref.bundle_id, ref)
    return references
