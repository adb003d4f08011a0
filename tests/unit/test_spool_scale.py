"""The SQLite spool stays fast when large (issue #9, goal 4: 1 000 000 jobs in the spool).

Checkpoints run outside the writer's COMMITs, and the queries that run per job, per scrape or per
operator command use an index instead of walking the jobs table.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relay.smpp.model import SubmitSm
from relay.spool.model import NewJob, NewRequest
from relay.spool.sqlite import SqliteSpool


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
