"""Errors of the emulated target check, with their exit codes.

Two kinds of failure must stay apart for whoever reads the exit code in CI:
- the bundle cannot work on the target (TargetCheckError, exit 10): no runtime wheel for the
  device's platform, a model the device's runtime rejects, a failing self-test, outputs that
  differ from the host's beyond tolerance;
- this machine cannot run the check (TargetToolError, exit 4, like any missing dependency):
  not Linux, no qemu, no debootstrap, an unreachable package mirror. `--skip-target-check`
  turns the missing-tool case into a warning; nothing turns a failing bundle into a pass.
"""
from __future__ import annotations

from ..errors import EdgeOpsError

TARGET_CHECK_EXIT = 10


class TargetCheckError(EdgeOpsError):
    """The bundle does not install, load, run or agree with the host on the emulated target."""

    exit_code = TARGET_CHECK_EXIT

    def __init__(self, message: str, hint: str | None = None, report=None):
        super().__init__(message, hint)
        self.report = report


class TargetToolError(EdgeOpsError):
    """The machine lacks a tool (or network access) the emulated check needs."""

    exit_code = 4

    def __init__(self, message: str, hint: str | None = None, skippable: bool = True):
        super().__init__(message, hint)
        # Missing tools are a property of the machine, so `--skip-target-check` may skip them;
        # a mirror that fails mid-build is not (skipping it would hide a flaky CI silently).
        self.skippable = skippable
