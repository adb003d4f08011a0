"""The PostgreSQL spool's schema, as ordered and numbered migrations (SPEC §8, issue 10).

`schema_version` holds one row per migration applied. `migrate()` applies the missing ones in
order, each in its own transaction, under a session advisory lock, so that several nodes
starting at once (or `sms-relay migrate` next to a running relay) apply each migration once.
A database whose version is newer than this relay knows is refused: an old relay must not
write to a schema it does not understand.

Migrations are only ever appended; one already released is never edited.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from relay.errors import SpoolError

# pg_advisory_lock key for migrations: "smsrelay" in ASCII, so it cannot collide with the
# hashed row keys of the SPEC §5 checks by design rather than by luck (those are 64-bit hashes).
MIGRATION_LOCK = int.from_bytes(b"smsrelay", "big") >> 1

_Apply = Callable[[AsyncConnection[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    apply: _Apply


async def _run(conn: AsyncConnection[Any], script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            await conn.execute(statement)  # our own DDL text, no parameters


async def _v1_tables(conn: AsyncConnection[Any]) -> None:
    """The SQLite spool's tables (relay/spool/sqlite.py), in PostgreSQL types."""
    await _run(
        conn,
        """
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE requests (
            pk BIGSERIAL PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            request_id TEXT NOT NULL,
            login TEXT NOT NULL,
            mail_from TEXT NOT NULL,
            client_ip TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            error INTEGER NOT NULL,
            comment TEXT NOT NULL
        );
        CREATE INDEX requests_request_id ON requests(request_id);
        CREATE TABLE jobs (
            id BIGSERIAL PRIMARY KEY,
            request_pk BIGINT NOT NULL REFERENCES requests(pk),
            phone TEXT NOT NULL,
            entry INTEGER NOT NULL,
            part INTEGER NOT NULL,
            parts INTEGER NOT NULL,
            submit TEXT NOT NULL,
            state TEXT NOT NULL,
            not_before DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            upstream_id TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '',
            receipt TEXT NOT NULL DEFAULT '',
            updated DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX jobs_queued ON jobs(not_before, id) WHERE state = 'queued';
        CREATE INDEX jobs_state ON jobs(state);
        CREATE INDEX jobs_request ON jobs(request_pk);
        CREATE TABLE upstream_keys (key TEXT NOT NULL, job_id BIGINT NOT NULL);
        CREATE INDEX upstream_keys_key ON upstream_keys(key);
        CREATE TABLE early_receipts (
            id BIGSERIAL PRIMARY KEY,
            key TEXT NOT NULL,
            state TEXT NOT NULL,
            receipt TEXT NOT NULL,
            received DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX early_receipts_key ON early_receipts(key);
        CREATE TABLE mails (
            id BIGSERIAL PRIMARY KEY,
            request_pk BIGINT,
            mail_from TEXT NOT NULL,
            rcpt TEXT NOT NULL,
            data BYTEA NOT NULL,
            state TEXT NOT NULL,
            not_before DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            updated DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX mails_queued ON mails(not_before, id) WHERE state = 'queued';
        CREATE TABLE mo (
            id BIGSERIAL PRIMARY KEY,
            received DOUBLE PRECISION NOT NULL,
            source_addr TEXT NOT NULL,
            destination_addr TEXT NOT NULL,
            esm_class INTEGER NOT NULL,
            data_coding INTEGER NOT NULL,
            short_message BYTEA NOT NULL,
            tlvs TEXT NOT NULL
        );
        CREATE TABLE fingerprints (fp TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
        CREATE INDEX fingerprints_fp ON fingerprints(fp, at);
        CREATE INDEX fingerprints_at ON fingerprints(at);
        CREATE TABLE flood (
            dest TEXT PRIMARY KEY,
            streak INTEGER NOT NULL,
            last DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX flood_last ON flood(last);
        CREATE TABLE balances (
            login TEXT PRIMARY KEY,
            configured BIGINT NOT NULL,
            remaining BIGINT NOT NULL
        );
        CREATE TABLE ip_failures (ip TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
        CREATE INDEX ip_failures_ip ON ip_failures(ip, at);
        CREATE INDEX ip_failures_at ON ip_failures(at);
        CREATE TABLE ip_blocks (
            ip TEXT PRIMARY KEY,
            until DOUBLE PRECISION NOT NULL,
            notified BOOLEAN NOT NULL
        )
        """,
    )


async def _v2_leases(conn: AsyncConnection[Any]) -> None:
    """Several nodes: who holds a `sending` job or mail, and until when (the lease)."""
    await _run(
        conn,
        """
        ALTER TABLE jobs ADD COLUMN node TEXT NOT NULL DEFAULT '';
        ALTER TABLE jobs ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0;
        CREATE INDEX jobs_leased ON jobs(lease_until) WHERE state = 'sending';
        CREATE INDEX jobs_node ON jobs(node) WHERE state = 'sending';
        ALTER TABLE mails ADD COLUMN node TEXT NOT NULL DEFAULT '';
        ALTER TABLE mails ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0;
        CREATE INDEX mails_leased ON mails(lease_until) WHERE state = 'sending';
        CREATE INDEX mails_node ON mails(node) WHERE state = 'sending'
        """,
    )


