"""PURE: what spool history may be pruned at `now` (`spool.keep_days`), and what must stay.

Final history is kept `keep_days`, and never less than what a running check still reads:

- a request and its jobs: until every job is final (or `submitted` with its validity ended:
  no receipt is expected any more) and unchanged for the retention time, and at least
  `mo.reply_window` (an MO answer is mailed to whoever sent to that phone within it);
- an MO SMS: at least `mo.concat_window` (its siblings are looked for that far back);
- sent/failed reply mails and callbacks, and receipts that never matched a job: the retention
  time; queued or in-flight ones never;
- SPEC §5 state (duplicate fingerprints, flood streaks, IP failures and blocks, rate events and
  day counts) is not history: it goes as soon as its window has passed, whatever `keep_days`.

Backends (relay/spool/sqlite_prune.py, pg_prune.py) delete in small batches by these cutoffs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.config import LimitsConfig, MoConfig
from relay.rates import MINUTE, utc_day
from relay.spool.model import JobState

DAY = 86400.0
# Final job states: a message in these is history. `submitted` counts once its validity ended.
FINAL_STATES = tuple(s.value for s in JobState if s.final)


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Rows older than these (strictly before) may go; None: that history is kept forever."""

    requests: float | None  # requests/jobs/upstream keys: created, last update, validity end
    outbound: float | None  # sent/failed mails and callbacks (their last update)
    receipts: float | None  # early receipts that never matched a job (received)
    mo: float | None  # MO SMS (received)
    nodes: float | None  # heartbeat rows of nodes gone (last seen)
    # SPEC §5 windows (always pruned: nothing reads a row past its window)
    fingerprints: float  # at <= this
    flood: float  # last <= this
    ip_failures: float  # at <= this
    rate_events: float  # at <= this
    rate_day: int  # rate_days rows of days before this
    ip_blocks: float  # until <= this


def cutoffs(keep_days: float, mo: MoConfig, limits: LimitsConfig, now: float) -> Cutoffs:
    """The cutoffs at `now` for `spool.keep_days` (0: history kept forever)."""
    keep = keep_days * DAY
    history = keep > 0

    def before(at_least: float) -> float | None:
        return now - max(keep, at_least) if history else None

    return Cutoffs(
        requests=before(mo.reply_window),
        outbound=before(0.0),
        receipts=before(0.0),
        mo=before(mo.concat_window),
        nodes=before(DAY),
        fingerprints=now - limits.duplicate_window,
        flood=now - limits.flood_interval,
        ip_failures=now - limits.ip_fail_window,
        rate_events=now - MINUTE,
        rate_day=utc_day(now),
        ip_blocks=now,
    )


@dataclass(frozen=True, slots=True)
class JobRow:
    """What pruning reads of a job."""

    request_pk: int
    state: str
    updated: float
    expires_at: float


def job_is_history(job: JobRow, before: float) -> bool:
    """A job that no check, receipt or dispatcher will look at again, unchanged since `before`.

    A `submitted` job whose validity ended before the cutoff gets no receipt any more (the SMSC
    dropped it at the end of its validity period), so it is history too.
    """
    if job.updated >= before:
        return False
    if job.state in FINAL_STATES:
        return True
    return job.state == JobState.SUBMITTED.value and job.expires_at < before


def prunable_requests(
    candidates: Iterable[int], jobs: Iterable[JobRow], noticed: Iterable[int], before: float
) -> list[int]:
    """Of the candidate requests (already created before the cutoff), those whose every job is
    history and that no notice still waits on (the notifier reads the request to render it)."""
    keep = set(noticed)
    for job in jobs:
        if not job_is_history(job, before):
            keep.add(job.request_pk)
    return [pk for pk in candidates if pk not in keep]
