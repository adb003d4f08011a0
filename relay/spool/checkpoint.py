"""Moves the SQLite spool's WAL into the database file from a thread of its own (SPEC §8).

SQLite's default (`wal_autocheckpoint`, 1000 pages) runs the checkpoint inside whichever COMMIT
crosses the threshold: in the spool's writer thread, between an accepted mail's commit and its
`250`. A checkpoint writes every page changed since the last one back to its place in the
database file and fsyncs it. In a small spool those are a few pages rewritten many times; in a
1 000 000-job spool (issue #9, goal 4) they are scattered over a 400 MB file, and the average
COMMIT of a group of 20 stored requests went from 0.57 ms (20 000 jobs) to 2.2 ms, 0.8 ms of it
without any checkpoint in either (the bench's spool-only measurement).

So the writer's connection has autocheckpoint off (sqlite.py) and this thread runs PASSIVE
checkpoints on a connection of its own: PASSIVE neither waits for nor blocks the writer (WAL mode
lets a checkpoint copy committed frames while a write transaction appends new ones), and SQLite
releases the GIL while it works. The WAL is rewound to its start by the first write after a
checkpoint that copied every frame; should steady writes keep that from ever happening, a
RESTART checkpoint (which waits for the writer's current transaction and holds the next one
back only while it copies the frames the passive passes left) rewinds it once the WAL is
`restart_frames` long, so the file stays bounded.

Durability does not depend on this thread: a transaction is durable once its WAL frames are
fsynced at COMMIT (synchronous=FULL); a checkpoint copies only committed frames, and one cut
short by a crash is redone from the WAL at the next open.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("relay.spool")

INTERVAL = 0.1  # seconds between passive checkpoints (a few MB of WAL at full ingest speed)
RESTART_FRAMES = 4096  # 16 MiB of 4 KiB pages: then rewind the WAL even if the writer waits


class Checkpointer:
    """A daemon thread running `PRAGMA wal_checkpoint` on the spool every `interval` s."""

    def __init__(
        self, path: str, *, interval: float = INTERVAL, restart_frames: int = RESTART_FRAMES
    ) -> None:
        self._path = path
        self._interval = interval
        self._restart_frames = restart_frames
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="spool-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and close the connection (the writer's close, being the last, checkpoints)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("spool checkpointer cannot open %s: %s", self._path, exc)
            return
        try:
            conn.execute("PRAGMA synchronous=FULL")  # the checkpoint fsyncs the database file
            conn.execute("PRAGMA busy_timeout=10000")  # RESTART waits for the writer this long
            while not self._stop.wait(self._interval):
                self.checkpoint(conn)
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One pass; returns (frames in the WAL, frames copied). Errors are logged, not raised:
        the next pass retries, and meanwhile the WAL only grows."""
        try:
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= self._restart_frames:
                # One more passive pass copies what was appended meanwhile (little), so that the
                # RESTART holds the writer back only for the last few frames and the rewind.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                _, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            log.warning("spool checkpoint failed: %s", exc)
            return -1, -1
        return int(frames), int(copied)
