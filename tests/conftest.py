"""Suite-wide guard: no command may write into the current directory (tests run from the repo)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_working_directory():
    cwd = Path(os.getcwd())
    before = _files(cwd)
    yield
    new = sorted(_files(cwd) - before)
    assert not new, f"files written into the working directory {cwd}: {new}"
