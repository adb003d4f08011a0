"""A real PostgreSQL for the tests (issue 10): a fresh database per test module, dropped after.

The server is the one `.ci/deps-postgres` starts: `postgresql://postgres@127.0.0.1:5432/postgres`
with trust auth on loopback (override with SMS_RELAY_TEST_PG). Tests that need it skip, saying
why, only when no server answers there; any other failure is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.spool.base import Spool
from relay.spool.sqlite import SqliteSpool

ADMIN_URL = os.environ.get("SMS_RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def _admin() -> object:
    try:
        import psycopg
    except ImportError as exc:
        pytest.skip(f"psycopg is not installed ({exc}): pip install '.[postgres]'")
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL} (run .ci/deps-postgres): {exc}")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """The URL of a new, empty database for this test module."""
    import psycopg

    admin = _admin()
    assert isinstance(admin, psycopg.Connection)
    name = f"relay_test_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield _with_db(ADMIN_URL, name)
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def pg_reset(url: str) -> None:
    """Empty every spool table (the schema stays): each test starts from a clean spool."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_version'"
            )
        ]
        if tables:
            conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def pg_rows(url: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql).fetchall())  # type: ignore[call-overload]


@dataclass
class SpoolStore:
    """One durable store, opened as many times as a test likes (a restart is a new object)."""

    kind: str
    make: Callable[[], Spool]
    rows: Callable[[str], list[tuple[object, ...]]]


@pytest.fixture(params=["sqlite", "postgres"])
def spool_store(request: pytest.FixtureRequest, tmp_path: Path) -> SpoolStore:
    """The spool tests' store, once per backend: the same contract holds on both."""
    if request.param == "sqlite":
        import sqlite3

        path = tmp_path / "s.db"

        def rows(sql: str) -> list[tuple[object, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(sql).fetchall()

        return SpoolStore("sqlite", lambda: SqliteSpool(path), rows)
    url: str = request.getfixturevalue("pg_url")
    pg_reset(url)
    from relay.spool.postgres import PostgresSpool

    # The contract tests drive a made-up clock that jumps tens of seconds while the node is
    # alive; a live node renews its leases, so none may run out within a test: a long lease.
    return SpoolStore(
        "postgres",
        lambda: PostgresSpool(url, node="test-node", lease=3600.0),
        lambda sql: pg_rows(url, sql),
    )
