"""The agent's trust checks before loading: hashes, signatures, safe extraction, re-checked cache."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from agent_testlib import Client, mlp_bundle, running_agent

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("cryptography")

from edgeops.agent.model import bundle_id, load_bundle  # noqa: E402
from edgeops.bundle import signing  # noqa: E402
from edgeops.bundle.manifest import BundleError  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    signing.generate_keypair(d / "signer.pem", d / "signer.pub")
    signing.generate_keypair(d / "other.pem", d / "other.pub")
    return d


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("bundles")
    return {"plain": mlp_bundle(d / "plain"), "other": mlp_bundle(d / "other", seed=7),
            "signed": mlp_bundle(d / "signed", sign_key=keys / "signer.pem")}


def rewrite(src, dst, change=None, replace=None):
    """Copy a bundle entry by entry with valid CRCs, changing entries (a tamperer would)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if change and info.filename in change:
                data = change[info.filename](data)
            if replace and info.filename in replace:
                data = replace[info.filename]
            zout.writestr(info, data)
    return dst


def run_agent_cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeops.agent", "run", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, EDGEOPS_AGENT_PORT="0"))


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert any(line.startswith("hint: ") for line in proc.stderr.splitlines()), proc.stderr


def test_tampered_model_is_refused_with_exit_9(bundles, tmp_path):
    flip = lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]  # noqa: E731
    bad = rewrite(bundles["plain"], tmp_path / "bad.edgepkg", change={"model.onnx": flip})
    proc = run_agent_cli(bad, "--buffer-dir", tmp_path / "buf")
    assert_one_line_error(proc, 9, "sha256 of 'model.onnx' does not match")
    assert not (tmp_path / "buf" / "bundles" / bundle_id(bad)).exists()


def test_swapped_manifest_is_refused(bundles, tmp_path):
    with zipfile.ZipFile(bundles["other"]) as zf:
        foreign = zf.read("manifest.json")
    bad = rewrite(bundles["plain"], tmp_path / "swapped.edgepkg", replace={"manifest.json": foreign})
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_bundle(bad, tmp_path / "buf")


def test_unsigned_bundle_is_refused_when_signatures_are_required(bundles, keys, tmp_path):
    proc = run_agent_cli(bundles["plain"], "--buffer-dir", tmp_path / "buf", "--trusted-key", keys / "signer.pub",
                         "--require-signature")
    assert_one_line_error(proc, 9, "not signed, and a signature is required")
    proc = run_agent_cli(bundles["plain"], "--buffer-dir", tmp_path / "buf", "--require-signature")
    assert_one_line_error(proc, 2, "needs the trusted public key")


def test_signature_by_the_trusted_key_is_accepted_and_others_refused(bundles, keys, tmp_path):
    with running_agent(bundles["signed"], tmp_path / "a", trusted_key=str(keys / "signer.pub"),
                       require_signature=True) as agent:
        status, health, _ = Client(agent.url).request("GET", "/healthz")
        assert status == 200 and health["bundles"][0]["signature"] == "valid (trusted key)"
        assert Client(agent.url).predict([[1, 2, 3, 4]])[0] == 200
    proc = run_agent_cli(bundles["signed"], "--buffer-dir", tmp_path / "b", "--trusted-key", keys / "other.pub")
    assert_one_line_error(proc, 9, "not by the trusted key")
    # a signed manifest edited afterwards fails the signature
    def edit(data):
        manifest = json.loads(data)
        manifest["model"]["version"] = "6.6.6"
        return json.dumps(manifest).encode()
    bad = rewrite(bundles["signed"], tmp_path / "edited.edgepkg", change={"manifest.json": edit})
    with pytest.raises(BundleError, match="signature is invalid"):
        load_bundle(bad, tmp_path / "c", trusted_key=keys / "signer.pub", require_signature=True)


def test_extracted_once_under_the_bundle_id_and_rechecked_before_reuse(bundles, tmp_path):
    path = bundles["plain"]
    with zipfile.ZipFile(path) as zf:
        manifest_bytes = zf.read("manifest.json")
        model_bytes = zf.read("model.onnx")
    ident = hashlib.sha256(manifest_bytes).hexdigest()
    assert bundle_id(path) == ident
    lines: list[str] = []
    first = load_bundle(path, tmp_path / "buf", log=lines.append)
    dest = tmp_path / "buf" / "bundles" / ident
    assert first.id == ident and first.directory == dest
    assert (dest / "model.onnx").read_bytes() == model_bytes
    assert sorted(p.name for p in (tmp_path / "buf" / "bundles").iterdir()) == [ident]  # no temporary left
    inode = (dest / "model.onnx").stat().st_ino
    load_bundle(path, tmp_path / "buf", log=lines.append)
    assert (dest / "model.onnx").stat().st_ino == inode and not lines  # reused as it was
    damaged = bytearray(model_bytes)
    damaged[50] ^= 0x01
    (dest / "model.onnx").write_bytes(bytes(damaged))
    again = load_bundle(path, tmp_path / "buf", log=lines.append)
    assert any("changed on disk" in line for line in lines), lines
    assert (dest / "model.onnx").read_bytes() == model_bytes
    assert again.runtime.run({"x": __import__("numpy").ones((1, 4), "float32")})["scores"].shape == (1, 3)
    with running_agent(path, tmp_path / "agent") as agent:
        assert Client(agent.url).request("GET", "/healthz")[1]["bundles"][0]["id"] == ident


def test_unsafe_or_unreadable_bundles(bundles, tmp_path):
    evil = tmp_path / "evil.edgepkg"
    with zipfile.ZipFile(bundles["plain"]) as zin, zipfile.ZipFile(evil, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr("../../escape.txt", b"x")
    proc = run_agent_cli(evil, "--buffer-dir", tmp_path / "buf")
    assert_one_line_error(proc, 9, "unsafe entry name")
    assert not (tmp_path / "escape.txt").exists()
    junk = tmp_path / "junk.edgepkg"
    junk.write_bytes(b"not a zip at all")
    assert_one_line_error(run_agent_cli(junk, "--buffer-dir", tmp_path / "buf"), 3, "not a readable bundle")
    assert_one_line_error(run_agent_cli(tmp_path / "missing.edgepkg", "--buffer-dir", tmp_path / "buf"), 3,
                          "does not exist")
