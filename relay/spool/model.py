"""What the spool stores and hands out: requests, SMS jobs, reply mails (SPEC §8)."""

from __future__ import annotations

import contextlib
import enum
import json
from dataclasses import dataclass, field
from typing import Any

from relay.config import LimitsConfig
from relay.rates import Exceeded, RateCheck, Usage, active, first_exceeded
from relay.smpp.model import SubmitSm

# What `Spool.apply_receipt` returns: kept for a job not yet known (SPEC §9: a receipt may come
# before the submit_sm_resp), applied to a job, or matched to a job that was already final (an
# SMSC that repeats receipts: stored, but not counted again).
RECEIPT_KEPT, RECEIPT_APPLIED, RECEIPT_REPEATED = 0, 1, 2


class JobState(enum.StrEnum):
    """SPEC §8 job states; the last four are final."""

    QUEUED = "queued"
    SENDING = "sending"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset(
    {
        JobState.DELIVERED,
        JobState.UNDELIVERABLE,
        JobState.EXPIRED,
        JobState.REJECTED,
        JobState.CANCELLED,
    }
)

# SPEC §9 receipt stat → final job state (ENROUTE/ACCEPTD/UNKNOWN are not final).
RECEIPT_STATES: dict[str, JobState] = {
    "DELIVRD": JobState.DELIVERED,
    "EXPIRED": JobState.EXPIRED,
    "DELETED": JobState.UNDELIVERABLE,
    "UNDELIV": JobState.UNDELIVERABLE,
    "REJECTD": JobState.REJECTED,
}


def message_state(states: list[str]) -> str:
    """A message's state from all its parts' states (SPEC §9: each part has its own receipt).

    Any part still moving (queued/sending) → the earliest of those; all parts final and all
    delivered → delivered; all final otherwise → the first non-delivered final state in the order
    rejected, undeliverable, expired, cancelled (the message as a whole did not arrive); some
    parts final and the rest submitted → submitted (waiting for the remaining receipts).
    """
    if not states:
        return ""
    for moving in (JobState.QUEUED, JobState.SENDING):
        if moving.value in states:
            return moving.value
    if all(s == JobState.DELIVERED.value for s in states):
        return JobState.DELIVERED.value
    if JobState.SUBMITTED.value in states:
        return JobState.SUBMITTED.value
    for failed in (
        JobState.REJECTED,
        JobState.UNDELIVERABLE,
        JobState.EXPIRED,
        JobState.CANCELLED,
    ):
        if failed.value in states:
            return failed.value
    return states[0]


@dataclass(frozen=True, slots=True)
class MoMessage:
    """A mobile-originated SMS (a deliver_sm that is not a receipt), stored as received."""

    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: dict[str, int | str] = field(default_factory=dict)  # bytes values as hex


