"""Run the target's Python under qemu user-mode emulation, without binfmt and without root.

`qemu-aarch64-static -L PREFIX PREFIX/usr/bin/python3.11` runs the Debian aarch64 Python: qemu
looks up every absolute path the guest opens under PREFIX first and falls back to the host's
file when PREFIX has none. PREFIX is a per-run directory of links to the cached root filesystem,
plus the one thing the run needs of its own: an ARM /proc/cpuinfo. onnxruntime's aarch64 build
crashes (SIGSEGV on import in 1.2x/1.3x releases) when /proc/cpuinfo describes the host's x86
CPU, and reads the core type from it; qemu supplies the matching hardware capabilities for the
`-cpu` model chosen from the profile, so the runtime takes the device's kernel paths.

/dev, /proc, /sys, /run and /tmp are left out of PREFIX, so they are the host's (device nodes in a
cache on a nodev mount would not open). Some qemu versions emulate /proc/cpuinfo themselves or
may not remap /proc: a probe reads /proc/cpuinfo in the guest first, and if it is not an ARM one,
the run falls back to bind-mounting the file over /proc/cpuinfo in a private mount namespace
(`unshare -m` as root, `unshare -rm` without root).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import TargetToolError
from .spec import TargetSpec

HOST_ONLY = {"dev", "proc", "sys", "run", "tmp"}
PROBE = ("import json, platform, sys\n"
         "try:\n    text = open('/proc/cpuinfo').read()\nexcept OSError:\n    text = ''\n"
         "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),\n"
         "                  'libc': ' '.join(platform.libc_ver()), 'arm_cpuinfo': 'CPU implementer' in text}))\n")


@dataclass(frozen=True)
class Emulator:
    spec: TargetSpec
    qemu: str
    root: Path                 # the cached root filesystem (read only)
    run_dir: Path              # this run's directory
    python_path: tuple[str, ...]
    mode: str = "prefix"       # "prefix" (file in the qemu prefix) | "namespace" (bind mount)

    @property
    def prefix(self) -> Path:
        return self.run_dir / "prefix"

    @property
    def cpuinfo(self) -> Path:
        return self.run_dir / "cpuinfo"

    def command(self, args: list[str]) -> list[str]:
        python = str(self.prefix / "usr" / "bin" / f"python{self.spec.python}")
        cmd = [self.qemu, "-cpu", self.spec.qemu_cpu, "-L", str(self.prefix), python, "-B", "-s", *args]
        if self.mode == "namespace":
            userns = ["--map-root-user"] if os.geteuid() != 0 else []
            cmd = ["unshare", *userns, "--mount", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(self.cpuinfo), *cmd]
        return cmd

    def env(self) -> dict[str, str]:
        # A clean environment: nothing of the host's Python (PYTHONHOME, venv) may leak in.
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.run_dir),
                "PYTHONPATH": os.pathsep.join(self.python_path), "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONNOUSERSITE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.command(args), capture_output=True, text=True, env=self.env(),
                                  cwd=self.run_dir, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TargetToolError(
                f"the emulated run did not finish within {timeout:.0f} s: the check is inconclusive",
                "emulation is 10-50x slower than the device: raise --target-timeout", skippable=False) from None


def check_host(spec: TargetSpec) -> str:
    """The qemu user-mode binary for the target; TargetToolError saying what to install otherwise."""
    if platform.system() != "Linux":
        raise TargetToolError(
            f"the emulated target check needs Linux (qemu user-mode emulation); this is {platform.system()}",
            "run it in a Linux VM, container or CI runner, or pass --skip-target-check to skip it here")
    for name in (f"qemu-{spec.arch.qemu}-static", f"qemu-{spec.arch.qemu}"):
        path = shutil.which(name)
        if path:
            return path
    raise TargetToolError(
        f"the emulated target check needs qemu-{spec.arch.qemu}-static (qemu user-mode emulation), "
        "which is not installed",
        "install it: sudo apt-get install qemu-user-static debootstrap (Fedora: dnf install "
        "qemu-user-static debootstrap), or pass --skip-target-check to skip the check")


def start(spec: TargetSpec, qemu: str, root: Path, run_dir: Path, python_path: list[str],
          timeout: float = 300, mode: str = "auto") -> tuple[Emulator, dict]:
    """An emulator whose guest sees an ARM /proc/cpuinfo, and what the probe found in the guest.

    ``mode``: "auto" tries the prefix file first and falls back to the bind mount; "namespace"
    goes straight to the bind mount.
    """
    prefix = run_dir / "prefix"
    prefix.mkdir(parents=True)
    for entry in sorted(root.iterdir()):
        if entry.name not in HOST_ONLY:
            (prefix / entry.name).symlink_to(entry)
    (run_dir / "cpuinfo").write_text(spec.cpuinfo())
    (prefix / "proc").mkdir()
    (prefix / "proc" / "cpuinfo").write_text(spec.cpuinfo())
    if mode == "auto":
        emu = Emulator(spec, qemu, root, run_dir, tuple(python_path))
        found = probe(emu, timeout)
        if found.get("arm_cpuinfo"):
            return emu, found
    # This qemu does not remap /proc through the prefix: bind-mount the file instead.
    (prefix / "proc" / "cpuinfo").unlink()
    (prefix / "proc").rmdir()
    emu = Emulator(spec, qemu, root, run_dir, tuple(python_path), mode="namespace")
    if shutil.which("unshare") is None:
        raise TargetToolError("the guest sees the host's x86 /proc/cpuinfo, and unshare is missing to "
                              "bind-mount an ARM one", "install util-linux")
    found = probe(emu, timeout)
    if not found.get("arm_cpuinfo"):
        raise TargetToolError("the guest still sees the host's /proc/cpuinfo after the bind mount",
                              "report this with `qemu-aarch64-static --version` and the kernel version",
                              skippable=False)
    return emu, found


def probe(emu: Emulator, timeout: float) -> dict:
    """machine, python, libc and whether /proc/cpuinfo is an ARM one, as the guest sees them."""
    proc = emu.run(["-c", PROBE], timeout)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        if emu.mode == "namespace" and ("unshare" in proc.stderr or "mount" in proc.stderr):
            raise TargetToolError(
                f"cannot make a private mount namespace for the guest's /proc/cpuinfo: {detail}",
                "run as root, or enable unprivileged user namespaces (user.max_user_namespaces > 0)")
        raise TargetToolError(f"the emulated Python does not start: {detail}",
                              f"delete the cached root filesystem {emu.root} and retry", skippable=False)
    return json.loads(proc.stdout.strip().splitlines()[-1])
