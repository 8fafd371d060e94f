"""The result of one emulated target check, as data (to_dict) and as text (lines)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..validate import ParityReport

TIMING_NOTE = ("durations under emulation say nothing about the device's latency: none are reported; "
               "measure on the device (edgeops benchmark) or estimate from the profile")


@dataclass(frozen=True)
class ModelResult:
    name: str
    steps: tuple[dict, ...]              # {"step": load|predict|telemetry, "ok": bool, "error"?: str}
    runtime: str | None = None           # what the target loaded it with, e.g. "onnxruntime 1.20.1"
    rows: int = 0
    parity: ParityReport | None = None   # target outputs against the host's
    telemetry_bytes: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(s["ok"] for s in self.steps) and self.parity is not None \
            and self.parity.passed

    def failures(self) -> list[str]:
        out = [f"{self.name}: {s['step']} failed: {s.get('error')}" for s in self.steps if not s["ok"]]
        for o in self.parity.outputs if self.parity is not None else ():
            if o.passed:
                continue
            if o.max_abs is not None:
                what = f"max abs diff {o.max_abs:.3g} (max rel {o.max_rel:.3g})"
            elif o.label_agreement is not None:
                what = f"labels agree {o.label_agreement:.1%}"
            else:
                what = f"shape {list(o.shape)} differs from the host's"
            out.append(f"{self.name}: output {o.name}: {what}, beyond tolerance")
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "runtime": self.runtime, "rows": self.rows,
                "steps": list(self.steps), "telemetry_bytes": self.telemetry_bytes,
                "parity": self.parity.to_dict() if self.parity else None}


@dataclass(frozen=True)
class TargetReport:
    bundle: str
    profile: str
    target: dict                  # TargetSpec.to_dict(): suite, machine, python, qemu cpu, ...
    platform: dict                # what the emulated Python found: machine, python, libc, numpy, cpu part
    host: dict                    # the reference run: machine, python, runtime
    models: tuple[ModelResult, ...]
    setup: dict                   # root filesystem and wheels: key, cached, build seconds (host time)
    installed: dict               # distribution -> version in the target's site directory
    error: str | None = None      # the self-test itself broke (crash, import error)
    hint: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.models) and all(m.passed for m in self.models)

    def failures(self) -> list[str]:
        out = [self.error] if self.error else []
        for model in self.models:
            out += model.failures()
        return out

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "profile": self.profile, "passed": self.passed, "emulated": True,
                "target": self.target, "platform": self.platform, "host": self.host,
                "models": [m.to_dict() for m in self.models], "installed": self.installed,
                "setup": self.setup, "error": self.error, "failures": self.failures(), "hint": self.hint,
                "notes": list(self.notes) + [TIMING_NOTE]}

    def lines(self) -> list[str]:
        p, t = self.platform, self.target
        verdict = "PASS" if self.passed else "FAIL"
        out = [f"target {self.profile}: {verdict} (emulated {t['machine']}, Debian {t['suite']}, "
               f"qemu -cpu {t['qemu_cpu']})"]
        if p:
            out.append(f"  platform found: {p.get('machine')}, Python {p.get('python')}, {p.get('libc')}, "
                       f"numpy {p.get('numpy', '?')}")
        for model in self.models:
            steps = ", ".join(f"{s['step']} {'ok' if s['ok'] else 'FAILED'}" for s in model.steps)
            out.append(f"  {model.name} on {model.runtime or 'the target runtime'}: {steps}")
            for s in model.steps:
                if not s["ok"]:
                    out.append(f"    {s['step']}: {s.get('error')}")
            if model.parity is not None:
                tol = model.parity.tolerance
                out.append(f"    outputs vs host ({self.host.get('runtime')}, {self.host.get('machine')}), "
                           f"{model.rows} rows, atol {tol.atol:g} rtol {tol.rtol:g}:")
                for o in model.parity.outputs:
                    if o.max_abs is not None:
                        diff = f"max abs diff {o.max_abs:.3g}"
                    elif o.label_agreement is not None:
                        diff = f"labels agree {o.label_agreement:.1%}"
                    else:
                        diff = f"shape differs: {list(o.shape)}"
                    out.append(f"      {o.name:<24} {diff:<28} {'ok' if o.passed else 'DIFFERS'}")
        if self.error:
            out.append(f"  error: {self.error}")
        for note in self.notes:
            out.append(f"  note: {note}")
        out.append(f"  note: {TIMING_NOTE}")
        return out
