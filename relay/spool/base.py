"""The spool interface that every backend (SQLite now, PostgreSQL later) implements (SPEC §8)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from relay.spool.model import (
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
)
from relay.spool.prune_model import PruneStep
from relay.spool.retention import Cutoffs

# Issue 9: how long (s) a progress commit may go without its fsync (`spool.progress_fsync`).
DEFAULT_PROGRESS_FSYNC = 0.1


class Spool(Protocol):
    """Durable store of requests, SMS jobs and outbound mails.

    Every method that changes state returns only after the change is committed, and durably
    (fsynced) except the *progress* commits of `claim` and `mark_submitted_many` when the spool
    was opened with `progress_fsync` > 0: those survive a crash of the relay process (they
    are in the database's log, in the kernel's or the server's memory) but a power loss or OS
    crash may undo the last `progress_fsync` seconds of them (SQLite; PostgreSQL: its
    `wal_writer_delay` × 3). Undoing one only puts its jobs back to `sending`/`queued`, to be
    sent again: a duplicate, never a loss. Any later durable commit (a `store` before its
    `250`, a receipt) makes every earlier progress commit durable too: both logs are
    sequential.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def store(self, request: NewRequest) -> StoreResult:
        """Commit a request with its jobs and mails, or refuse it by SPEC §5's state checks.

        Idempotent on `request.key`: a key stored before writes nothing (`stored=False`).
        With `request.limits` and `request.admission` on an accepted request, the checks rate
        guards (8) → flood (8) → duplicates (9) → balance (3) run in the same transaction as the
        insert; a refusal writes nothing and returns its code (`refused`), and the caller stores the
        rejection under the same key. An admitted request extends the flood streaks, records
        its fingerprint and debits its parts, atomically with its jobs. A rejection with
        `ip_failure` counts towards blocking its client IP; an ERROR 4 rejection keeps its
        reply mail only for the first one of the IP's current block.
        """
        ...

    def store_all(self, requests: Sequence[NewRequest]) -> Awaitable[list[StoreResult]]:
        """`store` each of one mail's requests, in order, in one transaction (`store` is
        `store_all` of one).

        A coroutine, or (SQLite) a future of the store queued by the call itself: its commit
        goes on whatever happens to the caller, so the SMTP front can shield it without a task
        of its own per mail.

        The rate guards of each admission (issue 6) are checked first, against the spool's
        count (so they hold across nodes and restarts), and counted with the request: a later
        request of the mail sees the earlier ones. Over a guard, the request is refused with 8
        and `over`; but when an admission asks for `rate_tempfail` and any request would be
        over, nothing of the mail is written or counted: every result has `stored=False`, the
        ones over a guard carry `over`, and the caller answers 451 for the whole mail.
        """
        ...

    async def ip_blocked(self, client_ip: str, now: float) -> bool:
        """SPEC §5 (4): whether the IP is blocked at `now` (the front asks before parsing)."""
        ...

    async def balance(self, login: str) -> int | None:
        """The account's remaining balance in SMS parts; None when the spool keeps none."""
        ...

    async def recover(self) -> int:
        """Put jobs, mails and callbacks left `sending` by a crash back to `queued`; return how
        many."""
        ...

    async def claim(self, limit: int, now: float) -> list[Job]:
        """Move up to `limit` due queued jobs to `sending` (oldest first) and return them."""
        ...

    async def next_due(self) -> float | None:
        """The earliest `not_before` of a queued job, or None when none is queued."""
        ...

    async def mark_submitted(
        self, job_id: int, upstream_id: str, keys: tuple[str, ...], now: float
    ) -> JobState:
        """The upstream accepted the job; apply a receipt that came before; return the state."""
        ...

    def mark_submitted_many(
        self, submitted: Sequence[Submitted], now: float
    ) -> Awaitable[list[JobState]]:
        """`mark_submitted` of each, in one transaction (one commit for a round of responses);
        the states in the same order. (An `async def`, or a plain one whose work is under way
        when it returns, as SQLite's: the dispatcher starts a round without a task.)"""
        ...

    async def release(self, job_ids: Sequence[int]) -> None:
        """Put claimed jobs that were never sent back to `queued`, as they were before the
        claim (same due time, the claim's attempt not counted)."""
        ...

    async def mark_retry(self, job_id: int, not_before: float, error: str) -> None: ...

    async def mark_final(self, job_id: int, state: JobState, error: str, now: float) -> None:
        """Set a final state. Here, in `apply_receipt`, `mark_submitted` (an early receipt) and
        `cancel`: when a job becomes final (from a non-final state) and every part of its message
        (request, entry, phone) is then final, a `status` notice is written in the same
        transaction (issue 8)."""
        ...

    async def apply_receipt(
        self, keys: tuple[str, ...], state: JobState | None, receipt: dict[str, Any], now: float
    ) -> int:
        """Match a receipt to a submitted job by any of `keys`; keep it for later if none.

        Returns RECEIPT_KEPT (0, no job yet), RECEIPT_APPLIED (1) or RECEIPT_REPEATED (2: the
        job was already final, as when an SMSC sends a receipt twice)."""
        ...

    async def store_mo(self, mo: MoMessage, now: float) -> int:
        """Commit a mobile-originated SMS with an `mo` notice for it; return its id."""
        ...

    async def mo_messages(self, limit: int = 100) -> list[tuple[int, float, MoMessage]]:
        """The latest stored MO SMS: (id, received, message), newest first."""
        ...

    async def claim_mails(self, limit: int, now: float) -> list[Mail]: ...

    async def next_mail_due(self) -> float | None: ...

    async def mark_mail_sent(self, mail_id: int, now: float) -> None: ...

    async def mark_mail_retry(self, mail_id: int, not_before: float, error: str) -> None: ...

    async def mark_mail_failed(self, mail_id: int, error: str, now: float) -> None: ...

    async def counts(self) -> dict[str, int]:
        """Jobs by state, plus `mail_<state>` for outbound mails."""
        ...

    async def request_status(self, request_id: str) -> list[JobView]: ...

    # operator and health methods (issue 7) ---------------------------------------------

    async def touch(self, now: float) -> None:
        """Write a heartbeat row and commit: proves the spool is writable (/healthz)."""
        ...

    async def request_error(self, request_id: str) -> int | None:
        """The request's SPEC §5 error code (0 = accepted), or None when no such request."""
        ...

    async def requeue(self, request_id: str, now: float, validity: float) -> int:
        """Put the request's failed jobs (rejected, undeliverable, expired, cancelled) back to
        `queued`, due now, with a fresh validity and zero attempts; return how many."""
        ...

    async def cancel(self, request_id: str, now: float) -> int:
        """Move the request's `queued` jobs to `cancelled`; return how many."""
        ...

    # issue 8: notices → callbacks and mails; MO answers ---------------------------------

    async def claim_notices(self, limit: int, now: float | None = None) -> list[Notice]:
        """The oldest unsettled notices due at `now` (default: the clock), oldest first (a
        notice stays until it is settled; a deferred one is due at its `defer_until`)."""
        ...

    async def settle_notices(self, outcomes: Sequence[NoticeOutcome], now: float) -> None:
        """In one transaction: queue each outcome's callbacks and mails (due `now`), delete
        its notice (or keep it until the outcome's `defer_until`)."""
        ...

    # retention (relay/spool/retention.py) ---------------------------------------------------

    async def prune(self, cutoffs: Cutoffs, limit: int, resume: dict[str, int]) -> PruneStep:
        """Delete one bounded batch of history older than `cutoffs` (about `limit` rows per
        table), from `resume` (prune_model.start() for a new round); commit it."""
        ...

    async def reclaim(self, pages: int) -> int:
        """Give up to `pages` free pages back to the file system; return how many (0 where
        the backend does it itself)."""
        ...

    async def claim_callbacks(self, limit: int, now: float) -> list[Callback]:
        """Move up to `limit` due queued callbacks to `sending`; only the oldest open callback
        of each stream is ever claimable (per-message order)."""
        ...

    async def next_callback_due(self) -> float | None:
        """The earliest `not_before` of a claimable queued callback, or None."""
        ...

    async def mark_callback_sent(self, callback_id: int, now: float) -> None: ...

    async def mark_callback_retry(
        self, callback_id: int, not_before: float, error: str
    ) -> None: ...

    async def mark_callback_failed(self, callback_id: int, error: str, now: float) -> None: ...

    async def last_sent_to(self, phone: str, since: float) -> SentMessage | None:
        """The last message submitted upstream (upstream id known) to `phone` (E.164 with '+')
        in a request created at or after `since`, with all its parts' submits."""
        ...

    async def mo_from(self, source_addr: str, since: float) -> list[tuple[int, float, MoMessage]]:
        """Stored MO SMS from `source_addr` received at or after `since`: (id, received, mo),
        oldest first (to reassemble concatenated parts)."""
        ...


@runtime_checkable
class SharedSpool(Protocol):
    """A spool that several relay nodes share (PostgreSQL): it tells when another node stored
    jobs or mails, so that this node's dispatcher and mailer wake up at once (issue 10)."""

    def on_change(self, callback: Callable[[], None]) -> None: ...

    async def heartbeat(self, now: float, live_within: float) -> int:
        """Record that this node is alive at `now`; return how many nodes (this one included)
        were seen within `live_within` seconds (they share `smpp.throughput_total`)."""
        ...
