"""PostgreSQL backend of the fleet store (psycopg 3, imported only when a postgresql:// URL is used).

Several monitor processes share one database (MQTT shared subscriptions spread the devices'
messages over them), so every write must tolerate a concurrent writer:
- windows go in with ON CONFLICT DO NOTHING, rows sorted by key, so two transactions inserting
  overlapping batches wait for each other in the same order instead of deadlocking;
- a transaction that still loses a deadlock or serialization race is retried;
- creating or upgrading the tables takes a transaction-scoped advisory lock (two processes
  starting at once would otherwise both try to create or alter them).
The connection runs in autocommit mode and writes use explicit transactions, so no session is
ever left "idle in transaction" holding a snapshot.
"""
from __future__ import annotations

import random
import time
from urllib.parse import urlsplit, urlunsplit

from edgeops.errors import InputFileError, MissingDependencyError, UsageError, first_line
from edgeops.fleet.store_schema import SCHEMA_VERSION, StoreError, create_statements, upgrade_statements

SCHEMA_LOCK = 0x6564_6765_6F70  # pg_advisory_xact_lock key: "edgeop"
RETRIES = 6
CONNECT_TIMEOUT_S = 10


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        parts = urlsplit(url)
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[-1]
            return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:
        return "postgresql://..."
    return url


class PostgresBackend:
    dialect = "postgresql"

    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise MissingDependencyError("psycopg", "monitor", "a PostgreSQL fleet database") from None
        self._psycopg = psycopg
        self._url = url
        self._sql_cache: dict[str, str] = {}
        self.conn = None
        self.conn = self._connect()

    def _connect(self):
        psycopg = self._psycopg
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.ProgrammingError as exc:
            raise UsageError(f"invalid PostgreSQL URL {redact(self._url)}: {first_line(exc)}",
                             "use postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE") from None
        except psycopg.Error as exc:
            raise InputFileError(f"cannot connect to PostgreSQL at {redact(self._url)}: {first_line(exc)}",
                                 "check that the server runs, the database exists and this user may connect") from None

    # -- SQL helpers used by Store -------------------------------------------------------------
    @staticmethod
    def greatest(a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"  # PostgreSQL's GREATEST already ignores NULL

    def _sql(self, sql: str) -> str:
        """Store writes "?" placeholders (SQLite style); psycopg wants "%s"."""
        converted = self._sql_cache.get(sql)
        if converted is None:
            converted = self._sql_cache[sql] = sql.replace("?", "%s")
        return converted

    def _reconnect_if_broken(self) -> bool:
        if self.conn is not None and (self.conn.broken or self.conn.closed):
            self.conn.close()
            self.conn = self._connect()
            return True
        return False

    def query(self, sql: str, params=()) -> list[tuple]:
        return self.run(lambda db: db.fetch(sql, params), "reading", transaction=False)

    def run(self, work, what: str = "writing", transaction: bool = True):
        """Run ``work(self)`` in one transaction, retrying lost deadlock / serialization races
        and, once, a connection the server dropped."""
        errors = self._psycopg.errors
        reconnected = False
        for attempt in range(RETRIES):
            try:
                if not transaction:
                    return work(self)
                with self.conn.transaction():
                    return work(self)
            except (errors.DeadlockDetected, errors.SerializationFailure):
                if attempt == RETRIES - 1:
                    raise StoreError(f"PostgreSQL kept aborting a transaction while {what} (deadlocks)",
                                     "retry; if it persists, fewer monitor processes may help") from None
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
            except self._psycopg.OperationalError as exc:
                if reconnected or not self._reconnect_if_broken():
                    raise StoreError(f"PostgreSQL error while {what}: {first_line(exc)}",
                                     "check that the server is up and reachable") from None
                reconnected = True
            except self._psycopg.Error as exc:
                raise StoreError(f"PostgreSQL error while {what}: {first_line(exc)}",
                                 "check the server log; the database may be full or read-only") from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def execute(self, sql: str, params=()) -> int:
        with self.conn.cursor() as cur:
            cur.execute(self._sql(sql), params)
            return cur.rowcount

    def executemany(self, sql: str, rows) -> int:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)
            return cur.rowcount

    def fetch(self, sql: str, params=()) -> list[tuple]:
        with self.conn.cursor() as cur:
            cur.execute(self._sql(sql), params)
            return cur.fetchall()

    def insert_new(self, sql: str, rows: list[tuple]) -> list[bool]:
        """Insert rows with ON CONFLICT DO NOTHING; which of them were new.

        executemany runs in pipeline mode (one round trip for the batch); RETURNING gives one
        result per row, empty for a row that already existed.
        """
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql) + " RETURNING 1", rows, returning=True)
            new = []
            while True:
                new.append(cur.fetchone() is not None)
                if not cur.nextset():
                    break
            return new

    # -- schema ----------------------------------------------------------------------------------
    def _schema_version(self) -> int | None:
        found = self.fetch("SELECT 1 FROM information_schema.tables "
                           "WHERE table_schema = current_schema() AND table_name = 'schema_version'")
        if not found:
            return None
        row = self.fetch("SELECT MAX(version) FROM schema_version")
        return row[0][0] if row and row[0][0] is not None else 0

    def ensure_schema(self, check) -> None:
        """Create the tables when missing or upgrade an older schema in place, in one transaction;
        ``check(version)`` refuses a version it cannot read."""
        def work(db):
            schema = db.fetch("SELECT current_schema()")[0][0]
            if schema is None:
                raise UsageError("PostgreSQL has no schema to create the fleet tables in "
                                 "(search_path names none that exists)",
                                 "create the schema, or fix options=-csearch_path=... in the URL")
            version = db._schema_version()
            if version is None or version < SCHEMA_VERSION:
                db.fetch("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
                # Another process may have created or upgraded it meanwhile (READ COMMITTED: this
                # statement sees what committed before the lock was granted).
                version = db._schema_version()
            if version is None:
                for sql in create_statements(self.dialect):
                    db.execute(sql)
                lz4 = db.fetch("SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                               "WHERE name = 'default_toast_compression'")
                if lz4 and lz4[0][0]:
                    # lz4 compresses the JSON payloads several times faster than the default pglz
                    # (payloads are stored as text when the client has no lz4 package).
                    db.execute("ALTER TABLE windows ALTER COLUMN payload SET COMPRESSION lz4")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                check(version)
                if version >= SCHEMA_VERSION:
                    return
                # ADD COLUMN without a default only changes the catalog: instant, whatever the table size.
                for sql in upgrade_statements(self.dialect, version):
                    db.execute(sql)
            # Already compressed by the client: TOAST may move it out of line, but need not try
            # to compress it again (that attempt always fails, and costs server CPU per row).
            db.execute("ALTER TABLE windows ALTER COLUMN payload_lz4 SET STORAGE EXTERNAL")
        self.run(work, "creating or upgrading the tables")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
