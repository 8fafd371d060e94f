"""Errors that speak to the user: what failed, and what to do about it.

Every error the user can cause is an EdgeOpsError. The CLI maps each class to a
documented exit code (see docs/exit-codes.md) and prints ``error: MESSAGE`` plus
``hint: HINT`` -- never a traceback.
"""
from __future__ import annotations


class EdgeOpsError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(EdgeOpsError):
    """Bad or conflicting options, unknown names."""

    exit_code = 2


class InputFileError(EdgeOpsError):
    """A file the user gave cannot be read: missing, unknown type, corrupt, truncated."""

    exit_code = 3


class DataError(EdgeOpsError):
    """Sample, calibration or evaluation data that does not fit the model."""

    exit_code = 3


class MissingDependencyError(EdgeOpsError):
    """An optional framework is not installed; names the extra that brings it."""

    exit_code = 4

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed",
            f"install it with: pip install 'edgeops[{extra}]'",
        )
        self.package = package
        self.extra = extra


class UnsupportedModelError(EdgeOpsError):
    """The model (or an operator, or an estimator in it) cannot be converted."""

    exit_code = 5


class ParityError(EdgeOpsError):
    """The converted model disagrees with the original beyond the converter's tolerance."""

    exit_code = 6

    def __init__(self, message: str, report, hint: str | None = None):
        super().__init__(message, hint)
        self.report = report


class AccuracyGateError(EdgeOpsError):
    """Quantization lost more accuracy than the gate allows."""

    exit_code = 7

    def __init__(self, message: str, report, hint: str | None = None):
        super().__init__(message, hint)
        self.report = report


class BudgetError(EdgeOpsError):
    """A benchmark result is over one of the device's budgets (latency, RAM, model size)."""

    exit_code = 8

    def __init__(self, message: str, failures: list[str], hint: str | None = None):
        super().__init__(message, hint)
        self.failures = failures


class ProfileError(UsageError):
    """A device profile is unknown or invalid."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def require(module: str, package: str, extra: str, purpose: str):
    """Import an optional dependency or raise MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, extra, purpose) from exc
