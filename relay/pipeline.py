"""PURE: one received mail for one recipient → the request to spool (jobs, or a rejection).

Everything between the bytes of DATA and the submit_sm parameters happens here, with no I/O:
the SMTP front calls `process_command_mail`, stores what it returns, and answers.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relay.config import AccountConfig, LimitsConfig
from relay.errors import ErrorCode, RejectError
from relay.fields import parse_id
from relay.grammar import parse_command
from relay.mail import ParsedMail, command_text, parse_mail
from relay.passwords import Verifier
from relay.protections import Policy, admission, counts_as_ip_failure, fingerprint
from relay.replies import (
    error_text,
    is_auto_mail,
    ok_text,
    render_reply,
    reply_address,
    wants_reply,
)
from relay.smpp.model import SubmitSm
from relay.sms import build_parts, source_address
from relay.sms.model import SmsProfile
from relay.spool.model import Admission, NewJob, NewMail, NewRequest
from relay.validate import ValidRequest, authenticate, validate

# SPEC §3 prefixes select the channel like `format` does (formats of SPEC §4).
CHANNEL_FORMATS: dict[str, int] = {
    "HLR": 3,
    "PING": 6,
    "MMS": 7,
    "MAIL": 8,
    "CALL": 9,
    "VIBER": 10,
    "SOC": 12,
}
# `__BOT__` (a messenger bot) has no format number: only the seed SMSC dialect carries it, as text.
BOT_PREFIX = "__BOT__: "


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP transaction as the pipeline needs it, for one recipient."""

    key: str  # unique per transaction and recipient: the spool's idempotency key
    mail_from: str
    rcpt: str
    client_ip: str


