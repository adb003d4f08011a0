"""Retention on the PostgreSQL spool: one bounded batch of deletes in one transaction.

Several nodes may prune at once: each batch first tries a transaction advisory lock; a node
that does not get it skips its round at once (`busy`), so the nodes never queue up behind each
other, and whatever one node leaves the next round of any node finishes. Rows are re-checked
under their row locks: a request's jobs are locked (`FOR UPDATE`) before it is judged, so an
operator's `retry` of one of its jobs either comes first (the request then stays) or finds the
request gone; outbound rows and MO SMS are deleted only where their state still allows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from psycopg import AsyncCursor, sql
from psycopg.rows import TupleRow

from relay.spool.prune_model import PruneStep
from relay.spool.retention import Cutoffs, JobRow, prunable_requests

_Cursor = AsyncCursor[TupleRow]
_Step = Callable[[_Cursor, Cutoffs, int, int, dict[str, int]], Awaitable[tuple[int, int | None]]]

# pg_try_advisory_xact_lock key of a pruning batch: "prune" in ASCII (see MIGRATION_LOCK).
PRUNE_LOCK = int.from_bytes(b"smsprune", "big") >> 1


async def prune_batch(
    cur: _Cursor, cut: Cutoffs, limit: int, resume: Mapping[str, int]
) -> PruneStep:
    await cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,))
    row = await cur.fetchone()
    if row is None or not row[0]:
        return PruneStep(busy=True)
    deleted: dict[str, int] = {}
    nxt: dict[str, int] = {}
    for table, after in resume.items():
        step = _STEPS.get(table)
        if step is None:
            continue
        n, more = await step(cur, cut, limit, after, deleted)
        if n:
            deleted[table] = deleted.get(table, 0) + n
        if more is not None:
            nxt[table] = more
    return PruneStep(deleted, nxt)


def _walk(rows: list[tuple[int, float]], limit: int, before: float) -> tuple[list[int], int | None]:
    old: list[int] = []
    for row_id, at in rows:
        if at >= before:
            return old, None
        old.append(row_id)
    return old, (rows[-1][0] if len(rows) >= limit else None)


async def _requests(
    cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.requests is None:
        return 0, None
    await cur.execute(
        "SELECT pk, created FROM requests WHERE pk > %s ORDER BY pk LIMIT %s", (after, limit)
    )
    old, more = _walk([(int(r[0]), float(r[1])) for r in await cur.fetchall()], limit, cut.requests)
    if not old:
        return 0, more
    await cur.execute(
        "SELECT request_pk, state, updated, expires_at, id FROM jobs"
        " WHERE request_pk = ANY(%s) ORDER BY id FOR UPDATE",
        (old,),
    )
    rows = await cur.fetchall()
    jobs = [JobRow(int(r[0]), r[1], float(r[2]), float(r[3])) for r in rows]
    # A request stays while a notice waits on it or its reply mail is still to go.
    await cur.execute(
        "SELECT request_pk FROM notices WHERE request_pk = ANY(%(pks)s)"
        " UNION SELECT request_pk FROM mails WHERE state IN ('queued', 'sending')"
        " AND request_pk = ANY(%(pks)s)",
        {"pks": old},
    )
    noticed = [int(r[0]) for r in await cur.fetchall()]
    gone = prunable_requests(old, jobs, noticed, cut.requests)
    if not gone:
        return 0, more
    doomed = set(gone)
    job_ids = [int(r[4]) for r in rows if int(r[0]) in doomed]
    if job_ids:
        await cur.execute("DELETE FROM upstream_keys WHERE job_id = ANY(%s)", (job_ids,))
        deleted["upstream_keys"] = deleted.get("upstream_keys", 0) + cur.rowcount
        await cur.execute("DELETE FROM jobs WHERE id = ANY(%s)", (job_ids,))
        deleted["jobs"] = deleted.get("jobs", 0) + cur.rowcount
    await cur.execute("DELETE FROM requests WHERE pk = ANY(%s)", (gone,))
    return cur.rowcount, more


async def _early_receipts(
    cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.receipts is None:
        return 0, None
    await cur.execute(
        "SELECT id, received FROM early_receipts WHERE id > %s ORDER BY id LIMIT %s",
        (after, limit),
    )
    rows = [(int(r[0]), float(r[1])) for r in await cur.fetchall()]
    old, more = _walk(rows, limit, cut.receipts)
    if not old:
        return 0, more
    await cur.execute("DELETE FROM early_receipts WHERE id = ANY(%s)", (old,))
    return cur.rowcount, more


def _outbound(table: str) -> _Step:
    select = sql.SQL("SELECT id, updated FROM {} WHERE id > %s ORDER BY id LIMIT %s").format(
        sql.Identifier(table)
    )
    delete = sql.SQL("DELETE FROM {} WHERE id = ANY(%s) AND state IN ('sent', 'failed')").format(
        sql.Identifier(table)
    )

    async def step(
        cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
    ) -> tuple[int, int | None]:
        if cut.outbound is None:
            return 0, None
        await cur.execute(select, (after, limit))
        rows = [(int(r[0]), float(r[1])) for r in await cur.fetchall()]
        old, more = _walk(rows, limit, cut.outbound)
        if not old:
            return 0, more
        await cur.execute(delete, (old,))  # queued or in-flight rows stay
        return cur.rowcount, more

    return step


async def _mo(
    cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.mo is None:
        return 0, None
    await cur.execute(
        "SELECT id, received FROM mo WHERE id > %s ORDER BY id LIMIT %s", (after, limit)
    )
    old, more = _walk([(int(r[0]), float(r[1])) for r in await cur.fetchall()], limit, cut.mo)
    if not old:
        return 0, more
    await cur.execute(
        "DELETE FROM mo WHERE id = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.mo_id = mo.id)",
        (old,),
    )
    return cur.rowcount, more


async def _nothing(
    cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    """upstream_keys go with their jobs here (indexed by job: migration 7)."""
    return 0, None


def _window(
    table: str, column: str, attr: str, *, key: str = "ctid", strict: bool = False
) -> _Step:
    """SPEC §5 state past its window; rows a store on another node holds are skipped."""
    op = "<" if strict else "<="
    query = sql.SQL(
        "DELETE FROM {t} WHERE {k} IN (SELECT {k} FROM {t} WHERE {c} "  # noqa: S608 - fixed op
        + op
        + " %s LIMIT %s FOR UPDATE SKIP LOCKED)"
    ).format(t=sql.Identifier(table), k=sql.Identifier(key), c=sql.Identifier(column))

    async def step(
        cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
    ) -> tuple[int, int | None]:
        await cur.execute(query, (getattr(cut, attr), limit))
        n = cur.rowcount
        return n, (0 if n >= limit else None)

    return step


async def _nodes(
    cur: _Cursor, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.nodes is None:
        return 0, None
    await cur.execute("DELETE FROM nodes WHERE last_seen < %s", (cut.nodes,))
    return cur.rowcount, None


_STEPS: dict[str, _Step] = {
    "requests": _requests,
    "upstream_keys": _nothing,
    "early_receipts": _early_receipts,
    "mails": _outbound("mails"),
    "callbacks": _outbound("callbacks"),
    "mo": _mo,
    "fingerprints": _window("fingerprints", "at", "fingerprints"),
    "flood": _window("flood", "last", "flood", key="dest"),
    "ip_failures": _window("ip_failures", "at", "ip_failures"),
    "rate_events": _window("rate_events", "at", "rate_events"),
    "rate_days": _window("rate_days", "day", "rate_day", strict=True),
    "ip_blocks": _window("ip_blocks", "until", "ip_blocks", key="ip"),
    "nodes": _nodes,
}
