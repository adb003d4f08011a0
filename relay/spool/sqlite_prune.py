"""Retention on the SQLite spool: one bounded batch of deletes, run in the writer thread.

A batch is one operation of the spool's writer (relay/spool/sqlite.py): it shares a
transaction with whatever stores are waiting, so it must stay short. Each table is walked in
id order (ids grow with time) from the previous batch's resume point, at most `limit` rows;
the walk of a table ends at its first row younger than the cutoff. No index is added for
pruning: `upstream_keys` (one row per submitted part, the hottest insert of a drain) is swept
in rowid order for keys whose job is gone, instead of being looked up by job.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence

from relay.spool.prune_model import PruneStep
from relay.spool.retention import Cutoffs, JobRow, prunable_requests

_FINAL_OUTBOUND = ("sent", "failed")
_KEYS_PER_REQUEST = 4

# One table's step: (conn, cutoffs, limit, resume id, deleted) → (rows deleted, next resume id
# or None when the table is done for this round). `deleted` receives side tables (jobs).
_Step = Callable[[sqlite3.Connection, Cutoffs, int, int, dict[str, int]], tuple[int, int | None]]


def prune_batch(
    conn: sqlite3.Connection, cut: Cutoffs, limit: int, resume: Mapping[str, int]
) -> PruneStep:
    deleted: dict[str, int] = {}
    nxt: dict[str, int] = {}
    for table, after in resume.items():
        step = _STEPS.get(table)
        if step is None:
            continue
        if table == "upstream_keys" and "requests" in resume:
            # Swept once the requests' walk is done: ahead of it, the keys of jobs that are
            # about to go would be stepped over and left for the next round.
            nxt[table] = after
            continue
        n, more = step(conn, cut, limit, after, deleted)
        if n:
            deleted[table] = deleted.get(table, 0) + n
        if more is not None:
            nxt[table] = more
    return PruneStep(deleted, nxt)


def reclaim(conn: sqlite3.Connection, pages: int) -> int:
    """Give up to `pages` free pages back to the file system (auto_vacuum=INCREMENTAL spools
    only); return how many went. Without it, SQLite reuses free pages for new rows."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return 0
    (before,) = conn.execute("PRAGMA freelist_count").fetchone()
    if not before:
        return 0
    # Python's sqlite3 steps the pragma once, and one step frees one page, whatever N says:
    # so one page per call (each a few µs), no more than the free list holds.
    for _ in range(min(int(before), pages)):
        conn.execute("PRAGMA incremental_vacuum(1)")
    (after,) = conn.execute("PRAGMA freelist_count").fetchone()
    return int(before) - int(after)


def _marks(items: Sequence[object]) -> str:
    return ",".join("?" * len(items))


def _walk(rows: list[tuple[int, float]], limit: int, before: float) -> tuple[list[int], int | None]:
    """The ids of `rows` (id, time; in id order) older than `before`, and where the walk goes
    on (None: it reached a younger row or the table's end)."""
    old: list[int] = []
    for row_id, at in rows:
        if at >= before:
            return old, None
        old.append(row_id)
    return old, (rows[-1][0] if len(rows) >= limit else None)


