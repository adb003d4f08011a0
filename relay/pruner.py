"""The retention task: prune spool history older than `spool.keep_days`, in small batches.

A round every PRUNE_EVERY seconds walks the spool (relay/spool/retention.py says what may go)
one batch at a time, with a pause between batches: on SQLite each batch is a short write in the
spool's writer thread, and the pause lets the stores and submits waiting behind it commit, so
pruning a large backlog never holds the `250`s back for long. Then free pages go back to the
file system (SQLite with auto_vacuum=INCREMENTAL). On a shared PostgreSQL spool one node prunes
at a time; the others skip their round (`PruneStep.busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.config import LimitsConfig, MoConfig, RelayConfig
from relay.errors import SpoolError
from relay.spool import Spool
from relay.spool.prune_model import start
from relay.spool.retention import cutoffs

log = logging.getLogger("relay.pruner")

PRUNE_EVERY = 600.0  # seconds between rounds (spool.prune_interval)
FIRST_ROUND = 60.0  # at most this after start: not in the way of a restart's recovery burst
# A batch of 100 requests (their parts and keys) is a 3–4 ms write on a 200 000-part SQLite
# spool; the pause keeps pruning to ≈400 requests/s so that its scattered page writes never
# outgrow the checkpointer: at 200 per batch and 20 ms pauses the WAL reached 29 000 frames
# and the RESTART checkpoint (relay/spool/checkpoint.py) held a store back 550 ms, where with
# these values the longest store was no longer than without pruning (bench/RESULTS.md).
BATCH = 100  # rows per table per batch (one short write transaction)
PAUSE = 0.25  # seconds between batches: the writer serves waiting stores meanwhile
RECLAIM_PAGES = 256  # free pages handed back per write (1 MiB at 4 KiB pages)


@dataclass(frozen=True)
class PruneRules:
    """The pruner's view of the config (rebuilt on SIGHUP)."""

    keep_days: float
    mo: MoConfig
    limits: LimitsConfig


def prune_rules(cfg: RelayConfig) -> PruneRules:
    return PruneRules(cfg.spool.keep_days, cfg.mo, cfg.limits)


@dataclass
class PruneCounters:
    deleted: dict[str, int] = field(default_factory=dict)  # rows by table, since start
    rounds: int = 0
    pages: int = 0  # free pages given back to the file system


class Pruner:
    def __init__(
        self,
        spool: Spool,
        rules: PruneRules,
        *,
        every: float = PRUNE_EVERY,
        first: float = FIRST_ROUND,
        batch: int = BATCH,
        pause: float = PAUSE,
        clock: Callable[[], float] = time.time,
        counters: PruneCounters | None = None,
    ) -> None:
        self.spool = spool
        self.rules = rules
        self.every = every
        self.first = first
        self.batch = batch
        self.pause = pause
        self.clock = clock
        self.counters = counters or PruneCounters()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Rounds until stopped. A spool failure (SpoolError: busy, unreachable) is logged and
        retried at the next round, since pruning can wait and the spool's own users report it;
        anything else is a bug and ends the daemon loudly (STYLE: one TaskGroup)."""
        delay = self.first
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            delay = self.every
            try:
                await self.round()
            except SpoolError as exc:
                log.warning("spool pruning failed, next round in %.0f s: %s", delay, exc)

    async def round(self) -> dict[str, int]:
        """One walk through the whole spool; return the rows deleted by table."""
        rules = self.rules
        cut = cutoffs(rules.keep_days, rules.mo, rules.limits, self.clock())
        total: dict[str, int] = {}
        resume = start()
        while resume and not self._stop.is_set():
            step = await self.spool.prune(cut, self.batch, resume)
            if step.busy:
                log.debug("spool pruning: another node is at it, skipping this round")
                break
            for table, n in step.deleted.items():
                total[table] = total.get(table, 0) + n
                self.counters.deleted[table] = self.counters.deleted.get(table, 0) + n
            resume = step.resume
            if resume:
                await asyncio.sleep(self.pause)
        while not self._stop.is_set():
            pages = await self.spool.reclaim(RECLAIM_PAGES)
            self.counters.pages += pages
            if pages < RECLAIM_PAGES:
                break
            await asyncio.sleep(self.pause)
        self.counters.rounds += 1
        if total:
            log.info(
                "spool pruned: %s",
                ", ".join(f"{table}={n}" for table, n in sorted(total.items())),
            )
        return total
