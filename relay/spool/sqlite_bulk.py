"""The SQLite spool's store of many plain requests at once: a few statements per batch.

Issue 9: the writer thread stored each request with ≈8 statements (known key, flood row,
duplicate window, duplicate count, request, jobs, flood streak, fingerprint). Each statement is
an `sqlite3_step` that releases the GIL and must take it back from the event loop, which holds
it while it runs SMTP sessions: under ingest load a batch of 10 stores took 3–5 ms of wall time
for ≈1 ms of CPU, the writer was busy 80–92 % of the time, and every session waited for it.
Here the requests of a batch share each statement (`IN (…)` reads, multi-row `INSERT`s), and the
SPEC §5 checks run in Python over what those reads returned, in the batch's order, exactly as
`_store_one` would have run them one after the other (the property test compares both).

Plain requests only: no balance, no active rate guard, no IP failure to count and no ERROR 4
reply to deduplicate. A mail with any other request is stored one request at a time as before
(the plain mails queued around it still share their statements: `sqlite._merge_stores`).
sqlite3 has no way to keep the GIL across statements, so fewer statements is the lever; a
hand-written module because no library batches SQLite writes while keeping per-row semantics.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from relay.errors import ErrorCode
from relay.rates import active
from relay.spool.model import NewRequest, StoreResult, job_row

# Bound parameters per statement: SQLite's default limit is 32766 since 3.32 (999 before);
# the connection's own limit is read where sqlite3 offers it (Python ≥ 3.11).
_FALLBACK_VARIABLES = 999


def plain(request: NewRequest) -> bool:
    """Whether `store_bulk` may store this request (else `_store_one`, one at a time)."""
    if request.ip_failure:
        return False
    if request.error:
        return request.error != ErrorCode.IP_BLOCKED or not request.mails
    adm = request.admission
    if request.limits is None or adm is None:
        return True
    return adm.balance is None and not active(adm.rates)


def _max_variables(conn: sqlite3.Connection) -> int:
    try:
        return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    except (AttributeError, sqlite3.Error):
        return _FALLBACK_VARIABLES


def _chunks(rows: Sequence[Any], width: int, limit: int) -> Iterator[Sequence[Any]]:
    """`rows` in slices whose parameters (`width` each) stay within `limit`."""
    step = max(1, limit // width)
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


def _select_in(
    conn: sqlite3.Connection, sql: str, values: Sequence[Any], limit: int, *extra: Any
) -> list[Any]:
    """Rows of `sql` (with one `{}` for the `IN` list, `extra` parameters after it)."""
    rows: list[Any] = []
    for chunk in _chunks(values, 1, limit - len(extra)):
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(sql.format(marks), (*chunk, *extra)).fetchall()
    return rows


def _insert_rows(
    conn: sqlite3.Connection,
    head: str,
    row_sql: str,
    rows: Sequence[tuple[Any, ...]],
    limit: int,
    tail: str = "",
) -> None:
    """`head VALUES row_sql, row_sql, … tail` for `rows`, in as few statements as `limit`
    (bound parameters per statement) allows."""
    if not rows:
        return
    width = len(rows[0])
    for chunk in _chunks(rows, width, limit):
        conn.execute(
            f"{head} VALUES {','.join([row_sql] * len(chunk))}{tail}",
            [value for row in chunk for value in row],
        )


def store_bulk(
    conn: sqlite3.Connection,
    batch: Sequence[NewRequest],
    due: Callable[[str, float], bool],
) -> list[StoreResult]:
    """`_store_one` for each request of `batch` in order, in the caller's transaction; every
    request must be `plain`. `due` is the writer's housekeeping clock (`WriterState.due`)."""
    limit = _max_variables(conn)
    known: set[str] = {
        row[0]
        for row in _select_in(
            conn, "SELECT key FROM requests WHERE key IN ({})", list({r.key for r in batch}), limit
        )
    }
    checked = [
        (r.created, r.admission, r.limits)
        for r in batch
        if r.admission is not None and r.limits is not None and not r.error
    ]
    flood: dict[str, tuple[int, float]] = {}
    window = _Window(conn, [], float("-inf"), limit)
    if checked:
        dests = list({d for _, adm, _ in checked for d in adm.destinations})
        for dest, streak, last in _select_in(
            conn, "SELECT dest, streak, last FROM flood WHERE dest IN ({})", dests, limit
        ):
            flood[dest] = (int(streak), float(last))
        window = _Window(
            conn,
            list({adm.fingerprint for _, adm, _ in checked if adm.fingerprint}),
            max(created - limits.duplicate_window for created, _, limits in checked),
            limit,
        )
    dirty: set[str] = set()
    flood_prunes: list[float] = []
    results: list[StoreResult] = []
    stored: list[NewRequest] = []
    for request in batch:
        if request.key in known:
            results.append(StoreResult(stored=False))
            continue
        adm, limits = request.admission, request.limits
        if adm is not None and limits is not None and not request.error:
            now = request.created
            # Flood (as `_admit`): expired streaks are deleted at most once a second.
            if due("flood", now):
                cut = now - limits.flood_interval
                flood_prunes.append(cut)
                for dest in [d for d, (_, last) in flood.items() if last <= cut]:
                    del flood[dest]
            streaks: dict[str, tuple[int, float]] = {}
            refused = 0
            for dest in adm.destinations:
                streak, last = streaks.get(dest) or flood.get(dest) or (0, float("-inf"))
                streak = streak + 1 if now - last < limits.flood_interval else 1
                if streak > limits.flood_count:
                    refused = int(ErrorCode.UNDELIVERABLE)
                    break
                streaks[dest] = (streak, now)
            if not refused:
                # Duplicates: this request's DELETE of the expired window, then the count.
                window.expire(now - limits.duplicate_window)
                if adm.fingerprint and window.seen(adm.fingerprint) >= limits.duplicate_allowed:
                    refused = int(ErrorCode.DUPLICATE)
            if refused:
                results.append(StoreResult(stored=False, refused=refused))
                continue
            flood.update(streaks)
            dirty.update(streaks)
            if adm.fingerprint:
                window.add(adm.fingerprint, now)
        known.add(request.key)
        stored.append(request)
        results.append(StoreResult(stored=True))
    for cut in flood_prunes:
        conn.execute("DELETE FROM flood WHERE last <= ?", (cut,))
    _insert_stored(conn, stored, limit)
    _insert_rows(
        conn,
        "INSERT INTO flood(dest, streak, last)",
        "(?, ?, ?)",
        [(d, *flood[d]) for d in sorted(dirty) if d in flood],
        limit,
        " ON CONFLICT(dest) DO UPDATE SET streak = excluded.streak, last = excluded.last",
    )
    window.write()
    return results


