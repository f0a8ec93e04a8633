"""Database fixtures (a pytest plugin): a temporary SQLite file, a fresh PostgreSQL database, and both in turn.

PostgreSQL is the server at 127.0.0.1:5432 (user postgres, trust authentication). When it cannot be reached the
PostgreSQL cases are skipped, or fail when ``NXP2_CDS_REQUIRE_POSTGRES=1`` (CI sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cds_service.store.store import Store

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
REQUIRE_POSTGRES = "NXP2_CDS_REQUIRE_POSTGRES"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database in a new temporary file (in a folder that does not exist yet)."""
    return f"sqlite:///{tmp_path / 'db' / 'nxp2-cds.sqlite3'}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"PostgreSQL at 127.0.0.1:5432 (user postgres) is not reachable: {reason}"
        if os.environ.get(REQUIRE_POSTGRES) == "1":
            pytest.fail(f"{message} ({REQUIRE_POSTGRES}=1)", pytrace=False)
        pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped (with any connection left to it) afterwards."""
    name = f"nxp2_cds_test_{uuid.uuid4().hex[:16]}"
    with _admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield POSTGRES_URL.format(name=name)
    finally:
        with _admin() as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that uses this runs once on SQLite and once on PostgreSQL."""
    url: str = request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param])
    return url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A migrated store on ``database_url``."""
    result = Store(database_url)
    result.migrate()
    try:
        yield result
    finally:
        result.dispose()
