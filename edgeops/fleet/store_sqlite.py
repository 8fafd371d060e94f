"""SQLite backend of the fleet store: one file, WAL, one connection per Store.

Several processes may write the same file (two monitors on one machine, the dashboard reading):
WAL lets readers run during a write, ``busy_timeout`` makes a writer wait for the lock instead of
failing, and write transactions start with BEGIN IMMEDIATE so that two writers never both hold a
read lock and then deadlock upgrading it (SQLite would fail that at once, busy_timeout or not).
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager

from edgeops.errors import InputFileError
from edgeops.fleet.store_schema import SCHEMA_VERSION, StoreError, create_statements, upgrade_statements

BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 32 * 1024  # the windows indexes stay in memory while a large table grows
PAGE_SIZE = 8192  # a window payload of a few KB then fits in one page instead of an overflow chain


def _error(exc: Exception, what: str) -> StoreError:
    return StoreError(f"SQLite error while {what}: {exc}",
                      "check that the database file is writable and the disk is not full")


class SqliteBackend:
    dialect = "sqlite"

    def __init__(self, path: str):
        self.path = path
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path)) or "."
            if not os.path.isdir(parent):
                raise InputFileError(f"cannot create the SQLite database {path}: the directory {parent} does not exist",
                                     "create the directory first, or give another path")
            if os.path.isdir(path):
                raise InputFileError(f"{path} is a directory, not a SQLite database file",
                                     "give a file path such as fleet.db")
        try:
            # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE.
            # check_same_thread=False: a Store may be created in one thread and used in another
            # (never by two at once).
            self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                self.conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self._enable_wal()
            self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
            self.conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise InputFileError(f"cannot open the SQLite database {path}: {exc}",
                                 "give a SQLite database file, or a new file name to create one") from None

    def _enable_wal(self) -> None:
        """Switch the file to WAL (persistent). The switch needs an exclusive lock and SQLite
        answers "database is locked" at once, without the busy handler, when another
        connection opens the new file at the same moment: retry until the busy timeout."""
        if self.path == ":memory:":
            return
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode").fetchone()[0]
                if mode == "wal" or self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("database is locked (cannot switch it to WAL mode)")
            time.sleep(0.02)

    # -- SQL helpers used by Store -----------------------------------------------------------
    @staticmethod
    def greatest(a: str, b: str) -> str:
        """GREATEST ignoring NULL (SQLite's MAX(a, NULL) is NULL)."""
        return f"MAX(COALESCE({a}, {b}), COALESCE({b}, {a}))"

    def query(self, sql: str, params=()) -> list[tuple]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _error(exc, "reading") from None

    def run(self, work, what: str = "writing"):
        """Run ``work(self)`` in one write transaction and return its result."""
        try:
            with self._transaction():
                return work(self)
        except sqlite3.Error as exc:
            raise _error(exc, what) from None

    @contextmanager
    def _transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def execute(self, sql: str, params=()) -> int:
        return self.conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows) -> int:
        return self.conn.executemany(sql, rows).rowcount

    def fetch(self, sql: str, params=()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def insert_new(self, sql: str, rows: list[tuple]) -> list[bool]:
        """Insert rows with ON CONFLICT DO NOTHING; which of them were new.

        One execute per row: SQLite runs in-process, so this costs about what executemany does,
        and rowcount then says exactly which rows were duplicates.
        """
        execute = self.conn.execute
        return [execute(sql, row).rowcount == 1 for row in rows]

    # -- schema --------------------------------------------------------------------------------
    def schema_version(self) -> int | None:
        """The stored version, None when the database has no edgeops tables yet."""
        found = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        if not found:
            return None
        row = self.conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return row[0] if row and row[0] is not None else 0

    def ensure_schema(self, check) -> None:
        """Create the tables when missing, upgrade an older schema in place; ``check(version)``
        refuses a version it cannot read.

        Creating and upgrading run in one BEGIN IMMEDIATE transaction: it holds the write lock, so
        of several processes opening the file at once one does the work and the others, reading
        the version again under the lock, find it done.
        """
        try:
            version = self.schema_version()
            if version is not None:
                check(version)
                if version >= SCHEMA_VERSION:
                    return
            with self._transaction():
                version = self.schema_version()  # another process may have created or upgraded it meanwhile
                if version is None:
                    for sql in create_statements(self.dialect):
                        self.conn.execute(sql)
                    self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                    return
                check(version)
                if version < SCHEMA_VERSION:
                    for sql in upgrade_statements(self.dialect, version):
                        self.conn.execute(sql)
        except sqlite3.DatabaseError as exc:
            raise InputFileError(f"cannot use the SQLite database {self.path}: {exc}",
                                 "give an edgeops fleet database, or a new file name to create one") from None

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None
