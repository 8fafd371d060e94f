"""Process-level I/O helpers (stdlib only, so the on-device runtime may use them too).

Native libraries (TensorFlow, LiteRT, onnxruntime's tools) write to file descriptor 2 and to
the current directory behind Python's back; these keep that away from the user.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def quiet_native_stderr():
    """Point file descriptor 2 at /dev/null while the block runs; Python exceptions still
    carry their messages. Used around TensorFlow/LiteRT calls whose C++ logging ignores
    TF_CPP_MIN_LOG_LEVEL (oneDNN notices, "Created TensorFlow Lite XNNPACK delegate")."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def working_directory(path: str | Path):
    """Run the block in ``path`` (contextlib.chdir exists only from Python 3.11). For libraries
    that write scratch files into the current directory. Not thread-safe, like chdir itself."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
