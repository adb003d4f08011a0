"""An asyncio event loop that tells when it is about to wait: nothing left to run but I/O.

The SQLite spool's group commit (relay.spool.sqlite, "Commit delay") holds a batch of stores for
up to `spool.commit_delay` so that more stores join it. That pays while the event loop is busy
(the sessions it is serving are on their way to more stores), and is pure loss once the loop has
nothing left to run: every session is then waiting, for its client or for this very commit. So
the daemon's loop tells the spool's writer the moment it runs out of work, and the writer
commits at once (issue 9: 20 reused sessions 0.75 → 0.82 of the bare sink, a new connection per
mail 0.81 → 0.91, in alternating runs on the 2-core bench machine; bench/RESULTS.md).

Why a selector: asyncio has no idle hook, and the only point where a loop waits is its
selector's `select(timeout)` (public API: `asyncio.SelectorEventLoop(selector)`); a timeout of 0
means callbacks are ready. `IdleSelector.select` first polls without waiting; only when nothing is
ready does it call the watchers, then waits as asked. Under load that costs nothing (the poll
is the one `select` the loop makes anyway); when idle, one extra non-blocking `epoll_wait`.
"""

from __future__ import annotations

import asyncio
import logging
import selectors
import weakref
from collections.abc import Callable

log = logging.getLogger("relay.idle_loop")


class IdleSelector(selectors.DefaultSelector):  # the platform's best: epoll on Linux
    """The platform's default selector, which calls its watchers each time the loop is about to
    wait for I/O with nothing ready (watchers run on the loop's thread, must be quick and must
    not block)."""

    def __init__(self) -> None:
        super().__init__()
        self.idle = False  # True while the loop waits in select() with nothing ready
        self._watchers: list[Callable[[], None]] = []

    def watch(self, watcher: Callable[[], None]) -> Callable[[], None]:
        """Call `watcher` whenever the loop goes idle; the function that stops it."""
        self._watchers.append(watcher)

        def unwatch() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return unwatch

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if not self._watchers or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready:
            return ready
        self.idle = True
        try:
            for watcher in tuple(self._watchers):
                try:
                    watcher()
                except Exception:  # a watcher's bug must not stop the daemon's loop
                    log.exception("idle watcher failed")
            return super().select(timeout)
        finally:
            self.idle = False


_SELECTORS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IdleSelector] = (
    weakref.WeakKeyDictionary()
)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop on an `IdleSelector` (the daemon's loop: `asyncio.Runner`'s
    `loop_factory`)."""
    selector = IdleSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _SELECTORS[loop] = selector
    return loop


def idle_selector(loop: asyncio.AbstractEventLoop) -> IdleSelector | None:
    """The `IdleSelector` of a loop made by `new_event_loop`; None for any other loop (the
    spool then commits on its delay alone)."""
    return _SELECTORS.get(loop)
