"""The spool contract on both backends (SQLite, PostgreSQL): durability, claiming, recovery,
receipts before responses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.smpp.model import SubmitSm
from relay.spool.model import (
    RECEIPT_APPLIED,
    RECEIPT_REPEATED,
    JobState,
    NewJob,
    NewMail,
    NewRequest,
    Submitted,
)
from relay.spool.sqlite import SqliteSpool, sqlite_path
from tests.postgres import SpoolStore


def _request(key: str, n: int = 1, *, not_before: float = 100.0) -> NewRequest:
    sm = SubmitSm("Alex", 5, 0, "79161234567", b"hi", 0, tlvs=(("sar_msg_ref_num", 7),))
    jobs = tuple(
        NewJob("+79161234567", 0, i + 1, n, sm, not_before=not_before, expires_at=1e12)
        for i in range(n)
    )
    mail = NewMail("relay@x", "ops@x", b"Subject: x\r\n\r\nOK\r\n", 1e12)
    return NewRequest(key, f"id-{key}", "alex", "ops@x", "127.0.0.1", 100.0, jobs, (mail,))


async def test_store_is_idempotent_and_claim_moves_to_sending(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        assert (await spool.store(_request("k1", 2))).stored is True
        again = await spool.store(_request("k1", 2))  # same transaction key: once
        assert again.stored is False and again.refused == 0
        jobs = await spool.claim(10, now=200.0)
        assert [j.part for j in jobs] == [1, 2]
        assert jobs[0].submit.tlvs == (("sar_msg_ref_num", 7),)
        assert jobs[0].attempts == 1
        assert await spool.claim(10, now=200.0) == []
        counts = await spool.counts()
        assert counts["sending"] == 2 and counts["queued"] == 0
    finally:
        await spool.close()


async def test_not_before_is_respected(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("later", not_before=500.0))
        assert await spool.claim(10, now=499.0) == []
        assert await spool.next_due() == 500.0
        assert len(await spool.claim(10, now=500.0)) == 1
    finally:
        await spool.close()


async def test_recover_after_reopen_requeues_sending(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    await spool.store(_request("k"))
    await spool.claim(10, now=200.0)
    await spool.close()  # as a crash would leave it: the job stays 'sending' on disk
    again = spool_store.make()
    await again.open()
    try:
        assert await again.recover() == 1  # the job (the reply mail was never claimed)
        [job] = await again.claim(10, now=300.0)
        assert job.attempts == 2
    finally:
        await again.close()


async def test_receipt_before_submit_resp_is_applied_later(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("k"))
        [job] = await spool.claim(1, now=200.0)
        matched = await spool.apply_receipt(("abc",), JobState.DELIVERED, {"stat": "DELIVRD"}, 201)
        assert matched == 0
        state = await spool.mark_submitted(job.id, "ABC", ("abc", "2748"), 202.0)
        assert state is JobState.DELIVERED
        [view] = await spool.request_status("id-k")
        assert view.state == "delivered" and view.receipt == {"stat": "DELIVRD"}
        assert view.upstream_id == "ABC"
    finally:
        await spool.close()


async def test_mark_submitted_many_marks_a_batch_and_applies_early_receipts(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("k", 3))
        jobs = await spool.claim(10, now=200.0)
        early = await spool.apply_receipt(("bb",), JobState.UNDELIVERABLE, {"stat": "UNDELIV"}, 201)
        assert early == 0  # before its submit_sm_resp: kept for later
        assert await spool.mark_submitted_many([], 202.0) == []
        states = await spool.mark_submitted_many(
            [
                Submitted(jobs[0].id, "AA", ("aa",)),
                Submitted(jobs[1].id, "BB", ("bb", "187")),
                Submitted(jobs[2].id, "CC", ()),
            ],
            202.0,
        )
        assert states == [JobState.SUBMITTED, JobState.UNDELIVERABLE, JobState.SUBMITTED]
        views = sorted(await spool.request_status("id-k"), key=lambda v: v.part)
        assert [(v.state, v.upstream_id) for v in views] == [
            ("submitted", "AA"),
            ("undeliverable", "BB"),
            ("submitted", "CC"),
        ]
        # The keys were stored: a later receipt finds its job.
        done = {"stat": "DELIVRD"}
        assert await spool.apply_receipt(("aa",), JobState.DELIVERED, done, 203) == RECEIPT_APPLIED
        assert (await spool.counts())["delivered"] == 1
        # An SMSC that sends the receipt again: stored, told apart (so not counted twice).
        again = await spool.apply_receipt(("aa",), JobState.DELIVERED, done, 204)
        assert again == RECEIPT_REPEATED
        assert (await spool.counts())["delivered"] == 1
    finally:
        await spool.close()


async def test_release_puts_claimed_jobs_back_as_they_were(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("a", not_before=100.0))
        await spool.store(_request("b", not_before=150.0))
        first, second = await spool.claim(10, now=200.0)
        await spool.release([second.id, first.id])
        await spool.release([])
        assert (await spool.counts())["sending"] == 0
        assert await spool.next_due() == 100.0  # the due times are kept: the order too
        again = await spool.claim(10, now=200.0)
        assert [j.id for j in again] == [first.id, second.id]
        assert [j.attempts for j in again] == [1, 1]  # the released claim did not count
        await spool.mark_submitted(again[0].id, "X", ("x",), 201.0)
        await spool.release([again[0].id])  # only `sending` jobs go back
        assert (await spool.counts())["submitted"] == 1
    finally:
        await spool.close()


async def test_concurrent_stores_group_commit_all_durable(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    results = await asyncio.gather(*(spool.store(_request(f"k{i}")) for i in range(200)))
    await spool.close()
    assert all(r.stored for r in results)
    again = spool_store.make()
    await again.open()
    try:
        assert (await again.counts())["queued"] == 200
    finally:
        await again.close()


async def test_mails_claim_retry_sent(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("k"))
        [mail] = await spool.claim_mails(10, now=200.0)
        assert mail.rcpt == "ops@x" and mail.data.endswith(b"OK\r\n")
        await spool.mark_mail_retry(mail.id, 300.0, "smarthost down")
        assert await spool.claim_mails(10, now=299.0) == []
        [again] = await spool.claim_mails(10, now=300.0)
        assert again.attempts == 2
        await spool.mark_mail_sent(again.id, 301.0)
        assert (await spool.counts())["mail_sent"] == 1
    finally:
        await spool.close()


def test_sqlite_url_paths() -> None:
    assert sqlite_path("sqlite:///spool.db") == "spool.db"
    assert sqlite_path("sqlite:////var/lib/sms-relay/spool.db") == "/var/lib/sms-relay/spool.db"


async def test_touch_writes_a_heartbeat_and_request_error(tmp_path: Path) -> None:
    import sqlite3

    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()
    try:
        await spool.touch(123.5)
        await spool.touch(124.5)  # an upsert: one row, the latest value
        await spool.store(_request("k"))
        assert await spool.request_error("id-k") == 0
        assert await spool.request_error("missing") is None
    finally:
        await spool.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        rows = conn.execute("SELECT value FROM meta WHERE name = 'heartbeat'").fetchall()
    assert rows == [("124.5",)]


async def test_failed_operation_leaves_nothing_alone_or_in_a_batch(tmp_path: Path) -> None:
    """The writer thread's contract: an operation that raises is undone, its batch-mates kept."""
    import sqlite3

    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()

    def failing(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta(name, value) VALUES ('half-done', 'x')")
        raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError):
            await spool._do(failing)  # alone in its transaction
        results = await asyncio.gather(
            spool._do(failing), spool.store(_request("kept")), return_exceptions=True
        )
        assert isinstance(results[0], RuntimeError) and results[1].stored is True
        rows = await spool._do(
            lambda c: c.execute("SELECT COUNT(*) FROM meta WHERE name = 'half-done'").fetchone()
        )
        assert rows == (0,)
        assert (await spool.counts())["queued"] == 1
    finally:
        await spool.close()


