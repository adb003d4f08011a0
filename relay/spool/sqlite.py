"""The embedded spool: SQLite in WAL mode, fsynced commits and group commit (SPEC §8).

One thread owns the connection (but see inline progress commits below). Callers queue
operations; the thread runs every operation that is waiting in one transaction, commits once,
and only then resolves the callers' futures (if an operation raises, the batch is undone and run
again one transaction per operation, so one failure does not undo the others). Under concurrent
load this turns N fsyncs into one, which is how the SMTP front can answer `250` only after a
durable commit and still keep up (the Mailman/Postfix discipline: commit before acknowledging).

Progress commits (issue 9): a batch made only of `claim` and `mark_submitted_many` ops commits
with synchronous=NORMAL when `progress_fsync` > 0: SQLite writes its WAL frames (so a SIGKILL
of the relay loses nothing: they are in the kernel's page cache) but does not fsync them. At
window 10 the fsync was ≈200 µs of every round of 10 answers, and the window waits for the
round's commit. The writer fsyncs the WAL once the oldest unsynced commit is `progress_fsync`
seconds old: the next batch commits FULL, or, when none comes, an fsync of the WAL file itself
(sqlite3 has no call for "sync the WAL now" outside a commit or a checkpoint). Any FULL commit
(a `store()` before its `250`) syncs every frame before it, since the WAL is appended in order;
a power loss can only undo a tail of progress commits, whose jobs are then sent again.

Inline progress commits (issue 9): `mark_submitted_many` runs on the event loop itself, under
the connection's lock, when the writer thread is idle, nothing is queued and the commit is not
due for an fsync (`_progress`); otherwise it is queued like any op. The dispatcher's window
waits for that commit, and through the writer it also waited for two thread hops (wake the
writer, the GIL, then the loop's self-pipe) about as long as the commit itself.

Bulk stores (issue 9): each statement is an `sqlite3_step` that releases the GIL and must take
it back from the event loop; the stores of a batch (consecutive `store_all` ops whose requests
are plain, `_merge_stores`) share their statements (`sqlite_bulk`): ≈13 per batch instead of ≈8
per request, with the SPEC §5 checks run in Python exactly as one request after another would.

Stores on the event loop (issue 9): even so, each statement of a batch run on the writer thread
made the event loop give up the GIL and wait to take it back (≈8 blocking waits of the loop and
≈20 of the writer per batch of ≈8 stores, each a wake-up across cores): with the store's SQL
replaced by a GIL-free sleep of the same length the daemon kept pace with the bare sink, with
the real SQL on the writer thread it reached ≈0.55–0.70 of it. So the writer thread still
gathers the batch (the stores that queued up while it was busy: that is what makes group commit
work), but a run of consecutive store ops is handed to the event loop, which runs its statements
in one transaction with synchronous=NORMAL (`_run_stores_on_loop`: no GIL hand-offs while it
does, the loop holds the GIL anyway). Then the WAL file is fsynced, and only then are the
stores' futures resolved: `250` still means fsynced, exactly as a FULL commit would have it
(SQLite's FULL commit is that same fsync of the WAL after writing the frames). On a fast disk
(the recent fsyncs averaged ≤ `_LOOP_FSYNC_MAX`, 1 ms) the loop fsyncs right after its COMMIT
and answers at once: ≈0.15–0.3 ms of the loop per batch, against a wake-up of the writer
thread, its fsync, and a wake-up of the loop to answer (+2–5 % mails/s, bench.ab: 6 and 7 of 8
rounds won in two sets, even in a third); on a slower disk the writer thread, still holding
the connection's lock, does it and the loop serves other sessions meanwhile. If the fsync
fails, every store of the run gets SpoolError (451; the rows are committed in the page cache
but not known to be on disk: a client's retry may duplicate, nothing is lost). If the loop is
not running, or an op raises, the run goes the old way on the writer thread.

Commit delay (issue 9): a transaction's fixed cost (BEGIN, the WAL frames of ≈15 B-tree pages
at COMMIT, a statement per table) is ≈200 µs of the loop's CPU whether it holds 1 store or 16
(single-threaded: ≈230 µs per store at 1, 80 at 8, 57 at 16). Under concurrent store load (the
previous batch held at least `_COMMIT_SIBLINGS` stores) a batch that starts with a store waits
until `commit_delay` after the previous batch began for more stores to join it, and stops
waiting as soon as any other op arrives (a claim, a receipt: the drain never waits on it). A
lone client's store (a batch of one before it) never waits. In place (20 reused sessions):
store SQL 110–125 → 61–75 µs per mail with 4 ms; ahead of no delay in 8 of 11 adjacent
pairs, by up to 48 % (bench/RESULTS.md).

The hold also ends the moment the daemon's event loop runs out of work (relay.idle_loop: the
loop's selector calls `_loop_went_idle` before it waits): every session is then waiting, for
its client or for this batch, and waiting longer only idles the loop. With that, a longer
delay (8 ms, the default) costs no idle time and gives larger batches: 20 reused sessions
0.75 → 0.82 of the bare sink, a new connection per mail 0.81 → 0.91 (alternating runs; without
the idle end, 8 ms fell to 0.59: the loop idled 35 % of the time). On any other loop (tests,
an embedding program) the hold lasts the delay, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from relay.config import LimitsConfig
from relay.errors import ErrorCode, SpoolError
from relay.idle_loop import IdleSelector, idle_selector
from relay.rates import MINUTE, RateCheck, Usage, active, first_exceeded, utc_day
from relay.spool import sqlite_bulk, sqlite_prune
from relay.spool.base import DEFAULT_PROGRESS_FSYNC
from relay.spool.checkpoint import Checkpointer
from relay.spool.model import (
    RECEIPT_APPLIED,
    RECEIPT_REPEATED,
    Admission,
    Callback,
    Job,
    JobState,
    JobView,
    Mail,
    MoMessage,
    NewRequest,
    Notice,
    NoticeOutcome,
    SentMessage,
    StoreResult,
    Submitted,
    error_code,
    job_row,
    message_state,
    rate_overs,
    submit_from_json,
    tempfail_checks,
)
from relay.spool.prune_model import PruneStep
from relay.spool.retention import Cutoffs

log = logging.getLogger("relay.spool")

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], Any]
# An operation, its caller's future, and whether its commit must be fsynced before the future
# is resolved (False: a progress commit, see the module docstring).
_Item = tuple[_Op, "asyncio.Future[Any]", bool]
# What settles a batch: each op's future, its value, or the error it gets instead.
_Results = list[tuple["asyncio.Future[Any]", Any, BaseException | None]]


class _Wake:
    """Queued to wake the writer thread only (an inline commit gave it an fsync deadline)."""


_WAKE = _Wake()
# Queued by the event loop when it runs out of work while the writer holds a store batch for
# the commit delay: commit now (relay.idle_loop). Anywhere else it only wakes the writer.
_LOOP_IDLE = _Wake()

# 2: the SPEC §5 protection tables; 3: notices, callbacks; 4: mails_state, callbacks_state
# (each added in place by CREATE … IF NOT EXISTS at open); 5: notices.not_before (_upgrade)
SCHEMA_VERSION = 5
_BATCH_MAX = 512
DEFAULT_COMMIT_DELAY = 0.008  # `spool.commit_delay`
_COMMIT_SIBLINGS = 4  # stores in the previous batch before a batch waits for more
_COMMIT_GATHER_MAX = 64  # stores a waiting batch takes before it stops waiting
# A store run's WAL fsync is done by the event loop itself, right after its COMMIT, while the
# recent fsyncs (a moving average) took at most this long; on a slower disk the writer thread
# does it and the loop goes on serving sessions meanwhile ("Stores on the event loop").
_LOOP_FSYNC_MAX = 0.001

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    pk INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL,
    login TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    created REAL NOT NULL,
    error INTEGER NOT NULL,
    comment TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_request_id ON requests(request_id);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    request_pk INTEGER NOT NULL REFERENCES requests(pk),
    phone TEXT NOT NULL,
    entry INTEGER NOT NULL,
    part INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    submit TEXT NOT NULL,
    state TEXT NOT NULL,
    not_before REAL NOT NULL,
    expires_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    upstream_id TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    receipt TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs(not_before, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_request ON jobs(request_pk);
CREATE TABLE IF NOT EXISTS upstream_keys (key TEXT NOT NULL, job_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS upstream_keys_key ON upstream_keys(key);
CREATE TABLE IF NOT EXISTS early_receipts (
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    receipt TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS early_receipts_key ON early_receipts(key);
CREATE TABLE IF NOT EXISTS mails (
    id INTEGER PRIMARY KEY,
    request_pk INTEGER,
    mail_from TEXT NOT NULL,
    rcpt TEXT NOT NULL,
    data BLOB NOT NULL,
    state TEXT NOT NULL,
    not_before REAL NOT NULL,
    expires_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS mo (
    id INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    source_addr TEXT NOT NULL,
    destination_addr TEXT NOT NULL,
    esm_class INTEGER NOT NULL,
    data_coding INTEGER NOT NULL,
    short_message BLOB NOT NULL,
    tlvs TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mails_queued ON mails(not_before, id) WHERE state = 'queued';
-- SPEC §5 protections: their state lives here so that a restart does not reset them.
CREATE TABLE IF NOT EXISTS fingerprints (fp TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS fingerprints_fp ON fingerprints(fp, at);
CREATE INDEX IF NOT EXISTS fingerprints_at ON fingerprints(at);
-- How many rows each fingerprint has, kept by triggers: the duplicate check reads one row instead
-- of counting the window's rows (thousands under a burst of one alert: O(n) per mail).
CREATE TABLE IF NOT EXISTS fingerprint_counts (fp TEXT PRIMARY KEY, n INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS fingerprints_counted AFTER INSERT ON fingerprints BEGIN
    INSERT INTO fingerprint_counts(fp, n) VALUES (new.fp, 1)
        ON CONFLICT(fp) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS fingerprints_uncounted AFTER DELETE ON fingerprints BEGIN
    UPDATE fingerprint_counts SET n = n - 1 WHERE fp = old.fp;
    DELETE FROM fingerprint_counts WHERE fp = old.fp AND n <= 0;
END;
CREATE TABLE IF NOT EXISTS flood (
    dest TEXT PRIMARY KEY,
    streak INTEGER NOT NULL,
    last REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS flood_last ON flood(last);
CREATE TABLE IF NOT EXISTS balances (
    login TEXT PRIMARY KEY,
    configured INTEGER NOT NULL,
    remaining INTEGER NOT NULL
);
-- Issue 6 rate guards ("scope:key"): accepted requests of the last minute, parts per UTC day.
CREATE TABLE IF NOT EXISTS rate_events (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS rate_events_key ON rate_events(key, at);
CREATE INDEX IF NOT EXISTS rate_events_at ON rate_events(at);
CREATE TABLE IF NOT EXISTS rate_days (
    key TEXT NOT NULL,
    day INTEGER NOT NULL,
    parts INTEGER NOT NULL,
    PRIMARY KEY (key, day)
);
CREATE TABLE IF NOT EXISTS ip_failures (ip TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ip_failures_ip ON ip_failures(ip, at);
CREATE INDEX IF NOT EXISTS ip_failures_at ON ip_failures(at);
-- Issue 8: notices are written in the transaction that makes a message final or stores an MO
-- SMS (a transactional outbox); the notifier turns each into callbacks and mails, atomically.
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    request_pk INTEGER,
    entry INTEGER NOT NULL DEFAULT 0,
    phone TEXT NOT NULL DEFAULT '',
    mo_id INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS callbacks (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    state TEXT NOT NULL,
    not_before REAL NOT NULL,
    expires_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS callbacks_open ON callbacks(stream, id)
    WHERE state IN ('queued', 'sending');
CREATE INDEX IF NOT EXISTS callbacks_queued ON callbacks(not_before, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_phone ON jobs(phone, id);
CREATE INDEX IF NOT EXISTS mo_source ON mo(source_addr, id);
CREATE TABLE IF NOT EXISTS ip_blocks (
    ip TEXT PRIMARY KEY,
    until REAL NOT NULL,
    notified INTEGER NOT NULL
);
-- Issue 9 (scale): sent mails and callbacks stay in their tables; recover() and counts() look
-- rows up by state here instead of reading every row (and its body) of the whole history.
CREATE INDEX IF NOT EXISTS mails_state ON mails(state);
CREATE INDEX IF NOT EXISTS callbacks_state ON callbacks(state);
"""