async def _v3_notices(conn: AsyncConnection[Any]) -> None:
    """Issue 8: the notice outbox, leased callbacks, and the MO answers' lookups."""
    await _run(
        conn,
        """
        CREATE TABLE notices (
            id BIGSERIAL PRIMARY KEY,
            kind TEXT NOT NULL,
            request_pk BIGINT,
            entry INTEGER NOT NULL DEFAULT 0,
            phone TEXT NOT NULL DEFAULT '',
            mo_id BIGINT,
            created DOUBLE PRECISION NOT NULL,
            node TEXT NOT NULL DEFAULT '',
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        CREATE TABLE callbacks (
            id BIGSERIAL PRIMARY KEY,
            stream TEXT NOT NULL,
            url TEXT NOT NULL,
            body BYTEA NOT NULL,
            content_type TEXT NOT NULL,
            state TEXT NOT NULL,
            not_before DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            updated DOUBLE PRECISION NOT NULL,
            node TEXT NOT NULL DEFAULT '',
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        CREATE INDEX callbacks_open ON callbacks(stream, id)
            WHERE state IN ('queued', 'sending');
        CREATE INDEX callbacks_queued ON callbacks(not_before, id) WHERE state = 'queued';
        CREATE INDEX callbacks_leased ON callbacks(lease_until) WHERE state = 'sending';
        CREATE INDEX callbacks_node ON callbacks(node) WHERE state = 'sending';
        CREATE INDEX jobs_phone ON jobs(phone, id);
        CREATE INDEX jobs_message ON jobs(request_pk, entry, phone, part);
        CREATE INDEX mo_source ON mo(source_addr, id)
        """,
    )


async def _v4_rates(conn: AsyncConnection[Any]) -> None:
    """Issue 6's rate guards in the spool, so that they hold across nodes and restarts."""
    await _run(
        conn,
        """
        CREATE TABLE rate_events (key TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
        CREATE INDEX rate_events_key ON rate_events(key, at);
        CREATE INDEX rate_events_at ON rate_events(at);
        CREATE TABLE rate_days (
            key TEXT NOT NULL,
            day INTEGER NOT NULL,
            parts BIGINT NOT NULL,
            PRIMARY KEY (key, day)
        )
        """,
    )


async def _v5_nodes(conn: AsyncConnection[Any]) -> None:
    """Node heartbeats: the live nodes share `smpp.throughput_total` (issue 10)."""
    await _run(
        conn,
        "CREATE TABLE nodes (node TEXT PRIMARY KEY, last_seen DOUBLE PRECISION NOT NULL)",
    )


async def _v6_state_indexes(conn: AsyncConnection[Any]) -> None:
    """Issue 9 (scale): sent mails and callbacks stay in their tables; `counts()` (metrics,
    `sms-relay queue`) groups them by state from these indexes, not from every row's body."""
    await _run(
        conn,
        """
        CREATE INDEX mails_state ON mails(state);
        CREATE INDEX callbacks_state ON callbacks(state)
        """,
    )


async def _v7_retention(conn: AsyncConnection[Any]) -> None:
    """Retention (spool.keep_days): upstream keys found by job when their job is pruned;
    notices that wait (an incomplete concatenated MO SMS until mo.concat_timeout)."""
    await _run(
        conn,
        """
        CREATE INDEX upstream_keys_job ON upstream_keys(job_id);
        ALTER TABLE notices ADD COLUMN not_before DOUBLE PRECISION NOT NULL DEFAULT 0
        """,
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "spool tables", _v1_tables),
    Migration(2, "leases for several nodes", _v2_leases),
    Migration(3, "notices and callbacks (issue 8)", _v3_notices),
    Migration(4, "rate guards (issue 6) across nodes", _v4_rates),
    Migration(5, "node heartbeats (shared throughput)", _v5_nodes),
    Migration(6, "state indexes of mails and callbacks (issue 9)", _v6_state_indexes),
    Migration(7, "retention: upstream keys by job, deferred notices", _v7_retention),
)
LATEST = MIGRATIONS[-1].version


async def schema_version(conn: AsyncConnection[Any]) -> int:
    """The version the database is at (0: no spool schema yet)."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: AsyncConnection[Any], target: int = LATEST) -> list[Migration]:
    """Bring the schema up to `target` on an autocommit connection; return what was applied."""
    if not conn.autocommit:
        raise SpoolError("migrate() needs an autocommit connection (one transaction each)")
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied DOUBLE PRECISION NOT NULL)"
        )
        current = await schema_version(conn)
        if current > LATEST:
            raise SpoolError(
                f"the spool's schema is at version {current}, newer than this relay's "
                f"{LATEST}: upgrade the relay (or point it at another database)"
            )
        applied: list[Migration] = []
        for migration in MIGRATIONS:
            if current < migration.version <= target:
                async with conn.transaction():
                    await migration.apply(conn)
                    await conn.execute(
                        "INSERT INTO schema_version(version, name, applied) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, time.time()),
                    )
                applied.append(migration)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