# -- issue 9: progress commits (claim, mark_submitted_many) without an fsync each ------------


def _synchronous(conn: object) -> int:
    """PRAGMA synchronous inside the writer's transaction: 2 = FULL (fsync), 1 = NORMAL."""
    import sqlite3

    assert isinstance(conn, sqlite3.Connection)
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_progress_commits_skip_the_fsync_and_store_keeps_it(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path / "s.db", progress_fsync=30.0)  # no deadline within the test
    await spool.open()
    try:
        await spool.store(_request("k", 3))
        assert await spool._do(_synchronous) == 2  # a durable op: FULL
        assert (spool.commits_synced, spool.commits_deferred) == (2, 0)
        jobs = await spool.claim(10, now=200.0)
        await spool.mark_submitted_many(
            [Submitted(j.id, f"m{j.id}", (f"m{j.id}",)) for j in jobs], 201.0
        )
        assert await spool._do(_synchronous, durable=False) == 1  # NORMAL: no fsync
        assert (spool.commits_synced, spool.commits_deferred) == (2, 3)
        # A progress op that shares its transaction with a durable one is fsynced with it.
        got = await asyncio.gather(spool._do(_synchronous, durable=False), spool._do(_synchronous))
        assert got == [2, 2]
        assert spool.commits_synced == 3
        # A store queued beside a progress op: its own transaction (on the event loop), whose
        # WAL fsync before the store's answer makes the progress commit before it durable too.
        wal_fsyncs = spool.wal_fsyncs
        mixed = await asyncio.gather(
            spool._do(_synchronous, durable=False), spool.store(_request("k2"))
        )
        assert mixed[0] == 1 and mixed[1].stored is True
        assert spool.commits_synced == 4 and spool.wal_fsyncs == wal_fsyncs + 1
        assert spool._unsynced_since is None
        assert (await spool.counts())["submitted"] == 3
    finally:
        await spool.close()


