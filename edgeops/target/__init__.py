"""Check a bundle on an emulated device: `edgeops verify BUNDLE --target PROFILE` (docs/target-verify.md).

spec.py      what to emulate for a profile (architecture, Debian release, Python, qemu CPU, wheel tags)
wheels.py    the runtime wheels for the device's platform (pip download --platform ...), cached
rootfs.py    a Debian root filesystem with the device's Python (debootstrap --foreign), cached
emulate.py   qemu user-mode runs of the target Python, with an ARM /proc/cpuinfo
parity.py    deterministic inputs from the signature and reference statistics; host-vs-target comparison
selftest.py  runs INSIDE the emulated Python: load, predict, telemetry encode
check.py     verify_target(): all of the above; report.py: its result

Importing this package is cheap (the emulated Python imports edgeops.target.selftest through it).
"""
from __future__ import annotations

from .errors import TARGET_CHECK_EXIT, TargetCheckError, TargetToolError

__all__ = ["TARGET_CHECK_EXIT", "TargetCheckError", "TargetToolError", "raise_for_failure", "verify_target"]


def verify_target(bundle, profile, **options):
    """See edgeops.target.check.verify_target."""
    from .check import verify_target as run

    return run(bundle, profile, **options)


def raise_for_failure(report) -> None:
    """See edgeops.target.check.raise_for_failure."""
    from .check import raise_for_failure as check

    check(report)
