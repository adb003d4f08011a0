"""Issue 9 (ingest): store runs execute on the event loop, and are answered only after the
writer thread has fsynced the WAL (relay.spool.sqlite, "Stores on the event loop")."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.spool import sqlite as sqlite_spool
from relay.spool.model import StoreResult
from relay.spool.sqlite import SqliteSpool, _store_runs, _StoreOp
from tests.unit.test_spool_sqlite import _admitted, _request


def _traced(
    spool: SqliteSpool, seen: list[tuple[str, str]]
) -> object:  # the trace callback runs in the thread that executes the statement
    return lambda c: c.set_trace_callback(
        lambda sql: seen.append((threading.current_thread().name, sql))
    )


async def test_stores_run_on_the_event_loop_and_answer_after_the_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SqliteSpool(tmp_path / "s.db", progress_fsync=30.0)
    await spool.open()
    seen: list[tuple[str, str]] = []
    fsyncs: list[tuple[str, list[bool]]] = []
    stores: list[asyncio.Future[StoreResult]] = []
    real_fsync = os.fsync

    def watched_fsync(fd: int) -> None:
        # Which thread syncs, and whether any store had been answered before its fsync.
        fsyncs.append((threading.current_thread().name, [s.done() for s in stores]))
        real_fsync(fd)

    try:
        await spool._do(_traced(spool, seen))  # type: ignore[arg-type]
        monkeypatch.setattr(os, "fsync", watched_fsync)
        gate = threading.Event()
        held = asyncio.ensure_future(spool._do(lambda c: gate.wait(5)))
        await asyncio.sleep(0.05)
        stores += [
            asyncio.ensure_future(spool.store(_admitted(f"k{i}", f"+7916000000{i}", 1000.0 + i)))
            for i in range(4)
        ]
        await asyncio.sleep(0.05)
        seen.clear()
        gate.set()
        await held
        results = await asyncio.gather(*stores)
        assert [r.stored for r in results] == [True] * 4
    finally:
        monkeypatch.setattr(os, "fsync", real_fsync)
        await spool._do(lambda c: c.set_trace_callback(None))
        await spool.close()
    batch = seen[1:]  # after the held op's COMMIT
    assert ("MainThread", "PRAGMA synchronous=NORMAL") in batch
    inserts = [who for who, sql in batch if sql.startswith("INSERT INTO requests")]
    assert inserts == ["MainThread"]  # the four stores: one statement, on the event loop
    assert [who for who, sql in batch if sql == "COMMIT"] == ["MainThread"]
    # One fsync of the WAL for the four stores, before any answer: by the loop itself, right
    # after the COMMIT (a fast disk: no hop to the writer thread and back).
    assert fsyncs[0] == ("MainThread", [False] * 4)
    assert spool.commits_synced >= 1
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (4,)


async def test_on_a_slow_disk_the_writer_thread_fsyncs_and_the_loop_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()
    real_fsync = os.fsync
    who: list[str] = []

    def slow_fsync(fd: int) -> None:  # a disk whose fsync takes 5 ms
        who.append(threading.current_thread().name)
        time.sleep(0.005)
        real_fsync(fd)

    loop = asyncio.get_running_loop()
    stalls: list[float] = []

    async def ticker() -> None:  # how long the loop goes without running a 1 ms timer
        last = loop.time()
        while True:
            await asyncio.sleep(0.001)
            now = loop.time()
            stalls.append(now - last)
            last = now

    try:
        monkeypatch.setattr(os, "fsync", slow_fsync)
        for i in range(30):
            assert (await spool.store(_request(f"slow{i}"))).stored is True
        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.01)
        stalls.clear()
        who.clear()
        for i in range(20):
            assert (await spool.store(_request(f"later{i}"))).stored is True
        tick.cancel()
    finally:
        monkeypatch.setattr(os, "fsync", real_fsync)
        await spool.close()
    # Once the average says the disk is slow, every store's fsync is the writer's and the
    # loop keeps turning meanwhile (no 5 ms stall of the event loop per store).
    assert who and set(who) == {"spool-sqlite"}
    assert len([s for s in stalls if s >= 0.005]) < 5  # of 20 stores (a loaded machine)
    assert spool._fsync_seconds > 0.004


async def test_a_failed_wal_fsync_fails_the_stores_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()
    real_fsync = os.fsync

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    try:
        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(SpoolError, match="fsync"):
            await spool.store(_request("k1"))
        monkeypatch.setattr(os, "fsync", real_fsync)
        # Not known to be on disk, so it was answered as a failure; a retry with the same
        # key finds it stored (idempotent), a new one is stored and fsynced.
        again = await spool.store(_request("k1"))
        assert again.stored is False and again.refused == 0
        assert (await spool.store(_request("k2"))).stored is True
    finally:
        monkeypatch.setattr(os, "fsync", real_fsync)
        await spool.close()


async def test_a_store_op_that_raises_on_the_loop_is_run_again_on_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's transaction is undone on the loop; the writer runs each op alone (FULL)."""
    spool = SqliteSpool(tmp_path / "s.db")
    await spool.open()
    real_call = _StoreOp.__call__
    calls: list[str] = []

    def flaky(self: _StoreOp, conn: sqlite3.Connection) -> list[StoreResult]:
        calls.append(threading.current_thread().name)
        if threading.current_thread() is threading.main_thread():
            raise sqlite3.OperationalError("disk I/O error")
        return real_call(self, conn)

    try:
        monkeypatch.setattr(_StoreOp, "__call__", flaky)
        assert (await spool.store(_request("k1"))).stored is True
        assert calls == ["MainThread", "spool-sqlite"]
    finally:
        monkeypatch.setattr(_StoreOp, "__call__", real_call)
        await spool.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM requests").fetchone() == (1,)


