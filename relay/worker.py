"""Spool → SMPP: claim due jobs, submit them over the bound links, retry, expire (SPEC §8, §9).

At-least-once: a job whose submit_sm was written but whose response never came (the link
dropped, the response timed out, or the daemon was killed) has an unknown outcome at the SMSC;
it is sent again, so the only duplicates possible are the jobs in flight at that moment (at most
`window` per bind; a power loss can also undo the records of the last `spool.progress_fsync`
seconds, see relay.spool.base.Spool). Every other retry follows an answer that says the SMSC
did not take the message (throttled, queue full, a transient error status), so it cannot
create a second copy.

Throttling (ESME_RTHROTTLED, ESME_RMSGQFUL) pauses the bind that said it, and the same job is
re-sent first when the pause ends, still claimed (`sending`), until its validity ends; it never
goes back to the tail of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from relay.errors import SpoolError
from relay.histogram import END_TO_END_BUCKETS, LATENCY_BUCKETS, Histogram
from relay.smpp.model import DeliverSm, SubmitOutcome, SubmitSm
from relay.smpp.receipt import id_keys
from relay.spool import Spool
from relay.spool.model import RECEIPT_APPLIED, RECEIPT_STATES, Job, JobState, MoMessage, Submitted

log = logging.getLogger("relay.worker")

ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
# SPEC §9: transient statuses: system error, ESME_RX_T_APPN, unknown error.
TRANSIENT_STATUSES = frozenset({0x08, 0x64, 0xFF})
THROTTLE_STATUSES = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})


class Link(Protocol):
    """What the worker needs of an upstream bind (relay.smpp.link.UpstreamLink)."""

    @property
    def bound(self) -> bool: ...

    async def submit(self, sm: SubmitSm, *, throttle_retry_for: float = 0.0) -> SubmitOutcome: ...

    def submit_nowait(
        self,
        sm: SubmitSm,
        on_answer: Callable[[SubmitOutcome | BaseException], None],
        *,
        throttle_retry_for: float = 0.0,
    ) -> bool: ...


@dataclass
class DispatchCounters:
    submitted: int = 0
    failed: int = 0
    retried: int = 0
    throttled: int = 0
    expired: int = 0
    delivered: int = 0  # final receipts, by the job state they lead to
    undeliverable: int = 0
    receipts: dict[str, int] = field(default_factory=dict)
    mo_received: int = 0
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    end_to_end: Histogram = field(default_factory=lambda: Histogram(END_TO_END_BUCKETS))

    def count_final(self, state: JobState | None) -> None:
        """A receipt made a submitted job final: count it by its new state."""
        if state == JobState.DELIVERED:
            self.delivered += 1
        elif state == JobState.EXPIRED:
            self.expired += 1
        elif state in (JobState.UNDELIVERABLE, JobState.REJECTED):
            self.undeliverable += 1


def backoff(attempts: int, low: float, high: float) -> float:
    """Exponential backoff with full jitter's upper half: low·2^(n-1), capped, ±50 %."""
    base = min(high, low * float(2 ** max(0, attempts - 1)))
    return base * (0.5 + random.random() / 2)


# Claim ahead: the dispatcher keeps claimed jobs in a local buffer so a free window slot never
# waits for a spool round trip. It claims when the buffer falls to one window's worth
# (`capacity`) and fills it to 2 × capacity + CLAIM_EXTRA, so each claim (one commit) feeds at
# least capacity + CLAIM_EXTRA submits. Buffered jobs are `sending` in the spool, like any claimed
# job: a crash leaves them to recover() at the next start, a clean stop releases them.
CLAIM_EXTRA = 32


