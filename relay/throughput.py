"""Issue 10: the nodes of a shared spool share `smpp.throughput_total`, each at its share.

Every node writes a heartbeat to the spool every `spool.heartbeat` seconds and counts the nodes
seen within three of them; its share is total / live nodes, split over its binds. A node that
stops leaves at once; a killed one stops counting after three heartbeats (until then the others
stay below the total, never above it). With a spool of its own (SQLite) the node takes it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from relay.errors import SpoolError
from relay.spool import SharedSpool

log = logging.getLogger("relay.throughput")

LIVE_BEATS = 3  # a node is live while seen within this many heartbeats


class Paced(Protocol):
    """A bind whose submit rate can be set (relay.smpp.link.UpstreamLink)."""

    def set_throughput(self, per_second: float) -> None: ...


def bind_rate(total: float, nodes: int, binds: int) -> float:
    """Submits per second for each of this node's `binds` when `nodes` share `total`."""
    return total / max(1, nodes) / max(1, binds)


class ThroughputShare:
    """Keeps this node's binds at its share of the total while nodes come and go."""

    def __init__(
        self,
        spool: SharedSpool,
        links: Sequence[Paced],
        *,
        total: float,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.links = list(links)
        self.total = total
        self.interval = interval
        self.clock = clock
        self.nodes = 1  # live nodes at the last heartbeat (this one included)
        self._stop = asyncio.Event()

    async def beat(self) -> None:
        """One heartbeat: count the live nodes and pace the binds at the share."""
        try:
            nodes = await self.spool.heartbeat(self.clock(), LIVE_BEATS * self.interval)
        except SpoolError as exc:  # keep the last share; the next beat tries again
            log.warning("spool heartbeat failed: %s", exc)
            return
        if nodes != self.nodes:
            log.info(
                "%d live node(s): this node's share is %.3g/s of %.3g/s",
                nodes,
                self.total / max(1, nodes),
                self.total,
            )
        self.nodes = nodes
        rate = bind_rate(self.total, nodes, len(self.links))
        for link in self.links:
            link.set_throughput(rate)

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()