async def test_progress_fsync_zero_fsyncs_every_commit(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path / "s.db", progress_fsync=0)
    await spool.open()
    try:
        await spool.store(_request("k"))
        [job] = await spool.claim(10, now=200.0)
        await spool.mark_submitted_many([Submitted(job.id, "m", ("m",))], 201.0)
        assert await spool._do(_synchronous, durable=False) == 2
        assert (spool.commits_synced, spool.commits_deferred) == (4, 0)
    finally:
        await spool.close()


async def test_mark_submitted_many_commits_inline_when_the_writer_is_idle(
    tmp_path: Path,
) -> None:
    """Issue 9: a round's commit runs on the event loop (no thread hops) when the writer is
    idle; the result is there when the call returns, and the writer still fsyncs the WAL
    by the deadline that inline commit started."""
    spool = SqliteSpool(tmp_path / "s.db", progress_fsync=0.05)
    await spool.open()
    try:
        await spool.store(_request("k", 2))
        jobs = await spool.claim(10, now=200.0)
        await asyncio.sleep(0.3)  # the claim's deadline passes: fsynced, the writer sleeps
        assert spool._unsynced_since is None
        fsyncs = spool.wal_fsyncs
        pending = spool.mark_submitted_many(
            [Submitted(j.id, f"m{j.id}", (f"m{j.id}",)) for j in jobs], 201.0
        )
        assert isinstance(pending, asyncio.Future) and pending.done()  # committed inline
        assert await pending == [JobState.SUBMITTED, JobState.SUBMITTED]
        assert spool.commits_deferred == 2
        await asyncio.sleep(0.3)  # woken by the inline commit, the writer fsyncs the WAL
        assert spool.wal_fsyncs == fsyncs + 1
        assert (await spool.counts())["submitted"] == 2
        # Not inline while the writer holds the connection: queued for the writer instead.
        await spool.store(_request("k2"))
        [job] = await spool.claim(10, now=300.0)
        spool._conn_lock.acquire()  # as the writer does for a batch
        try:
            queued = spool.mark_submitted_many([Submitted(job.id, "q", ("q",))], 301.0)
            assert isinstance(queued, asyncio.Future) and not queued.done()
        finally:
            spool._conn_lock.release()
        assert await queued == [JobState.SUBMITTED]
    finally:
        await spool.close()


