"""The shared spool: PostgreSQL, so that several relay nodes act as one gateway (SPEC §8, #10).

The driver is psycopg 3 (async API, with psycopg_pool), not asyncpg: it ships type information
(`mypy --strict` checks every query call here, asyncpg has no stubs), its DB-API shape keeps the
SQL close to the SQLite backend's, it pipelines `executemany` (one round trip for a request's
jobs), and LISTEN/NOTIFY is a plain async iterator (`AsyncConnection.notifies()`).

Every method runs in one transaction (READ COMMITTED) on a pooled connection and returns after
its COMMIT: the request and its jobs are durable before the SMTP front answers `250`.
PostgreSQL commits concurrent transactions together itself, so there is no writer thread.

How the nodes stay one gateway:

- SPEC §5 checks, cluster-wide: `store()` first takes transaction advisory locks on every
  rate guard (issue 6), fingerprint (9), subscriber (8), account balance (3) and client IP (4)
  key the request touches,
  in ascending key order (so two stores never wait for each other in a cycle), then checks and
  writes. Two nodes racing for the last balance part are serialised on the account's key: exactly
  one wins. A refusal writes what the SQLite spool's does (a re-based balance row) and no more.
- Claims: `FOR UPDATE SKIP LOCKED` hands each due job to exactly one node, with `node` and
  `lease_until = now + lease`. A live node renews its leases every lease/3; a killed node's
  leases run out and any node puts those jobs back in the queue (at-least-once: the only
  duplicates are the jobs the dead node had in flight). `recover()` at start requeues only this
  node's own `sending` jobs at once.
- Receipts: upstream ids are keys in the shared `upstream_keys` table, so a receipt that reaches
  another node's bind is matched there. `mark_submitted` and `apply_receipt` lock the id keys
  first, so a receipt that overtakes its submit_sm_resp on another node is either matched or
  kept as an early receipt, never lost between the two transactions.
- Notices (issue 8): every change that can make a part final takes an advisory lock on its
  message (request, entry, phone) before the job's row lock, then checks whether every part is
  final, in the same transaction: when the last two parts turn final on two nodes at once, the
  second check sees the first commit, so exactly one `status` notice is written. A notifier
  leases the notices it claims (`SKIP LOCKED`); `settle_notices` deletes each notice before
  queueing what it became, so a notice settled twice (a lease ran out) adds nothing the second
  time.
- Callbacks: only the oldest open callback of a stream is claimable, and a `sending` one (on
  any node) is open, so a stream's callbacks go out one at a time, in order, across nodes.
  Claimed callbacks are leased and renewed like jobs and mails. `settle_notices` locks each
  stream, so ids (the send order) follow commit order within a stream.
- Wake-ups: a store that adds jobs or mails, and a settle that queues callbacks or mails, sends
  NOTIFY; every node LISTENs and wakes its dispatcher, mailer and callback sender. Their own
  polling remains the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import TupleRow

from relay.config import LimitsConfig
from relay.errors import ErrorCode, SpoolError
from relay.rates import MINUTE, RateCheck, Usage, active, first_exceeded, utc_day
from relay.spool import pg_prune
from relay.spool.base import DEFAULT_PROGRESS_FSYNC
from relay.spool.migrations import Migration, migrate, schema_version
from relay.spool.model import (
    RECEIPT_APPLIED,
    RECEIPT_REPEATED,
    Admission,
    Callback,
    Job,
    JobState,
    JobView,
    Mail,
    MoMessage,
    NewRequest,
    Notice,
    NoticeOutcome,
    SentMessage,
    StoreResult,
    Submitted,
    admitted,
    error_code,
    job_row,
    message_state,
    rate_overs,
    submit_from_json,
    tempfail_checks,
)
from relay.spool.prune_model import PruneStep
from relay.spool.retention import Cutoffs

log = logging.getLogger("relay.spool")

T = TypeVar("T")
_Cursor = AsyncCursor[TupleRow]

CHANNEL = "relay_spool"  # LISTEN/NOTIFY channel: jobs, mails or callbacks were queued
DEFAULT_LEASE = 30.0
POOL_SIZE = 10
PRUNE_EVERY = 60.0  # seconds between prunes of expired SPEC §5 state
_RETRIES = 3  # deadlock / serialization failures are retried this many times

_LEASED = ("jobs", "mails", "callbacks")  # tables whose `sending` rows are leased
_REQUEUEABLE = [
    JobState.REJECTED.value,
    JobState.UNDELIVERABLE.value,
    JobState.EXPIRED.value,
    JobState.CANCELLED.value,
]


def default_node() -> str:
    return socket.gethostname()


def lock_key(name: str) -> int:
    """A text key → a signed 64-bit pg_advisory_xact_lock key (collisions only serialise more)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _lock(cur: _Cursor, names: list[str]) -> None:
    """Transaction advisory locks on `names`, taken in ascending key order (no lock cycles)."""
    keys = sorted({lock_key(n) for n in names})
    if keys:
        await cur.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(k, n)"
            " ORDER BY n",
            (keys,),
        )


