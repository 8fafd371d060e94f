"""Small shared helpers for tests (no fixtures: those live in each test file)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env_extra=None, pre=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `edgeops ARGS` in a fresh interpreter; ``pre`` is Python run first (e.g. to hide a package)."""
    code = (pre or "") + "\nfrom edgeops.cli.main import main; main()"
    env = dict(os.environ, **(env_extra or {}))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """A user error: the expected exit code, one `error:` line, a hint, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error:" in proc.stderr, proc.stderr
    for needle in needles:
        assert needle.lower() in proc.stderr.lower(), (needle, proc.stderr)
