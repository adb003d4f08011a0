"""`python -m bench.prune_pause [--requests N] [--seconds S]`: what pruning costs a store.

Fills a SQLite spool (through the spool's API) with N delivered two-part requests, aged past
`spool.keep_days`, then times back-to-back `store()` calls for S seconds twice: alone (the
baseline: the checkpointer's RESTART passes show in its max too) and while a pruning round
(relay/pruner.py, its default batch and pause) runs, stopped after S seconds. Prints store
latency p50 / p99 / p99.9 / max of both and the rows the round deleted. Not a timed test; run it
under the bench lock.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from relay.config import LimitsConfig, MoConfig
from relay.pruner import Pruner, PruneRules
from relay.smpp.model import SubmitSm
from relay.spool.model import JobState, NewJob, NewRequest, NoticeOutcome
from relay.spool.sqlite import SqliteSpool

DAY = 86400.0
OLD = time.time() - 60 * DAY
_SM = SubmitSm("Alex", 5, 0, "79160000000", b"hello there", 0)


def _request(key: str, at: float) -> NewRequest:
    jobs = tuple(NewJob("+79160000000", 0, i + 1, 2, _SM, at, at + DAY) for i in range(2))
    return NewRequest(key, f"id-{key}", "alex", "ops@x", "127.0.0.1", at, jobs)


async def _fill(spool: SqliteSpool, n: int) -> None:
    chunk = 500
    for start in range(0, n, chunk):
        await spool.store_all([_request(f"old{i}", OLD) for i in range(start, start + chunk)])
        jobs = await spool.claim(2 * chunk, OLD)
        for job in jobs:
            await spool.mark_submitted(job.id, f"u{job.id}", (f"u{job.id}",), OLD)
        await asyncio.gather(
            *(
                spool.apply_receipt((f"u{j.id}",), JobState.DELIVERED, {"stat": "DELIVRD"}, OLD)
                for j in jobs
            )
        )
    # the status notices of the old messages are settled (the notifier kept up)
    while notices := await spool.claim_notices(5000):
        await spool.settle_notices([NoticeOutcome(x.id) for x in notices], OLD)


async def _stores(spool: SqliteSpool, tag: str, until: asyncio.Event | float) -> list[float]:
    out: list[float] = []
    i = 0
    end = until if isinstance(until, float) else None
    while True:
        if end is not None and time.monotonic() >= end:
            return out
        if isinstance(until, asyncio.Event) and until.is_set():
            return out
        t0 = time.perf_counter()
        await spool.store(_request(f"{tag}{i}", time.time()))
        out.append(time.perf_counter() - t0)
        i += 1


def _summary(name: str, lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=1000)
    return (
        f"{name}: {len(lat)} stores, p50 {q[499] * 1e3:.2f} ms, p99 {q[989] * 1e3:.2f} ms,"
        f" p99.9 {q[998] * 1e3:.2f} ms, max {max(lat) * 1e3:.2f} ms"
    )


async def main(n: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spool = SqliteSpool(Path(tmp) / "spool.db")
        await spool.open()
        try:
            t0 = time.monotonic()
            await _fill(spool, n)
            print(f"filled {n} requests ({2 * n} parts) in {time.monotonic() - t0:.1f} s")
            base = await _stores(spool, "base", time.monotonic() + seconds)
            print(_summary("alone", base))
            done = asyncio.Event()
            task = asyncio.create_task(_stores(spool, "live", done))
            pruner = Pruner(spool, PruneRules(30.0, MoConfig(), LimitsConfig()))
            asyncio.get_running_loop().call_later(seconds, pruner.stop)
            t0 = time.monotonic()
            deleted = await pruner.round()
            took = time.monotonic() - t0
            done.set()
            during = await task
            print(_summary("while pruning", during))
            print(f"pruned for {took:.1f} s: {deleted}")
        finally:
            await spool.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    asyncio.run(main(args.requests, args.seconds))
