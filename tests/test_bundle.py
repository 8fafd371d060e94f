"""The .edgepkg bundle: determinism, round trip, tamper detection, signing, reference statistics, CLI."""
from __future__ import annotations

import json
import stat
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgeops.bundle.archive import extract_bundle, read_bundle, verify_bundle, write_bundle
from edgeops.bundle.manifest import BundleError, build_manifest, canonical_json, sha256_file, validate_manifest
from edgeops.bundle.refstats import reference_stats
from edgeops.errors import UsageError
from helpers import assert_clean_error, run_cli

pytest.importorskip("cryptography")
from edgeops.bundle import signing  # noqa: E402


@pytest.fixture
def model_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path


@pytest.fixture
def reference(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    path = tmp_path / "src" / "ref.npy"
    path.parent.mkdir(exist_ok=True)
    np.save(path, x)
    return path, x


def make_bundle(out, model_file, reference, sign_key=None, version="1.0"):
    ref_path, x = reference
    manifest = build_manifest(
        name="relu", version=version,
        inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": ["batch", 3]}],
        source_sha256=sha256_file(model_file), profile={"name": "rpi4", "ram_mb": 4096},
        preprocessing={"scale": 1.0}, conversion={"converter": "native"}, quantization=None,
        parity={"passed": True, "max_abs": np.float32(0.0)}, data_files={"reference": ref_path},
        toolchain={"edgeops": "0.1.0", "numpy": "2.0"})
    stats = reference_stats({"x": x}, {"y": np.maximum(x, 0)}, feature_names=["a", "b", "c"])
    return write_bundle(out, {"model.onnx": model_file}, manifest, stats, {"latency_ms": {"p50": 0.1}},
                        sign_key=sign_key)


@pytest.fixture
def keys(tmp_path):
    priv, pub = tmp_path / "keys" / "signer.pem", tmp_path / "keys" / "signer.pub"
    signing.generate_keypair(priv, pub)
    return priv, pub


def rewrite(src, dst, change=None, add=None, drop=(), attr=None):
    """Copy a bundle entry by entry (valid CRCs), changing, adding or dropping entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info)
            if change and info.filename in change:
                data = change[info.filename](data)
            zout.writestr(info, data)
        for name, data in (add or {}).items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (attr or 0o100644) << 16
            zout.writestr(info, data)
    return dst


# -- determinism and round trip ---------------------------------------------------------------

def test_same_inputs_give_identical_bytes(tmp_path, model_file, reference, keys, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a = make_bundle(tmp_path / "a.edgepkg", model_file, reference)
    b = make_bundle(tmp_path / "b.edgepkg", model_file, reference)
    assert a.read_bytes() == b.read_bytes()
    sa = make_bundle(tmp_path / "sa.edgepkg", model_file, reference, sign_key=keys[0])
    sb = make_bundle(tmp_path / "sb.edgepkg", model_file, reference, sign_key=keys[0])
    assert sa.read_bytes() == sb.read_bytes()
    c = make_bundle(tmp_path / "c.edgepkg", model_file, reference, version="1.1")
    assert c.read_bytes() != a.read_bytes()
    with zipfile.ZipFile(a) as zf:
        names = [i.filename for i in zf.infolist()]
        assert names == sorted(names)
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.external_attr >> 16 for i in zf.infolist()} == {0o100644}


def test_source_date_epoch_sets_created(tmp_path, model_file, reference, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    path = make_bundle(tmp_path / "a.edgepkg", model_file, reference)
    assert read_bundle(path).manifest["created"] == "1970-01-02T00:00:00Z"


def test_roundtrip_and_extract(tmp_path, model_file, reference):
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)
    bundle = read_bundle(path)
    m = bundle.manifest
    assert m["schema_version"] == 1 and m["kind"] == "edgeops.bundle"
    assert m["model"] == {"name": "relu", "version": "1.0"}
    assert m["profile"]["name"] == "rpi4"
    assert m["parity"]["max_abs"] == 0.0
    assert m["lineage"]["source_sha256"] == sha256_file(model_file)
    assert m["lineage"]["data"]["reference"]["sha256"] == sha256_file(reference[0])
    roles = {f["path"]: f["role"] for f in m["files"]}
    assert roles == {"model.onnx": "model", "refstats.json": "refstats", "report.json": "report"}
    assert [f["name"] for f in bundle.refstats["features"]] == ["a", "b", "c"]
    assert bundle.report == {"latency_ms": {"p50": 0.1}}
    result = verify_bundle(path)
    assert result.files == 3 and not result.signed
    dest = extract_bundle(path, tmp_path / "out")
    assert (dest / "model.onnx").read_bytes() == model_file.read_bytes()
    with pytest.raises(UsageError, match="not an empty directory"):
        extract_bundle(path, dest)


def test_unknown_schema_version_is_refused():
    manifest = build_manifest(name="m", version="1", inputs=[], outputs=[], source_sha256=None, toolchain={})
    validate_manifest(manifest)
    with pytest.raises(BundleError, match="schema_version 2 is not supported"):
        validate_manifest(dict(manifest, schema_version=2))
    with pytest.raises(BundleError, match="not an edgeops bundle"):
        validate_manifest(dict(manifest, kind="other"))


def test_canonical_json_is_stable():
    assert canonical_json({"b": 1, "a": [np.int64(2), float("nan")]}) == b'{"a":[2,null],"b":1}\n'


# -- tampering --------------------------------------------------------------------------------

def test_modified_model_is_caught(tmp_path, model_file, reference):
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)
    flip = lambda d: d[:-1] + bytes([d[-1] ^ 1])  # noqa: E731
    bad = rewrite(path, tmp_path / "bad.edgepkg", change={"model.onnx": flip})
    with pytest.raises(BundleError, match="sha256 of 'model.onnx' does not match"):
        verify_bundle(bad)


def test_flipped_byte_in_the_archive_is_caught(tmp_path, model_file, reference):
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.onnx")
    raw = bytearray(path.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "bad.edgepkg"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="'model.onnx' in the bundle is corrupt"):
        verify_bundle(bad)
    with pytest.raises(BundleError):
        extract_bundle(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_edited_manifest_is_caught(tmp_path, model_file, reference, keys):
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)

    def edit_hash(data):
        m = json.loads(data)
        m["files"][0]["sha256"] = "0" * 64
        return canonical_json(m)

    with pytest.raises(BundleError, match="sha256 of 'model.onnx' does not match"):
        verify_bundle(rewrite(path, tmp_path / "bad.edgepkg", change={"manifest.json": edit_hash}))

    signed = make_bundle(tmp_path / "s.edgepkg", model_file, reference, sign_key=keys[0])

    def edit_version(data):
        m = json.loads(data)
        m["model"]["version"] = "9.9"
        return canonical_json(m)

    bad = rewrite(signed, tmp_path / "bad2.edgepkg", change={"manifest.json": edit_version})
    with pytest.raises(BundleError, match="signature is invalid"):
        verify_bundle(bad, trusted_key=keys[1])
    with pytest.raises(BundleError, match="signature is invalid"):
        verify_bundle(bad)  # even without a trusted key, the key in the bundle no longer matches


def test_added_and_missing_files_are_caught(tmp_path, model_file, reference):
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)
    with pytest.raises(BundleError, match="not in its manifest: extra.bin"):
        verify_bundle(rewrite(path, tmp_path / "a.edgepkg", add={"extra.bin": b"x"}))
    with pytest.raises(BundleError, match="lacks listed file.*report.json"):
        verify_bundle(rewrite(path, tmp_path / "b.edgepkg", drop={"report.json"}))


def test_unsafe_entries_are_caught(tmp_path, model_file, reference):
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)
    with pytest.raises(BundleError, match=r"unsafe entry name '\.\./evil'"):
        verify_bundle(rewrite(path, tmp_path / "a.edgepkg", add={"../evil": b"x"}))
    with pytest.raises(BundleError, match="unsafe entry name '/etc/evil'"):
        verify_bundle(rewrite(path, tmp_path / "b.edgepkg", add={"/etc/evil": b"x"}))
    link = rewrite(path, tmp_path / "c.edgepkg", add={"link": b"/etc/passwd"}, attr=stat.S_IFLNK | 0o777)
    with pytest.raises(BundleError, match="'link' in the bundle is a symbolic link"):
        verify_bundle(link)
    with pytest.raises(BundleError, match="symbolic link"):
        extract_bundle(link, tmp_path / "out")
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = rewrite(path, tmp_path / "d.edgepkg", add={"model.onnx": b"evil"})
    with pytest.raises(BundleError, match="holds 'model.onnx' twice"):
        verify_bundle(dup)


def test_not_a_zip_is_an_input_error(tmp_path):
    from edgeops.errors import InputFileError

    bad = tmp_path / "x.edgepkg"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="not a readable bundle"):
        verify_bundle(bad)


# -- signing -----------------------------------------------------------------------------------

def test_signing(tmp_path, model_file, reference, keys):
    priv, pub = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="refusing to overwrite"):
        signing.generate_keypair(priv, tmp_path / "other.pub")
    sig = signing.sign(b"payload", priv)
    assert len(sig) == 64 and sig == signing.sign(b"payload", priv)
    assert signing.verify(b"payload", sig, pub) and not signing.verify(b"payloaD", sig, pub)

    path = make_bundle(tmp_path / "s.edgepkg", model_file, reference, sign_key=priv)
    ok = verify_bundle(path, trusted_key=pub, require_signature=True)
    assert ok.signed and ok.trusted and ok.signature == "valid (trusted key)"
    untrusted = verify_bundle(path)
    assert untrusted.signed and not untrusted.trusted and untrusted.warnings

    other_priv, other_pub = tmp_path / "o.pem", tmp_path / "o.pub"
    signing.generate_keypair(other_priv, other_pub)
    with pytest.raises(BundleError, match="not by the trusted key"):
        verify_bundle(path, trusted_key=other_pub)

    unsigned = make_bundle(tmp_path / "u.edgepkg", model_file, reference)
    with pytest.raises(BundleError, match="not signed, and a signature is required"):
        verify_bundle(unsigned, trusted_key=pub, require_signature=True)
    with pytest.raises(UsageError, match="needs the trusted public key"):
        verify_bundle(path, require_signature=True)
    stripped = rewrite(path, tmp_path / "half.edgepkg", drop={"signature.ed25519"})
    with pytest.raises(BundleError, match="only one of"):
        verify_bundle(stripped)


# -- reference statistics ------------------------------------------------------------------------

def test_refstats_numeric_matches_numpy():
    x = np.arange(1, 101, dtype=np.float64)
    x_nan = np.concatenate([x, [np.nan] * 25])
    stats = reference_stats({"x": x_nan}, {})
    f = stats["features"][0]
    want_edges = np.quantile(x, np.linspace(0, 1, 11)[1:-1])
    np.testing.assert_allclose(f["edges"], want_edges)
    want_counts, _ = np.histogram(x, bins=np.concatenate(([-np.inf], want_edges, [np.inf])))
    assert f["counts"] == want_counts.tolist() and sum(f["counts"]) == 100
    assert f["missing_fraction"] == pytest.approx(0.2)
    assert (f["min"], f["max"], f["mean"]) == (1.0, 100.0, 50.5)
    assert f["std"] == pytest.approx(np.std(x))
    assert stats["schema_version"] == 1
    json.dumps(stats, allow_nan=False)  # strict JSON


def test_refstats_dedups_edges_and_handles_columns_and_images():
    x = np.array([[0, 1.0]] * 90 + [[1, 2.0]] * 10)
    stats = reference_stats({"x": x}, {})
    first = stats["features"][0]
    assert first["name"] == "x[0]" and first["column"] == 0
    # Deciles of 90 zeros and 10 ones: 0 eight times, then 0.1 (interpolated): deduplicated to two edges.
    assert first["edges"] == pytest.approx([0.0, 0.1])
    assert first["counts"] == [0, 90, 10]
    img = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    (feature,) = reference_stats({"img": img}, {})["features"]
    assert feature["count"] == img.size and feature["column"] is None


def test_refstats_categorical_and_outputs():
    words = np.array(["a"] * 5 + ["b"] * 3 + [None] * 2, dtype=object)
    f = reference_stats({"w": words}, {})["features"][0]
    assert f["kind"] == "categorical"
    assert f["categories"] == {"a": 5, "b": 3}
    assert f["frequencies"] == {"a": 0.625, "b": 0.375}
    assert f["missing_fraction"] == 0.2
    many = np.array([f"c{i:03d}" for i in range(60)] * 2, dtype=object)
    cats = reference_stats({"m": many}, {})["features"][0]["categories"]
    assert len(cats) == 51 and cats["__other__"] == 20 and cats["c000"] == 2

    labels = np.array([0, 1, 1, 2, 1])
    probs = np.random.default_rng(1).random((5, 12))
    scores = np.random.default_rng(2).random((5, 2))
    outs = reference_stats({}, {"label": labels, "probs": probs, "scores": scores})["outputs"]
    by_name = {o["name"]: o for o in outs}
    assert by_name["label"]["categories"] == {"1": 3, "0": 1, "2": 1}
    argmax = np.argmax(probs, axis=1)
    assert by_name["probs"]["source"] == "argmax"
    assert sum(by_name["probs"]["categories"].values()) == 5
    assert by_name["probs"]["categories"][str(np.bincount(argmax).argmax())] == np.bincount(argmax).max()
    assert by_name["scores[1]"]["kind"] == "numeric" and by_name["scores[1]"]["max"] == scores[:, 1].max()


def test_refstats_is_deterministic():
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(50, 4))}
    assert canonical_json(reference_stats(feeds, {})) == canonical_json(reference_stats(feeds, {}))


# -- CLI -------------------------------------------------------------------------------------------

def test_cli_keygen_verify_inspect(tmp_path, model_file, reference, capsys):
    from edgeops.cli.bundle import inspect_bundle, keygen_command, verify_command

    runner = CliRunner()
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    res = runner.invoke(keygen_command, ["--out-private", str(priv), "--out-public", str(pub), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["public_key_sha256"]) == 64
    path = make_bundle(tmp_path / "s.edgepkg", model_file, reference, sign_key=priv)
    res = runner.invoke(verify_command, [str(path), "--key", str(pub), "--require-signature", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["trusted"] is True
    bad = rewrite(path, tmp_path / "bad.edgepkg", add={"../evil": b"x"})
    res = runner.invoke(verify_command, [str(bad), "--json"])
    assert isinstance(res.exception, BundleError) and res.exception.exit_code == 9
    assert json.loads(res.stdout)["ok"] is False

    inspect_bundle(str(path), as_json=True)
    shown = json.loads(capsys.readouterr().out)
    assert shown["manifest"]["model"]["name"] == "relu" and shown["signature"].startswith("present")
    inspect_bundle(str(path), as_json=False)
    text = capsys.readouterr().out
    assert "relu 1.0" in text and "rpi4" in text and "model.onnx" in text


# -- package (the whole path) ---------------------------------------------------------------------

@pytest.fixture
def sklearn_model(tmp_path):
    pytest.importorskip("skl2onnx")
    import joblib
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    path = tmp_path / "clf.joblib"
    joblib.dump(LogisticRegression().fit(x, y), path)
    np.save(tmp_path / "ref.npy", x)
    np.save(tmp_path / "sample.npy", x[:20])
    return path, tmp_path / "ref.npy", tmp_path / "sample.npy"


def test_package_is_reproducible_and_verifies(tmp_path, sklearn_model, keys, monkeypatch):
    from edgeops.cli.bundle import package_command

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    src, ref, sample = sklearn_model
    runner = CliRunner()
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.edgepkg"
        res = runner.invoke(package_command, [str(src), "--device", "rpi4", "-o", str(out), "--quantize",
                                              "dynamic", "--sample-input", str(sample), "--reference", str(ref),
                                              "--sign-key", str(keys[0]), "--no-benchmark", "--name", "clf",
                                              "--version", "2.0"])
        assert res.exit_code == 0, (res.output, res.exception)
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert verify_bundle(outs[0], trusted_key=keys[1], require_signature=True).trusted
    b = read_bundle(outs[0])
    m = b.manifest
    assert m["model"] == {"name": "clf", "version": "2.0"} and m["profile"]["name"] == "rpi4"
    assert m["quantization"]["chosen_mode"] == "dynamic" and m["parity"] is not None
    assert m["lineage"]["data"]["reference"]["sha256"] == sha256_file(ref)
    assert [f["path"] for f in m["files"]] == ["model.onnx", "refstats.json"]
    assert len(b.refstats["features"]) == 4
    assert {o["kind"] for o in b.refstats["outputs"]} == {"labels", "numeric"}


def test_package_with_benchmark(tmp_path, sklearn_model):
    from edgeops.cli.bundle import package_command

    src, ref, _ = sklearn_model
    out = tmp_path / "m.edgepkg"
    res = CliRunner().invoke(package_command, [str(src), "--device", "rpi4", "-o", str(out), "--reference",
                                               str(ref), "--runs", "5", "--duration", "0.05", "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    b = read_bundle(out)
    assert b.report["results"][0]["model"] == "model.onnx"
    assert b.manifest["benchmark"]["latency_ms"]["p50"] > 0
    assert "report.json" in [f["path"] for f in b.manifest["files"]]
    verify_bundle(out)


def test_main_maps_bundle_error_to_exit_9(tmp_path, model_file, reference, monkeypatch, capsys):
    from edgeops.cli import main as cli_main

    monkeypatch.setitem(cli_main.COMMANDS, "verify", "edgeops.cli.bundle:verify_command")
    path = make_bundle(tmp_path / "m.edgepkg", model_file, reference)
    bad = rewrite(path, tmp_path / "bad.edgepkg", add={"extra.bin": b"x"})
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["verify", str(bad)])
    assert exit_info.value.code == 9
    err = capsys.readouterr().err
    assert "error:" in err and "extra.bin" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["verify", str(path)])
    assert exit_info.value.code == 0


def test_signed_bundle_without_cryptography(tmp_path, model_file, reference, keys):
    """The agent's minimal install has no `cryptography`: with no trusted key, a signed bundle is
    still usable (hashes checked, signature reported as unchecked); a trusted key demands the
    package (exit 4); a tampered model is still caught by its hash."""
    signed = make_bundle(tmp_path / "s.edgepkg", model_file, reference, sign_key=keys[0])
    hide = "import sys; sys.modules['cryptography'] = None"
    proc = run_cli("verify", signed, "--json", pre=hide)
    assert proc.returncode == 0, proc.stderr
    assert "not checked" in json.loads(proc.stdout)["signature"]
    assert_clean_error(run_cli("verify", signed, "--key", keys[1], pre=hide), 4, "edgeops[sign]")
    flip = lambda d: d[:-1] + bytes([d[-1] ^ 1])  # noqa: E731
    bad = rewrite(signed, tmp_path / "bad.edgepkg", change={"model.onnx": flip})
    assert_clean_error(run_cli("verify", bad, pre=hide), 9, "sha256")
