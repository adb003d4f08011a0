"""relay.idle_loop: the daemon's event loop tells its watchers when it runs out of work, and the
SQLite spool ends a commit-delay hold then (issue 9, group commit)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from relay.idle_loop import IdleSelector, idle_selector, new_event_loop
from relay.spool.sqlite import SqliteSpool
from tests.unit.test_spool_sqlite import _request
from tests.unit.test_spool_stores_on_loop import _after_a_loaded_batch

T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` as the daemon does: on relay.idle_loop's loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def test_watchers_run_only_when_the_loop_is_about_to_wait() -> None:
    calls: list[float] = []

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        selector = idle_selector(loop)
        assert isinstance(selector, IdleSelector)
        unwatch = selector.watch(lambda: calls.append(loop.time()))
        # Busy: a chain of ready callbacks, never a wait for I/O.
        for _ in range(1000):
            await asyncio.sleep(0)
        busy = len(calls)
        # Idle: each sleep with a timer leaves the loop nothing to run.
        for _ in range(5):
            await asyncio.sleep(0.01)
        idle = len(calls) - busy
        # I/O ready when the loop looks: served without calling the watchers for it.
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection(sock=a)
            before = len(calls)
            b.send(b"x" * 10)
            got = await reader.readexactly(10)
            assert got == b"x" * 10
            after_ready = len(calls) - before
            writer.close()
        finally:
            b.close()
        unwatch()
        await asyncio.sleep(0.01)
        assert len(calls) == before + after_ready  # unwatched: no more calls
        return busy, idle, after_ready

    busy, idle, after_ready = _run(main())
    assert busy == 0
    assert 5 <= idle <= 10  # once per sleep (a few more at most for the loop's own wake-ups)
    assert after_ready == 0


def test_a_failing_watcher_does_not_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    async def main() -> None:
        selector = idle_selector(asyncio.get_running_loop())
        assert selector is not None

        def broken() -> None:
            raise RuntimeError("watcher bug")

        selector.watch(broken)
        selector.watch(lambda: seen.append(1))
        for _ in range(3):
            await asyncio.sleep(0.01)

    _run(main())
    assert len(seen) >= 3  # the second watcher still runs, the loop still turns
    assert "idle watcher failed" in caplog.text


def test_other_loops_have_no_idle_selector() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert idle_selector(loop) is None
    finally:
        loop.close()


async def _held_store_latency(path: Path, delay: float) -> float:
    spool = SqliteSpool(path, commit_delay=delay)
    await spool.open()
    try:
        await _after_a_loaded_batch(spool)
        assert spool._last_batch_stores >= 4  # the next store batch will be held
        started = time.monotonic()
        result = await spool.store(_request("held"))
        took = time.monotonic() - started
        assert result.stored is True
        return took
    finally:
        await spool.close()


def test_a_held_store_batch_commits_as_soon_as_the_loop_is_idle(tmp_path: Path) -> None:
    # On the daemon's loop the hold ends when nothing else runs: well before the 2 s delay.
    took = _run(_held_store_latency(tmp_path / "idle.db", 2.0))
    assert took < 0.5


def test_on_another_loop_the_hold_lasts_the_commit_delay(tmp_path: Path) -> None:
    took = asyncio.run(_held_store_latency(tmp_path / "plain.db", 0.6))
    assert took >= 0.5


def test_while_the_loop_is_busy_the_hold_goes_on(tmp_path: Path) -> None:
    async def main() -> tuple[float, int]:
        spool = SqliteSpool(tmp_path / "busy.db", commit_delay=0.5)
        await spool.open()
        try:
            await _after_a_loaded_batch(spool)
            started = time.monotonic()
            store = asyncio.ensure_future(spool.store(_request("held")))
            spins = 0
            while time.monotonic() - started < 0.25:  # the loop always has work: no idle
                await asyncio.sleep(0)
                spins += 1
            assert not store.done()  # held: the loop had work all along
            busy_for = time.monotonic() - started
            assert (await store).stored is True  # and now idle: the hold ends
            return time.monotonic() - started - busy_for, spins
        finally:
            await spool.close()

    after_busy, spins = _run(main())
    assert spins > 100
    assert after_busy < 0.1  # not the rest of the 0.5 s delay