@dataclass(frozen=True, slots=True)
class NewJob:
    """One SMS part to one recipient, decided completely before the spool commit."""

    phone: str  # E.164 with '+'
    entry: int  # which message of the request (list mode has several)
    part: int  # 1-based
    parts: int
    submit: SubmitSm
    not_before: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class NewMail:
    """An outbound mail (reply, status, MO) rendered to bytes, with its envelope."""

    mail_from: str
    rcpt: str
    data: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class Admission:
    """What the spool checks, atomically with the store, before it accepts a request (SPEC §5).

    Checked in the order rate guards (issue 6, ERROR 8) → flood (8) → duplicates (9) →
    balance (3) against the spool's own state, inside the transaction that stores the request,
    so two concurrent identical requests cannot both pass, the last parts of a balance go to
    exactly one, and N nodes allow a rate limit once, not N times.
    """

    fingerprint: str  # identity for the duplicate check ("" = no duplicate check)
    destinations: tuple[str, ...]  # one item per message and subscriber (flood counts messages)
    parts: int  # SMS parts to debit (parts × recipients)
    balance: int | None  # the account's configured balance in parts; None = unlimited
    rates: tuple[RateCheck, ...] = ()  # the rate guards to pass, in order (the front adds them)
    rate_tempfail: bool = False  # over a rate guard: store nothing of the whole mail (451)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What `Spool.store` did.

    stored:  the request (with its jobs and mails) was committed now.
    refused: 0, or the SPEC §5 code (8, 9, 3) with which the admission checks refused it;
             then nothing was written: the caller stores a rejection for the same key.
    Neither: the key was stored before (idempotent retry); nothing was written.
    over:    the rate guard that refused it (with `refused` 8, or alone when the mail's
             `rate_tempfail` kept the whole mail out of the spool).
    """

    stored: bool
    refused: int = 0
    over: Exceeded | None = None


@dataclass(frozen=True, slots=True)
class NewRequest:
    """A received request with its outcome: accepted (jobs) or rejected (error code).

    `limits` switches on the stateful SPEC §5 protections for it (None: none, as in tools
    and old tests): the admission checks for an accepted request with `admission`, and the
    failure count of the IP block for a rejected one.
    """

    key: str  # idempotency key: one per SMTP transaction and recipient
    request_id: str
    login: str
    mail_from: str
    client_ip: str
    created: float
    jobs: tuple[NewJob, ...] = ()
    mails: tuple[NewMail, ...] = ()
    error: int = 0  # 0 = accepted; else the SPEC §5 code
    comment: str = ""
    admission: Admission | None = None
    limits: LimitsConfig | None = None
    ip_failure: bool = False  # a rejection that counts towards blocking `client_ip` (code 4)


def admitted(request: NewRequest) -> Admission | None:
    """The admission the spool checks for `request` (an accepted request with limits), or None."""
    if request.limits is None or request.error:
        return None
    return request.admission


def tempfail_checks(batch: list[NewRequest], known: set[str]) -> tuple[RateCheck, ...]:
    """The rate guards a `rate_tempfail` mail must pass as a whole (none: no tempfail check)."""
    checks: dict[str, RateCheck] = {}
    for request in batch:
        adm = admitted(request)
        if adm is not None and adm.rate_tempfail and request.key not in known:
            checks.update((c.name, c) for c in active(adm.rates))
    return tuple(checks.values())


def rate_overs(
    batch: list[NewRequest], known: set[str], usage: dict[str, Usage]
) -> dict[int, Exceeded]:
    """Which requests of a mail would be over a rate guard, each seeing the ones before it
    counted (as if stored in order); `usage` is the spool's count before the mail."""
    used = dict(usage)
    overs: dict[int, Exceeded] = {}
    for i, request in enumerate(batch):
        adm = admitted(request)
        if adm is None or request.key in known:
            continue
        checks = active(adm.rates)
        over = first_exceeded(checks, used, adm.parts)
        if over is not None:
            overs[i] = over
            continue
        for check in checks:
            used[check.name] = used.get(check.name, Usage()).plus(adm.parts)
    return overs


