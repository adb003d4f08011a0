"""The bench's bulk prefill writes exactly the rows `SqliteSpool.store()` writes.

The scale benchmark (issue #9, goal 4) needs a 1 000 000-job spool; `store()` would take minutes
to fill it, so `bench.cases.bulk_prefill` writes the rows with executemany instead. Its backlog
is only worth measuring if it is the spool the relay would have built itself: every table, every
column, compared with the same requests stored one by one through the real `store()`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bench.cases import bulk_prefill, prefill_request, prefill_template
from relay.spool.model import Job
from relay.spool.sqlite import SqliteSpool


def _dump(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        # Every row of every table, in a fixed order (some tables have no rowid to order by).
        return {t: sorted(conn.execute(f"SELECT * FROM {t}"), key=repr) for t in tables}
    finally:
        conn.close()


def test_bulk_prefill_rows_equal_store_rows(tmp_path: Path) -> None:
    template = prefill_template(tmp_path)
    count, destinations = 1234, 7  # indexes of 1 to 4 digits, phones repeating

    async def store_each(path: Path) -> None:
        spool = SqliteSpool(path)
        await spool.open()
        try:
            for i in range(count):
                assert (await spool.store(prefill_request(template, i, destinations))).stored
        finally:
            await spool.close()

    stored = tmp_path / "stored.db"
    asyncio.run(store_each(stored))

    bulk = tmp_path / "bulk.db"
    bulk_prefill(bulk, template, count, destinations)

    want, got = _dump(stored), _dump(bulk)
    assert len(want["jobs"]) == count and len(want["requests"]) == count
    assert got.keys() == want.keys()
    for table in want:
        assert got[table] == want[table], table


def test_bulk_prefill_then_store_and_claim(tmp_path: Path) -> None:
    """The relay stores after the prefilled requests and claims them all, in order."""
    template = prefill_template(tmp_path)
    path = tmp_path / "spool.db"
    bulk_prefill(path, template, 10, 3)

    async def store_and_claim() -> list[Job]:
        spool = SqliteSpool(path)
        await spool.open()
        try:
            assert (await spool.store(prefill_request(template, 10, 3))).stored
            return await spool.claim(100, now=template.jobs[0].not_before)
        finally:
            await spool.close()

    jobs = asyncio.run(store_and_claim())
    assert [j.request_id for j in jobs] == [str(10**9 + i) for i in range(11)]
    assert [j.submit.short_message for j in jobs] == [str(i).encode() for i in range(11)]