@dataclass(frozen=True, slots=True)
class IntakeRules:
    """The configuration the pipeline applies, built once from RelayConfig (and on SIGHUP)."""

    accounts: dict[str, AccountConfig]  # by lower-cased login
    profile: SmsProfile
    registered_delivery: bool
    validity: float
    reply_sender: str
    hostname: str
    replies_enabled: bool = True
    postmaster: str = ""  # where mail to postmaster@ is forwarded; "" = refused (RFC 5321 §4.5.1)
    limits: LimitsConfig = field(default_factory=LimitsConfig)  # SPEC §5 protections
    policy: Policy = field(init=False, repr=False, compare=False)  # compiled from `limits`

    def __post_init__(self) -> None:
        # Deny patterns are compiled once per config, not once per request.
        object.__setattr__(self, "policy", Policy.from_limits(self.limits))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one request: the spool record and what the sender is told."""

    request: NewRequest
    request_id: str
    code: ErrorCode | None  # None: accepted
    answer: str  # `OK - …` or `ERROR = …`
    parts: int  # SMS parts × recipients (0 when rejected)
    login: str = ""
    detail: str = ""
    texts: tuple[str, ...] = ()  # the SMS texts, for `log.content` (debug level only)

    @property
    def accepted(self) -> bool:
        return self.code is None


@dataclass(frozen=True, slots=True)
class _Headers:
    subject: str = ""
    from_addr: str = ""
    reply_to: str = ""
    message_id: str = ""
    references: str = ""
    auto_submitted: str = ""
    precedence: str = ""


def process_command_mail(
    raw: bytes,
    env: Envelope,
    rules: IntakeRules,
    checker: Verifier,
    *,
    now: float,
    new_id: Callable[[], str],
    next_ref: Callable[[str], int],
) -> Outcome:
    """SPEC §2–§6 for `send@`: decode → grammar → account → fields → SMS jobs, or a rejection."""
    request_id = new_id()
    login = ""
    test = 0
    headers = _Headers()
    try:
        mail = parse_mail(raw)
        headers = _headers_of(mail)
        cmd = parse_command(command_text(mail))
        login = cmd.login
        account = authenticate(cmd, rules.accounts, checker, env.client_ip)
        login = account.login
        # SPEC §5: the replies of codes 3, 6, 7, 8 name the client's own id, also when a later
        # field is what fails (a malformed id is code 1, reported by `validate`).
        with contextlib.suppress(RejectError):
            request_id = parse_id(cmd.id) or request_id
        valid = validate(cmd, account, datetime.fromtimestamp(now, UTC), rules.policy)
        test = valid.test
        if valid.request_id is not None:
            request_id = valid.request_id
        jobs = _jobs(valid, rules, now=now, next_ref=next_ref)
    except RejectError as exc:
        if headers == _Headers():
            headers = _peek_headers(raw)
        return _rejected(exc, env, rules, headers, now=now, request_id=request_id, login=login)
    return accepted_outcome(
        valid, jobs, env, rules, headers, now=now, request_id=request_id, test=test,
        time_raw=cmd.time, tz_raw=cmd.tz,
    )  # fmt: skip


def accepted_outcome(
    valid: ValidRequest,
    jobs: list[NewJob],
    env: Envelope,
    rules: IntakeRules,
    headers: _Headers,
    *,
    now: float,
    request_id: str,
    test: int,
    time_raw: str = "",
    tz_raw: str = "",
) -> Outcome:
    """An accepted request: its jobs, the OK reply when `test` asks, the SPEC §5 admission."""
    parts = len(jobs)
    answer = ok_text(parts, request_id)
    request = NewRequest(
        key=env.key,
        request_id=request_id,
        login=valid.account.login,
        mail_from=env.mail_from,
        client_ip=env.client_ip,
        created=now,
        jobs=tuple(jobs),
        mails=_reply(answer, env, rules, headers, now=now, test=test, failed=False),
        comment="\n".join(m.comment for m in valid.messages if m.comment),
        admission=_admission(valid, time_raw, tz_raw, parts),
        limits=rules.limits,
    )
    texts = tuple(m.text for m in valid.messages)
    return Outcome(request, request_id, None, answer, parts, login=valid.account.login, texts=texts)


def _admission(valid: ValidRequest, time_raw: str, tz_raw: str, parts: int) -> Admission:
    """SPEC §5 flood (8), duplicates (9) and balance (3) of an accepted request, for the spool."""
    messages = [(m.phones, m.text) for m in valid.messages]
    when = f"{time_raw.strip()},{tz_raw.strip()}" if valid.when is not None else ""
    fp = fingerprint(
        valid.account.login,
        messages,
        sender=valid.sender,
        fmt=valid.fmt or CHANNEL_FORMATS.get(valid.channel, 0),
        channel=valid.channel,
        time=when,
    )
    return admission(messages, fingerprint=fp, parts=parts, balance=valid.account.balance)


def _jobs(
    valid: ValidRequest, rules: IntakeRules, *, now: float, next_ref: Callable[[str], int]
) -> list[NewJob]:
    fmt = valid.fmt or CHANNEL_FORMATS.get(valid.channel, 0)
    profile = rules.profile
    bot = valid.channel == "BOT" and not valid.fmt
    if bot and profile.dialect != "smsc":
        raise RejectError(ErrorCode.UNDELIVERABLE, "__BOT__ needs the smsc dialect")
    if valid.account.latin1 and not profile.latin1:
        profile = SmsProfile(
            latin1=True,
            data_coding_gsm=profile.data_coding_gsm,
            data_coding_latin1=profile.data_coding_latin1,
            data_coding_ucs2=profile.data_coding_ucs2,
            long_sms=profile.long_sms,
            udh_ref16=profile.udh_ref16,
            dialect=profile.dialect,
        )
    src, src_ton, src_npi = source_address(valid.sender)
    not_before = max(now, valid.when.timestamp()) if valid.when is not None else now
    expires_at = not_before + rules.validity
    extras = tuple((k, v) for k, v in (("subj", valid.subj), ("voice", valid.voice)) if v)
    jobs: list[NewJob] = []
    for entry_no, message in enumerate(valid.messages):
        for phone in message.phones:
            specs = build_parts(
                BOT_PREFIX + message.text if bot else message.text,
                fmt=fmt,
                translit=valid.translit,
                profile=profile,
                ref=next_ref(phone),
                comment=message.comment,
                prefix_extras=extras,
            )
            for part_no, spec in enumerate(specs, start=1):
                submit = SubmitSm(
                    source_addr=src,
                    source_addr_ton=src_ton,
                    source_addr_npi=src_npi,
                    destination_addr=phone.lstrip("+"),
                    short_message=spec.short_message,
                    data_coding=spec.data_coding,
                    esm_class=spec.esm_class,
                    protocol_id=spec.protocol_id,
                    registered_delivery=1 if rules.registered_delivery else 0,
                    tlvs=spec.tlvs,
                )
                jobs.append(
                    NewJob(
                        phone=phone,
                        entry=entry_no,
                        part=part_no,
                        parts=len(specs),
                        submit=submit,
                        not_before=not_before,
                        expires_at=expires_at,
                    )
                )
    return jobs


def _rejected(
    exc: RejectError,
    env: Envelope,
    rules: IntakeRules,
    headers: _Headers,
    *,
    now: float,
    request_id: str,
    login: str,
) -> Outcome:
    answer = error_text(exc.code, request_id)
    mails = _reply(answer, env, rules, headers, now=now, test=0, failed=True)
    request = NewRequest(
        key=env.key,
        request_id=request_id,
        login=login,
        mail_from=env.mail_from,
        client_ip=env.client_ip,
        created=now,
        mails=mails,
        error=int(exc.code),
        limits=rules.limits,
        ip_failure=counts_as_ip_failure(exc.code, env.client_ip, rules.limits, rules.policy),
    )
    return Outcome(request, request_id, exc.code, answer, 0, login=login, detail=exc.detail)


def reject_outcome(
    outcome: Outcome, code: ErrorCode, rules: IntakeRules, env: Envelope, raw: bytes, now: float
) -> Outcome:
    """Turn an outcome refused after the pipeline (spool-side checks) into a rejection."""
    return _rejected(
        RejectError(code),
        env,
        rules,
        _peek_headers(raw),
        now=now,
        request_id=outcome.request_id,
        login=outcome.login,
    )


def blocked_outcome(
    raw: bytes, env: Envelope, rules: IntakeRules, *, now: float, request_id: str
) -> Outcome:
    """SPEC §5 (4): a request from a blocked IP, refused before its body is even decoded.

    Its reply mail is built as for any error; the spool keeps it only for the first refusal
    of the block (no reply storm towards whoever the blocked client names as sender).
    """
    return _rejected(
        RejectError(ErrorCode.IP_BLOCKED, f"{env.client_ip} is blocked"),
        env,
        rules,
        _peek_headers(raw),
        now=now,
        request_id=request_id,
        login="",
    )


def _reply(
    answer: str,
    env: Envelope,
    rules: IntakeRules,
    headers: _Headers,
    *,
    now: float,
    test: int,
    failed: bool,
) -> tuple[NewMail, ...]:
    if not rules.replies_enabled or not wants_reply(test, failed):
        return ()
    if is_auto_mail(headers.auto_submitted, headers.precedence):
        return ()
    to = reply_address(env.mail_from, headers.reply_to, headers.from_addr)
    if to is None:
        return ()
    data = render_reply(
        answer,
        to=to,
        sender=rules.reply_sender,
        request_message_id=headers.message_id,
        request_references=headers.references,
        message_id=email.utils.make_msgid(domain=rules.hostname),
        now=now,
    )
    return (NewMail(rules.reply_sender, to, data, now + rules.validity),)


def _headers_of(mail: ParsedMail) -> _Headers:
    return _Headers(
        subject=mail.subject,
        from_addr=mail.from_addr,
        reply_to=mail.reply_to,
        message_id=mail.message_id,
        references=mail.references,
        auto_submitted=mail.auto_submitted,
        precedence=mail.precedence,
    )


def _peek_headers(raw: bytes) -> _Headers:
    """The reply-relevant headers of a mail whose body could not be decoded."""
    try:
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            raw, headersonly=True
        )

        def get(name: str) -> str:
            value = msg.get(name)
            return str(value).strip() if value is not None else ""

        return _Headers(
            from_addr=get("From"),
            reply_to=get("Reply-To"),
            message_id=get("Message-ID"),
            references=get("References"),
            auto_submitted=get("Auto-Submitted"),
            precedence=get("Precedence"),
        )
    except Exception:  # a header block too broken to read: reply without threading
        return _Headers()
