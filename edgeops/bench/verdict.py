"""Budget verdicts: each budget (latency, RAM, model size) passes or fails, with its basis.

On the device itself the measured numbers are judged. Anywhere else the device's numbers are
not known, so latency and RAM are judged on the estimate for the profile (its p50 for
latency), and the model size on the file. Every check records which basis it used.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    budget: str  # latency_ms | ram_mb | model_size_mb
    limit: float
    value: float | None  # None: nothing to judge it on (e.g. no estimate): the check fails
    basis: str  # measured p95 | estimated p50 | file | ...
    passed: bool

    def to_dict(self) -> dict:
        return {"budget": self.budget, "limit": self.limit, "value": self.value,
                "basis": self.basis, "pass": self.passed}

    def describe(self) -> str:
        what, unit = self.budget.rsplit("_", 1)
        unit = {"mb": "MB", "ms": "ms"}.get(unit, unit)
        what = what.replace("_", " ")
        if self.value is None:
            return f"{what} not judged ({self.basis}); budget {self.limit:g} {unit}"
        return f"{what} {self.value:.4g} {unit} ({self.basis}) > budget {self.limit:g} {unit}"


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [c.describe() for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"pass": self.passed, "failures": self.failures, "checks": [c.to_dict() for c in self.checks]}


def judge(budgets, *, size_bytes: int, latency_ms: float | None, latency_basis: str,
          rss_mb: float | None, rss_basis: str) -> Verdict:
    """``budgets`` has latency_ms, ram_mb and model_size_mb (a profile's, possibly overridden)."""
    if budgets is None:
        return Verdict(())
    checks = []
    size_mb = size_bytes / (1024 * 1024)
    for name, limit, value, basis in (
        ("latency_ms", budgets.latency_ms, latency_ms, latency_basis),
        ("ram_mb", budgets.ram_mb, rss_mb, rss_basis),
        ("model_size_mb", budgets.model_size_mb, size_mb, "file"),
    ):
        if limit is None or (value is None and basis.startswith("skipped")):
            continue  # the user chose not to measure it (--no-memory)
        if value is None:
            # Fail safe: a gate that cannot see a number must not report a pass.
            checks.append(Check(name, float(limit), None, basis or "no estimate for this model", False))
            continue
        checks.append(Check(name, float(limit), float(value), basis, float(value) <= float(limit)))
    return Verdict(tuple(checks))
