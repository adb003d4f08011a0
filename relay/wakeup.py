"""The wake / stop / sleep-until-due handshake of a background loop that the spool feeds."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    """`wake()` when new work is stored; `stop()` to end the loop; `nap()` between batches."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.stopping = False

    def wake(self) -> None:
        self._event.set()

    def stop(self) -> None:
        self.stopping = True
        self._event.set()

    async def nap(self, due: float | None, now: float, longest: float) -> None:
        """Sleep until `due` (None: nothing scheduled), at most `longest` s, or until woken."""
        delay = longest if due is None else min(longest, max(0.0, due - now))
        if delay <= 0:
            return
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), delay)