async def test_unsynced_progress_is_fsynced_within_the_deadline(tmp_path: Path) -> None:
    # A deadline long enough that a loaded machine still claims and records within it (at
    # 0.05 s the writer's own fsync could come between the two: a flaky first assertion).
    deadline, busy = 0.2, 1.0
    spool = SqliteSpool(tmp_path / "s.db", progress_fsync=deadline)
    await spool.open()
    try:
        await spool.store(_request("k"))
        stored_fsyncs = spool.wal_fsyncs  # the store's own (its commit is fsynced on the writer)
        [job] = await spool.claim(10, now=200.0)
        await spool.mark_submitted_many([Submitted(job.id, "m", ("m",))], 201.0)
        assert spool.commits_deferred == 2 and spool.wal_fsyncs == stored_fsyncs
        await asyncio.sleep(4 * deadline)  # idle: the writer fsyncs the WAL itself, once
        assert spool.wal_fsyncs == stored_fsyncs + 1
        # Busy (progress ops back to back for `busy` s): still an fsync (a FULL commit or the
        # WAL's own) at least every `deadline` s.
        synced = spool.commits_synced + spool.wal_fsyncs
        loop = asyncio.get_running_loop()
        until = loop.time() + busy
        modes = []
        while loop.time() < until:
            modes.append(await spool._do(_synchronous, durable=False))
        assert len(modes) > 50 and modes.count(1) > modes.count(2)  # mostly NORMAL
        assert spool.commits_synced + spool.wal_fsyncs - synced >= busy / deadline - 2
    finally:
        await spool.close()