async def test_stores_on_loop_off_runs_them_on_the_writer(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path / "s.db", stores_on_loop=False)
    await spool.open()
    seen: list[tuple[str, str]] = []
    try:
        await spool._do(_traced(spool, seen))  # type: ignore[arg-type]
        assert (await spool.store(_request("k1"))).stored is True
        await spool._do(lambda c: c.set_trace_callback(None))
    finally:
        await spool.close()
    assert {who for who, sql in seen if sql.startswith("INSERT INTO requests")} == {"spool-sqlite"}


def test_a_batch_is_cut_into_runs_in_queue_order() -> None:
    loop = asyncio.new_event_loop()
    try:
        state = sqlite_spool.WriterState()
        store = (_StoreOp([], state), loop.create_future(), True)
        other = (lambda c: None, loop.create_future(), False)
        runs = _store_runs([store, store, other, store, other, other])
        assert [(kind, len(run)) for kind, run in runs] == [
            (True, 2),
            (False, 1),
            (True, 1),
            (False, 2),
        ]
        assert _store_runs([]) == []
    finally:
        loop.close()


async def _after_a_loaded_batch(spool: SqliteSpool) -> None:
    """Five stores committed together, as under concurrent load."""
    gate = threading.Event()
    held = asyncio.ensure_future(spool._do(lambda c: gate.wait(5)))
    await asyncio.sleep(0.05)
    stores = [asyncio.ensure_future(spool.store(_request(f"load{i}"))) for i in range(5)]
    await asyncio.sleep(0.05)
    gate.set()
    await held
    assert [r.stored for r in await asyncio.gather(*stores)] == [True] * 5
    assert spool._last_batch_stores == 5


async def test_under_load_a_store_waits_for_the_commit_delay_and_others_join(
    tmp_path: Path,
) -> None:
    delay = 0.3
    spool = SqliteSpool(tmp_path / "s.db", commit_delay=delay)
    await spool.open()
    seen: list[tuple[str, str]] = []
    try:
        await spool._do(_traced(spool, seen))  # type: ignore[arg-type]
        await _after_a_loaded_batch(spool)
        loaded_at = spool._last_batch_start
        seen.clear()
        first = asyncio.ensure_future(spool.store(_request("a")))
        await asyncio.sleep(0.1)
        assert not first.done()  # waiting for siblings
        second = asyncio.ensure_future(spool.store(_request("b")))
        results = await asyncio.gather(first, second)
        assert [r.stored for r in results] == [True, True]
        begun = spool._last_batch_start
        sqls = [sql for _, sql in seen]
        await spool._do(lambda c: c.set_trace_callback(None))
    finally:
        await spool.close()
    # Both in one transaction, begun no earlier than the delay after the loaded batch began.
    assert sqls.count("BEGIN IMMEDIATE") == 1
    assert len([s for s in sqls if s.startswith("INSERT INTO requests")]) == 1
    assert begun - loaded_at >= delay * 0.9


async def test_any_other_op_ends_the_wait_and_a_lone_store_never_waits(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path / "s.db", commit_delay=2.0)
    await spool.open()
    loop = asyncio.get_running_loop()
    try:
        await _after_a_loaded_batch(spool)
        started = loop.time()
        waiting = asyncio.ensure_future(spool.store(_request("a")))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await spool._do(lambda c: c.execute("SELECT 1").fetchone())  # e.g. a claim
        assert (await waiting).stored is True
        assert loop.time() - started < 1.0  # not the 2 s delay
        # The last batch held one store: a lone client's stores go at once, one by one.
        started = loop.time()
        for i in range(5):
            assert (await spool.store(_request(f"lone{i}"))).stored is True
        assert loop.time() - started < 1.0
    finally:
        await spool.close()


async def test_commit_delay_zero_never_waits(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path / "s.db", commit_delay=0)
    await spool.open()
    loop = asyncio.get_running_loop()
    try:
        await _after_a_loaded_batch(spool)
        started = loop.time()
        assert (await spool.store(_request("a"))).stored is True
        assert loop.time() - started < 0.5
    finally:
        await spool.close()
