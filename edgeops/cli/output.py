"""Shared terminal output: a rich console on stderr for humans, JSON on stdout for machines."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Off a terminal (CI logs, pipes) rich would wrap tables at 80 columns; 120 keeps rows on one line.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)
# Commands whose table IS the result (devices list/show, inspect) print it on stdout, so that
# `edgeops devices list > file` and `edgeops inspect m.onnx | grep` work.
stdout_console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def emit_json(obj) -> None:
    """Write ``obj`` as JSON to stdout (the only thing written there with --json)."""
    sys.stdout.write(json_text(obj))
    sys.stdout.flush()


def json_text(obj) -> str:
    """Strict JSON: NaN and infinities (e.g. the error of a NaN output) become null."""
    return json.dumps(_finite(obj), indent=2, default=_default, allow_nan=False) + "\n"


def _finite(value):
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _default(value):
    import numpy as np
    from pathlib import Path

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[_cell(v) for v in r])
    return t


def _cell(value):
    """Cells are plain text (a shape like [?, 3] is not markup); pass a rich Text to style one."""
    if isinstance(value, Text):
        return value
    return escape("" if value is None else str(value))


def verdict(passed: bool) -> Text:
    return Text("pass", style="green") if passed else Text("FAIL", style="bold red")


@contextmanager
def status(message: str, quiet: bool = False):
    """A spinner for work that has no countable steps (conversion, calibration)."""
    if quiet or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def fmt_num(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