@dataclass(frozen=True, slots=True)
class Job:
    """A job claimed for sending."""

    id: int
    request_id: str
    phone: str
    part: int
    parts: int
    submit: SubmitSm
    attempts: int
    expires_at: float
    created: float = 0.0  # when the request was accepted (end-to-end latency)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A job the upstream accepted: its id there and the keys a receipt may quote it by."""

    job_id: int
    upstream_id: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mail:
    """An outbound mail claimed for sending."""

    id: int
    mail_from: str
    rcpt: str
    data: bytes
    attempts: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as `sms-relay status` shows it."""

    id: int
    phone: str
    entry: int
    part: int
    parts: int
    state: str
    attempts: int
    upstream_id: str
    error: str
    receipt: dict[str, Any] = field(default_factory=dict)


def job_row(pk: int, job: NewJob, created: float) -> tuple[Any, ...]:
    """The values of a new `jobs` row after its request's key, in the spools' INSERT order
    (request_pk, phone, entry, part, parts, submit, not_before, expires_at, updated)."""
    return (
        pk,
        job.phone,
        job.entry,
        job.part,
        job.parts,
        submit_to_json(job.submit),
        job.not_before,
        job.expires_at,
        created,
    )


# One encoder for every job: `json.dumps` with separators builds a new one per call (≈1 µs).
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def submit_to_json(sm: SubmitSm) -> str:
    """SubmitSm → a JSON text for the spool (bytes as hex, TLVs tagged by type)."""
    return _COMPACT.encode(
        {
            "sa": sm.source_addr,
            "st": sm.source_addr_ton,
            "sn": sm.source_addr_npi,
            "da": sm.destination_addr,
            "dt": sm.dest_addr_ton,
            "dn": sm.dest_addr_npi,
            "m": sm.short_message.hex(),
            "dc": sm.data_coding,
            "e": sm.esm_class,
            "p": sm.protocol_id,
            "r": sm.registered_delivery,
            "t": [[k, v] if isinstance(v, int) else [k, None, v.hex()] for k, v in sm.tlvs],
        }
    )


def submit_from_json(text: str) -> SubmitSm:
    d = json.loads(text)
    return SubmitSm(
        source_addr=d["sa"],
        source_addr_ton=d["st"],
        source_addr_npi=d["sn"],
        destination_addr=d["da"],
        dest_addr_ton=d["dt"],
        dest_addr_npi=d["dn"],
        short_message=bytes.fromhex(d["m"]),
        data_coding=d["dc"],
        esm_class=d["e"],
        protocol_id=d["p"],
        registered_delivery=d["r"],
        tlvs=tuple((t[0], t[1]) if len(t) == 2 else (t[0], bytes.fromhex(t[2])) for t in d["t"]),
    )


# -- issue 8: notices (final states, MO SMS) → callbacks and mails ----------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell a client about, written in the transaction that made it happen.

    kind `status`: a message (one entry of a request to one phone) reached a final state: every
    part is final; `state` is `message_state()` of its parts, `err` the first failed part's
    error code (the receipt's `err`, or the upstream command_status), `at` when it became
    final.
    kind `mo`: an MO SMS was stored (`mo_id`, `mo`, received at `at`).
    """

    id: int
    kind: str
    at: float
    request_id: str = ""
    login: str = ""
    mail_from: str = ""
    phone: str = ""
    entry: int = 0
    state: str = ""
    err: int = 0
    parts: int = 0
    mo_id: int = 0
    mo: MoMessage | None = None


@dataclass(frozen=True, slots=True)
class NewCallback:
    """A rendered callback HTTP request; `stream` orders callbacks (one message's in turn)."""

    stream: str
    url: str
    body: bytes
    content_type: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class Callback:
    """A callback claimed for sending."""

    id: int
    stream: str
    url: str
    body: bytes
    content_type: str
    attempts: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class NoticeOutcome:
    """What a notice turned into; `Spool.settle_notices` stores it and drops the notice, or,
    with `defer_until`, keeps it to be claimed again at that time (an incomplete MO SMS)."""

    notice_id: int
    callbacks: tuple[NewCallback, ...] = ()
    mails: tuple[NewMail, ...] = ()
    defer_until: float | None = None


@dataclass(frozen=True, slots=True)
class SentMessage:
    """The last message the relay sent to a phone: for mailing an MO answer to its sender."""

    request_id: str
    login: str
    mail_from: str
    phone: str
    created: float
    submits: tuple[SubmitSm, ...]  # its parts, in order


def error_code(receipt: str, error: str) -> int:
    """A failed part's error code: the receipt's `err`, else the upstream command_status."""
    if receipt:
        with contextlib.suppress(ValueError, TypeError):
            err = str(json.loads(receipt).get("err", "")).strip()
            if err:
                return int(err) if err.isdigit() else int(err, 16)
    if error.startswith("command_status 0x"):
        with contextlib.suppress(ValueError):
            return int(error.split()[1], 16)
    return 0