class PostgresSpool:
    """The PostgreSQL spool; see the module docstring for the cluster rules."""

    def __init__(
        self,
        url: str,
        *,
        node: str = "",
        lease: float = DEFAULT_LEASE,
        pool_size: int = POOL_SIZE,
        progress_fsync: float = DEFAULT_PROGRESS_FSYNC,
    ) -> None:
        self._url = url
        self.node = node or default_node()
        self.lease = lease
        # Issue 9: > 0: claims and recorded submits commit with synchronous_commit = off (the
        # server's WAL writer flushes them within 3 × wal_writer_delay; see Spool's docstring).
        self._progress_async = progress_fsync > 0
        self._pool_size = pool_size
        self._pool: psycopg_pool.AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._callbacks: list[Callable[[], None]] = []
        self._limits: LimitsConfig | None = None  # the latest seen: what pruning may drop
        self._beating = False  # heartbeat() was called: close() takes this node out of `nodes`
        self.listening = asyncio.Event()  # set while LISTEN is active (tests, health)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        pool: psycopg_pool.AsyncConnectionPool[AsyncConnection[TupleRow]] = (
            psycopg_pool.AsyncConnectionPool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                kwargs={"autocommit": True},
                open=False,
                name="spool",
            )
        )
        try:
            # One plain connection first: an unreachable server fails at once, with its reason
            # (the pool would retry until its timeout); the schema is migrated on it.
            async with await AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=15
            ) as conn:
                applied = await migrate(conn)
            await pool.open(wait=True, timeout=15)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise SpoolError(f"cannot open spool {_safe(self._url)}: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        for m in applied:
            log.warning("spool schema migrated to version %d (%s)", m.version, m.name)
        self._pool = pool
        self._tasks = [
            asyncio.create_task(self._maintain(), name="spool-leases"),
            asyncio.create_task(self._listen(), name="spool-listen"),
        ]

    async def close(self) -> None:
        if self._pool is not None and self._beating:
            # Leave the live nodes at once: the others take over this node's share.
            with contextlib.suppress(SpoolError):
                await self._tx(self._leave)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` when any node stores jobs or mails (LISTEN/NOTIFY)."""
        self._callbacks.append(callback)

    async def heartbeat(self, now: float, live_within: float) -> int:
        self._beating = True

        async def op(cur: _Cursor) -> int:
            await cur.execute(
                "INSERT INTO nodes(node, last_seen) VALUES (%s, %s)"
                " ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen",
                (self.node, now),
            )
            await cur.execute(
                "SELECT COUNT(*) FROM nodes WHERE last_seen > %s OR node = %s",
                (now - live_within, self.node),
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 1

        return await self._tx(op)

    async def _leave(self, cur: _Cursor) -> None:
        await cur.execute("DELETE FROM nodes WHERE node = %s", (self.node,))

    # -- transactions ----------------------------------------------------------------------

    async def _tx(self, op: Callable[[_Cursor], Awaitable[T]], *, durable: bool = True) -> T:
        """Run `op` in one transaction; `durable=False`: a progress commit (Spool docstring)."""
        if self._pool is None:
            raise SpoolError("spool is not open")
        for attempt in range(1, _RETRIES + 1):
            try:
                async with (
                    self._pool.connection() as conn,
                    conn.transaction(),
                    conn.cursor() as cur,
                ):
                    if not durable and self._progress_async:
                        # This transaction only: its COMMIT returns without waiting for the
                        # WAL flush; every other commit on the server still waits for it.
                        await cur.execute("SET LOCAL synchronous_commit = off")
                    return await op(cur)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                if attempt == _RETRIES:
                    raise SpoolError(f"spool operation failed: {exc}") from exc
                log.warning("spool transaction retried after: %s", exc)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                raise SpoolError(f"spool operation failed: {exc}") from exc
        raise AssertionError("unreachable")

    # -- background: leases, pruning, notifications ----------------------------------------

    async def _maintain(self) -> None:
        """Renew this node's leases every lease/3; prune expired SPEC §5 state now and then."""
        every = max(0.2, self.lease / 3)
        pruned = 0.0
        while True:
            await asyncio.sleep(every)
            now = time.time()
            try:
                await self._renew(now)
                if now - pruned >= PRUNE_EVERY and self._limits is not None:
                    await self._prune(self._limits, now)
                    pruned = now
            except SpoolError as exc:
                log.warning("spool lease renewal failed: %s", exc)

    async def _renew(self, now: float) -> None:
        until = now + self.lease

        async def op(cur: _Cursor) -> None:
            for table in _LEASED:
                await cur.execute(
                    sql.SQL(
                        "UPDATE {} SET lease_until = %s WHERE state = 'sending' AND node = %s"
                    ).format(sql.Identifier(table)),
                    (until, self.node),
                )
            # A claimed notice is held until it is settled (deleted) or its lease runs out.
            await cur.execute(
                "UPDATE notices SET lease_until = %s WHERE node = %s AND lease_until > 0",
                (until, self.node),
            )

        await self._tx(op)

    async def _prune(self, limits: LimitsConfig, now: float) -> None:
        """Delete SPEC §5 state no check can see any more; rows another node holds are skipped."""

        async def op(cur: _Cursor) -> None:
            await cur.execute(
                "DELETE FROM fingerprints WHERE ctid IN (SELECT ctid FROM fingerprints"
                " WHERE at <= %s LIMIT 10000 FOR UPDATE SKIP LOCKED)",
                (now - limits.duplicate_window,),
            )
            await cur.execute(
                "DELETE FROM flood WHERE dest IN (SELECT dest FROM flood"
                " WHERE last <= %s LIMIT 10000 FOR UPDATE SKIP LOCKED)",
                (now - limits.flood_interval,),
            )
            await cur.execute(
                "DELETE FROM ip_failures WHERE ctid IN (SELECT ctid FROM ip_failures"
                " WHERE at <= %s LIMIT 10000 FOR UPDATE SKIP LOCKED)",
                (now - limits.ip_fail_window,),
            )
            await cur.execute(
                "DELETE FROM rate_events WHERE ctid IN (SELECT ctid FROM rate_events"
                " WHERE at <= %s LIMIT 10000 FOR UPDATE SKIP LOCKED)",
                (now - MINUTE,),
            )
            await cur.execute(
                "DELETE FROM rate_days WHERE ctid IN (SELECT ctid FROM rate_days"
                " WHERE day < %s LIMIT 10000 FOR UPDATE SKIP LOCKED)",
                (utc_day(now),),
            )

        await self._tx(op)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnect with backoff (polling covers the gap)."""
        delay = 0.5
        while True:
            try:
                conn = await AsyncConnection.connect(self._url, autocommit=True)
            except psycopg.Error as exc:
                log.warning("spool LISTEN connection failed (polling only): %s", exc)
                await asyncio.sleep(delay)
                delay = min(30.0, delay * 2)
                continue
            try:
                await conn.execute("LISTEN relay_spool")  # CHANNEL
                self.listening.set()
                delay = 0.5
                async for _ in conn.notifies():
                    for callback in self._callbacks:
                        callback()
            except psycopg.Error as exc:
                log.warning("spool LISTEN connection lost (polling only): %s", exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            await asyncio.sleep(delay)

    # -- requests --------------------------------------------------------------------------

    async def store(self, request: NewRequest) -> StoreResult:
        [result] = await self.store_all([request])
        return result

    async def store_all(self, requests: Sequence[NewRequest]) -> list[StoreResult]:
        batch = list(requests)
        if not batch:
            return []
        locks = [name for request in batch for name in _store_locks(request)]
        for request in batch:
            if request.limits is not None:
                self._limits = request.limits

        async def op(cur: _Cursor) -> list[StoreResult]:
            await _lock(cur, locks)
            known: set[str] = set()
            for request in batch:
                await cur.execute("SELECT 1 FROM requests WHERE key = %s", (request.key,))
                if await cur.fetchone() is not None:
                    known.add(request.key)
            checks = tempfail_checks(batch, known)
            if checks:
                usage = await _rate_usage(cur, checks, batch[0].created)
                overs = rate_overs(batch, known, usage)
                if overs:  # `rate_action = "tempfail"`: nothing of the mail is written
                    return [StoreResult(stored=False, over=overs.get(i)) for i in range(len(batch))]
            return [await _store_one(cur, request) for request in batch]

        return await self._tx(op)

    async def ip_blocked(self, client_ip: str, now: float) -> bool:
        async def op(cur: _Cursor) -> bool:
            await cur.execute(
                "SELECT 1 FROM ip_blocks WHERE ip = %s AND until > %s", (client_ip, now)
            )
            return await cur.fetchone() is not None

        return await self._tx(op)

    async def balance(self, login: str) -> int | None:
        async def op(cur: _Cursor) -> int | None:
            await cur.execute("SELECT remaining FROM balances WHERE login = %s", (login.lower(),))
            row = await cur.fetchone()
            return None if row is None else int(row[0])

        return await self._tx(op)

    async def recover(self) -> int:
        """Requeue this node's own `sending` jobs, mails and callbacks (others' wait for their
        lease); release the notices it held."""

        async def op(cur: _Cursor) -> int:
            n = 0
            for table in _LEASED:
                await cur.execute(
                    sql.SQL(
                        "UPDATE {} SET state = 'queued' WHERE state = 'sending' AND node = %s"
                    ).format(sql.Identifier(table)),
                    (self.node,),
                )
                n += cur.rowcount
            await cur.execute(
                "UPDATE notices SET lease_until = 0 WHERE node = %s AND lease_until > 0",
                (self.node,),
            )
            return n

        return await self._tx(op)

    # -- SMS jobs --------------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[Job]:
        async def op(cur: _Cursor) -> list[Job]:
            await _reclaim(cur, "jobs", now)
            await cur.execute(
                "WITH picked AS (SELECT id FROM jobs"
                " WHERE state = 'queued' AND not_before <= %(now)s"
                " ORDER BY not_before, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                " UPDATE jobs j SET state = 'sending', attempts = j.attempts + 1,"
                " updated = %(now)s, node = %(node)s, lease_until = %(until)s"
                " FROM picked, requests r WHERE j.id = picked.id AND r.pk = j.request_pk"
                " RETURNING j.id, r.request_id, j.phone, j.part, j.parts, j.submit, j.attempts,"
                " j.expires_at, r.created, j.not_before",
                {"now": now, "limit": limit, "node": self.node, "until": now + self.lease},
            )
            rows = sorted(await cur.fetchall(), key=lambda r: (r[9], r[0]))
            return [
                Job(
                    id=r[0],
                    request_id=r[1],
                    phone=r[2],
                    part=r[3],
                    parts=r[4],
                    submit=submit_from_json(r[5]),
                    attempts=r[6],
                    expires_at=r[7],
                    created=r[8],
                )
                for r in rows
            ]

        return await self._tx(op, durable=False)  # lost: the jobs are claimed again

    async def next_due(self) -> float | None:
        async def op(cur: _Cursor) -> float | None:
            await cur.execute("SELECT MIN(not_before) FROM jobs WHERE state = 'queued'")
            row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._tx(op)

    async def mark_submitted(
        self, job_id: int, upstream_id: str, keys: tuple[str, ...], now: float
    ) -> JobState:
        [state] = await self.mark_submitted_many([Submitted(job_id, upstream_id, keys)], now)
        return state

    async def mark_submitted_many(
        self, submitted: Sequence[Submitted], now: float
    ) -> list[JobState]:
        items = list(submitted)

        async def op(cur: _Cursor) -> list[JobState]:
            await _lock(cur, [f"upstream:{k}" for s in items for k in s.keys])
            await cur.executemany(
                "UPDATE jobs SET state = 'submitted', upstream_id = %s, error = '', updated = %s"
                " WHERE id = %s",
                [(s.upstream_id, now, s.job_id) for s in items],
            )
            rows = [(k, s.job_id) for s in items for k in s.keys]
            if rows:
                await cur.executemany(
                    "INSERT INTO upstream_keys(key, job_id) VALUES (%s, %s)", rows
                )
            states = [JobState.SUBMITTED] * len(items)
            if not rows:
                return states
            owner: dict[str, int] = {}  # key → the first job of the batch that has it
            for i, s in enumerate(items):
                for k in s.keys:
                    owner.setdefault(k, i)
            await cur.execute(
                "DELETE FROM early_receipts WHERE key = ANY(%s)"
                " RETURNING received, id, state, receipt, key",
                (list(owner),),
            )
            for _, _, rstate, receipt, key in sorted(await cur.fetchall()):
                i = owner[key]
                applied, _ = await _apply(cur, items[i].job_id, rstate or None, receipt, now)
                states[i] = applied or states[i]
            return states

        # Lost (power loss only): the jobs stay `sending` and are sent again.
        return await self._tx(op, durable=False) if items else []

    async def release(self, job_ids: Sequence[int]) -> None:
        ids = list(job_ids)

        async def op(cur: _Cursor) -> None:
            await cur.execute(
                "UPDATE jobs SET state = 'queued', attempts = GREATEST(0, attempts - 1)"
                " WHERE id = ANY(%s) AND state = 'sending' AND node = %s",
                (ids, self.node),
            )

        if ids:
            await self._tx(op)

    async def mark_retry(self, job_id: int, not_before: float, error: str) -> None:
        async def op(cur: _Cursor) -> None:
            await cur.execute(
                "UPDATE jobs SET state = 'queued', not_before = %s, error = %s WHERE id = %s",
                (not_before, error, job_id),
            )

        await self._tx(op)

    async def mark_final(self, job_id: int, state: JobState, error: str, now: float) -> None:
        async def op(cur: _Cursor) -> None:
            was_final = await _lock_job(cur, job_id)
            await cur.execute(
                "UPDATE jobs SET state = %s, error = %s, updated = %s WHERE id = %s",
                (state.value, error, now, job_id),
            )
            if state.final and was_final is False:
                await _final_notice(cur, job_id, now)

        await self._tx(op)

    async def apply_receipt(
        self, keys: tuple[str, ...], state: JobState | None, receipt: dict[str, Any], now: float
    ) -> int:
        text = json.dumps(receipt, ensure_ascii=False, sort_keys=True)

        async def op(cur: _Cursor) -> int:
            if not keys:
                return 0
            await _lock(cur, [f"upstream:{k}" for k in keys])
            await cur.execute(
                "SELECT job_id FROM upstream_keys WHERE key = ANY(%s) ORDER BY job_id DESC LIMIT 1",
                (list(keys),),
            )
            row = await cur.fetchone()
            if row is None:
                # SPEC §9: a receipt may arrive before the submit_sm_resp is processed (on
                # this node or on the one that submitted it).
                await cur.execute(
                    "INSERT INTO early_receipts(key, state, receipt, received)"
                    " VALUES (%s, %s, %s, %s)",
                    (keys[0], state.value if state else "", text, now),
                )
                return 0
            # `_apply` reads "already final" under the job's locks: a receipt repeated on two
            # nodes at once is "applied" on exactly one of them.
            _, repeated = await _apply(cur, int(row[0]), state.value if state else None, text, now)
            return RECEIPT_REPEATED if repeated else RECEIPT_APPLIED

        return await self._tx(op)

    # -- mobile-originated SMS -------------------------------------------------------------

    async def store_mo(self, mo: MoMessage, now: float) -> int:
        async def op(cur: _Cursor) -> int:
            # One sender's parts get ids in commit order, so that the notifier's "the part stored
            # last completes the message" holds across nodes too (relay/notifier.py).
            await _lock(cur, [f"mo:{mo.source_addr}"])
            await cur.execute(
                "INSERT INTO mo(received, source_addr, destination_addr, esm_class, data_coding,"
                " short_message, tlvs) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    now,
                    mo.source_addr,
                    mo.destination_addr,
                    mo.esm_class,
                    mo.data_coding,
                    mo.short_message,
                    json.dumps(mo.tlvs, sort_keys=True),
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            mo_id = int(row[0])
            await cur.execute(
                "INSERT INTO notices(kind, mo_id, phone, created) VALUES ('mo', %s, %s, %s)",
                (mo_id, mo.source_addr, now),
            )
            return mo_id

        return await self._tx(op)

    async def mo_messages(self, limit: int = 100) -> list[tuple[int, float, MoMessage]]:
        async def op(cur: _Cursor) -> list[tuple[int, float, MoMessage]]:
            await cur.execute(
                "SELECT id, received, source_addr, destination_addr, esm_class, data_coding,"
                " short_message, tlvs FROM mo ORDER BY id DESC LIMIT %s",
                (limit,),
            )
            return [
                (r[0], r[1], MoMessage(r[2], r[3], r[4], r[5], bytes(r[6]), json.loads(r[7])))
                for r in await cur.fetchall()
            ]

        return await self._tx(op)

    # -- outbound mails --------------------------------------------------------------------

    async def claim_mails(self, limit: int, now: float) -> list[Mail]:
        async def op(cur: _Cursor) -> list[Mail]:
            await _reclaim(cur, "mails", now)
            await cur.execute(
                "WITH picked AS (SELECT id FROM mails"
                " WHERE state = 'queued' AND not_before <= %(now)s"
                " ORDER BY not_before, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                " UPDATE mails m SET state = 'sending', attempts = m.attempts + 1,"
                " updated = %(now)s, node = %(node)s, lease_until = %(until)s"
                " FROM picked WHERE m.id = picked.id"
                " RETURNING m.id, m.mail_from, m.rcpt, m.data, m.attempts, m.expires_at,"
                " m.not_before",
                {"now": now, "limit": limit, "node": self.node, "until": now + self.lease},
            )
            rows = sorted(await cur.fetchall(), key=lambda r: (r[6], r[0]))
            return [Mail(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

        return await self._tx(op)

    async def next_mail_due(self) -> float | None:
        async def op(cur: _Cursor) -> float | None:
            await cur.execute("SELECT MIN(not_before) FROM mails WHERE state = 'queued'")
            row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._tx(op)

    async def mark_mail_sent(self, mail_id: int, now: float) -> None:
        await self._set_mail(mail_id, "sent", "", now, None)

    async def mark_mail_retry(self, mail_id: int, not_before: float, error: str) -> None:
        await self._set_mail(mail_id, "queued", error, None, not_before)

    async def mark_mail_failed(self, mail_id: int, error: str, now: float) -> None:
        await self._set_mail(mail_id, "failed", error, now, None)

    async def _set_mail(
        self, mail_id: int, state: str, error: str, now: float | None, not_before: float | None
    ) -> None:
        async def op(cur: _Cursor) -> None:
            await cur.execute(
                "UPDATE mails SET state = %s, error = %s,"
                " updated = COALESCE(%s, updated), not_before = COALESCE(%s, not_before)"
                " WHERE id = %s",
                (state, error, now, not_before, mail_id),
            )

        await self._tx(op)

    # -- issue 8: notices, callbacks, MO answers -------------------------------------------

    async def claim_notices(self, limit: int, now: float | None = None) -> list[Notice]:
        """The oldest notices no other node holds, leased to this node until settled.

        A notice this node already holds is handed out again (its notifier stopped before
        settling it); one that another node holds waits for that node's lease to run out.
        """
        lease_now = time.time()  # the lease clock, as in _maintain
        due = lease_now if now is None else now

        async def op(cur: _Cursor) -> list[Notice]:
            await cur.execute(
                "WITH picked AS (SELECT id FROM notices"
                " WHERE (node = %(node)s OR lease_until < %(now)s) AND not_before <= %(due)s"
                " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                " UPDATE notices n SET node = %(node)s, lease_until = %(until)s"
                " FROM picked WHERE n.id = picked.id"
                " RETURNING n.id, n.kind, n.request_pk, n.entry, n.phone, n.mo_id, n.created",
                {
                    "now": lease_now,
                    "due": due,
                    "limit": limit,
                    "node": self.node,
                    "until": lease_now + self.lease,
                },
            )
            rows = sorted(await cur.fetchall(), key=lambda r: int(r[0]))
            return [await _notice(cur, *r) for r in rows]

        return await self._tx(op)

    async def settle_notices(self, outcomes: Sequence[NoticeOutcome], now: float) -> None:
        """Queue each outcome's callbacks and mails and delete its notice, in one transaction;
        a notice already settled (by another node, after this node's lease ran out) adds
        nothing, so each notice yields its callbacks and mails exactly once."""

        async def op(cur: _Cursor) -> None:
            # One stream's callbacks get ids in commit order (claims follow ids).
            await _lock(cur, [f"stream:{c.stream}" for o in outcomes for c in o.callbacks])
            queued = False
            for out in outcomes:
                if out.defer_until is not None:
                    # Looked at again then, by any node (an incomplete MO SMS, notifier.py).
                    await cur.execute(
                        "UPDATE notices SET not_before = %s, node = '', lease_until = 0"
                        " WHERE id = %s RETURNING id",
                        (out.defer_until, out.notice_id),
                    )
                else:
                    await cur.execute(
                        "DELETE FROM notices WHERE id = %s RETURNING id", (out.notice_id,)
                    )
                if await cur.fetchone() is None:
                    continue
                if out.callbacks:
                    await cur.executemany(
                        "INSERT INTO callbacks(stream, url, body, content_type, state,"
                        " not_before, expires_at, updated)"
                        " VALUES (%s, %s, %s, %s, 'queued', %s, %s, %s)",
                        [
                            (c.stream, c.url, c.body, c.content_type, now, c.expires_at, now)
                            for c in out.callbacks
                        ],
                    )
                if out.mails:
                    await cur.executemany(
                        "INSERT INTO mails(request_pk, mail_from, rcpt, data, state, not_before,"
                        " expires_at, updated) VALUES (NULL, %s, %s, %s, 'queued', %s, %s, %s)",
                        [(m.mail_from, m.rcpt, m.data, now, m.expires_at, now) for m in out.mails],
                    )
                queued = queued or bool(out.callbacks or out.mails)
            if queued:
                await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))  # sent at COMMIT

        await self._tx(op)

    async def claim_callbacks(self, limit: int, now: float) -> list[Callback]:
        """Due heads of streams, leased to this node. A stream whose head is `sending` (on any
        node) or waiting for a retry has no claimable callback: per-message order holds
        across nodes."""

        async def op(cur: _Cursor) -> list[Callback]:
            await _reclaim(cur, "callbacks", now)
            await cur.execute(
                "WITH picked AS (SELECT id FROM callbacks c"
                " WHERE state = 'queued' AND not_before <= %(now)s AND NOT EXISTS"
                " (SELECT 1 FROM callbacks p WHERE p.stream = c.stream AND p.id < c.id"
                " AND p.state IN ('queued', 'sending'))"
                " ORDER BY not_before, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                " UPDATE callbacks c SET state = 'sending', attempts = c.attempts + 1,"
                " updated = %(now)s, node = %(node)s, lease_until = %(until)s"
                " FROM picked WHERE c.id = picked.id AND c.state = 'queued'"
                " RETURNING c.id, c.stream, c.url, c.body, c.content_type, c.attempts,"
                " c.expires_at, c.not_before",
                {"now": now, "limit": limit, "node": self.node, "until": now + self.lease},
            )
            rows = sorted(await cur.fetchall(), key=lambda r: (r[7], r[0]))
            return [Callback(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

        return await self._tx(op)

    async def next_callback_due(self) -> float | None:
        async def op(cur: _Cursor) -> float | None:
            await cur.execute(
                "SELECT MIN(not_before) FROM callbacks c WHERE state = 'queued' AND NOT EXISTS"
                " (SELECT 1 FROM callbacks p WHERE p.stream = c.stream AND p.id < c.id"
                " AND p.state IN ('queued', 'sending'))"
            )
            row = await cur.fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._tx(op)

    async def mark_callback_sent(self, callback_id: int, now: float) -> None:
        await self._set_callback(callback_id, "sent", "", now, None)

    async def mark_callback_retry(self, callback_id: int, not_before: float, error: str) -> None:
        await self._set_callback(callback_id, "queued", error, None, not_before)

    async def mark_callback_failed(self, callback_id: int, error: str, now: float) -> None:
        await self._set_callback(callback_id, "failed", error, now, None)

    async def _set_callback(
        self, callback_id: int, state: str, error: str, now: float | None, nb: float | None
    ) -> None:
        async def op(cur: _Cursor) -> None:
            await cur.execute(
                "UPDATE callbacks SET state = %s, error = %s, updated = COALESCE(%s, updated),"
                " not_before = COALESCE(%s, not_before) WHERE id = %s",
                (state, error, now, nb, callback_id),
            )

        await self._tx(op)

    async def last_sent_to(self, phone: str, since: float) -> SentMessage | None:
        async def op(cur: _Cursor) -> SentMessage | None:
            # The newest job sent to the phone, then its age (see SqliteSpool.last_sent_to).
            await cur.execute(
                "SELECT j.request_pk, j.entry, r.request_id, r.login, r.mail_from, r.created"
                " FROM jobs j JOIN requests r ON r.pk = j.request_pk"
                " WHERE j.phone = %s AND j.upstream_id <> '' ORDER BY j.id DESC LIMIT 1",
                (phone,),
            )
            row = await cur.fetchone()
            if row is None or row[5] < since:
                return None
            await cur.execute(
                "SELECT submit FROM jobs WHERE request_pk = %s AND entry = %s AND phone = %s"
                " ORDER BY part",
                (row[0], row[1], phone),
            )
            submits = tuple(submit_from_json(r[0]) for r in await cur.fetchall())
            return SentMessage(row[2], row[3], row[4], phone, float(row[5]), submits)

        return await self._tx(op)

    async def mo_from(self, source_addr: str, since: float) -> list[tuple[int, float, MoMessage]]:
        async def op(cur: _Cursor) -> list[tuple[int, float, MoMessage]]:
            await cur.execute(
                "SELECT id, received, source_addr, destination_addr, esm_class, data_coding,"
                " short_message, tlvs FROM mo WHERE source_addr = %s AND received >= %s"
                " ORDER BY id",
                (source_addr, since),
            )
            return [
                (r[0], r[1], MoMessage(r[2], r[3], r[4], r[5], bytes(r[6]), json.loads(r[7])))
                for r in await cur.fetchall()
            ]

        return await self._tx(op)

    # -- retention (relay/spool/pg_prune.py) -----------------------------------------------

    async def prune(self, cutoffs: Cutoffs, limit: int, resume: dict[str, int]) -> PruneStep:
        async def op(cur: _Cursor) -> PruneStep:
            return await pg_prune.prune_batch(cur, cutoffs, limit, resume)

        return await self._tx(op)

    async def reclaim(self, pages: int) -> int:
        return 0  # autovacuum marks deleted rows' space reusable; nothing to do here

    # -- inspection ------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        async def op(cur: _Cursor) -> dict[str, int]:
            out = {s.value: 0 for s in JobState}
            await cur.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            for state, n in await cur.fetchall():
                out[state] = int(n)
            await cur.execute("SELECT state, COUNT(*) FROM mails GROUP BY state")
            for state, n in await cur.fetchall():
                out[f"mail_{state}"] = int(n)
            await cur.execute("SELECT state, COUNT(*) FROM callbacks GROUP BY state")
            for state, n in await cur.fetchall():
                out[f"callback_{state}"] = int(n)
            return out

        return await self._tx(op)

    async def request_status(self, request_id: str) -> list[JobView]:
        async def op(cur: _Cursor) -> list[JobView]:
            await cur.execute(
                "SELECT j.id, j.phone, j.entry, j.part, j.parts, j.state, j.attempts,"
                " j.upstream_id, j.error, j.receipt FROM jobs j"
                " JOIN requests r ON r.pk = j.request_pk WHERE r.request_id = %s"
                " ORDER BY j.id",
                (request_id,),
            )
            return [
                JobView(
                    id=r[0],
                    phone=r[1],
                    entry=r[2],
                    part=r[3],
                    parts=r[4],
                    state=r[5],
                    attempts=r[6],
                    upstream_id=r[7],
                    error=r[8],
                    receipt=json.loads(r[9]) if r[9] else {},
                )
                for r in await cur.fetchall()
            ]

        return await self._tx(op)

    # -- operator and health methods -------------------------------------------------------

    async def touch(self, now: float) -> None:
        async def op(cur: _Cursor) -> None:
            await cur.execute(
                "INSERT INTO meta(name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (f"heartbeat:{self.node}", repr(now)),
            )

        await self._tx(op)

    async def request_error(self, request_id: str) -> int | None:
        async def op(cur: _Cursor) -> int | None:
            await cur.execute(
                "SELECT MAX(error) FROM requests WHERE request_id = %s", (request_id,)
            )
            row = await cur.fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._tx(op)

    async def requeue(self, request_id: str, now: float, validity: float) -> int:
        async def op(cur: _Cursor) -> int:
            await cur.execute(
                "UPDATE jobs SET state = 'queued', attempts = 0, not_before = %s,"
                " expires_at = %s, error = '', upstream_id = '', receipt = '', updated = %s"
                " WHERE state = ANY(%s) AND request_pk IN"
                " (SELECT pk FROM requests WHERE request_id = %s)",
                (now, now + validity, now, _REQUEUEABLE, request_id),
            )
            n = cur.rowcount
            if n:
                await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            return n

        return await self._tx(op)

    async def cancel(self, request_id: str, now: float) -> int:
        async def op(cur: _Cursor) -> int:
            await cur.execute(
                "SELECT DISTINCT j.request_pk, j.entry, j.phone FROM jobs j"
                " JOIN requests r ON r.pk = j.request_pk"
                " WHERE r.request_id = %s AND j.state = 'queued'",
                (request_id,),
            )
            messages = [(int(r[0]), int(r[1]), str(r[2])) for r in await cur.fetchall()]
            if not messages:
                return 0
            await _lock(cur, [_message_lock(*m) for m in messages])
            await cur.execute(
                "UPDATE jobs SET state = 'cancelled', error = 'cancelled by operator',"
                " updated = %s WHERE state = 'queued' AND request_pk IN"
                " (SELECT pk FROM requests WHERE request_id = %s)"
                " RETURNING request_pk, entry, phone",
                (now, request_id),
            )
            n = cur.rowcount
            done = {(int(r[0]), int(r[1]), str(r[2])) for r in await cur.fetchall()}
            # A job requeued between the SELECT and the UPDATE: lock its message too (out of
            # order, so a deadlock is possible; _tx retries it).
            await _lock(cur, [_message_lock(*m) for m in done - set(messages)])
            for message in sorted(done):
                await _message_notice(cur, message, now)
            return n

        return await self._tx(op)


async def migrate_url(url: str) -> tuple[list[Migration], int]:
    """`sms-relay migrate`: apply the missing migrations; return them and the version reached."""
    try:
        async with await AsyncConnection.connect(url, autocommit=True, connect_timeout=15) as conn:
            applied = await migrate(conn)
            return applied, await schema_version(conn)
    except psycopg.Error as exc:
        raise SpoolError(f"cannot migrate spool {_safe(url)}: {exc}") from exc


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}@{host}"


async def _reclaim(cur: _Cursor, table: str, now: float) -> None:
    """Put back in the queue what a dead (or stalled) node held past its lease (issue 10)."""
    await cur.execute(
        sql.SQL(
            "UPDATE {0} SET state = 'queued' WHERE id IN (SELECT id FROM {0}"
            " WHERE state = 'sending' AND lease_until < %s FOR UPDATE SKIP LOCKED)"
        ).format(sql.Identifier(table)),
        (now,),
    )
    if cur.rowcount:
        log.warning("reclaimed %d %s whose lease ran out (a node died?)", cur.rowcount, table)


async def _apply(
    cur: _Cursor, job_id: int, state: str | None, receipt: str, now: float
) -> tuple[JobState | None, bool]:
    """Store a receipt on a job; move it to a final state when the receipt says so. Returns
    the state set (None: none) and whether a state receipt found the job already final."""
    if state:
        was_final = await _lock_job(cur, job_id)
        await cur.execute(
            "UPDATE jobs SET state = %s, receipt = %s, updated = %s WHERE id = %s",
            (state, receipt, now, job_id),
        )
        if JobState(state).final and was_final is False:
            await _final_notice(cur, job_id, now)
        return JobState(state), was_final is True
    await cur.execute(
        "UPDATE jobs SET receipt = %s, updated = %s WHERE id = %s", (receipt, now, job_id)
    )
    return None, False


# -- issue 8: status notices, exactly once per message across nodes ----------------------------

_Message = tuple[int, int, str]  # (request_pk, entry, phone): one message of a request


def _message_lock(request_pk: int, entry: int, phone: str) -> str:
    return f"message:{request_pk}:{entry}:{phone}"


async def _lock_job(cur: _Cursor, job_id: int) -> bool | None:
    """Lock the job's message (advisory) and then its row; return whether it is final now
    (None: no such job).

    Every change that can make a part final takes the message lock first, so the "is every
    part final now?" check of the last two parts, applied on two nodes at once, runs one after
    the other: the second sees the first's commit and exactly one notice is written. The row
    lock makes the was-final test see the latest commit (a receipt repeated on two nodes).
    """
    await cur.execute("SELECT request_pk, entry, phone FROM jobs WHERE id = %s", (job_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    await _lock(cur, [_message_lock(int(row[0]), int(row[1]), str(row[2]))])
    await cur.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
    row = await cur.fetchone()
    return None if row is None else JobState(row[0]).final


async def _final_notice(cur: _Cursor, job_id: int, now: float) -> None:
    """A job just became final (its message lock is held): notice its message when whole."""
    await cur.execute("SELECT request_pk, entry, phone FROM jobs WHERE id = %s", (job_id,))
    row = await cur.fetchone()
    if row is not None:
        await _message_notice(cur, (int(row[0]), int(row[1]), str(row[2])), now)


async def _message_notice(cur: _Cursor, message: _Message, now: float) -> None:
    """Write a `status` notice when no part of the message is still moving."""
    await cur.execute(
        "SELECT 1 FROM jobs WHERE request_pk = %s AND entry = %s AND phone = %s"
        " AND state IN ('queued', 'sending', 'submitted') LIMIT 1",
        message,
    )
    if await cur.fetchone() is None:
        await cur.execute(
            "INSERT INTO notices(kind, request_pk, entry, phone, created)"
            " VALUES ('status', %s, %s, %s, %s)",
            (*message, now),
        )


async def _notice(
    cur: _Cursor,
    notice_id: int,
    kind: str,
    request_pk: int | None,
    entry: int,
    phone: str,
    mo_id: int | None,
    created: float,
) -> Notice:
    if kind == "mo":
        await cur.execute(
            "SELECT received, source_addr, destination_addr, esm_class, data_coding,"
            " short_message, tlvs FROM mo WHERE id = %s",
            (mo_id,),
        )
        r = await cur.fetchone()
        mo = MoMessage(r[1], r[2], r[3], r[4], bytes(r[5]), json.loads(r[6])) if r else None
        return Notice(notice_id, kind, created, phone=phone, mo_id=mo_id or 0, mo=mo)
    await cur.execute(
        "SELECT request_id, login, mail_from FROM requests WHERE pk = %s", (request_pk,)
    )
    req = await cur.fetchone()
    await cur.execute(
        "SELECT state, error, receipt FROM jobs"
        " WHERE request_pk = %s AND entry = %s AND phone = %s ORDER BY part",
        (request_pk, entry, phone),
    )
    jobs = await cur.fetchall()
    state = message_state([j[0] for j in jobs])
    err = next((error_code(j[2], j[1]) for j in jobs if j[0] != JobState.DELIVERED.value), 0)
    return Notice(
        notice_id,
        kind,
        created,  # when the message became final
        request_id=req[0] if req else "",
        login=req[1] if req else "",
        mail_from=req[2] if req else "",
        phone=phone,
        entry=entry,
        state=state,
        err=err,
        parts=len(jobs),
    )


def _store_locks(request: NewRequest) -> list[str]:
    """The advisory locks `store` takes for `request`: every key its checks read or write."""
    limits = request.limits
    adm = admitted(request)
    locks = [f"key:{request.key}"]  # the same key from two nodes: one stores it
    if adm is not None:
        locks += [f"rate:{c.name}" for c in active(adm.rates)]
        locks += [f"dest:{d}" for d in adm.destinations]
        if adm.fingerprint:
            locks.append(f"fp:{adm.fingerprint}")
        if adm.balance is not None:
            locks.append(f"balance:{request.login.lower()}")
    count_ip = limits is not None and request.ip_failure and bool(request.client_ip)
    if count_ip or request.error == ErrorCode.IP_BLOCKED:
        locks.append(f"ip:{request.client_ip}")
    return locks


async def _store_one(cur: _Cursor, request: NewRequest) -> StoreResult:
    """`Spool.store` of one request, in the caller's transaction (holding its locks)."""
    limits = request.limits
    adm = admitted(request)
    count_ip = limits is not None and request.ip_failure and bool(request.client_ip)
    await cur.execute("SELECT 1 FROM requests WHERE key = %s", (request.key,))
    if await cur.fetchone() is not None:
        return StoreResult(stored=False)  # the key was stored before
    now = request.created
    streaks: dict[str, tuple[int, float]] = {}
    if limits is not None and adm is not None:
        checks = active(adm.rates)
        over = first_exceeded(checks, await _rate_usage(cur, checks, now), adm.parts)
        if over is not None:
            return StoreResult(stored=False, refused=int(ErrorCode.UNDELIVERABLE), over=over)
        refused = await _admit(cur, adm, limits, request.login, now, streaks)
        if refused:
            # Committed like the SQLite spool: a re-based balance row, nothing else.
            return StoreResult(stored=False, refused=refused)
    await cur.execute(
        "INSERT INTO requests"
        "(key, request_id, login, mail_from, client_ip, created, error, comment)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING pk",
        (
            request.key,
            request.request_id,
            request.login,
            request.mail_from,
            request.client_ip,
            request.created,
            request.error,
            request.comment,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    pk = int(row[0])
    mails = request.mails
    if (
        request.error == ErrorCode.IP_BLOCKED
        and mails
        and not await _first_block_reply(cur, request.client_ip, now)
    ):
        mails = ()  # SPEC §5 IP block: one ERROR 4 reply per block, not a reply storm
    if request.jobs:
        await cur.executemany(
            "INSERT INTO jobs(request_pk, phone, entry, part, parts, submit, state,"
            " not_before, expires_at, updated)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'queued', %s, %s, %s)",
            [job_row(pk, j, request.created) for j in request.jobs],
        )
    if mails:
        await cur.executemany(
            "INSERT INTO mails(request_pk, mail_from, rcpt, data, state, not_before,"
            " expires_at, updated) VALUES (%s, %s, %s, %s, 'queued', %s, %s, %s)",
            [
                (
                    pk,
                    m.mail_from,
                    m.rcpt,
                    m.data,
                    request.created,
                    m.expires_at,
                    request.created,
                )
                for m in mails
            ],
        )
    if adm is not None:
        await _debit(cur, adm, request.login, now, streaks)
        await _count_rates(cur, active(adm.rates), adm.parts, now)
    if count_ip and limits is not None:
        await _count_failure(cur, request.client_ip, limits, now)
    if request.jobs or mails:
        await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))  # sent at COMMIT
    return StoreResult(stored=True)


async def _rate_usage(cur: _Cursor, checks: tuple[RateCheck, ...], now: float) -> dict[str, Usage]:
    """Issue 6: what each guard's key used in the last minute and this UTC day."""
    usage: dict[str, Usage] = {}
    for check in checks:
        await cur.execute(
            "SELECT COUNT(*) FROM rate_events WHERE key = %s AND at > %s",
            (check.name, now - MINUTE),
        )
        minute = await cur.fetchone()
        await cur.execute(
            "SELECT parts FROM rate_days WHERE key = %s AND day = %s", (check.name, utc_day(now))
        )
        day = await cur.fetchone()
        usage[check.name] = Usage(int(minute[0]) if minute else 0, int(day[0]) if day else 0)
    return usage


async def _count_rates(cur: _Cursor, checks: tuple[RateCheck, ...], parts: int, now: float) -> None:
    """Count one admitted request of `parts` parts on each guard (expired rows: `_prune`)."""
    for check in checks:
        await cur.execute("INSERT INTO rate_events(key, at) VALUES (%s, %s)", (check.name, now))
        await cur.execute(
            "INSERT INTO rate_days(key, day, parts) VALUES (%s, %s, %s)"
            " ON CONFLICT (key, day) DO UPDATE SET parts = rate_days.parts + excluded.parts",
            (check.name, utc_day(now), parts),
        )


# -- SPEC §5 protections (the callers hold the advisory locks of every key used here) ----------


async def _admit(
    cur: _Cursor,
    adm: Admission,
    limits: LimitsConfig,
    login: str,
    now: float,
    streaks: dict[str, tuple[int, float]],
) -> int:
    """Flood (8) → duplicates (9) → balance (3): 0 when all pass, else the refusing code.

    The same rules as the SQLite spool's `_admit`; expired rows are ignored here (a streak
    older than flood_interval starts afresh) and pruned in the background.
    """
    await cur.execute(
        "SELECT dest, streak, last FROM flood WHERE dest = ANY(%s)", (list(adm.destinations),)
    )
    known = {r[0]: (int(r[1]), float(r[2])) for r in await cur.fetchall()}
    for dest in adm.destinations:
        streak, last = streaks.get(dest) or known.get(dest) or (0, float("-inf"))
        streak = streak + 1 if now - last < limits.flood_interval else 1
        if streak > limits.flood_count:
            return int(ErrorCode.UNDELIVERABLE)
        streaks[dest] = (streak, now)
    if adm.fingerprint:
        await cur.execute(
            "SELECT COUNT(*) FROM fingerprints WHERE fp = %s AND at > %s",
            (adm.fingerprint, now - limits.duplicate_window),
        )
        row = await cur.fetchone()
        if row is not None and int(row[0]) >= limits.duplicate_allowed:
            return int(ErrorCode.DUPLICATE)
    if adm.balance is not None:
        key = login.lower()
        await cur.execute("SELECT configured, remaining FROM balances WHERE login = %s", (key,))
        row = await cur.fetchone()
        if row is None:
            remaining = adm.balance
            await cur.execute(
                "INSERT INTO balances(login, configured, remaining) VALUES (%s, %s, %s)",
                (key, adm.balance, remaining),
            )
        else:
            remaining = int(row[1])
            if int(row[0]) != adm.balance:
                remaining += adm.balance - int(row[0])
                await cur.execute(
                    "UPDATE balances SET configured = %s, remaining = %s WHERE login = %s",
                    (adm.balance, remaining, key),
                )
        if adm.parts > remaining:
            return int(ErrorCode.FUNDS)
    return 0


async def _debit(
    cur: _Cursor,
    adm: Admission,
    login: str,
    now: float,
    streaks: dict[str, tuple[int, float]],
) -> None:
    """Record an admitted request: flood streaks, its fingerprint, the parts it uses."""
    if streaks:
        await cur.executemany(
            "INSERT INTO flood(dest, streak, last) VALUES (%s, %s, %s)"
            " ON CONFLICT (dest) DO UPDATE SET streak = excluded.streak, last = excluded.last",
            [(dest, streak, last) for dest, (streak, last) in streaks.items()],
        )
    if adm.fingerprint:
        await cur.execute(
            "INSERT INTO fingerprints(fp, at) VALUES (%s, %s)", (adm.fingerprint, now)
        )
    if adm.balance is not None and adm.parts:
        await cur.execute(
            "UPDATE balances SET remaining = remaining - %s WHERE login = %s",
            (adm.parts, login.lower()),
        )


async def _count_failure(cur: _Cursor, ip: str, limits: LimitsConfig, now: float) -> None:
    """SPEC §5 IP block: more than ip_fail_count failures within ip_fail_window → blocked."""
    await cur.execute(
        "DELETE FROM ip_failures WHERE ip = %s AND at <= %s", (ip, now - limits.ip_fail_window)
    )
    await cur.execute("INSERT INTO ip_failures(ip, at) VALUES (%s, %s)", (ip, now))
    await cur.execute(
        "SELECT COUNT(*) FROM ip_failures WHERE ip = %s AND at > %s",
        (ip, now - limits.ip_fail_window),
    )
    row = await cur.fetchone()
    if row is not None and int(row[0]) > limits.ip_fail_count:
        await cur.execute(
            "INSERT INTO ip_blocks(ip, until, notified) VALUES (%s, %s, false)"
            " ON CONFLICT (ip) DO UPDATE SET until = excluded.until, notified = false",
            (ip, now + limits.ip_block_time),
        )
        # The count starts afresh when the block ends.
        await cur.execute("DELETE FROM ip_failures WHERE ip = %s", (ip,))


async def _first_block_reply(cur: _Cursor, ip: str, now: float) -> bool:
    """True for the first ERROR 4 reply of the IP's current block (and remember it was sent)."""
    await cur.execute(
        "SELECT notified FROM ip_blocks WHERE ip = %s AND until > %s FOR UPDATE", (ip, now)
    )
    row = await cur.fetchone()
    if row is None:
        return True  # the block ended between the front's check and this store
    if row[0]:
        return False
    await cur.execute("UPDATE ip_blocks SET notified = true WHERE ip = %s", (ip,))
    return True
