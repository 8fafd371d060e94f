"""The agent's runtime wheels for the device's platform, fetched and installed by the HOST's pip.

`pip download --only-binary=:all: --platform manylinux_2_X_aarch64 ... --python-version 3.11`
resolves exactly what `pip install` on the device would find (binary wheels only: a device
with no compiler cannot build an sdist), and failing here is the first thing the target check
can report: "this runtime has no wheel for this platform". The wheels are then unpacked with
`pip install --target` on the host, which is much faster than running pip under emulation.

Cache: CACHE/wheels/KEY/{wheelhouse,site,wheels.json}, KEY = python tag, machine, glibc and a
hash of the requirements; built in a temporary directory and renamed when complete.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..profiles import DeviceProfile
from .errors import TargetCheckError, TargetToolError
from .spec import TargetSpec

LAYOUT = 1  # bump when the cache layout changes, so old entries are not reused
AGENT_PACKAGES = ("numpy", "paho-mqtt")  # what the agent imports besides the runtime
_NETWORK_SIGNS = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
                  "Could not fetch URL", "ConnectTimeout", "ProxyError", "Connection refused", "ReadTimeout")


@dataclass(frozen=True)
class SitePackages:
    path: Path                    # goes on the emulated Python's PYTHONPATH
    key: str
    requirements: tuple[str, ...]
    installed: dict[str, str]     # distribution name -> version
    cached: bool
    seconds: float                # host time to download and unpack (0 when cached)


def runtime_requirement(profile: DeviceProfile, model_format: str) -> str:
    """`package==version` of the profile's runtime for a model format; TargetCheckError if it has none."""
    if model_format == "onnx":
        ort = profile.runtimes.onnxruntime
        if ort is None:
            raise TargetCheckError(
                f"profile {profile.name} has no onnxruntime (runtimes.onnxruntime: null): an ONNX bundle "
                "cannot run on this device", _alternatives(profile, "onnxruntime"))
        return f"{ort.package}=={ort.version}"
    lite = profile.runtimes.litert
    if lite is None:
        raise TargetCheckError(
            f"profile {profile.name} has no TFLite runtime (runtimes.litert: null): a TFLite bundle "
            "cannot run on this device", _alternatives(profile, "ai-edge-litert"))
    return f"{lite.package}=={lite.version}"


def ensure_site(spec: TargetSpec, profile: DeviceProfile, requirements: list[str], cache_dir: Path,
                log=None) -> SitePackages:
    """Download (or reuse) the wheels for the target and unpack them into a site directory."""
    from .rootfs import cache_lock

    reqs = tuple(sorted(requirements))
    digest = hashlib.sha256(json.dumps([LAYOUT, reqs, spec.platform_tags()]).encode()).hexdigest()[:12]
    key = f"{spec.python_tag}-{spec.arch.machine}-glibc{spec.glibc}-{digest}"
    final = cache_dir / "wheels" / key
    with cache_lock(cache_dir, "wheels-" + key):
        if (final / "wheels.json").is_file():
            info = json.loads((final / "wheels.json").read_text())
            return SitePackages(final / "site", key, reqs, info["installed"], True, 0.0)
        start = time.monotonic()
        tmp = final.with_name(f"{key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            if log:
                log(f"downloading {', '.join(reqs)} for {spec.arch.machine} / Python {spec.python}")
            # The runtime alone first, so that a gap is reported as the runtime's (numpy, a dependency of
            # everything, would otherwise be the first missing wheel pip names on armv7l).
            runtimes = [r for r in requirements if r.split("==")[0] not in AGENT_PACKAGES]
            _pip(["download", "--no-deps", "-d", str(tmp / "wheelhouse"), *_platform_args(spec), *runtimes],
                 spec, profile)
            _pip(["download", "-d", str(tmp / "wheelhouse"), *_platform_args(spec), *reqs], spec, profile)
            _pip(["install", "--no-index", "--find-links", str(tmp / "wheelhouse"), "--target", str(tmp / "site"),
                  "--no-warn-conflicts", "--no-compile", *_platform_args(spec), *reqs], spec, profile)
            installed = _installed(tmp / "site")
            (tmp / "wheels.json").write_text(json.dumps(
                {"requirements": list(reqs), "platform_tags": spec.platform_tags(), "installed": installed},
                indent=1, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed download leaves nothing behind
        return SitePackages(final / "site", key, reqs, installed, False, time.monotonic() - start)


def _platform_args(spec: TargetSpec) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", spec.python, "--implementation", "cp",
            "--abi", spec.python_tag]
    for tag in spec.platform_tags():
        args += ["--platform", tag]
    return args


def _pip(args: list[str], spec: TargetSpec, profile: DeviceProfile) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise TargetToolError("pip took more than 30 minutes to fetch the target's wheels",
                              "check the network and the package index", skippable=False) from None
    if proc.returncode == 0:
        return
    out = proc.stderr + proc.stdout
    if "No module named pip" in out:
        raise TargetToolError("the target check needs pip in this Python environment",
                              f"install it: {sys.executable} -m ensurepip")
    if any(sign in out for sign in _NETWORK_SIGNS):
        raise TargetToolError("cannot reach the package index to fetch the target's wheels: "
                              + _last_line(out), "check the network, or pip's index settings (PIP_INDEX_URL)",
                              skippable=False)
    missing = re.search(r"No matching distribution found for (\S+)", out)
    if missing:
        raise TargetCheckError(
            f"no wheel of {missing.group(1)} for the device's platform: {spec.arch.machine}, Python "
            f"{spec.python}, glibc {spec.glibc} (profile {profile.name}; pip looked for "
            f"{spec.python_tag} wheels tagged {spec.platform_tags()[0]} ... manylinux2014)",
            _alternatives(profile, missing.group(1)))
    raise TargetToolError(f"pip failed to fetch the target's wheels: {_last_line(out)}",
                          "run the pip command shown with -v to see why: " + " ".join(cmd[2:6]) + " ...",
                          skippable=False)


def _alternatives(profile: DeviceProfile, package: str) -> str:
    """What a user can do when a runtime has no wheel for the device."""
    if profile.cpu.arch == "armv7l":
        return ("32-bit ARM (armv7l) has no onnxruntime or ai-edge-litert wheel on PyPI. Alternatives: install "
                "the 64-bit OS (Raspberry Pi OS 64-bit runs on Pi 3, 4, 5 and Zero 2 W) and use an aarch64 "
                "profile such as rpi4; or build the runtime for armv7l yourself and serve it from your own "
                "index (PIP_EXTRA_INDEX_URL)")
    return (f"choose a {package.split('=')[0]} version that publishes {profile.cpu.arch} wheels for Python "
            f"{profile.os.python} (write your own profile with it), use the other model format (ONNX or "
            "TFLite) if its runtime has a wheel, or serve your own build from an index (PIP_EXTRA_INDEX_URL)")


def _installed(site: Path) -> dict[str, str]:
    from importlib.metadata import distributions

    return {d.metadata["Name"]: d.version for d in distributions(path=[str(site)])}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return lines[-1][:300] if lines else "(no output)"