def _requests(
    conn: sqlite3.Connection, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.requests is None:
        return 0, None
    rows = conn.execute(
        "SELECT pk, created FROM requests WHERE pk > ? ORDER BY pk LIMIT ?", (after, limit)
    ).fetchall()
    old, more = _walk(rows, limit, cut.requests)
    if not old:
        return 0, more
    marks = _marks(old)
    jobs = [
        JobRow(r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT request_pk, state, updated, expires_at FROM jobs INDEXED BY jobs_request"  # noqa: S608
            f" WHERE request_pk IN ({marks})",
            old,
        )
    ]
    # A request stays while a notice waits on it or its reply mail is still to go (the
    # operator's `status` shows it); the open mails are few, found through mails_state.
    noticed = [
        r[0]
        for r in conn.execute(
            f"SELECT request_pk FROM notices WHERE request_pk IN ({marks})"  # noqa: S608
            " UNION SELECT request_pk FROM mails INDEXED BY mails_state"
            f" WHERE state IN ('queued', 'sending') AND request_pk IN ({marks})",
            [*old, *old],
        )
    ]
    gone = prunable_requests(old, jobs, noticed, cut.requests)
    if not gone:
        return 0, more
    marks = _marks(gone)
    n_jobs = conn.execute(
        f"DELETE FROM jobs WHERE request_pk IN ({marks})",  # noqa: S608
        gone,
    ).rowcount
    deleted["jobs"] = deleted.get("jobs", 0) + n_jobs
    n = conn.execute(f"DELETE FROM requests WHERE pk IN ({marks})", gone).rowcount  # noqa: S608
    return n, more


def _upstream_keys(
    conn: sqlite3.Connection, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    """Keys whose job was pruned: in rowid (submit) order, up to the first key of a job that
    is still young; a key of an old job that stays (not final) is stepped over."""
    if cut.requests is None:
        return 0, None
    limit *= _KEYS_PER_REQUEST  # keep pace with the requests' step (a key per part)
    rows = conn.execute(
        "SELECT k.rowid, j.updated FROM upstream_keys k LEFT JOIN jobs j ON j.id = k.job_id"
        " WHERE k.rowid > ? ORDER BY k.rowid LIMIT ?",
        (after, limit),
    ).fetchall()
    orphans: list[int] = []
    more: int | None = rows[-1][0] if len(rows) >= limit else None
    for rowid, updated in rows:
        if updated is None:
            orphans.append(rowid)
        elif updated >= cut.requests:
            more = None
            break
    if orphans:
        conn.execute(
            f"DELETE FROM upstream_keys WHERE rowid IN ({_marks(orphans)})",  # noqa: S608
            orphans,
        )
    return len(orphans), more


def _early_receipts(
    conn: sqlite3.Connection, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.receipts is None:
        return 0, None
    rows = conn.execute(
        "SELECT rowid, received FROM early_receipts WHERE rowid > ? ORDER BY rowid LIMIT ?",
        (after, limit),
    ).fetchall()
    old, more = _walk(rows, limit, cut.receipts)
    if old:
        conn.execute(
            f"DELETE FROM early_receipts WHERE rowid IN ({_marks(old)})",  # noqa: S608
            old,
        )
    return len(old), more


def _outbound(table: str) -> _Step:
    def step(
        conn: sqlite3.Connection, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
    ) -> tuple[int, int | None]:
        if cut.outbound is None:
            return 0, None
        rows = conn.execute(
            f"SELECT id, updated, state FROM {table} WHERE id > ? ORDER BY id LIMIT ?",  # noqa: S608
            (after, limit),
        ).fetchall()
        # Queued or in-flight rows are stepped over (kept); only final ones go.
        old, more = _walk([(r[0], r[1]) for r in rows], limit, cut.outbound)
        final = {r[0] for r in rows if r[2] in _FINAL_OUTBOUND}
        gone = [i for i in old if i in final]
        if gone:
            conn.execute(f"DELETE FROM {table} WHERE id IN ({_marks(gone)})", gone)  # noqa: S608
        return len(gone), more

    return step


def _mo(
    conn: sqlite3.Connection, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
) -> tuple[int, int | None]:
    if cut.mo is None:
        return 0, None
    rows = conn.execute(
        "SELECT id, received FROM mo WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    ).fetchall()
    old, more = _walk(rows, limit, cut.mo)
    if not old:
        return 0, more
    marks = _marks(old)
    n = conn.execute(
        f"DELETE FROM mo WHERE id IN ({marks})"  # noqa: S608
        f" AND id NOT IN (SELECT mo_id FROM notices WHERE mo_id IN ({marks}))",
        [*old, *old],
    ).rowcount
    return n, more


def _window(table: str, column: str, attr: str, strict: bool = False) -> _Step:
    """SPEC §5 state past its window, `limit` rows at a time through the table's time index."""
    op = "<" if strict else "<="
    sql = (
        f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"  # noqa: S608
        f" WHERE {column} {op} ? LIMIT ?)"
    )

    def step(
        conn: sqlite3.Connection, cut: Cutoffs, limit: int, after: int, deleted: dict[str, int]
    ) -> tuple[int, int | None]:
        n = conn.execute(sql, (getattr(cut, attr), limit)).rowcount
        return n, (0 if n >= limit else None)

    return step


_STEPS: dict[str, _Step] = {
    "requests": _requests,
    "upstream_keys": _upstream_keys,
    "early_receipts": _early_receipts,
    "mails": _outbound("mails"),
    "callbacks": _outbound("callbacks"),
    "mo": _mo,
    "fingerprints": _window("fingerprints", "at", "fingerprints"),
    "flood": _window("flood", "last", "flood"),
    "ip_failures": _window("ip_failures", "at", "ip_failures"),
    "rate_events": _window("rate_events", "at", "rate_events"),
    "rate_days": _window("rate_days", "day", "rate_day", strict=True),
    "ip_blocks": _window("ip_blocks", "until", "ip_blocks"),
}
