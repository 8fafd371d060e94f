"""The emulated target check: real qemu, a real Debian aarch64 root filesystem, the profile's real
runtime wheels (docs/target-verify.md).

The end-to-end tests use the default cache (~/.cache/edgeops/target, or $EDGEOPS_TARGET_CACHE), so
the root filesystem and wheels are built once per machine (about a minute) and reused. They skip,
saying why, on a machine without qemu-user-static and debootstrap.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgeops.artifact import TensorSpec
from edgeops.errors import DataError, UsageError
from edgeops.profiles import load_profile
from edgeops.target.parity import bundle_tolerance, compare_outputs, parity_inputs
from edgeops.target.spec import target_spec

from helpers import ROOT, assert_clean_error, run_cli

HAVE_TOOLS = platform.system() == "Linux" and bool(shutil.which("qemu-aarch64-static") or
                                                   shutil.which("qemu-aarch64")) \
    and bool(shutil.which("debootstrap", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")))


@pytest.fixture
def needs_qemu():
    """Skip without the tools, saying why; fail instead where CI promises them (EDGEOPS_REQUIRE_TARGET=1)."""
    if not HAVE_TOOLS:
        why = "needs Linux with qemu-user-static and debootstrap (apt-get install qemu-user-static debootstrap)"
        if os.environ.get("EDGEOPS_REQUIRE_TARGET") == "1":
            pytest.fail(why + ", and EDGEOPS_REQUIRE_TARGET=1")
        pytest.skip(why)


# -- pure parts: what to emulate, which inputs, how to compare --------------------------------------

def test_spec_follows_the_profile():
    rpi4 = target_spec(load_profile("rpi4"))
    assert (rpi4.suite, rpi4.python, rpi4.arch.debian, rpi4.qemu_cpu) == ("bookworm", "3.11", "arm64", "cortex-a72")
    tags = rpi4.platform_tags()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_28_aarch64" in tags and "manylinux_2_27_aarch64" in tags
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    info = rpi4.cpuinfo()
    assert info.count("processor\t:") == 4 and "CPU part\t: 0xd08" in info and "asimddp" not in info
    rpi5 = target_spec(load_profile("rpi5"))
    assert rpi5.qemu_cpu == "cortex-a76" and "asimddp" in rpi5.cpuinfo()
    generic = target_spec(load_profile("generic-aarch64"))  # no codename: chosen from its Python
    assert generic.suite == "bookworm" and generic.platform_tags()[0] == "manylinux_2_28_aarch64"
    assert generic.glibc == "2.28" and "2.28" in generic.notes[0]


@pytest.mark.parametrize("name, needle", [("generic-x86_64", "emulates ARM"), ("jetson-orin-nano", "Ubuntu jammy"),
                                          ("jetson-nano", "Ubuntu bionic")])
def test_profiles_that_cannot_be_emulated_say_why(name, needle):
    with pytest.raises(UsageError) as info:
        target_spec(load_profile(name))
    assert needle in info.value.message and info.value.hint


def test_python_that_the_release_does_not_ship_is_refused(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text((ROOT / "devices" / "rpi4.yaml").read_text().replace("name: rpi4", "name: odd")
                    .replace('python: "3.11"', 'python: "3.10"'))
    with pytest.raises(UsageError, match="bookworm ships Python 3.11"):
        target_spec(load_profile(path))


def test_host_mirror_reads_both_apt_formats(tmp_path):
    from edgeops.target.rootfs import DEFAULT_MIRROR, host_mirror

    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert host_mirror((d,)) == "http://mirror.example/debian"
    one = tmp_path / "sources.list"
    one.write_text("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main\n")
    assert host_mirror((one,)) == "http://other.example/debian"
    (tmp_path / "empty.list").write_text("deb http://ppa.example/ubuntu jammy main\n")
    assert host_mirror((tmp_path / "empty.list",)) == DEFAULT_MIRROR


def test_parity_inputs_come_from_the_reference_statistics():
    from edgeops.bundle.refstats import reference_stats

    rng = np.random.default_rng(1)
    ref = {"x": (rng.normal(size=(500, 2)) * [1.0, 50.0] + [0.0, 1000.0]).astype(np.float32),
           "city": rng.choice(["berlin", "paris"], size=(500, 1), p=[0.8, 0.2]).astype(object)}
    stats = reference_stats(ref)
    specs = (TensorSpec("x", "float32", (None, 2)), TensorSpec("city", "str", (None, 1)),
             TensorSpec("img", "float32", (1, 3, 4, 4)))
    feeds = parity_inputs(specs, stats, rows=8)
    again = parity_inputs(specs, stats, rows=8)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # deterministic
    col = next(f for f in stats["features"] if f["name"] == "x[1]")
    assert col["min"] <= feeds["x"][:, 1].min() and feeds["x"][:, 1].max() <= col["max"]
    assert feeds["x"][:, 1].mean() > 500  # the reference's scale, not N(0, 1)
    assert set(feeds["city"].reshape(-1)) <= {"berlin", "paris"} and feeds["city"].shape == (8, 1)
    assert feeds["img"].shape == (8, 3, 4, 4)  # a fixed batch of 1 still gets 8 rows (run row by row)
    with pytest.raises(DataError, match="takes text"):
        parity_inputs(specs, {"features": []}, rows=8)


def test_comparison_reports_each_output_and_catches_a_difference():
    host = {"probabilities": np.array([[0.2, 0.8], [0.6, 0.4]], np.float32), "label": np.array([1, 0])}
    same = compare_outputs(host, {k: v.copy() for k, v in host.items()}, bundle_tolerance({}))
    assert same.passed and [o.max_abs for o in same.outputs] == [0.0, 0.0]
    off = {"probabilities": host["probabilities"] + np.float32(1e-3), "label": host["label"]}
    report = compare_outputs(host, off, bundle_tolerance({}))
    assert not report.passed and report.outputs[0].max_abs == pytest.approx(1e-3, rel=1e-3)
    loose = bundle_tolerance({"parity": {"tolerance": {"atol": 1e-2, "rtol": 0.0}}})
    assert compare_outputs(host, off, loose).passed
    assert not compare_outputs(host, off, bundle_tolerance({}, atol=0.0, rtol=0.0)).passed

    from edgeops.target import TargetCheckError, raise_for_failure
    from edgeops.target.report import ModelResult, TargetReport

    steps = ({"step": "load", "ok": True}, {"step": "predict", "ok": True}, {"step": "telemetry", "ok": True})
    result = TargetReport("b.edgepkg", "rpi4", target_spec(load_profile("rpi4")).to_dict(), {"machine": "aarch64"},
                          {"machine": "x86_64", "runtime": "onnxruntime"},
                          (ModelResult("model.onnx", steps, "onnxruntime 1.20.1", 2, report),), {}, {})
    assert not result.passed and any("probabilities" in ln and "DIFFERS" in ln for ln in result.lines())
    with pytest.raises(TargetCheckError) as info:
        raise_for_failure(result)
    assert info.value.exit_code == 10 and "output probabilities: max abs diff 0.001" in info.value.message


# -- end to end on emulated aarch64 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory(prefix="edgeops-test-target-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def sklearn_bundle(work):
    pytest.importorskip("skl2onnx")
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    from edgeops.cli.bundle import build_package

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 4)) * [1, 2, 3, 4] + [0, 1, 2, 3]).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 1).astype(np.int64)
    joblib.dump(RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(x, y), work / "rf.joblib")
    np.save(work / "ref.npy", x)
    return build_package(work / "rf.joblib", "rpi4", work / "rf.edgepkg", reference=work / "ref.npy",
                         benchmark=False, quiet=True)


def _relu_bundle(path: Path, opset: int) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edgeops.bundle.archive import write_bundle
    from edgeops.bundle.manifest import build_manifest
    from edgeops.bundle.refstats import reference_stats

    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x_info], [y_info]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(path.with_suffix(".onnx")))
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    manifest = build_manifest(
        name="relu", version="1", inputs=[{"name": "x", "dtype": "float32", "shape": ["batch", 3]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": ["batch", 3]}], source_sha256="0" * 64,
        profile={"name": "rpi4"}, preprocessing={}, conversion={"converter": "native"}, quantization=None,
        parity=None, data_files={}, toolchain={})
    return write_bundle(path, {"model.onnx": path.with_suffix(".onnx")}, manifest,
                        reference_stats({"x": x}, {"y": np.maximum(x, 0)}))


@pytest.mark.usefixtures("needs_qemu")
def test_sklearn_bundle_passes_on_emulated_rpi4(sklearn_bundle, work):
    proc = run_cli("verify", sklearn_bundle, "--target", "rpi4", "--json", cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ok"] and out["files"] == 2
    report = out["targets"][0]
    assert report["passed"] and report["emulated"] and report["profile"] == "rpi4"
    found = report["platform"]
    assert found["machine"] == "aarch64" and found["python"].startswith("3.11.") and found["libc"] == "glibc 2.36"
    assert found["cpu_part"] == "0xd08"  # the guest saw the Cortex-A72 /proc/cpuinfo, not the host's
    model = report["models"][0]
    assert model["runtime"] == "onnxruntime 1.20.1" and model["rows"] == 8
    assert [s["step"] for s in model["steps"] if s["ok"]] == ["load", "predict", "telemetry"]
    assert model["telemetry_bytes"] > 100
    assert {o["name"] for o in model["parity"]["outputs"]} == {"label", "probabilities"}
    assert all(o["passed"] for o in model["parity"]["outputs"])
    assert report["installed"]["onnxruntime"] == "1.20.1" and "paho-mqtt" in {k.lower() for k in report["installed"]}
    assert report["host"]["machine"] == platform.machine()
    # Emulated durations must never look like a device measurement.
    text = json.dumps({k: v for k, v in report.items() if k not in ("notes", "setup")})
    assert "latency" not in text and "_ms" not in text
    assert any("say nothing about the device's latency" in n for n in report["notes"])


@pytest.mark.usefixtures("needs_qemu")
def test_cnn_bundle_passes_through_package_verify_target(work):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.fc = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Linear(16, 5)

        def forward(self, image):
            h = torch.relu(self.conv2(torch.relu(self.bn(self.conv(image)))))
            return torch.softmax(self.fc(h.mean(dim=(2, 3))), dim=1)

    torch.manual_seed(0)
    torch.jit.trace(TinyCNN().eval(), torch.rand(2, 3, 32, 32)).save(str(work / "cnn.pt"))
    np.save(work / "imgs.npy", np.random.default_rng(0).random((32, 3, 32, 32), dtype=np.float32))
    out = work / "cnn.edgepkg"
    proc = run_cli("package", work / "cnn.pt", "--device", "rpi4", "-o", out, "--sample-input", work / "imgs.npy",
                   "--reference", work / "imgs.npy", "--no-benchmark", "--verify-target", cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "target rpi4: PASS" in proc.stdout and "platform found: aarch64, Python 3.11" in proc.stdout
    assert "on onnxruntime 1.20.1: load ok, predict ok, telemetry ok" in proc.stdout
    assert "max abs diff" in proc.stdout and out.is_file()
    assert not list(work.glob(".cnn.edgepkg*"))  # the staged copy is gone


@pytest.mark.usefixtures("needs_qemu")
def test_opset_the_device_runtime_cannot_load_fails_clearly(work):
    bundle = _relu_bundle(work / "relu22.edgepkg", opset=22)
    proc = run_cli("verify", bundle, "--target", "rpi4", cwd=work, timeout=900)
    assert_clean_error(proc, 10, "fails on the emulated rpi4", "opset 22", "loads opset <= 21", "--device rpi4")
    assert "load FAILED" in proc.stdout and "Opset 22" in proc.stdout  # onnxruntime 1.20's own reason


@pytest.mark.usefixtures("needs_qemu")
def test_both_cpuinfo_methods_give_the_guest_an_arm_cpu(work):
    from edgeops.target import emulate
    from edgeops.target.rootfs import default_cache_dir, ensure_rootfs

    spec = target_spec(load_profile("rpi-zero-2w"))
    root = ensure_rootfs(spec, default_cache_dir())
    assert ensure_rootfs(spec, default_cache_dir()).cached  # the second call reuses the cache
    assert (root.path / "usr" / "bin" / "python3.11").is_file() and (root.path / "lib").is_symlink()
    for mode in ("auto", "namespace"):
        run_dir = work / f"emu-{mode}"
        emu, found = emulate.start(spec, emulate.check_host(spec), root.path, run_dir, [], mode=mode)
        assert found["arm_cpuinfo"] and found["machine"] == "aarch64"
        assert emu.mode == ("prefix" if mode == "auto" else "namespace")
        proc = emu.run(["-c", "print([l for l in open('/proc/cpuinfo') if l.startswith('CPU part')][0])"], 120)
        assert "0xd03" in proc.stdout  # Cortex-A53, the Zero 2 W's core


def _armv7_profile(work: Path) -> Path:
    path = work / "rpi4-32bit.yaml"
    path.write_text((ROOT / "devices" / "rpi4.yaml").read_text().replace("name: rpi4", "name: rpi4-32bit")
                    .replace("arch: aarch64", "arch: armv7l"))
    return path


@pytest.mark.usefixtures("needs_qemu")
def test_a_profile_without_runtime_wheels_names_the_gap(sklearn_bundle, work):
    proc = run_cli("verify", sklearn_bundle, "--target", _armv7_profile(work), cwd=work, timeout=900)
    assert_clean_error(proc, 10, "no wheel of onnxruntime==1.20.1", "armv7l", "64-bit", "aarch64 profile")


@pytest.mark.usefixtures("needs_qemu")
def test_package_verify_target_failure_leaves_no_bundle(sklearn_bundle, work):
    pytest.importorskip("skl2onnx")
    out = work / "never.edgepkg"
    proc = run_cli("package", work / "rf.joblib", "--device", _armv7_profile(work), "-o", out,
                   "--reference", work / "ref.npy", "--no-benchmark", "--verify-target", cwd=work, timeout=900)
    assert_clean_error(proc, 10, "no wheel of onnxruntime")
    assert not out.exists() and not list(work.glob(".never.edgepkg*"))


@pytest.mark.skipif(platform.system() != "Linux", reason="off Linux the message is about Linux, not qemu")
def test_missing_qemu_says_what_to_install_and_is_skipped_only_on_request(sklearn_bundle, work):
    empty = work / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(empty)}  # no qemu, no debootstrap (the interpreter is called by its full path)
    proc = run_cli("verify", sklearn_bundle, "--target", "rpi4", cwd=work, env_extra=env)
    assert_clean_error(proc, 4, "qemu-aarch64-static", "apt-get install qemu-user-static debootstrap",
                       "--skip-target-check")
    proc = run_cli("verify", sklearn_bundle, "--target", "rpi4", "--skip-target-check", "--json", cwd=work,
                   env_extra=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "target check for rpi4 skipped" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["targets"][0]["skipped"] and "qemu" in out["targets"][0]["reason"]


@pytest.mark.skipif(os.environ.get("EDGEOPS_TEST_TARGET_COLD") != "1" or not HAVE_TOOLS,
                    reason="builds everything from an empty cache (about a minute): set EDGEOPS_TEST_TARGET_COLD=1")
def test_works_from_an_empty_cache(sklearn_bundle, work):
    cache = work / "cold-cache"
    proc = run_cli("verify", sklearn_bundle, "--target", "rpi4", "--target-cache", cache, "--json", cwd=work,
                   timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    setup = json.loads(proc.stdout)["targets"][0]["setup"]
    assert not setup["rootfs"]["cached"] and not setup["wheels"]["cached"]
    assert (cache / "rootfs" / setup["rootfs"]["key"] / "edgeops-rootfs.json").is_file()
    assert not list((cache / "rootfs").glob("*.tmp"))