class _Window:
    """The duplicate window (`fingerprints`) as `_admit` sees it, request after request.

    `_admit` DELETEs the rows its window no longer holds, then reads the fingerprint's count.
    The first such DELETE of a batch runs on the database, and the counts (and the few rows
    that later requests' windows drop) are read after it; every later DELETE is then applied to
    what was read, and `write` does the database's share once at the end."""

    def __init__(self, conn: sqlite3.Connection, fps: list[str], top: float, limit: int) -> None:
        self._conn, self._fps, self._top, self._limit = conn, fps, top, limit
        self._first: float | None = None  # the cutoff of the DELETE that ran on the database
        self._deleted_to = float("-inf")  # every row at or before this is gone
        self._counts: dict[str, int] = {}
        self._band: dict[str, list[float]] = {}  # rows after the first cutoff, up to `top`
        self._added: list[tuple[str, float]] = []  # rows this batch adds, in order
        self._added_n: dict[str, int] = {}  # … per fingerprint
        self._oldest_added = float("inf")

    def expire(self, cut: float) -> None:
        """`DELETE FROM fingerprints WHERE at <= cut`."""
        if cut >= self._oldest_added:  # rare (a window shorter than the batch's spread)
            self._added = [(fp, at) for fp, at in self._added if at > cut]
            self._added_n = {}
            for fp, _ in self._added:
                self._added_n[fp] = self._added_n.get(fp, 0) + 1
            self._oldest_added = min((at for _, at in self._added), default=float("inf"))
        if self._first is not None:
            self._deleted_to = max(self._deleted_to, cut)
            return
        conn, fps, limit = self._conn, self._fps, self._limit
        conn.execute("DELETE FROM fingerprints WHERE at <= ?", (cut,))
        self._first = self._deleted_to = cut
        if not fps:
            return
        sql = "SELECT fp, n FROM fingerprint_counts WHERE fp IN ({})"
        self._counts = {fp: int(n) for fp, n in _select_in(conn, sql, fps, limit)}
        if self._top > cut:
            sql = "SELECT fp, at FROM fingerprints WHERE fp IN ({}) AND at > ? AND at <= ?"
            for fp, at in _select_in(conn, sql, fps, limit, cut, self._top):
                self._band.setdefault(fp, []).append(float(at))

    def seen(self, fp: str) -> int:
        """How many rows `fp` has now (`fingerprint_counts` as `_admit` would read it)."""
        gone = sum(1 for at in self._band.get(fp, ()) if at <= self._deleted_to)
        return self._counts.get(fp, 0) - gone + self._added_n.get(fp, 0)

    def add(self, fp: str, at: float) -> None:
        """An admitted request's fingerprint row (`_debit`)."""
        self._added.append((fp, at))
        self._added_n[fp] = self._added_n.get(fp, 0) + 1
        self._oldest_added = min(self._oldest_added, at)

    def write(self) -> None:
        """The later DELETEs and the batch's rows, on the database."""
        if self._first is None:
            return
        if self._deleted_to > self._first:
            self._conn.execute("DELETE FROM fingerprints WHERE at <= ?", (self._deleted_to,))
        _insert_rows(
            self._conn, "INSERT INTO fingerprints(fp, at)", "(?, ?)", self._added, self._limit
        )


def _insert_stored(conn: sqlite3.Connection, stored: list[NewRequest], limit: int) -> None:
    """The request rows of `stored` with their jobs and reply mails."""
    if not stored:
        return
    (top,) = conn.execute("SELECT coalesce(max(pk), 0) FROM requests").fetchone()
    pks = range(int(top) + 1, int(top) + 1 + len(stored))  # what SQLite itself would choose
    _insert_rows(
        conn,
        "INSERT INTO requests"
        "(pk, key, request_id, login, mail_from, client_ip, created, error, comment)",
        "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                pk,
                r.key,
                r.request_id,
                r.login,
                r.mail_from,
                r.client_ip,
                r.created,
                r.error,
                r.comment,
            )
            for pk, r in zip(pks, stored, strict=True)
        ],
        limit,
    )
    _insert_rows(
        conn,
        "INSERT INTO jobs(request_pk, phone, entry, part, parts, submit, state,"
        " not_before, expires_at, updated)",
        "(?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        [job_row(pk, j, r.created) for pk, r in zip(pks, stored, strict=True) for j in r.jobs],
        limit,
    )
    _insert_rows(
        conn,
        "INSERT INTO mails(request_pk, mail_from, rcpt, data, state, not_before,"
        " expires_at, updated)",
        "(?, ?, ?, ?, 'queued', ?, ?, ?)",
        [
            (pk, m.mail_from, m.rcpt, m.data, r.created, m.expires_at, r.created)
            for pk, r in zip(pks, stored, strict=True)
            for m in r.mails
        ],
        limit,
    )