_SET_OUTBOUND = {
    table: f"UPDATE {table} SET state = ?, error = ?, updated = COALESCE(?, updated),"  # noqa: S608 - fixed table names
    " not_before = COALESCE(?, not_before) WHERE id = ?"
    for table in ("mails", "callbacks")
}


def _upgrade(conn: sqlite3.Connection) -> None:
    """Columns added to tables of older spools (CREATE … IF NOT EXISTS leaves a table as is)."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(notices)")}
    if "not_before" not in cols:
        # An incomplete concatenated MO SMS waits here until mo.concat_timeout (notifier.py).
        conn.execute("ALTER TABLE notices ADD COLUMN not_before REAL NOT NULL DEFAULT 0")


# Expired SPEC §5 / rate-guard state that no check reads is deleted at most this often.
PRUNE_EVERY = 1.0
# The front's copy of the IP blocks is read again at least this often (seconds), besides after
# every commit of this process that wrote them.
BLOCKS_RELOAD = 1.0


class WriterState:
    """What the writer thread remembers between transactions (used by that thread only).

    When each kind of expired state was last deleted: a rolled-back transaction undoes a prune
    recorded here as done; harmless, a later one deletes the rows and no check reads them.
    Whether the transaction under way wrote `ip_blocks` (see `SqliteSpool.ip_blocked`)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self.blocks_written = False

    def due(self, what: str, now: float) -> bool:
        last = self._last.get(what)
        if last is not None and last <= now < last + PRUNE_EVERY:
            return False
        self._last[what] = now
        return True


