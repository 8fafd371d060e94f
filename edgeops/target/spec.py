"""What to emulate for a device profile: architecture, Debian release, Python, CPU, wheel tags.

Everything here is derived from the profile alone (no I/O), so a profile that cannot be
emulated fails before anything is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..profiles import DeviceProfile

# Debian release -> (Python it ships, glibc it ships). Raspberry Pi OS 12 is Debian bookworm
# plus Raspberry Pi's own packages; its Python and glibc are Debian's.
DEBIAN_RELEASES = {"bullseye": ("3.9", "2.31"), "bookworm": ("3.11", "2.36"), "trixie": ("3.13", "2.41")}
UBUNTU_RELEASES = {"bionic", "focal", "jammy", "noble"}


@dataclass(frozen=True)
class Arch:
    machine: str   # uname -m on the device
    debian: str    # Debian architecture name
    qemu: str      # qemu user-mode binary suffix: qemu-<qemu>-static
    loader: str    # the dynamic loader the Debian release puts in /lib


ARCHES = {
    "aarch64": Arch("aarch64", "arm64", "aarch64", "/lib/ld-linux-aarch64.so.1"),
    "armv7l": Arch("armv7l", "armhf", "arm", "/lib/ld-linux-armhf.so.3"),
}

# qemu CPU models and what /proc/cpuinfo says on such a core (MIDR part, kernel feature names).
# onnxruntime's CPU detection reads both; qemu supplies the matching hardware capabilities.
_V80 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82 = _V80 + " atomics fphp asimdhp asimdrdm lrcpc dcpop asimddp"
QEMU_CPUS = {
    "cortex-a35": ("0xd04", _V80), "cortex-a53": ("0xd03", _V80), "cortex-a57": ("0xd07", _V80),
    "cortex-a72": ("0xd08", _V80), "cortex-a76": ("0xd0b", _V82), "neoverse-n1": ("0xd0c", _V82),
}


@dataclass(frozen=True)
class TargetSpec:
    profile: str
    arch: Arch
    suite: str             # Debian release of the emulated root filesystem
    python: str            # "3.11"
    glibc: str             # the profile's glibc (wheel selection); the suite's when the profile has none
    suite_glibc: str       # the glibc the root filesystem actually has
    qemu_cpu: str
    cores: int
    notes: tuple[str, ...] = ()

    @property
    def python_tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platform_tags(self) -> list[str]:
        """manylinux tags the device's pip accepts, newest first (PEP 600 plus the 2014 alias)."""
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_{self.arch.machine}" for m in range(minor, 16, -1)]
        return tags + [f"manylinux2014_{self.arch.machine}"]

    def cpuinfo(self) -> str:
        """An ARM /proc/cpuinfo for the emulated core, one block per core of the profile."""
        part, features = QEMU_CPUS.get(self.qemu_cpu, ("0xd08", _V80))
        blocks = []
        for i in range(self.cores):
            blocks.append(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
                          f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                          f"CPU part\t: {part}\nCPU revision\t: 3\n")
        return "\n".join(blocks) + "\n"

    def to_dict(self) -> dict:
        return {"profile": self.profile, "machine": self.arch.machine, "debian_arch": self.arch.debian,
                "suite": self.suite, "python": self.python, "glibc": self.glibc,
                "suite_glibc": self.suite_glibc, "qemu_cpu": self.qemu_cpu, "notes": list(self.notes)}


def target_spec(profile: DeviceProfile) -> TargetSpec:
    """The emulation target of a profile; UsageError when the profile cannot be emulated."""
    arch = ARCHES.get(profile.cpu.arch)
    if arch is None:
        raise UsageError(
            f"profile {profile.name} is {profile.cpu.arch}: the target check emulates ARM devices "
            "(aarch64, armv7l)",
            "for an x86-64 device, run the bundle's check natively: `edgeops verify BUNDLE` and "
            "`edgeops benchmark --device` run on this machine's own CPU")
    suite = _suite(profile)
    suite_python, suite_glibc = DEBIAN_RELEASES[suite]
    notes = []
    glibc = profile.os.glibc or suite_glibc
    if _version(glibc) > _version(suite_glibc):
        glibc = suite_glibc  # wheels must load in the root filesystem we actually run
    elif _version(glibc) < _version(suite_glibc):
        notes.append(f"the profile's glibc {glibc} is older than Debian {suite}'s {suite_glibc}: wheels are "
                     f"chosen for glibc {glibc}, but the emulated system runs {suite_glibc}")
    return TargetSpec(profile=profile.name, arch=arch, suite=suite, python=suite_python, glibc=glibc,
                      suite_glibc=suite_glibc, qemu_cpu=_qemu_cpu(profile),
                      cores=max(1, min(int(profile.cpu.cores), 64)), notes=tuple(notes))


def _suite(profile: DeviceProfile) -> str:
    python, codename = profile.os.python, (profile.os.codename or "").lower()
    known = ", ".join(f"{name} (Python {py})" for name, (py, _) in DEBIAN_RELEASES.items())
    if codename in UBUNTU_RELEASES:
        raise UsageError(
            f"profile {profile.name} runs Ubuntu {codename}: the target check builds Debian root "
            f"filesystems only ({known})",
            "copy the profile with a Debian codename and the same Python if one exists, or test on the device")
    if codename:
        if codename not in DEBIAN_RELEASES:
            raise UsageError(f"profile {profile.name}: unknown OS codename '{codename}'",
                             f"use one of the Debian releases {known}")
        if DEBIAN_RELEASES[codename][0] != python:
            raise UsageError(
                f"profile {profile.name} says {codename} with Python {python}, but Debian {codename} ships "
                f"Python {DEBIAN_RELEASES[codename][0]}", "fix os.python or os.codename in the profile")
        return codename
    for name, (py, _) in DEBIAN_RELEASES.items():
        if py == python:
            return name
    raise UsageError(
        f"profile {profile.name} has Python {python}, which no Debian release ships: the target check "
        f"emulates Debian ({known})", "test on the device, or use a profile with one of these Pythons")


def _qemu_cpu(profile: DeviceProfile) -> str:
    """The qemu CPU model closest to the profile's core, so the runtime picks the device's kernels."""
    if profile.cpu.arch != "aarch64":
        return "max"
    model = profile.cpu.model.lower().replace(" ", "-")
    if model in QEMU_CPUS:
        return model
    # Otherwise by instruction set: ARMv8.2 (dot product, fp16) or plain ARMv8.0.
    return "cortex-a76" if profile.cpu.int8_dot_product or profile.cpu.fp16_arithmetic else "cortex-a72"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))
