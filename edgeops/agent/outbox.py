"""The agent's durable outbox: telemetry windows wait here until the broker acknowledges them.

Why SQLite: one small file, atomic transactions and crash recovery from the standard library.
WAL mode with ``synchronous=FULL`` makes every committed append durable (the WAL is fsynced at
each commit), so a window survives SIGKILL and power loss as far as SQLite and the disk promise.

The database also owns the device's sequence counter (``meta.last_seq``): ``seq`` never goes back
and is never reused, also after the queue was emptied or trimmed, because a gap or a repeat would
be ambiguous at the monitor. Only deleting the buffer directory resets it (and the ``instance`` id).

An exclusive ``fcntl`` lock on ``outbox.lock`` keeps a second agent away from the same directory:
two processes sharing the counter would hand out the same seqs.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

from edgeops.errors import InputFileError, UsageError, first_line

DB_NAME = "outbox.sqlite3"
LOCK_NAME = "outbox.lock"
SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS windows ("
    " seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL)",
    # value has no declared type on purpose: SQLite keeps ints as ints and text as text.
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
)


class Outbox:
    """A bounded, durable FIFO of (seq, topic, payload) in ``directory/outbox.sqlite3``.

    Thread-safe: one connection guarded by a re-entrant lock (re-entrant so that the ``build``
    callback of :meth:`append` may call :meth:`stats`).
    """

    def __init__(self, directory: str | Path, max_windows: int = 10000):
        if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
            raise UsageError(f"the outbox bound must be a whole number >= 1, got {max_windows!r}",
                             "give --buffer-max-windows a positive integer (default 10000)")
        self.directory = Path(directory)
        self.max_windows = max_windows
        self.path = self.directory / DB_NAME
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._lock_file = _lock_directory(self.directory)
        try:
            self._db = _open_database(self.path)
            with self._lock:
                self.instance = self._init_meta()
                self._trim_to_bound()
        except BaseException:
            self.close()
            raise

    # -- writing -------------------------------------------------------------------------------

    def append(self, topic: str, build: Callable[[int, dict], bytes]) -> int:
        """Give the next window a seq, store it, enforce the bound; all in one transaction.

        ``build(seq, state)`` makes the payload; ``state`` is {"pending", "dropped_total"} as they
        will be once this window is stored and the bound applied, so the payload can report them.
        If ``build`` raises, nothing is stored and the seq is not used up.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta("last_seq") + 1
                count = db.execute("SELECT COUNT(*) FROM windows").fetchone()[0] + 1
                overflow = max(0, count - self.max_windows)
                dropped = self._meta("dropped_total") + overflow
                payload = build(seq, {"pending": count - overflow, "dropped_total": dropped})
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise TypeError(f"the outbox payload must be bytes, not {type(payload).__name__}")
                db.execute("INSERT INTO windows (seq, topic, payload, created) VALUES (?, ?, ?, ?)",
                           (seq, topic, bytes(payload), time.time()))
                if overflow:
                    self._drop_oldest(overflow)
                db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (seq,))
                db.execute("UPDATE meta SET value = ? WHERE key = 'dropped_total'", (dropped,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return seq

    def ack(self, seq: int) -> None:
        """Forget a window the broker acknowledged (idempotent: an unknown seq is fine)."""
        self.ack_many([seq])

    def ack_many(self, seqs) -> None:
        """Forget several acknowledged windows in one transaction (one fsync, not one per window)."""
        rows = [(int(s),) for s in seqs]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM windows WHERE seq = ?", rows)
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise

    # -- reading -------------------------------------------------------------------------------

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` stored windows with seq > ``after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM windows WHERE seq > ? ORDER BY seq LIMIT ?",
                (int(after_seq), int(limit))).fetchall()
        return [(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def stats(self) -> dict:
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
            return {"pending": count, "dropped_total": self._meta("dropped_total"),
                    "last_seq": self._meta("last_seq")}

    def close(self) -> None:
        """Close the database and release the directory lock (safe to call twice)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if not self._lock_file.closed:
                self._lock_file.close()   # closing the descriptor releases the flock

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _meta(self, key: str):
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0]

    def _init_meta(self) -> str:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                db.execute(statement)
            defaults = {"schema_version": SCHEMA_VERSION, "last_seq": 0, "dropped_total": 0,
                        "instance": secrets.token_hex(16)}
            db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", defaults.items())
            version = self._meta("schema_version")
            instance = self._meta("instance")
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            _rollback(db)
            raise _corrupt(self.path, exc) from exc
        if version != SCHEMA_VERSION:
            raise InputFileError(f"the outbox {self.path} has schema version {version!r}; this agent "
                                 f"reads version {SCHEMA_VERSION}",
                                 "run the edgeops version that made it until the queue is empty, or "
                                 "move the file aside (its unsent windows are then not sent)")
        return instance

    def _drop_oldest(self, n: int) -> None:
        self._db.execute("DELETE FROM windows WHERE seq IN "
                         "(SELECT seq FROM windows ORDER BY seq LIMIT ?)", (n,))

    def _trim_to_bound(self) -> None:
        """Apply a bound lowered since the last run, counting the drops like append does."""
        count = self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        overflow = count - self.max_windows
        if overflow <= 0:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._drop_oldest(overflow)
            self._db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_total'", (overflow,))
            self._db.execute("COMMIT")
        except BaseException:
            _rollback(self._db)
            raise


def _rollback(db: sqlite3.Connection) -> None:
    """Undo the open transaction, if BEGIN got that far (a failed BEGIN leaves none)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _lock_directory(directory: Path):
    """Create the directory and hold an exclusive lock on it for this process's lifetime."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK_NAME, "a+")
    except OSError as exc:
        raise InputFileError(f"cannot use the buffer directory {directory}: {exc.strerror or exc}",
                             "choose a writable --buffer-dir") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise UsageError(f"another agent uses BUFFER_DIR {directory} (it holds {directory / LOCK_NAME})",
                         "stop that agent, or give each agent its own --buffer-dir") from exc
    except OSError as exc:
        handle.close()
        raise InputFileError(f"cannot lock the buffer directory {directory}: {exc.strerror or exc}",
                             "use a local file system for --buffer-dir (file locks must work there)") from exc
    # Record who holds it: only a help for a human reading the directory, never trusted.
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _open_database(path: Path) -> sqlite3.Connection:
    """Connect, switch on WAL + synchronous=FULL, and check the file is a sound SQLite database."""
    try:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) so we decide
        # exactly what is atomic. check_same_thread=False: the lock in Outbox serialises threads.
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
    except sqlite3.Error as exc:
        raise InputFileError(f"cannot open the outbox {path}: {first_line(exc)}",
                             "check that --buffer-dir is writable") from exc
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        db.execute("PRAGMA synchronous=FULL")
        check = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        db.close()
        raise _corrupt(path, exc) from exc
    if check != ["ok"]:
        db.close()
        raise _corrupt(path, "; ".join(str(c) for c in check[:3]))
    if str(mode).lower() != "wal":
        db.close()
        raise InputFileError(f"the outbox {path} cannot use SQLite's WAL mode (got {mode!r})",
                             "put --buffer-dir on a local file system")
    return db


def _corrupt(path: Path, why) -> InputFileError:
    reason = first_line(why) if isinstance(why, BaseException) else str(why)
    if isinstance(why, sqlite3.OperationalError):   # locked, read-only, I/O error: the file may be fine
        return InputFileError(f"cannot use the outbox {path} ({reason})",
                              "check that --buffer-dir is writable, on a local disk and not full")
    return InputFileError(
        f"the outbox {path} is damaged or not an SQLite database ({reason})",
        f"stop the agent and move the file aside (mv {path} {path}.damaged, with its -wal/-shm files); "
        "the agent then starts a new outbox, and the windows in the old file are not sent")