def test_progress_commits_survive_sigkill(tmp_path: Path) -> None:
    """What the NORMAL commit promises: a killed process (not a power loss) loses none of it."""
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "s.db"
    script = f"""
import asyncio, os, signal
from relay.spool.sqlite import SqliteSpool
from relay.spool.model import Submitted
from tests.unit.test_spool_sqlite import _request

async def main():
    spool = SqliteSpool({str(path)!r}, progress_fsync=30.0)
    await spool.open()
    await spool.store(_request("k", 5))
    jobs = await spool.claim(10, now=200.0)
    await spool.mark_submitted_many([Submitted(j.id, "m%d" % j.id, ()) for j in jobs[:3]], 201.0)
    assert spool.commits_deferred == 2
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, timeout=30)
    assert proc.returncode == -signal.SIGKILL
    import sqlite3

    with sqlite3.connect(path) as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM jobs ORDER BY id")]
    assert states == ["submitted"] * 3 + ["sending"] * 2


def _admitted(key: str, phone: str, at: float) -> NewRequest:
    """A request with SPEC §5 admission checks (flood, duplicates), as the front stores them."""
    from relay.config import LimitsConfig
    from relay.spool.model import Admission

    sm = SubmitSm("Alex", 5, 0, phone.lstrip("+"), b"hi", 0)
    job = NewJob(phone, 0, 1, 1, sm, not_before=at, expires_at=at + 86400)
    return NewRequest(
        key, f"id-{key}", "alex", "ops@x", "127.0.0.1", at, (job,),
        admission=Admission(f"fp-{key}", (phone,), 1, None),
        limits=LimitsConfig(flood_count=1000, flood_interval=120),
    )  # fmt: skip


async def test_a_batch_of_stores_runs_few_statements(tmp_path: Path) -> None:
    """Issue 9 (ingest): every statement the writer thread runs is a GIL hand-off with the
    event loop. A batch of stores is one transaction without a SAVEPOINT per operation, its
    requests share each statement; expired flood rows are deleted at most once a second."""
    import sqlite3
    import threading

    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()
    statements: list[str] = []
    gate = threading.Event()
    try:
        await spool._do(lambda c: c.set_trace_callback(statements.append))
        # Hold the writer thread so that the five stores queue up and form one batch.
        held = asyncio.ensure_future(spool._do(lambda c: gate.wait(5)))
        await asyncio.sleep(0.05)
        requests = [_admitted(f"k{i}", f"+7916000000{i}", 1000.0 + i / 10) for i in range(5)]
        stores = [asyncio.ensure_future(spool.store(r)) for r in requests]
        await asyncio.sleep(0.05)
        statements.clear()
        gate.set()
        await held
        results = await asyncio.gather(*stores)
        held_commit, mode, *batch = statements  # the held operation's COMMIT, then the batch
        await spool._do(lambda c: c.set_trace_callback(None))
        assert [r.stored for r in results] == [True] * 5
        assert held_commit == "COMMIT"
        # Stores commit on the event loop with NORMAL; the writer fsyncs the WAL before the
        # answers (test_stores_run_on_the_event_loop_and_answer_after_the_fsync).
        assert mode == "PRAGMA synchronous=NORMAL"
        assert batch[0] == "BEGIN IMMEDIATE" and batch[-1] == "COMMIT"
        assert batch.count("BEGIN IMMEDIATE") == 1 and batch.count("COMMIT") == 1
        assert not [s for s in batch if "SAVEPOINT" in s or "RELEASE" in s]
        # The five stores share each statement (sqlite_bulk): one read of the keys, one
        # INSERT of the requests and one of their jobs; not ≈8 statements per request.
        # (The trace repeats a statement's text once per trigger it fires: set().)
        assert len([s for s in batch if s.startswith("SELECT key FROM requests")]) == 1
        assert len([s for s in batch if s.startswith("INSERT INTO requests")]) == 1
        assert len([s for s in batch if s.startswith("INSERT INTO jobs")]) == 1
        assert len([s for s in batch if s.startswith("DELETE FROM flood")]) == 1
        assert len(set(batch)) <= 15, batch
        # Later than flood_interval and than a second: the expired rows are deleted.
        assert (await spool.store(_admitted("late", "+79990000000", 1200.0))).stored
    finally:
        await spool.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT dest FROM flood").fetchall() == [("+79990000000",)]
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (6,)


async def test_ip_block_check_reads_the_table_only_after_it_changed(tmp_path: Path) -> None:
    """Issue 9 (ingest): the front asks about the IP block for every mail. The spool keeps the
    blocks as of its last commit that wrote them (and reads them again at least once a second),
    so that a mail costs a dict lookup, not a query; a new block is seen at once."""
    from relay.config import LimitsConfig

    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()
    try:
        assert spool._reader is not None
        queries: list[str] = []
        spool._reader.set_trace_callback(queries.append)
        for _ in range(50):
            assert not await spool.ip_blocked("192.0.2.1", 1000.0)
        assert len(queries) == 1
        limits = LimitsConfig(ip_fail_count=1, ip_fail_window=600, ip_block_time=900)
        for t in (0.0, 1.0):  # the second failure is more than ip_fail_count: blocked
            refused = NewRequest(
                f"r{t}", "id", "", "ops@x", "192.0.2.1", 1000.0 + t,
                error=2, limits=limits, ip_failure=True,
            )  # fmt: skip
            assert (await spool.store(refused)).stored
        assert await spool.ip_blocked("192.0.2.1", 1001.0)
        assert not await spool.ip_blocked("192.0.2.2", 1001.0)
        assert not await spool.ip_blocked("192.0.2.1", 1901.0)  # the block ended
        assert len(queries) == 2
        # A block written by another connection is seen within a second.
        import sqlite3

        with sqlite3.connect(tmp_path / "s.db") as other:
            other.execute("INSERT INTO ip_blocks(ip, until, notified) VALUES ('192.0.2.9', 5e9, 0)")
        spool._blocks_loaded -= 1.0
        assert await spool.ip_blocked("192.0.2.9", 1001.0)
    finally:
        await spool.close()
