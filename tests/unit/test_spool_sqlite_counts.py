"""SQLite spool: the duplicate check's kept counts always equal the rows they count, also for a
spool written before the counts existed, and the check answers as counting the window would."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from relay.config import LimitsConfig
from relay.spool.model import StoreResult
from relay.spool.sqlite import SqliteSpool
from tests.unit.test_spool_protections import T0, request


def _rows(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    with sqlite3.connect(path) as conn:
        counted = dict(conn.execute("SELECT fp, n FROM fingerprint_counts").fetchall())
        rows = dict(conn.execute("SELECT fp, COUNT(*) FROM fingerprints GROUP BY fp").fetchall())
    return counted, rows


async def test_counts_follow_inserts_and_expiry_like_counting_the_window(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    spool = SqliteSpool(path)
    await spool.open()
    limits = LimitsConfig(duplicate_window=30, duplicate_allowed=3, flood_count=10**9)
    rnd = random.Random(7)
    history: list[tuple[str, float]] = []  # accepted (fingerprint, time): the reference model
    at = T0
    try:
        for _ in range(400):
            at += rnd.choice([0.0, 0.5, 1, 3, 10, 40])
            fp = rnd.choice("abcd")
            in_window = sum(1 for f, t in history if f == fp and t > at - limits.duplicate_window)
            expected = in_window < limits.duplicate_allowed
            result = await spool.store(
                request(fp=fp, at=at, limits=limits, phones=(f"+7999{rnd.randrange(10**7):07d}",))
            )
            assert result == (StoreResult(stored=True) if expected else StoreResult(False, 9))
            if expected:
                history.append((fp, at))
            counted, rows = _rows(path)
            assert counted == rows
    finally:
        await spool.close()


async def test_counts_are_rebuilt_for_a_spool_without_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    spool = SqliteSpool(path)
    await spool.open()
    limits = LimitsConfig(duplicate_window=60, duplicate_allowed=2)
    assert await spool.store(request(fp="old", limits=limits)) == StoreResult(stored=True)
    assert await spool.store(request(fp="old", limits=limits, at=T0 + 1)) == StoreResult(
        stored=True
    )
    await spool.close()
    with sqlite3.connect(path) as conn:  # as an older relay left it: rows, no counts
        conn.executescript(
            "DROP TRIGGER fingerprints_counted; DROP TRIGGER fingerprints_uncounted;"
            " DROP TABLE fingerprint_counts;"
        )
    again = SqliteSpool(path)
    await again.open()
    try:
        assert _rows(path)[0] == {"old": 2}
        assert await again.store(request(fp="old", limits=limits, at=T0 + 2)) == StoreResult(
            False, 9
        )
    finally:
        await again.close()
