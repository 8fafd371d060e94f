"""Suite-wide fixtures: a guard that no command writes into the current directory (tests run from
the repo), and fleet databases on a real SQLite file and a real PostgreSQL (127.0.0.1:5432,
database `test`, one fresh schema each, dropped afterwards)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_to_the_working_directory():
    cwd = Path(os.getcwd())
    before = _files(cwd)
    yield
    new = sorted(_files(cwd) - before)
    assert not new, f"files written into the working directory {cwd}: {new}"


@pytest.fixture(params=["sqlite", "postgresql"])
def make_url(request, tmp_path):
    """A function returning a fresh, empty fleet database of the parametrized kind: a SQLite file
    path, or a postgresql:// URL whose search_path is a new schema."""
    schemas = []

    def make() -> str:
        if request.param == "sqlite":
            return str(tmp_path / f"fleet-{uuid.uuid4().hex[:8]}.db")
        import psycopg
        schema = "edgeops_test_" + uuid.uuid4().hex[:12]
        with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return f"{PG_BASE}?options=-csearch_path%3D{schema}"
    yield make
    if schemas:
        import psycopg
        with psycopg.connect(PG_BASE, autocommit=True, connect_timeout=10) as admin:
            for schema in schemas:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store_url(make_url) -> str:
    return make_url()


@pytest.fixture
def store(store_url):
    from edgeops.fleet.store import open_store

    s = open_store(store_url)
    yield s
    s.close()
