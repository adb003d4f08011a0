"""The SQLite spool stays fast when large (issue #9, goal 4: 1 000 000 jobs in the spool).

Checkpoints run outside the writer's COMMITs, and the queries that run per job, per scrape or per
operator command use an index instead of walking the jobs table.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.smpp.model import SubmitSm
from relay.spool.model import JobState, NewJob, NewMail, NewRequest
from relay.spool.sqlite import SqliteSpool
from tests.postgres import SpoolStore


def _request(i: int) -> NewRequest:
    sm = SubmitSm("Alex", 5, 0, "79161234567", b"x" * 140, 0)
    job = NewJob("+79161234567", 1, 1, 1, sm, not_before=100.0, expires_at=1e12)
    return NewRequest(f"k{i}", f"id-{i}", "alex", "ops@x", "127.0.0.1", 100.0, (job,))


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _wait_size_over(path: Path, size: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while _size(path) <= size and time.monotonic() < deadline:
        time.sleep(0.05)
    return _size(path)


async def test_checkpoints_copy_the_wal_while_the_spool_is_open(tmp_path: Path) -> None:
    """The writer's connection never checkpoints (wal_autocheckpoint=0), so the database file
    itself grows only when the checkpointer thread copies the WAL into it."""
    path, wal = tmp_path / "spool.db", tmp_path / "spool.db-wal"
    stored = 500 * 140  # bytes of short messages alone
    spool = SqliteSpool(path)
    await spool.open()
    try:
        empty = _size(path)
        await asyncio.gather(*(spool.store(_request(i)) for i in range(500)))
        assert _size(wal) > stored  # committed: the jobs are in the WAL
        grown = await asyncio.to_thread(_wait_size_over, path, empty + stored, 5.0)
        assert grown > empty + stored, "the WAL was not checkpointed while the spool was open"
    finally:
        await spool.close()
    assert _size(wal) == 0  # the last connection's close checkpointed and removed it


async def test_reopened_spool_sees_every_commit(tmp_path: Path) -> None:
    """Commits are durable whether or not a checkpoint copied them before the close."""
    path = tmp_path / "spool.db"
    for round_ in range(3):
        spool = SqliteSpool(path)
        await spool.open()
        try:
            await asyncio.gather(*(spool.store(_request(round_ * 100 + i)) for i in range(100)))
            assert (await spool.counts())["queued"] == (round_ + 1) * 100
        finally:
            await spool.close()


# Plans that walk a whole table (or all jobs of one state) cost time in proportion to the spool:
# SCAN of these tables is allowed only through the partial "queued" indexes (due order, LIMIT).
_BIG = ("jobs", "j", "requests", "r", "mails", "callbacks", "c")
_ORDERED = ("jobs_queued", "mails_queued", "callbacks_queued")


def _bad_steps(conn: sqlite3.Connection, statement: str) -> list[str]:
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
    bad = []
    for step in plan:
        words = step.split()
        if words[0] == "SCAN" and words[1] in _BIG and not any(i in step for i in _ORDERED):
            bad.append(step)
        # All jobs in one state: fine for recover()'s `sending` (at most a window per bind),
        # not for anything that looks for one request's jobs.
        if "jobs_state" in step and "request" in statement:
            bad.append(step)
    return bad


async def test_per_job_and_operator_statements_use_an_index(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = SqliteSpool(path)
    await spool.open()
    statements: list[str] = []
    try:
        for i in range(20):
            mail = NewMail("relay@x", "ops@x", b"Subject: x\r\n\r\nOK\r\n", 1e12)
            await spool.store(replace(_request(i), mails=(mail,)))
        # Observe the writer connection's own statements, bound values expanded.
        await spool._do(lambda conn: conn.set_trace_callback(statements.append))
        await spool.recover()
        jobs = await spool.claim(5, now=200.0)
        await spool.next_due()
        await spool.mark_submitted(jobs[0].id, "u0", ("u0",), 200.0)
        await spool.apply_receipt(("u0",), JobState.DELIVERED, {"stat": "DELIVRD"}, 201.0)
        await spool.apply_receipt(("early",), JobState.DELIVERED, {"stat": "DELIVRD"}, 201.0)
        await spool.mark_final(jobs[1].id, JobState.REJECTED, "bad", 202.0)
        await spool.mark_retry(jobs[2].id, 300.0, "later")
        await spool.request_status("id-1")
        await spool.request_error("id-1")
        assert await spool.requeue("id-1", 203.0, 3600.0) == 1
        assert await spool.cancel("id-7", 204.0) == 1
        mails = await spool.claim_mails(5, now=200.0)
        await spool.next_mail_due()
        await spool.mark_mail_sent(mails[0].id, 205.0)
        await spool._do(lambda conn: conn.set_trace_callback(None))
        await spool.counts()  # on a reader: a full count by design, off the writer thread
    finally:
        await spool.close()
    checked = [s for s in statements if s.split()[0].upper() in ("SELECT", "UPDATE", "DELETE")]
    assert len(checked) > 15
    conn = sqlite3.connect(path)
    try:
        bad = {s: steps for s in checked if (steps := _bad_steps(conn, s))}
    finally:
        conn.close()
    assert not bad, bad


async def test_counts_reads_beside_a_busy_writer(tmp_path: Path) -> None:
    """counts() runs on its own read connection: right while stores are being committed."""
    spool = SqliteSpool(tmp_path / "spool.db")
    await spool.open()
    try:
        stores = [spool.store(_request(i)) for i in range(300)]
        counted, *_ = await asyncio.gather(spool.counts(), *stores)
        assert 0 <= counted["queued"] <= 300
        assert (await spool.counts())["queued"] == 300
    finally:
        await spool.close()
    with pytest.raises(SpoolError):
        await spool.counts()


async def test_last_sent_to_is_the_newest_sent_job_within_the_window(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        for i, created in enumerate((100.0, 200.0, 300.0)):
            await spool.store(replace(_request(i), created=created))
        first, second, _third = await spool.claim(3, now=400.0)
        await spool.mark_submitted(first.id, "A", ("A",), 401.0)
        await spool.mark_submitted(second.id, "B", ("B",), 402.0)
        sent = await spool.last_sent_to("+79161234567", 150.0)
        assert sent is not None and sent.request_id == "id-1"  # the third is not sent
        assert await spool.last_sent_to("+79161234567", 250.0) is None
        assert await spool.last_sent_to("+79160000000", 0.0) is None
    finally:
        await spool.close()