def sqlite_path(url: str) -> str:
    """`sqlite:///rel.db` → `rel.db`; `sqlite:////abs/x.db` → `/abs/x.db` (SQLAlchemy style)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"not a sqlite URL: {url!r}")
    return url[len(prefix) :]


class SqliteSpool:
    """The SQLite spool; see the module docstring for the threading and commit model."""

    def __init__(
        self,
        path: str | Path,
        *,
        progress_fsync: float = DEFAULT_PROGRESS_FSYNC,
        stores_on_loop: bool = True,
        commit_delay: float = DEFAULT_COMMIT_DELAY,
    ) -> None:
        self._path = str(path)
        self._stores_on_loop = stores_on_loop  # see the module docstring
        self._commit_delay = commit_delay
        self._last_batch_stores = 0  # store ops in the writer's previous batch
        self._last_batch_start = float("-inf")  # time.monotonic() when it began to run
        # The daemon's loop tells when it runs out of work (relay.idle_loop): a batch held for
        # the commit delay then goes at once. `_holding`: the writer waits for siblings now.
        self._idle: IdleSelector | None = None
        self._unwatch_idle: Callable[[], None] | None = None
        self._holding = False
        self._ops: queue.SimpleQueue[_Item | _Wake | None] = queue.SimpleQueue()
        # The writer's connection, and who uses it: the writer thread for each batch, or the
        # event loop for a progress commit run inline (`_progress`) while the writer is idle.
        self._conn: sqlite3.Connection | None = None
        self._conn_lock = threading.Lock()
        self._progress_fsync = progress_fsync
        self._unsynced_since: float | None = None  # monotonic time of the oldest unsynced commit
        self._synchronous = "FULL"  # the writer connection's current PRAGMA synchronous
        self._fsync_seconds = 0.0  # moving average of store runs' WAL fsyncs (_LOOP_FSYNC_MAX)
        # Writer-thread counters (tests; read them after close() or between idle moments).
        self.commits_synced = 0
        self.commits_deferred = 0
        self.wal_fsyncs = 0  # idle-time fsyncs of the WAL file (not counting FULL commits)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpointer = Checkpointer(self._path)
        self._reader: sqlite3.Connection | None = None  # read-only, used on the event loop
        self._writer_state = WriterState()
        # SPEC §5 IP blocks as of the last commit, for the front's per-mail check (a dict
        # lookup instead of a query: each query on the loop is a GIL hand-off to the writer).
        self._blocks: dict[str, float] = {}
        self._blocks_loaded = float("-inf")  # time.monotonic() of the last load
        self._blocks_version = 0  # +1 by the writer thread after a commit that wrote ip_blocks
        self._blocks_seen = -1

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle = idle_selector(self._loop)
        if self._idle is not None:
            self._unwatch_idle = self._idle.watch(self._loop_went_idle)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="spool-sqlite", daemon=True
        )
        self._thread.start()
        await ready
        self._checkpointer.start()
        self._reader = self._open_reader()

    def _open_reader(self) -> sqlite3.Connection | None:
        """A second connection for the front's per-mail IP-block check: a WAL reader never
        waits for the writer, and one indexed SELECT (µs) is cheaper than two thread hops."""
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=0")  # never block the event loop: fall back
        except sqlite3.Error as exc:
            log.warning("no read connection to the spool, checks go through the writer: %s", exc)
            return None
        return conn

    async def close(self) -> None:
        if self._unwatch_idle is not None:
            self._unwatch_idle()
            self._unwatch_idle = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._thread is None:
            return
        await asyncio.to_thread(self._checkpointer.stop)
        self._ops.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    # -- the writer thread -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        parent = Path(self._path).parent
        parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        # Retention: pruned rows' pages go back to the file system (sqlite_prune.reclaim). It
        # takes only on a new, empty file (before WAL mode writes its header); an older spool
        # reuses its free pages instead (README "Retention").
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        # Checkpoints run in their own thread, never inside a COMMIT here (checkpoint.py).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(_SCHEMA)
        _upgrade(conn)
        # The counts start from the rows (a spool from before the counts, or a crash between
        # the schema statements above): a few thousand rows at most, once per start.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM fingerprint_counts")
        conn.execute(
            "INSERT INTO fingerprint_counts(fp, n)"
            " SELECT fp, COUNT(*) FROM fingerprints GROUP BY fp"
        )
        conn.execute("COMMIT")
        conn.execute(
            "INSERT OR REPLACE INTO meta(name, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        try:
            conn = self._connect()
        except Exception as exc:  # report to open() instead of dying silently
            self._resolve(ready, None, SpoolError(f"cannot open spool {self._path}: {exc}"))
            return
        self._conn = conn
        self._resolve(ready, None, None)
        try:
            while True:
                item = self._next_item(conn)
                if item is None:
                    break
                if isinstance(item, _Wake):
                    continue
                batch = [item]
                stop = self._gather(batch)
                with self._conn_lock:
                    self._run_batch(conn, batch)
                if stop:
                    break
        finally:
            with self._conn_lock:
                self._conn = None
                conn.close()

    def _gather(self, batch: list[_Item]) -> bool:
        """Add the queued ops to `batch` (its first op), waiting for more stores under load
        (the module docstring's commit delay); whether the stop sentinel came."""
        stores = int(isinstance(batch[0][0], _StoreOp))
        deadline = None
        if stores and self._commit_delay > 0 and self._last_batch_stores >= _COMMIT_SIBLINGS:
            deadline = self._last_batch_start + self._commit_delay
        stop = False
        while len(batch) < _BATCH_MAX:
            try:
                nxt = self._ops.get_nowait()
            except queue.Empty:
                wait = 0.0 if deadline is None else deadline - time.monotonic()
                if wait <= 0 or stores >= _COMMIT_GATHER_MAX:
                    break
                # Hold for siblings only while the loop has work (`_loop_went_idle`).
                self._holding = True  # before the look at the loop: no idle moment is missed
                try:
                    if self._idle is not None and self._idle.idle:
                        break
                    nxt = self._ops.get(timeout=wait)
                except queue.Empty:
                    break
                finally:
                    self._holding = False
            if nxt is None:
                stop = True
                break
            if nxt is _LOOP_IDLE and deadline is not None:
                break
            if isinstance(nxt, _Wake):
                continue
            batch.append(nxt)
            if isinstance(nxt[0], _StoreOp):
                stores += 1
            else:
                deadline = None  # another kind of op waits for this batch: no delay
        self._last_batch_stores = stores
        self._last_batch_start = time.monotonic()
        return stop

    def _loop_went_idle(self) -> None:
        """On the event loop, when it is about to wait with nothing to run (relay.idle_loop):
        every session is waiting, for its client or for the held batch: end the hold."""
        if self._holding:
            self._holding = False
            self._ops.put(_LOOP_IDLE)

    def _next_item(self, conn: sqlite3.Connection) -> _Item | _Wake | None:
        """The next queued operation; while a progress commit is unsynced, wait only until its
        deadline and then fsync the WAL (nothing else would, until the next FULL commit)."""
        while self._unsynced_since is not None:
            wait = self._unsynced_since + self._progress_fsync - time.monotonic()
            try:
                return self._ops.get(timeout=wait) if wait > 0 else self._ops.get_nowait()
            except queue.Empty:
                with self._conn_lock:  # not between an inline commit and its deadline's start
                    self._fsync_wal()
        return self._ops.get()

    def _fsync_wal(self) -> bool:
        """fsync the WAL file (every commit so far is then durable); whether that worked."""
        try:
            fd = os.open(self._path + "-wal", os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: the database file holds it all
            self._unsynced_since = None
            return True
        except OSError as exc:
            log.error("spool WAL cannot be opened for fsync: %s", exc)
            self._unsynced_since = time.monotonic()
            return False
        try:
            os.fsync(fd)
        except OSError as exc:  # try again at the next deadline
            log.error("spool WAL fsync failed: %s", exc)
            self._unsynced_since = time.monotonic()
            return False
        finally:
            os.close(fd)
        self.wal_fsyncs += 1
        self._unsynced_since = None
        return True

    def _sync_mode(self, conn: sqlite3.Connection, batch: list[_Item]) -> bool:
        """Set PRAGMA synchronous for this batch (between transactions, where SQLite allows
        it); whether the commit will be fsynced."""
        durable = (
            self._progress_fsync <= 0
            or any(item[2] for item in batch)
            or (
                self._unsynced_since is not None
                and time.monotonic() - self._unsynced_since >= self._progress_fsync
            )
        )
        self._set_synchronous(conn, "FULL" if durable else "NORMAL")
        return durable

    def _set_synchronous(self, conn: sqlite3.Connection, mode: Literal["FULL", "NORMAL"]) -> None:
        if mode != self._synchronous:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._synchronous = mode

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        """Run a batch: each run of consecutive store ops on the event loop (module docstring),
        the rest here; in queue order, each run in its own transaction."""
        if not self._stores_on_loop:
            self._run_here(conn, batch)
            return
        for stores, run in _store_runs(batch):
            results = self._run_stores_on_loop(conn, run) if stores else None
            if results is None:
                self._run_here(conn, run)
            elif results:  # (empty: fsynced and answered on the loop)
                self._resolve_all(results)

    def _run_stores_on_loop(self, conn: sqlite3.Connection, run: list[_Item]) -> _Results | None:
        """`run` (store ops only) in one transaction on the event loop, then the WAL fsynced
        (on the loop when the disk is fast, `_LOOP_FSYNC_MAX`, else here); the results still to
        resolve ([] when the loop did), or None when `run` is to be run here instead (the loop
        is not running, or an op raised and the transaction was undone).

        Whichever thread fsyncs, the writer is parked here holding the connection's lock: the
        fsync bookkeeping (`_fsync_wal`, the counters) is never touched by both at once."""
        loop = self._loop
        assert loop is not None
        handoff = _Handoff()

        def on_loop() -> None:
            if not handoff.claim():
                return  # the writer gave up waiting (the loop had stopped) and ran it itself
            try:
                results = self._run_together(conn, run, fsync_after=True)
                handoff.results = results  # (should the fsync here raise: the writer's turn)
                if results is not None and self._fsync_seconds <= _LOOP_FSYNC_MAX:
                    # No hop to the writer thread and back (module docstring).
                    synced = self._synced(results)
                    handoff.results = []
                    _settle(synced)
            finally:
                handoff.done.set()

        try:
            loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # the loop is closed
            return None
        while not handoff.done.wait(0.5):
            if not loop.is_running() and handoff.claim():
                return None
        results = handoff.results
        if not results:
            return results
        return self._synced(results)

    def _synced(self, results: _Results) -> _Results:
        """A committed store run's results once the WAL is fsynced; each a SpoolError if that
        failed (committed, but not known to be on disk). Times the fsync for the average."""
        if all(error is not None for _, _, error in results):
            return results
        started = time.monotonic()
        synced = self._fsync_wal()
        self._fsync_seconds += (time.monotonic() - started - self._fsync_seconds) / 8
        if not synced:
            failure = SpoolError("spool fsync failed")
            return [(fut, None, error or failure) for fut, _, error in results]
        self.commits_synced += 1
        return results

    def _run_here(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        """Run a batch in one transaction; if one of its operations raises, undo the batch and
        run each operation alone (so a failure undoes only its own operation).

        No SAVEPOINT per operation: they cost two statements each, and every statement is a
        GIL hand-off between this thread and the event loop (py-spy, bench ingest); operations
        practically never raise, and then the batch is simply run again op by op."""
        if len(batch) > 1:
            results = self._run_together(conn, batch)
            if results is None:
                results = [r for item in batch for r in self._run_alone(conn, item)]
        else:
            results = self._run_alone(conn, batch[0])
        self._resolve_all(results)

    def _run_together(
        self, conn: sqlite3.Connection, batch: list[_Item], *, fsync_after: bool = False
    ) -> _Results | None:
        """All of `batch` in one transaction, or None (nothing kept) when an operation raised.
        `fsync_after`: committed with synchronous=NORMAL, the caller fsyncs the WAL before it
        resolves anything (no bookkeeping of an unsynced commit here)."""
        try:
            if fsync_after:
                self._set_synchronous(conn, "NORMAL")
            durable = fsync_after or self._sync_mode(conn, batch)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(fut, None, SpoolError(f"spool busy: {exc}")) for _, fut, _ in batch]
        values: list[Any] = []
        for op, count in _merge_stores([op for op, _, _ in batch]):
            try:
                value = op(conn)
            except Exception:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._blocks_changed()
                return None
            if count is None:
                values.append(value)
            else:  # the results of several store ops, stored together: each op's share
                at = 0
                for n in count:
                    values.append(value[at : at + n])
                    at += n
        failure = self._commit(conn, durable, counted=not fsync_after)
        if failure is not None:
            return [(fut, None, failure) for _, fut, _ in batch]
        return [(fut, value, None) for (_, fut, _), value in zip(batch, values, strict=True)]

    def _run_alone(self, conn: sqlite3.Connection, item: _Item) -> _Results:
        """One operation in its own transaction: committed, or undone if it raises."""
        op, fut, _ = item
        try:
            durable = self._sync_mode(conn, [item])
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(fut, None, SpoolError(f"spool busy: {exc}"))]
        try:
            value = op(conn)
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._blocks_changed()
            error = SpoolError(f"spool operation failed: {exc}")
            return [(fut, None, error if isinstance(exc, sqlite3.Error) else exc)]
        failure = self._commit(conn, durable)
        return [(fut, None, failure) if failure is not None else (fut, value, None)]

    def _commit(
        self, conn: sqlite3.Connection, durable: bool, *, counted: bool = True
    ) -> SpoolError | None:
        """COMMIT (fsynced or not, as `_sync_mode` chose); the failure, if any. `counted`:
        False when the caller fsyncs the WAL itself (`_run_stores_on_loop`)."""
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("spool commit failed: %s", exc)
            return SpoolError(f"spool commit failed: {exc}")
        finally:
            self._blocks_changed()
        if not counted:
            return None
        if durable:
            self.commits_synced += 1
            self._unsynced_since = None
        else:
            self.commits_deferred += 1
            if self._unsynced_since is None:
                self._unsynced_since = time.monotonic()
        return None

    def _blocks_changed(self) -> None:
        """After a transaction ended: the front reads the IP blocks again if it wrote them
        (also after a rollback: a needless read, never a stale block)."""
        if self._writer_state.blocks_written:
            self._writer_state.blocks_written = False
            self._blocks_version += 1

    def _progress(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Run a progress op (`durable=False`), inline on the event loop when the writer is
        idle, its queue empty and the commit would not be fsynced; else `_queue` it.

        Issue 9: at window 10 the dispatcher's round waits for its commit (≈0.2 ms of SQLite,
        no I/O wait: the WAL frames go to the page cache) and, through the writer thread, for
        two thread hops as long again (queue → writer wake-up → GIL → commit → call_soon_
        threadsafe → the loop's self-pipe wake-up). Inline, the loop holds the connection
        while SQLite works (the GIL is released meanwhile); the writer would be idle anyway.
        An op of another caller queued meanwhile waits for the lock, as it would behind a
        batch. An fsync (the deadline passed) stays on the writer."""
        conn = self._conn
        if (
            conn is None
            or self._loop is None
            or self._progress_fsync <= 0
            or not self._ops.empty()
            or not self._conn_lock.acquire(blocking=False)
        ):
            return self._queue(op, durable=False)
        try:
            since = self._unsynced_since
            if self._conn is None or (
                since is not None and time.monotonic() - since >= self._progress_fsync
            ):
                return self._queue(op, durable=False)
            fut: asyncio.Future[T] = self._loop.create_future()
            [(_, value, error)] = self._run_alone(conn, (op, fut, False))
        finally:
            self._conn_lock.release()
        if since is None and self._unsynced_since is not None:
            self._ops.put(_WAKE)  # the writer sleeps without a deadline: it has one now
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)
        return fut

    def _resolve_all(self, results: _Results) -> None:
        """Settle a whole batch with one wake-up of the event loop (not one per future)."""
        assert self._loop is not None
        # A loop closed during shutdown raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, results)

    def _resolve(self, fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
        self._resolve_all([(fut, value, error)])

    async def _do(self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        """Run `op` in the writer's next transaction; `durable=False`: a progress commit."""
        return await self._queue(op, durable=durable)

    def _queue(
        self, op: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> asyncio.Future[T]:
        """Queue `op` for the writer now (not at the caller's next await); its future."""
        if self._thread is None or self._loop is None:
            fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            fut.set_exception(SpoolError("spool is not open"))
            return fut
        fut = self._loop.create_future()
        self._ops.put((op, fut, durable))
        return fut

    # -- requests --------------------------------------------------------------------------

    async def store(self, request: NewRequest) -> StoreResult:
        [result] = await self.store_all([request])
        return result

    def store_all(self, requests: Sequence[NewRequest]) -> asyncio.Future[list[StoreResult]]:
        """Queued now: the future of its commit (relay.spool.base.Spool.store_all)."""
        batch = list(requests)
        if not batch:
            done: asyncio.Future[list[StoreResult]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        return self._queue(_StoreOp(batch, self._writer_state))

    async def ip_blocked(self, client_ip: str, now: float) -> bool:
        sql = "SELECT 1 FROM ip_blocks WHERE ip = ? AND until > ?"
        if self._reader is not None:
            # The table is read again after every commit that wrote it (the writer bumps the
            # version before it resolves the callers' futures) and at least once a second.
            version = self._blocks_version
            tick = time.monotonic()
            try:
                if version != self._blocks_seen or tick - self._blocks_loaded >= BLOCKS_RELOAD:
                    rows = self._reader.execute("SELECT ip, until FROM ip_blocks").fetchall()
                    self._blocks = {str(ip): float(until) for ip, until in rows}
                    self._blocks_seen, self._blocks_loaded = version, tick
                return self._blocks.get(client_ip, float("-inf")) > now
            except sqlite3.Error:
                self._blocks_seen = -1
                # busy (a WAL recovery) or broken: ask the writer thread instead

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, (client_ip, now)).fetchone() is not None

        return await self._do(op)

    async def balance(self, login: str) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT remaining FROM balances WHERE login = ?", (login.lower(),)
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._do(op)

    async def recover(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            n = conn.execute("UPDATE jobs SET state = 'queued' WHERE state = 'sending'").rowcount
            n += conn.execute("UPDATE mails SET state = 'queued' WHERE state = 'sending'").rowcount
            n += conn.execute(
                "UPDATE callbacks SET state = 'queued' WHERE state = 'sending'"
            ).rowcount
            return n

        return await self._do(op)

    # -- SMS jobs --------------------------------------------------------------------------

    async def claim(self, limit: int, now: float) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT j.id, r.request_id, j.phone, j.part, j.parts, j.submit, j.attempts,"
                " j.expires_at, r.created FROM jobs j INDEXED BY jobs_queued"
                " JOIN requests r ON r.pk = j.request_pk"
                " WHERE j.state = 'queued' AND j.not_before <= ? ORDER BY j.not_before, j.id"
                " LIMIT ?",
                (now, limit),
            ).fetchall()
            if not rows:
                return []
            conn.executemany(
                "UPDATE jobs SET state = 'sending', attempts = attempts + 1, updated = ?"
                " WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
            return [
                Job(
                    id=r[0],
                    request_id=r[1],
                    phone=r[2],
                    part=r[3],
                    parts=r[4],
                    submit=submit_from_json(r[5]),
                    attempts=r[6] + 1,
                    expires_at=r[7],
                    created=r[8],
                )
                for r in rows
            ]

        return await self._do(op, durable=False)  # lost: the jobs are claimed again

    async def next_due(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            # The partial index holds only queued jobs in due order: the first row is the answer.
            # (Without INDEXED BY the planner picks jobs_state and sorts every queued job.)
            row = conn.execute(
                "SELECT not_before FROM jobs INDEXED BY jobs_queued WHERE state = 'queued'"
                " ORDER BY not_before, id LIMIT 1"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._do(op)

    async def mark_submitted(
        self, job_id: int, upstream_id: str, keys: tuple[str, ...], now: float
    ) -> JobState:
        [state] = await self.mark_submitted_many([Submitted(job_id, upstream_id, keys)], now)
        return state

    def mark_submitted_many(
        self, submitted: Sequence[Submitted], now: float
    ) -> Awaitable[list[JobState]]:
        """Queued for the writer at the call (the dispatcher's rounds start from a read
        callback, without a task to wake first); await the result."""
        items = list(submitted)

        def op(conn: sqlite3.Connection) -> list[JobState]:
            conn.executemany(
                "UPDATE jobs SET state = 'submitted', upstream_id = ?, error = '', updated = ?"
                " WHERE id = ?",
                [(s.upstream_id, now, s.job_id) for s in items],
            )
            conn.executemany(
                "INSERT INTO upstream_keys(key, job_id) VALUES (?, ?)",
                [(k, s.job_id) for s in items for k in s.keys],
            )
            states = [JobState.SUBMITTED] * len(items)
            # Receipts almost never beat their submit_sm_resp: one probe for the whole batch
            # instead of a lookup per job.
            if conn.execute("SELECT 1 FROM early_receipts LIMIT 1").fetchone() is None:
                return states
            for i, s in enumerate(items):
                if s.keys:
                    states[i] = _apply_early(conn, s.job_id, s.keys, now) or states[i]
            return states

        # Lost (power loss only): the jobs stay `sending` and are sent again after a restart.
        if not items:
            done: asyncio.Future[list[JobState]] = asyncio.get_running_loop().create_future()
            done.set_result([])
            return done
        return self._progress(op)

    async def release(self, job_ids: Sequence[int]) -> None:
        ids = list(job_ids)

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE jobs SET state = 'queued', attempts = MAX(0, attempts - 1)"
                " WHERE id = ? AND state = 'sending'",
                [(i,) for i in ids],
            )

        if ids:
            await self._do(op)

    async def mark_retry(self, job_id: int, not_before: float, error: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET state = 'queued', not_before = ?, error = ? WHERE id = ?",
                (not_before, error, job_id),
            )

        await self._do(op)

    async def mark_final(self, job_id: int, state: JobState, error: str, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            was_final = _is_final(conn, job_id)
            conn.execute(
                "UPDATE jobs SET state = ?, error = ?, updated = ? WHERE id = ?",
                (state.value, error, now, job_id),
            )
            if state.final and not was_final:
                _final_notice(conn, job_id, now)

        await self._do(op)

    async def apply_receipt(
        self, keys: tuple[str, ...], state: JobState | None, receipt: dict[str, Any], now: float
    ) -> int:
        text = json.dumps(receipt, ensure_ascii=False, sort_keys=True)

        def op(conn: sqlite3.Connection) -> int:
            if not keys:
                return 0
            marks = ",".join("?" * len(keys))
            row = conn.execute(
                f"SELECT job_id FROM upstream_keys WHERE key IN ({marks})"  # noqa: S608
                " ORDER BY job_id DESC LIMIT 1",
                keys,
            ).fetchone()
            if row is None:
                # SPEC §9: a receipt may arrive before the submit_sm_resp is processed.
                conn.execute(
                    "INSERT INTO early_receipts(key, state, receipt, received) VALUES (?, ?, ?, ?)",
                    (keys[0], state.value if state else "", text, now),
                )
                return 0
            _, repeated = _apply(conn, int(row[0]), state.value if state else None, text, now)
            return RECEIPT_REPEATED if repeated else RECEIPT_APPLIED

        return await self._do(op)

    # -- mobile-originated SMS -------------------------------------------------------------

    async def store_mo(self, mo: MoMessage, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO mo(received, source_addr, destination_addr, esm_class, data_coding,"
                " short_message, tlvs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    now,
                    mo.source_addr,
                    mo.destination_addr,
                    mo.esm_class,
                    mo.data_coding,
                    mo.short_message,
                    json.dumps(mo.tlvs, sort_keys=True),
                ),
            )
            mo_id = int(cur.lastrowid or 0)
            conn.execute(
                "INSERT INTO notices(kind, mo_id, phone, created) VALUES ('mo', ?, ?, ?)",
                (mo_id, mo.source_addr, now),
            )
            return mo_id

        return await self._do(op)

    async def mo_messages(self, limit: int = 100) -> list[tuple[int, float, MoMessage]]:
        def op(conn: sqlite3.Connection) -> list[tuple[int, float, MoMessage]]:
            rows = conn.execute(
                "SELECT id, received, source_addr, destination_addr, esm_class, data_coding,"
                " short_message, tlvs FROM mo ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                (r[0], r[1], MoMessage(r[2], r[3], r[4], r[5], bytes(r[6]), json.loads(r[7])))
                for r in rows
            ]

        return await self._do(op)

    # -- outbound mails --------------------------------------------------------------------

    async def claim_mails(self, limit: int, now: float) -> list[Mail]:
        def op(conn: sqlite3.Connection) -> list[Mail]:
            rows = conn.execute(
                "SELECT id, mail_from, rcpt, data, attempts, expires_at FROM mails"
                " WHERE state = 'queued' AND not_before <= ? ORDER BY not_before, id LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE mails SET state = 'sending', attempts = attempts + 1, updated = ?"
                " WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
            return [Mail(r[0], r[1], r[2], bytes(r[3]), r[4] + 1, r[5]) for r in rows]

        return await self._do(op)

    async def next_mail_due(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(not_before) FROM mails WHERE state = 'queued'"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._do(op)

    async def mark_mail_sent(self, mail_id: int, now: float) -> None:
        await self._set_outbound("mails", mail_id, "sent", "", now, None)

    async def mark_mail_retry(self, mail_id: int, not_before: float, error: str) -> None:
        await self._set_outbound("mails", mail_id, "queued", error, None, not_before)

    async def mark_mail_failed(self, mail_id: int, error: str, now: float) -> None:
        await self._set_outbound("mails", mail_id, "failed", error, now, None)

    async def _set_outbound(
        self,
        table: Literal["mails", "callbacks"],
        row_id: int,
        state: str,
        error: str,
        now: float | None,
        not_before: float | None,
    ) -> None:
        """The state of an outbound mail or callback: sent, queued again, or failed."""
        sql = _SET_OUTBOUND[table]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(sql, (state, error, now, not_before, row_id))

        await self._do(op)

    # -- issue 8: notices, callbacks, MO answers -------------------------------------------

    async def claim_notices(self, limit: int, now: float | None = None) -> list[Notice]:
        at = time.time() if now is None else now

        def op(conn: sqlite3.Connection) -> list[Notice]:
            rows = conn.execute(
                "SELECT id, kind, request_pk, entry, phone, mo_id, created FROM notices"
                " WHERE not_before <= ? ORDER BY id LIMIT ?",
                (at, limit),
            ).fetchall()
            return [_notice(conn, *r) for r in rows]

        return await self._do(op)

    async def settle_notices(self, outcomes: Sequence[NoticeOutcome], now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for out in outcomes:
                conn.executemany(
                    "INSERT INTO callbacks(stream, url, body, content_type, state, not_before,"
                    " expires_at, updated) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                    [
                        (c.stream, c.url, c.body, c.content_type, now, c.expires_at, now)
                        for c in out.callbacks
                    ],
                )
                conn.executemany(
                    "INSERT INTO mails(request_pk, mail_from, rcpt, data, state, not_before,"
                    " expires_at, updated) VALUES (NULL, ?, ?, ?, 'queued', ?, ?, ?)",
                    [(m.mail_from, m.rcpt, m.data, now, m.expires_at, now) for m in out.mails],
                )
                if out.defer_until is not None:  # looked at again then (an incomplete MO)
                    conn.execute(
                        "UPDATE notices SET not_before = ? WHERE id = ?",
                        (out.defer_until, out.notice_id),
                    )
                else:
                    conn.execute("DELETE FROM notices WHERE id = ?", (out.notice_id,))

        await self._do(op)

    async def claim_callbacks(self, limit: int, now: float) -> list[Callback]:
        def op(conn: sqlite3.Connection) -> list[Callback]:
            # Only the head of each stream: a message's callbacks go out one after the other.
            rows = conn.execute(
                "SELECT id, stream, url, body, content_type, attempts, expires_at FROM callbacks c"
                " WHERE state = 'queued' AND not_before <= ? AND NOT EXISTS (SELECT 1 FROM"
                " callbacks p WHERE p.stream = c.stream AND p.id < c.id"
                " AND p.state IN ('queued', 'sending')) ORDER BY not_before, id LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE callbacks SET state = 'sending', attempts = attempts + 1, updated = ?"
                " WHERE id = ?",
                [(now, r[0]) for r in rows],
            )
            return [Callback(r[0], r[1], r[2], bytes(r[3]), r[4], r[5] + 1, r[6]) for r in rows]

        return await self._do(op)

    async def next_callback_due(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(not_before) FROM callbacks c WHERE state = 'queued' AND NOT EXISTS"
                " (SELECT 1 FROM callbacks p WHERE p.stream = c.stream AND p.id < c.id"
                " AND p.state IN ('queued', 'sending'))"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._do(op)

    async def mark_callback_sent(self, callback_id: int, now: float) -> None:
        await self._set_outbound("callbacks", callback_id, "sent", "", now, None)

    async def mark_callback_retry(self, callback_id: int, not_before: float, error: str) -> None:
        await self._set_outbound("callbacks", callback_id, "queued", error, None, not_before)

    async def mark_callback_failed(self, callback_id: int, error: str, now: float) -> None:
        await self._set_outbound("callbacks", callback_id, "failed", error, now, None)

    async def last_sent_to(self, phone: str, since: float) -> SentMessage | None:
        def op(conn: sqlite3.Connection) -> SentMessage | None:
            # The newest job sent to the phone, then its age: with `r.created >= ?` in the
            # WHERE, a phone last written to before `since` had its whole history walked
            # (jobs_phone, newest first) on every MO. Job ids grow with time, so an older
            # job cannot be newer than the newest one.
            row = conn.execute(
                "SELECT j.request_pk, j.entry, r.request_id, r.login, r.mail_from, r.created"
                " FROM jobs j JOIN requests r ON r.pk = j.request_pk"
                " WHERE j.phone = ? AND j.upstream_id != '' ORDER BY j.id DESC LIMIT 1",
                (phone,),
            ).fetchone()
            if row is None or row[5] < since:
                return None
            submits = tuple(
                submit_from_json(r[0])
                for r in conn.execute(
                    "SELECT submit FROM jobs WHERE request_pk = ? AND entry = ? AND phone = ?"
                    " ORDER BY part",
                    (row[0], row[1], phone),
                )
            )
            return SentMessage(row[2], row[3], row[4], phone, float(row[5]), submits)

        return await self._do(op)

    async def mo_from(self, source_addr: str, since: float) -> list[tuple[int, float, MoMessage]]:
        def op(conn: sqlite3.Connection) -> list[tuple[int, float, MoMessage]]:
            rows = conn.execute(
                "SELECT id, received, source_addr, destination_addr, esm_class, data_coding,"
                " short_message, tlvs FROM mo WHERE source_addr = ? AND received >= ?"
                " ORDER BY id",
                (source_addr, since),
            ).fetchall()
            return [
                (r[0], r[1], MoMessage(r[2], r[3], r[4], r[5], bytes(r[6]), json.loads(r[7])))
                for r in rows
            ]

        return await self._do(op)

    # -- retention (relay/spool/sqlite_prune.py) -------------------------------------------

    async def prune(self, cutoffs: Cutoffs, limit: int, resume: dict[str, int]) -> PruneStep:
        def op(conn: sqlite3.Connection) -> PruneStep:
            return sqlite_prune.prune_batch(conn, cutoffs, limit, resume)

        return await self._do(op)

    async def reclaim(self, pages: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return sqlite_prune.reclaim(conn, pages)

        return await self._do(op)

    # -- inspection ------------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            out = {s.value: 0 for s in JobState}
            for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                out[state] = n
            for state, n in conn.execute("SELECT state, COUNT(*) FROM mails GROUP BY state"):
                out[f"mail_{state}"] = n
            for state, n in conn.execute("SELECT state, COUNT(*) FROM callbacks GROUP BY state"):
                out[f"callback_{state}"] = n
            return out

        # Counting walks the whole jobs_state index (≈85 ms at 1 000 000 jobs): in the writer
        # thread that would hold every commit, and so every `250`, back at each metrics scrape.
        # A WAL reader of its own neither waits for the writer nor blocks it.
        return await asyncio.to_thread(self._read, op)

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `op` in one read transaction on a connection of its own."""
        if self._thread is None:
            raise SpoolError("spool is not open")
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            try:
                conn.execute("BEGIN")  # one snapshot for all of op's statements
                return op(conn)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise SpoolError(f"spool read failed: {exc}") from exc

    async def request_status(self, request_id: str) -> list[JobView]:
        def op(conn: sqlite3.Connection) -> list[JobView]:
            rows = conn.execute(
                "SELECT j.id, j.phone, j.entry, j.part, j.parts, j.state, j.attempts,"
                " j.upstream_id, j.error, j.receipt FROM jobs j"
                " JOIN requests r ON r.pk = j.request_pk WHERE r.request_id = ?"
                " ORDER BY j.id",
                (request_id,),
            ).fetchall()
            return [
                JobView(
                    id=r[0],
                    phone=r[1],
                    entry=r[2],
                    part=r[3],
                    parts=r[4],
                    state=r[5],
                    attempts=r[6],
                    upstream_id=r[7],
                    error=r[8],
                    receipt=json.loads(r[9]) if r[9] else {},
                )
                for r in rows
            ]

        return await self._do(op)

    # -- operator and health methods -------------------------------------------------------

    async def touch(self, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO meta(name, value) VALUES ('heartbeat', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (repr(now),),
            )

        await self._do(op)

    async def request_error(self, request_id: str) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT MAX(error) FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._do(op)

    async def requeue(self, request_id: str, now: float, validity: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            # INDEXED BY: the planner's default, jobs_state, walks every job in those states.
            return conn.execute(
                "UPDATE jobs INDEXED BY jobs_request"
                " SET state = 'queued', attempts = 0, not_before = ?, expires_at = ?,"
                " error = '', upstream_id = '', receipt = '', updated = ?"
                " WHERE state IN (?, ?, ?, ?) AND request_pk IN"
                " (SELECT pk FROM requests WHERE request_id = ?)",
                (now, now + validity, now, *_REQUEUEABLE, request_id),
            ).rowcount

        return await self._do(op)

    async def cancel(self, request_id: str, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            ids = [
                r[0]
                # INDEXED BY: the planner's default, jobs_state, walks every queued job
                # (330 ms with 1 000 000 queued; 0.1 ms through the request's own jobs).
                for r in conn.execute(
                    "SELECT id FROM jobs INDEXED BY jobs_request WHERE state = 'queued'"
                    " AND request_pk IN (SELECT pk FROM requests WHERE request_id = ?)",
                    (request_id,),
                )
            ]
            for job_id in ids:
                conn.execute(
                    "UPDATE jobs SET state = 'cancelled', error = 'cancelled by operator',"
                    " updated = ? WHERE id = ?",
                    (now, job_id),
                )
                _final_notice(conn, job_id, now)
            return len(ids)

        return await self._do(op)


_REQUEUEABLE = (
    JobState.REJECTED.value,
    JobState.UNDELIVERABLE.value,
    JobState.EXPIRED.value,
    JobState.CANCELLED.value,
)


def _apply(
    conn: sqlite3.Connection, job_id: int, state: str | None, receipt: str, now: float
) -> tuple[JobState | None, bool]:
    """Store a receipt on a job; move it to a final state when the receipt says so. Returns
    the state set (None: none) and whether a state receipt found the job already final."""
    if state:
        was_final = _is_final(conn, job_id)
        conn.execute(
            "UPDATE jobs SET state = ?, receipt = ?, updated = ? WHERE id = ?",
            (state, receipt, now, job_id),
        )
        if JobState(state).final and not was_final:
            _final_notice(conn, job_id, now)
        return JobState(state), was_final
    conn.execute("UPDATE jobs SET receipt = ?, updated = ? WHERE id = ?", (receipt, now, job_id))
    return None, False


def _apply_early(
    conn: sqlite3.Connection, job_id: int, keys: tuple[str, ...], now: float
) -> JobState | None:
    """Apply (and drop) the receipts that came for `keys` before the job was marked submitted;
    the state the last one set, if any."""
    marks = ",".join("?" * len(keys))
    early = conn.execute(
        f"SELECT rowid, state, receipt FROM early_receipts WHERE key IN ({marks})"  # noqa: S608
        " ORDER BY received",
        keys,
    ).fetchall()
    state: JobState | None = None
    for rowid, rstate, receipt in early:
        state = _apply(conn, job_id, rstate or None, receipt, now)[0] or state
        conn.execute("DELETE FROM early_receipts WHERE rowid = ?", (rowid,))
    return state


def _is_final(conn: sqlite3.Connection, job_id: int) -> bool:
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row is not None and JobState(row[0]).final


def _final_notice(conn: sqlite3.Connection, job_id: int, now: float) -> None:
    """A job just became final: when its whole message is final, write a `status` notice."""
    row = conn.execute(
        "SELECT request_pk, entry, phone FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None:
        return
    moving = conn.execute(
        "SELECT 1 FROM jobs WHERE request_pk = ? AND entry = ? AND phone = ?"
        " AND state IN ('queued', 'sending', 'submitted') LIMIT 1",
        tuple(row),
    ).fetchone()
    if moving is None:
        conn.execute(
            "INSERT INTO notices(kind, request_pk, entry, phone, created)"
            " VALUES ('status', ?, ?, ?, ?)",
            (*row, now),
        )


def _notice(
    conn: sqlite3.Connection,
    notice_id: int,
    kind: str,
    request_pk: int | None,
    entry: int,
    phone: str,
    mo_id: int | None,
    created: float,
) -> Notice:
    if kind == "mo":
        r = conn.execute(
            "SELECT received, source_addr, destination_addr, esm_class, data_coding,"
            " short_message, tlvs FROM mo WHERE id = ?",
            (mo_id,),
        ).fetchone()
        mo = MoMessage(r[1], r[2], r[3], r[4], bytes(r[5]), json.loads(r[6])) if r else None
        return Notice(notice_id, kind, created, phone=phone, mo_id=mo_id or 0, mo=mo)
    req = conn.execute(
        "SELECT request_id, login, mail_from FROM requests WHERE pk = ?", (request_pk,)
    ).fetchone()
    jobs = conn.execute(
        "SELECT state, error, receipt FROM jobs"
        " WHERE request_pk = ? AND entry = ? AND phone = ? ORDER BY part",
        (request_pk, entry, phone),
    ).fetchall()
    state = message_state([j[0] for j in jobs])
    err = next((error_code(j[2], j[1]) for j in jobs if j[0] != JobState.DELIVERED.value), 0)
    return Notice(
        notice_id,
        kind,
        created,  # when the message became final
        request_id=req[0] if req else "",
        login=req[1] if req else "",
        mail_from=req[2] if req else "",
        phone=phone,
        entry=entry,
        state=state,
        err=err,
        parts=len(jobs),
    )


def _settle(results: _Results) -> None:
    """On the event loop: each future its value or error (a cancelled one is left alone)."""
    for fut, value, error in results:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


class _Handoff:
    """A run of stores handed from the writer thread to the event loop: whoever claims it
    first runs it (the loop, or the writer when the loop stopped before it got there)."""

    __slots__ = ("_claimed", "done", "results")

    def __init__(self) -> None:
        self._claimed = threading.Lock()
        self.done = threading.Event()
        self.results: _Results | None = None

    def claim(self) -> bool:
        return self._claimed.acquire(blocking=False)


def _store_runs(batch: list[_Item]) -> list[tuple[bool, list[_Item]]]:
    """`batch` cut into runs of consecutive items that are store ops (True) or not (False)."""
    runs: list[tuple[bool, list[_Item]]] = []
    for item in batch:
        stores = isinstance(item[0], _StoreOp)
        if runs and runs[-1][0] == stores:
            runs[-1][1].append(item)
        else:
            runs.append((stores, [item]))
    return runs


class _StoreOp:
    """`store_all`'s operation: one mail's requests, stored in the writer's transaction.

    The writer stores the requests of consecutive store ops of a batch together when all are
    plain (`_merge_stores`, `sqlite_bulk`): a few statements per batch instead of ≈8 per request.
    """

    __slots__ = ("_plain", "requests", "state")

    def __init__(
        self, requests: list[NewRequest], state: WriterState, *, plain: bool | None = None
    ) -> None:
        self.requests = requests
        self.state = state
        self._plain = plain  # worked out once, on the writer (`plain`)

    def plain(self) -> bool:
        if self._plain is None:
            self._plain = all(sqlite_bulk.plain(r) for r in self.requests)
        return self._plain

    def __call__(self, conn: sqlite3.Connection) -> list[StoreResult]:
        batch = self.requests
        if len(batch) > 1 and self.plain():
            return sqlite_bulk.store_bulk(conn, batch, self.state.due)
        known = _known(conn, batch)
        held = _rate_tempfail(conn, batch, known)
        if held is not None:
            return held
        return [_store_one(conn, request, known, self.state) for request in batch]


def _merge_stores(ops: list[_Op]) -> list[tuple[_Op, list[int] | None]]:
    """`ops` with each run of consecutive plain store ops made one (and how many results
    each of them gets back); every other op as it is (None)."""
    out: list[tuple[_Op, list[int] | None]] = []
    run: list[_StoreOp] = []

    def flush() -> None:
        if len(run) == 1:
            out.append((run[0], None))
        elif run:
            merged = _StoreOp([r for op in run for r in op.requests], run[0].state, plain=True)
            out.append((merged, [len(op.requests) for op in run]))
        run.clear()

    for op in ops:
        if isinstance(op, _StoreOp) and op.plain():
            run.append(op)
            continue
        flush()
        out.append((op, None))
    flush()
    return out


def _known(conn: sqlite3.Connection, batch: list[NewRequest]) -> set[str]:
    """The keys of `batch` stored before (idempotent retries)."""
    return {
        r.key
        for r in batch
        if conn.execute("SELECT 1 FROM requests WHERE key = ?", (r.key,)).fetchone() is not None
    }


def _store_one(
    conn: sqlite3.Connection, request: NewRequest, known: set[str], state: WriterState
) -> StoreResult:
    """`Spool.store` of one request, in the caller's transaction; `known` holds the keys
    already stored (`_known`, read in the same transaction) and receives this one's."""
    if request.key in known:
        return StoreResult(stored=False)
    now = request.created
    limits = request.limits
    adm = request.admission
    streaks: dict[str, tuple[int, float]] = {}
    if limits is not None and adm is not None and not request.error:
        checks = active(adm.rates)
        over = first_exceeded(checks, _rate_usage(conn, checks, now), adm.parts)
        if over is not None:
            return StoreResult(stored=False, refused=int(ErrorCode.UNDELIVERABLE), over=over)
        refused = _admit(conn, adm, limits, request.login, now, streaks, state)
        if refused:
            return StoreResult(stored=False, refused=refused)
    mails = request.mails
    if (
        request.error == ErrorCode.IP_BLOCKED
        and mails
        and not _first_block_reply(conn, request.client_ip, now)
    ):
        mails = ()  # SPEC §5 IP block: one ERROR 4 reply per block, not a reply storm
    cur = conn.execute(
        "INSERT INTO requests"
        "(key, request_id, login, mail_from, client_ip, created, error, comment)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            request.key,
            request.request_id,
            request.login,
            request.mail_from,
            request.client_ip,
            request.created,
            request.error,
            request.comment,
        ),
    )
    pk = cur.lastrowid
    assert pk is not None  # set by the INSERT just run
    known.add(request.key)
    conn.executemany(
        "INSERT INTO jobs(request_pk, phone, entry, part, parts, submit, state,"
        " not_before, expires_at, updated) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        [job_row(pk, j, request.created) for j in request.jobs],
    )
    conn.executemany(
        "INSERT INTO mails(request_pk, mail_from, rcpt, data, state, not_before,"
        " expires_at, updated) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        [
            (
                pk,
                m.mail_from,
                m.rcpt,
                m.data,
                request.created,
                m.expires_at,
                request.created,
            )
            for m in mails
        ],
    )
    if limits is not None and adm is not None and not request.error:
        _debit(conn, adm, request.login, now, streaks)
        _count_rates(conn, active(adm.rates), adm.parts, now, state)
    if limits is not None and request.ip_failure and request.client_ip:
        _count_failure(conn, request.client_ip, limits, now, state)
    return StoreResult(stored=True)


def _rate_usage(
    conn: sqlite3.Connection, checks: tuple[RateCheck, ...], now: float
) -> dict[str, Usage]:
    """Issue 6: what each guard's key used in the last minute and this UTC day."""
    usage: dict[str, Usage] = {}
    for check in checks:
        (minute,) = conn.execute(
            "SELECT COUNT(*) FROM rate_events WHERE key = ? AND at > ?",
            (check.name, now - MINUTE),
        ).fetchone()
        row = conn.execute(
            "SELECT parts FROM rate_days WHERE key = ? AND day = ?", (check.name, utc_day(now))
        ).fetchone()
        usage[check.name] = Usage(int(minute), int(row[0]) if row else 0)
    return usage


def _count_rates(
    conn: sqlite3.Connection,
    checks: tuple[RateCheck, ...],
    parts: int,
    now: float,
    state: WriterState,
) -> None:
    """Count one admitted request of `parts` parts on each guard (and prune what expired:
    the checks read only the last minute and this day, so that is housekeeping)."""
    if not checks:
        return
    if state.due("rates", now):
        conn.execute("DELETE FROM rate_events WHERE at <= ?", (now - MINUTE,))
        conn.execute("DELETE FROM rate_days WHERE day < ?", (utc_day(now),))
    for check in checks:
        conn.execute("INSERT INTO rate_events(key, at) VALUES (?, ?)", (check.name, now))
        conn.execute(
            "INSERT INTO rate_days(key, day, parts) VALUES (?, ?, ?)"
            " ON CONFLICT(key, day) DO UPDATE SET parts = parts + excluded.parts",
            (check.name, utc_day(now), parts),
        )


def _rate_tempfail(
    conn: sqlite3.Connection, batch: list[NewRequest], known: set[str]
) -> list[StoreResult] | None:
    """`rate_action = "tempfail"`: when any request of the mail would be over a guard, the
    results that keep the whole mail out of the spool (nothing written); else None."""
    checks = tempfail_checks(batch, known)
    if not checks:
        return None
    overs = rate_overs(batch, known, _rate_usage(conn, checks, batch[0].created))
    if not overs:
        return None
    return [StoreResult(stored=False, over=overs.get(i)) for i in range(len(batch))]


# -- SPEC §5 protections ----------------------------------------------------------------------


def _admit(
    conn: sqlite3.Connection,
    adm: Admission,
    limits: LimitsConfig,
    login: str,
    now: float,
    streaks: dict[str, tuple[int, float]],
    state: WriterState,
) -> int:
    """Flood (8) → duplicates (9) → balance (3): 0 when all pass, else the refusing code.

    Writes nothing a refusal must undo: only expired state is pruned and a balance row is
    created or re-based. `streaks` receives each destination's new flood streak for `_debit`.
    """
    # Flood: a subscriber's streak grows while each message follows the previous one by less
    # than flood_interval; message flood_count + 1 of a streak is refused. Only accepted
    # messages extend a streak: a refusal was never sent to the subscriber. A row older than
    # flood_interval starts afresh below, so deleting such rows is housekeeping (at most once
    # a second, not one statement per mail).
    if state.due("flood", now):
        conn.execute("DELETE FROM flood WHERE last <= ?", (now - limits.flood_interval,))
    for dest in adm.destinations:
        if dest in streaks:
            streak, last = streaks[dest]
        else:
            row = conn.execute("SELECT streak, last FROM flood WHERE dest = ?", (dest,)).fetchone()
            streak, last = (int(row[0]), float(row[1])) if row else (0, float("-inf"))
        streak = streak + 1 if now - last < limits.flood_interval else 1
        if streak > limits.flood_count:
            return int(ErrorCode.UNDELIVERABLE)
        streaks[dest] = (streak, now)
    # Duplicates: at most duplicate_allowed accepted requests per fingerprint per window. After
    # the DELETE every row left is inside the window, so the kept count is the window's count.
    conn.execute("DELETE FROM fingerprints WHERE at <= ?", (now - limits.duplicate_window,))
    if adm.fingerprint:
        row = conn.execute(
            "SELECT n FROM fingerprint_counts WHERE fp = ?", (adm.fingerprint,)
        ).fetchone()
        seen = int(row[0]) if row else 0
        if seen >= limits.duplicate_allowed:
            return int(ErrorCode.DUPLICATE)
    # Balance in SMS parts: initialised from the config the first time the account is seen,
    # re-based by the difference when the configured value changes (see AccountConfig.balance).
    if adm.balance is not None:
        key = login.lower()
        row = conn.execute(
            "SELECT configured, remaining FROM balances WHERE login = ?", (key,)
        ).fetchone()
        if row is None:
            remaining = adm.balance
            conn.execute(
                "INSERT INTO balances(login, configured, remaining) VALUES (?, ?, ?)",
                (key, adm.balance, remaining),
            )
        else:
            remaining = int(row[1])
            if int(row[0]) != adm.balance:
                remaining += adm.balance - int(row[0])
                conn.execute(
                    "UPDATE balances SET configured = ?, remaining = ? WHERE login = ?",
                    (adm.balance, remaining, key),
                )
        if adm.parts > remaining:
            return int(ErrorCode.FUNDS)
    return 0


def _debit(
    conn: sqlite3.Connection,
    adm: Admission,
    login: str,
    now: float,
    streaks: dict[str, tuple[int, float]],
) -> None:
    """Record an admitted request: flood streaks, its fingerprint, the parts it uses."""
    conn.executemany(
        "INSERT INTO flood(dest, streak, last) VALUES (?, ?, ?)"
        " ON CONFLICT(dest) DO UPDATE SET streak = excluded.streak, last = excluded.last",
        [(dest, streak, last) for dest, (streak, last) in streaks.items()],
    )
    if adm.fingerprint:
        conn.execute("INSERT INTO fingerprints(fp, at) VALUES (?, ?)", (adm.fingerprint, now))
    if adm.balance is not None and adm.parts:
        conn.execute(
            "UPDATE balances SET remaining = remaining - ? WHERE login = ?",
            (adm.parts, login.lower()),
        )


def _count_failure(
    conn: sqlite3.Connection, ip: str, limits: LimitsConfig, now: float, state: WriterState
) -> None:
    """SPEC §5 IP block: more than ip_fail_count failures within ip_fail_window → blocked."""
    conn.execute("DELETE FROM ip_failures WHERE at <= ?", (now - limits.ip_fail_window,))
    conn.execute("INSERT INTO ip_failures(ip, at) VALUES (?, ?)", (ip, now))
    (failures,) = conn.execute(
        "SELECT COUNT(*) FROM ip_failures WHERE ip = ? AND at > ?",
        (ip, now - limits.ip_fail_window),
    ).fetchone()
    if failures > limits.ip_fail_count:
        conn.execute(
            "INSERT INTO ip_blocks(ip, until, notified) VALUES (?, ?, 0)"
            " ON CONFLICT(ip) DO UPDATE SET until = excluded.until, notified = 0",
            (ip, now + limits.ip_block_time),
        )
        state.blocks_written = True
        # The count starts afresh when the block ends.
        conn.execute("DELETE FROM ip_failures WHERE ip = ?", (ip,))


def _first_block_reply(conn: sqlite3.Connection, ip: str, now: float) -> bool:
    """True for the first ERROR 4 reply of the IP's current block (and remember it was sent)."""
    row = conn.execute(
        "SELECT notified FROM ip_blocks WHERE ip = ? AND until > ?", (ip, now)
    ).fetchone()
    if row is None:
        return True  # the block ended between the front's check and this store
    if row[0]:
        return False
    conn.execute("UPDATE ip_blocks SET notified = 1 WHERE ip = ?", (ip,))
    return True