class Dispatcher:
    """Feeds jobs from the spool to the links, as many at once as the links' windows allow.

    Per job: claim (in batches, ahead) → `link.submit` → the answer. Accepted submits are
    recorded in the spool in rounds: every answer that arrived while the previous round was
    being committed goes into the next one (`mark_submitted_many`, one commit). A job holds its
    window slot until its answer is durably recorded, so at most `capacity` jobs can be sent
    and not yet recorded as submitted: the at-least-once bound of the module docstring.
    """

    def __init__(
        self,
        spool: Spool,
        links: Sequence[Link],
        *,
        window: int,
        retry_min: float,
        retry_max: float,
        receipt_id_format: str = "auto",
        clock: Callable[[], float] = time.time,
        counters: DispatchCounters | None = None,
    ) -> None:
        self.spool = spool
        self.links = list(links)
        self.capacity = max(1, window * max(1, len(self.links)))
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.receipt_id_format = receipt_id_format
        self.clock = clock
        self.counters = counters or DispatchCounters()
        self._wake = asyncio.Event()  # new jobs may be due
        self._need = asyncio.Event()  # the buffer ran low: claim more
        self._stopping = False
        self._ready: deque[Job] = deque()  # claimed, not yet handed to a link
        self._held = 0  # handed to a link and not yet settled (answer recorded, retry, final)
        self._tasks: set[asyncio.Task[None]] = set()
        self._fast = 0  # submits on the fast path (no task) not yet answered
        self._fast_idle = asyncio.Event()
        self._fast_idle.set()
        self._accepted: list[tuple[Job, SubmitOutcome]] = []  # answered ROK, to be recorded
        self._recording = asyncio.Event()
        self._closing = False
        self._rr = 0
        # Issue 8: called after a send or a deliver_sm may have written a notice (final state,
        # MO SMS) so the notifier looks at once; it also polls, so a missed call only delays.
        self.on_notice: Callable[[], None] = lambda: None

    def wake(self) -> None:
        """New jobs were stored: look at the spool now instead of at the next due time."""
        self._wake.set()

    async def run(self) -> None:
        recorder = asyncio.create_task(self._record_rounds(), name="dispatcher-recorder")
        try:
            while not self._stopping:
                if not any(link.bound for link in self.links):
                    # Not woken by stores meanwhile: nothing can be sent until a link binds
                    # (a wait per stored mail was ≈2 % of ingest with the SMSC down).
                    await asyncio.sleep(0.05)
                    continue
                self._feed()
                if len(self._ready) > self.capacity:
                    self._need.clear()
                    # Nothing held: a link may have just come back; look again soon.
                    await self._wait(self._need, 1.0 if self._held else 0.05)
                    continue
                want = 2 * self.capacity + CLAIM_EXTRA - len(self._ready)
                self._wake.clear()  # a store from now on wakes the wait below
                jobs = await self.spool.claim(want, self.clock())
                if jobs:
                    self._ready.extend(jobs)
                    self._feed()
                if len(jobs) < want:  # nothing more is due now
                    due = await self.spool.next_due()
                    delay = 1.0 if due is None else min(1.0, max(0.0, due - self.clock()))
                    if delay > 0:
                        await self._wait(self._wake, delay)
        finally:
            try:
                await self._finish(recorder)
            finally:
                recorder.cancel()

    async def stop(self) -> None:
        """Claim nothing more; run() returns once the submits in flight are answered and
        recorded, and the jobs claimed but not sent are back in the queue."""
        self._stopping = True
        self._wake.set()
        self._need.set()

    def _feed(self) -> None:
        """Hand buffered jobs to the links while window slots are free (no await: called from
        wherever a slot frees or jobs arrive)."""
        if self._stopping or not self._ready:
            return
        if self._held < self.capacity and any(link.bound for link in self.links):
            while self._ready and self._held < self.capacity:
                job = self._ready.popleft()
                self._held += 1
                if not self._send_now(job):
                    self._spawn(self._send(job))
        if len(self._ready) <= self.capacity:
            self._need.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _send_now(self, job: Job) -> bool:
        """The fast path (issue 9): hand the job to a link that can send it at once, with a
        callback for its answer instead of a task; False: `_send` it (a task that waits)."""
        now = self.clock()
        if now >= job.expires_at:
            return False
        link = self._pick()
        if link is None:
            return False
        on_answer = partial(self._answered, job, time.monotonic())
        if not link.submit_nowait(job.submit, on_answer, throttle_retry_for=job.expires_at - now):
            return False
        self._fast += 1
        self._fast_idle.clear()
        return True

    def _answered(self, job: Job, started: float, got: SubmitOutcome | BaseException) -> None:
        """A fast-path submit's answer (called by the link as it reads it): an accepted one
        goes to the recorder at once, anything else to `_send`'s handling, in a task (it
        writes to the spool)."""
        if isinstance(got, SubmitOutcome) and got.command_status == 0:
            self._observe(got, started)
            self._accepted.append((job, got))
            self._recording.set()
        elif isinstance(got, SubmitOutcome):
            self._spawn(self._send(job, (got, started)))
        else:
            self._spawn(self._send(job, got))
        self._fast -= 1
        if self._fast == 0:
            self._fast_idle.set()

    def _settled(self, n: int) -> None:
        """`n` held jobs are settled: their slots are free."""
        self._held -= n
        self._feed()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("send task failed", exc_info=task.exception())

    async def _finish(self, recorder: asyncio.Task[None]) -> None:
        """Let the submits in flight end, record their answers, release the buffer."""
        while self._tasks or self._fast:  # a fast answer may start a task, a task a fast send
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._fast_idle.wait()
        self._closing = True
        self._recording.set()
        await asyncio.gather(recorder, return_exceptions=True)
        if self._ready:
            ids = [job.id for job in self._ready]
            self._ready.clear()
            try:
                await self.spool.release(ids)
            except SpoolError as exc:  # they stay `sending`: recover() requeues them at start
                log.warning("could not release %d claimed jobs: %s", len(ids), exc)

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    def _pick(self) -> Link | None:
        bound = [link for link in self.links if link.bound]
        if not bound:
            return None
        self._rr = (self._rr + 1) % len(bound)
        return bound[self._rr]

    async def _send(
        self,
        job: Job,
        answered: tuple[SubmitOutcome, float] | BaseException | None = None,
    ) -> None:
        """Submit one job (or handle the fast path's `answered`: an outcome and when it was
        sent, or its exception); its slot is freed here, or by the recorder once accepted."""
        handed = False
        try:
            if answered is None:
                handed = await self._submit(job)
            elif isinstance(answered, tuple):
                handed = await self._outcome(job, *answered)
            else:
                handed = await self._failed(job, answered)
        finally:
            if not handed:
                self._settled(1)
                self.on_notice()
                self._wake.set()  # a retried job may be due before the claim loop looks again

    async def _submit(self, job: Job) -> bool:
        """Whether the job was accepted and handed to the recorder."""
        now = self.clock()
        if now >= job.expires_at:
            # Never send stale messages: the validity ended while the job waited.
            await self.spool.mark_final(job.id, JobState.EXPIRED, "validity ended", now)
            self.counters.expired += 1
            log.warning(
                "expired id=%s job=%d: validity ended",
                job.request_id,
                job.id,
                extra={"request_id": job.request_id, "job": job.id},
            )
            return False
        link = self._pick()
        if link is None:
            await self.spool.mark_retry(job.id, now, "no bind up")
            return False
        started = time.monotonic()
        try:
            outcome = await link.submit(job.submit, throttle_retry_for=job.expires_at - now)
        except asyncio.CancelledError:
            # Stopping: whether the SMSC got it is unknown; a restart's recover() resends it.
            raise
        except (ConnectionError, TimeoutError, OSError) as exc:
            await self._retry(job, f"{type(exc).__name__}: {exc}")
            return False
        return await self._outcome(job, outcome, started)

    async def _failed(self, job: Job, exc: BaseException) -> bool:
        """A fast-path submit ended without an answer (link lost, timeout): as in `_submit`."""
        if not isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            raise exc
        await self._retry(job, f"{type(exc).__name__}: {exc}")
        return False

    def _observe(self, outcome: SubmitOutcome, started: float) -> None:
        self.counters.latency.observe(time.monotonic() - started)
        self.counters.throttled += outcome.throttled

    async def _outcome(self, job: Job, outcome: SubmitOutcome, started: float) -> bool:
        """Act on the SMSC's answer; whether the job was accepted and handed to the recorder."""
        self._observe(outcome, started)
        status = outcome.command_status
        if status == 0:
            self._accepted.append((job, outcome))
            self._recording.set()
            return True
        now = self.clock()
        if status in THROTTLE_STATUSES:
            # Throttled until the validity ended (the link re-sent it while it could).
            await self.spool.mark_final(
                job.id, JobState.EXPIRED, f"throttled 0x{status:08X} until validity ended", now
            )
            self.counters.expired += 1
        elif status in TRANSIENT_STATUSES:
            await self._retry(job, f"transient status 0x{status:08X}")
        else:
            self.counters.failed += 1
            await self.spool.mark_final(
                job.id, JobState.REJECTED, f"command_status 0x{status:08X}", now
            )
            log.warning(
                "rejected id=%s job=%d to=%s status=0x%08X",
                job.request_id,
                job.id,
                job.phone,
                status,
                extra={"request_id": job.request_id, "job": job.id},
            )
        return False

    async def _record_rounds(self) -> None:
        """Record accepted submits, one `mark_submitted_many` per round, until closing."""
        while True:
            if not self._accepted:
                if self._closing:
                    return
                self._recording.clear()
                await self._recording.wait()
                continue
            batch, self._accepted = self._accepted, []
            recorded = False
            try:
                recorded = await self._record(batch)
            finally:
                self._settled(len(batch))  # the slots are free: the next submits are made
            if recorded and log.isEnabledFor(logging.INFO):
                # The lines wait until the submits just made are written (two loop turns:
                # their tasks run, then the link's write): they are not in the window's way.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                self._log_submitted(batch)

    async def _record(self, batch: list[tuple[Job, SubmitOutcome]]) -> bool:
        """Durably mark a round submitted; whether it was."""
        fmt = self.receipt_id_format
        now = self.clock()
        try:
            states = await self.spool.mark_submitted_many(
                [
                    Submitted(job.id, outcome.message_id, id_keys(outcome.message_id, fmt))
                    for job, outcome in batch
                ],
                now,
            )
        except SpoolError as exc:
            # The jobs stay `sending`: sent again after a restart (the at-least-once window).
            log.error("could not record %d submitted jobs: %s", len(batch), exc)
            return False
        counters = self.counters
        counters.submitted += len(batch)
        final = False
        for (job, _), state in zip(batch, states, strict=True):
            if job.created:
                counters.end_to_end.observe(max(0.0, now - job.created))
            if state.final:  # a receipt that came before this response was applied now
                counters.count_final(state)
                final = True
        if final:
            self.on_notice()
        return True

    @staticmethod
    def _log_submitted(batch: list[tuple[Job, SubmitOutcome]]) -> None:
        """Issue 7: one line per submitted part, with its request id and message id."""
        for job, outcome in batch:
            log.info(
                "submitted id=%s job=%d to=%s part=%d/%d msgid=%s",
                job.request_id,
                job.id,
                job.phone,
                job.part,
                job.parts,
                outcome.message_id,
                extra={
                    "request_id": job.request_id,
                    "job": job.id,
                    "message_id": outcome.message_id,
                },
            )

    async def _retry(self, job: Job, error: str) -> None:
        now = self.clock()
        delay = backoff(job.attempts, self.retry_min, self.retry_max)
        if now + delay >= job.expires_at:
            await self.spool.mark_final(job.id, JobState.EXPIRED, error, now)
            self.counters.expired += 1
            log.warning(
                "expired id=%s job=%d after %s",
                job.request_id,
                job.id,
                error,
                extra={"request_id": job.request_id, "job": job.id},
            )
            return
        self.counters.retried += 1
        await self.spool.mark_retry(job.id, now + delay, error)
        log.info(
            "retry id=%s job=%d in %.1fs: %s",
            job.request_id,
            job.id,
            delay,
            error,
            extra={"request_id": job.request_id, "job": job.id},
        )

    async def on_deliver(self, deliver: DeliverSm) -> None:
        """A deliver_sm from a link: store receipts (before the link acknowledges them)."""
        receipt = deliver.receipt
        if receipt is None:
            # An MO SMS: stored durably before the deliver_sm_resp (SPEC §8, issue 5).
            await self.spool.store_mo(
                MoMessage(
                    source_addr=deliver.source_addr,
                    destination_addr=deliver.destination_addr,
                    esm_class=deliver.esm_class,
                    data_coding=deliver.data_coding,
                    short_message=deliver.short_message,
                    tlvs={k: v if isinstance(v, int) else v.hex() for k, v in deliver.tlvs.items()},
                ),
                self.clock(),
            )
            self.counters.mo_received += 1
            self.on_notice()
            log.info("mo from=%s to=%s", deliver.source_addr, deliver.destination_addr)
            return
        state = RECEIPT_STATES.get(receipt.stat.upper())
        keys = id_keys(receipt.message_id, self.receipt_id_format)
        matched = await self.spool.apply_receipt(keys, state, asdict(receipt), self.clock())
        self.counters.receipts[receipt.stat] = self.counters.receipts.get(receipt.stat, 0) + 1
        if matched == RECEIPT_APPLIED:  # a repeated receipt is stored, not counted twice
            self.counters.count_final(state)
            self.on_notice()
        log.info(
            "receipt msgid=%s stat=%s matched=%d",
            receipt.message_id,
            receipt.stat,
            matched,
            extra={"message_id": receipt.message_id, "stat": receipt.stat},
        )
