"""The SMTP front: aiosmtpd handler that routes recipients, runs the pipeline, spools, answers.

`250` is answered only after the spool commit (SPEC §6, §8); any failure to store answers
`451 4.3.0`. The spool commit is shielded from the client hanging up mid-DATA (aiosmtpd cancels
the handler then) and idempotent on the transaction key.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, AnyStr, Protocol, TypeVar

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay import postmaster
from relay.auth import LOGIN_PASSWORD_PROMPT, LOGIN_USERNAME_PROMPT, AccountAuthenticator
from relay.email2sms import process_email2sms
from relay.errors import ErrorCode, SpoolError
from relay.passwords import CachedOnly, NotCached, PasswordChecker, Verifier
from relay.pipeline import Envelope as PipelineEnvelope
from relay.pipeline import (
    IntakeRules,
    Outcome,
    blocked_outcome,
    process_command_mail,
    reject_outcome,
)
from relay.rates import Exceeded, RateCheck, RateRules, active
from relay.rates import Limits as RateLimits
from relay.replies import smtp_reject_line
from relay.routing import AccountRoute, Client, PhoneRoute, Refused, route_recipient
from relay.smtp_session import LeanSMTP, SessionTables
from relay.spool.model import NewMail, NewRequest, StoreResult

log = logging.getLogger("relay.smtp")
T = TypeVar("T")

# A mail up to this size whose password check is cached is processed on the event loop (≈0.1 ms
# for a simple command mail, a few ms at most for a 4 KiB list); larger ones, and any that needs
# argon2, go to a worker thread so that they cannot stall the other sessions.
INLINE_MAX_BYTES = 4096

# RFC 5321 §4.5.3.1.6 allows 1000-octet lines; legacy devices send longer ones, and refusing
# them loses alerts, so DATA lines are accepted up to this many octets (the size limit still holds).
DATA_LINE_LIMIT = 65536


class RelaySMTP(LeanSMTP):
    """aiosmtpd's SMTP (in its leaner form, relay.smtp_session) with the relay's answers:
    enhanced status codes for size (RFC 3463), the AUTH LOGIN prompts Go clients expect, AUTH in
    clear on loopback when the operator allows it, and AUTH (without STARTTLS) on an implicit-TLS
    port."""

    line_length_limit = DATA_LINE_LIMIT
    AuthLoginUsernameChallenge = LOGIN_USERNAME_PROMPT
    AuthLoginPasswordChallenge = LOGIN_PASSWORD_PROMPT

    def __init__(self, *args: Any, auth_plain_loopback: bool = False, **kwargs: Any) -> None:
        # The reader's line limit is at least the message size limit, so a line too long for
        # the reader is also a message too big: it gets `552 5.3.4`, like any oversize mail,
        # not aiosmtpd's `500 Line too long` (read before super().__init__ builds the reader).
        size = kwargs.get("data_size_limit") or 0
        self.line_length_limit = max(DATA_LINE_LIMIT, size + 2)
        super().__init__(*args, **kwargs)
        self._auth_plain_loopback = auth_plain_loopback

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None
        super().connection_made(transport)
        if not first:
            return
        if transport.get_extra_info("ssl_object") is not None:
            # Implicit TLS (RFC 8314): already encrypted; no STARTTLS, AUTH allowed.
            self.tls_context = None
            self._auth_require_tls = False
        elif self._auth_plain_loopback and _is_loopback(transport.get_extra_info("peername")):
            self._auth_require_tls = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT address parsing, remembered per argument.

        aiosmtpd 1.4 defines a `typing.Protocol` class on every call and runs the stdlib
        header-value parser: together a quarter of the relay's CPU per mail (py-spy, bench
        ingest). The same few senders and recipients recur on every mail, so the (pure)
        result is cached; the tests compare it with aiosmtpd's own for many arguments.
        """
        if not arg:
            return "", ""
        addr, rest = _parse_address(arg)
        if addr is None:
            return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith(("552 Error", "500 Line too long")):
            await super().push("552 5.3.4 Message too big for this gateway")
            return
        await super().push(status)


@functools.lru_cache(maxsize=1024)  # keys are command arguments: at most 512 octets each
def _parse_address(arg: str) -> tuple[str | None, str | None]:
    """What aiosmtpd's `SMTP._getaddr` parses (without its local-part limit)."""
    try:
        if arg.lstrip().startswith("<"):
            angle, rest = get_angle_addr(arg)
        else:
            angle, rest = None, ""
            spec, rest = get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    return str(angle.addr_spec if angle is not None else spec.addr_spec), str(rest)


def _is_loopback(peer: object) -> bool:
    import ipaddress

    host = peer[0] if isinstance(peer, tuple) and peer else ""
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


@dataclass
class IntakeCounters:
    """Counts the front keeps for metrics and tests (exported by relay.metrics)."""

    sessions: int = 0
    accepted: int = 0
    parts_queued: int = 0  # SMS jobs (part × recipient) committed to the spool
    refused: dict[int, int] = field(default_factory=dict)
    temp_failures: int = 0
    rate_limited: dict[str, int] = field(default_factory=dict)  # by scope: account, sender
    auth_failures: int = 0
    postmaster: int = 0  # mails to postmaster@ spooled for `smtp.postmaster`


class RequestIds:
    """Relay-assigned request ids: numeric, increasing, unique within this process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def __call__(self) -> str:
        candidate = int(self._clock() * 1000) * 1000
        self._last = max(self._last + 1, candidate)
        return str(self._last)


class ConcatRefs:
    """SPEC §7: the concatenation reference increments per destination."""

    def __init__(self) -> None:
        self._refs: dict[str, int] = {}

    def __call__(self, phone: str) -> int:
        last = self._refs.get(phone)
        if last is None:  # a random start per new destination (not per call: bench profile)
            last = random.getrandbits(16)
        ref = (last + 1) & 0xFFFF
        if len(self._refs) > 100_000:
            self._refs.clear()
        self._refs[phone] = ref
        return ref


class FrontSpool(Protocol):
    """The part of relay.spool.Spool the SMTP front uses (an SMTP worker process reaches the
    daemon's spool for it over a socket pair: relay.smtp_worker.RemoteSpool)."""

    async def ip_blocked(self, client_ip: str, now: float) -> bool: ...

    async def store(self, request: NewRequest) -> StoreResult: ...

    def store_all(self, requests: Sequence[NewRequest]) -> Awaitable[list[StoreResult]]: ...


class CommandMailHandler:
    """aiosmtpd handler for all routes of SPEC §1: `send@`, `<login>@`, `<phone>@`."""

    def __init__(
        self,
        *,
        domains: list[str],
        rules: IntakeRules,
        spool: FrontSpool,
        reject_invalid: bool,
        max_recipients: int,
        on_stored: Callable[[list[Outcome]], None],
        counters: IntakeCounters | None = None,
        rates: RateRules | None = None,
        log_content: bool = False,
    ) -> None:
        self.log_content = log_content
        self.domains = {d.lower() for d in domains}
        self.rules = rules  # replaced as a whole on SIGHUP
        self.spool = spool
        self.reject_invalid = reject_invalid
        self.max_recipients = max_recipients
        self.on_stored = on_stored
        self.counters = counters or IntakeCounters()
        self.checker = PasswordChecker()
        self._cached_checker = CachedOnly(self.checker)
        # Transaction keys: the spool's idempotency key, unique across processes and restarts
        # (a random prefix per handler, then a counter: uuid4 per mail was 4 % of ingest CPU).
        self._txn_prefix = secrets.token_hex(8)
        self._txn_seq = itertools.count(1)
        self.new_id = RequestIds()
        self.next_ref = ConcatRefs()
        self.rates = rates or RateRules()  # replaced as a whole on SIGHUP
        self.authenticator = AccountAuthenticator(
            lambda: self.rules.accounts, self.checker, self._auth_failed
        )
        self._pending: set[asyncio.Future[Any]] = set()  # commits a hung-up client left

    # aiosmtpd hooks ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if postmaster.is_postmaster(address, self.domains):
            return self._rcpt_postmaster(envelope, address)
        if any(postmaster.is_postmaster(r, self.domains) for r in envelope.rcpt_tos):
            return postmaster.SEPARATELY
        route = route_recipient(
            address,
            domains=self.domains,
            accounts=self.rules.accounts,
            client=_client(session, envelope),
        )
        if isinstance(route, Refused):
            # SPEC §1: anything else is refused at RCPT time (never an open relay).
            return route.status
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    def _rcpt_postmaster(self, envelope: Envelope, address: str) -> str:
        """RFC 5321 §4.5.1: `postmaster` is accepted (when there is somewhere to forward it),
        alone in its transaction so that its DATA never mixes with SMS requests."""
        if not self.rules.postmaster:
            return postmaster.NOT_CONFIGURED
        if any(not postmaster.is_postmaster(r, self.domains) for r in envelope.rcpt_tos):
            return postmaster.SEPARATELY
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        peer = session.peer
        client_ip = peer[0] if isinstance(peer, tuple) else str(peer)
        txn = f"{self._txn_prefix}-{next(self._txn_seq):x}"
        now = time.time()
        mail_from = envelope.mail_from or ""
        rules = self.rules
        if envelope.rcpt_tos and postmaster.is_postmaster(envelope.rcpt_tos[0], self.domains):
            return await self._forward_postmaster(session, envelope, raw, txn, client_ip, now)
        envs = [
            PipelineEnvelope(key=f"{txn}:{i}", mail_from=mail_from, rcpt=rcpt, client_ip=client_ip)
            for i, rcpt in enumerate(envelope.rcpt_tos)
        ]
        client = _client(session, envelope)
        try:
            # SPEC §5: the IP block comes first, before decoding or a password hash is spent.
            blocked = not rules.policy.ip_exempt(client_ip) and await self.spool.ip_blocked(
                client_ip, now
            )
        except SpoolError as exc:
            self.counters.temp_failures += 1
            log.error("spool unavailable, answering 451: %s", exc)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        if blocked:
            outcomes = [
                blocked_outcome(raw, env, rules, now=now, request_id=self.new_id()) for env in envs
            ]
        else:
            # A small command mail with a cached password check is processed right here; the
            # rest off the event loop: argon2 and big mails must not stall the other sessions.
            inline = self._process_inline(raw, envs, rules, client, now)
            outcomes = (
                inline
                if inline is not None
                else await asyncio.to_thread(self._process_all, raw, envs, rules, client, now)
            )
            outcomes = self._with_rates(outcomes, rules, client)
        try:
            stored = await self._store(outcomes, raw, envs, rules, now)
        except SpoolError as exc:
            self.counters.temp_failures += 1
            log.error("spool store failed, answering 451: %s", exc)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        if stored is None:  # over a rate guard with `rate_action = "tempfail"`: nothing stored
            return "451 4.7.1 Rate limit exceeded, try again later"
        outcomes = stored
        all_refused = bool(outcomes) and all(not o.accepted for o in outcomes)
        for o in outcomes:
            if o.accepted:
                self.counters.accepted += 1
                self.counters.parts_queued += len(o.request.jobs)
                log.info(
                    "accepted id=%s login=%s parts=%d from=%s ip=%s",
                    o.request_id,
                    o.login,
                    o.parts,
                    mail_from,
                    client_ip,
                    extra={"request_id": o.request_id, "login": o.login, "parts": o.parts},
                )
                if self.log_content:  # `log.content = true`: the text, at debug level only
                    log.debug(
                        "content id=%s text=%r",
                        o.request_id,
                        "\n".join(o.texts),
                        extra={"request_id": o.request_id},
                    )
            else:
                code = int(o.code or 0)
                self.counters.refused[code] = self.counters.refused.get(code, 0) + 1
                log.info(
                    "refused id=%s login=%s code=%d detail=%s from=%s ip=%s",
                    o.request_id,
                    o.login,
                    code,
                    o.detail,
                    mail_from,
                    client_ip,
                    extra={"request_id": o.request_id, "login": o.login, "code": code},
                )
        self.on_stored(outcomes)
        if self.reject_invalid and all_refused:
            first = outcomes[0]
            return smtp_reject_line(first.code or ErrorCode.PARAMETERS, first.request_id)
        ids = ",".join(o.request_id for o in outcomes)
        return f"250 2.0.0 OK queued as {ids}"

    async def _forward_postmaster(
        self,
        session: Session,
        envelope: Envelope,
        raw: bytes,
        txn: str,
        client_ip: str,
        now: float,
    ) -> str:
        """Spool the mail for `smtp.postmaster` (sent by the reply mailer, retried like replies)."""
        rules = self.rules
        if not rules.postmaster:  # the config changed (SIGHUP) since RCPT
            return postmaster.NOT_CONFIGURED
        if postmaster.is_loop(raw):
            log.warning(
                "postmaster mail refused as a loop: from=%s ip=%s", envelope.mail_from, client_ip
            )
            return postmaster.LOOP
        request_id = self.new_id()
        data = postmaster.forwarded(
            raw,
            rcpt=envelope.rcpt_tos[0],
            helo=session.host_name or "",
            client_ip=client_ip,
            hostname=rules.hostname,
            request_id=request_id,
            now=now,
        )
        mail_from = envelope.mail_from or ""
        request = NewRequest(
            key=f"{txn}:postmaster",
            request_id=request_id,
            login="",
            mail_from=mail_from,
            client_ip=client_ip,
            created=now,
            mails=(NewMail(mail_from, rules.postmaster, data, now + rules.validity),),
            comment="postmaster",
        )
        try:
            await asyncio.shield(self._kept(self.spool.store(request)))
        except SpoolError as exc:
            self.counters.temp_failures += 1
            log.error("spool store failed, answering 451: %s", exc)
            return "451 4.3.0 Temporary failure storing the message, try again later"
        self.counters.postmaster += 1
        log.info(
            "postmaster mail id=%s from=%s ip=%s forwarded to %s",
            request_id,
            mail_from,
            client_ip,
            rules.postmaster,
            extra={"request_id": request_id},
        )
        self.on_stored([])  # no outcome: a mail (to postmaster), no SMS
        return f"250 2.0.0 OK queued as {request_id}"

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default answers a permanent 500 with the exception text: that leaks
        # internals and makes MTAs bounce mail that a retry would deliver.
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Temporary local problem, try again later"

    # internals ---------------------------------------------------------------------------

    def _process_inline(
        self,
        raw: bytes,
        envs: list[PipelineEnvelope],
        rules: IntakeRules,
        client: Client,
        now: float,
    ) -> list[Outcome] | None:
        """The outcomes without argon2 and without a thread hop; None when that is not possible
        (a big mail, an e-mail-to-SMS route, a password check not cached)."""
        if len(raw) > INLINE_MAX_BYTES:
            return None
        try:
            return [
                self._process_one(raw, env, rules, client, now, self._cached_checker, inline=True)
                for env in envs
            ]
        except NotCached:
            return None  # pure so far: an id drawn and maybe a concat reference, both harmless

    def _process_all(
        self,
        raw: bytes,
        envs: list[PipelineEnvelope],
        rules: IntakeRules,
        client: Client,
        now: float,
    ) -> list[Outcome]:
        return [self._process_one(raw, env, rules, client, now, self.checker) for env in envs]

    def _process_one(
        self,
        raw: bytes,
        env: PipelineEnvelope,
        rules: IntakeRules,
        client: Client,
        now: float,
        checker: Verifier,
        *,
        inline: bool = False,
    ) -> Outcome:
        # The route was decided at RCPT; decided again here with the same inputs (a SIGHUP
        # in between may have removed the account: the pipeline then answers ERROR 2).
        route = route_recipient(
            env.rcpt, domains=self.domains, accounts=rules.accounts, client=client
        )
        if isinstance(route, AccountRoute | PhoneRoute):
            if inline:  # e-mail to SMS may turn HTML into text: always in a worker thread
                raise NotCached
            return process_email2sms(
                raw, env, rules, route, client, now=now, new_id=self.new_id, next_ref=self.next_ref
            )
        return process_command_mail(
            raw, env, rules, checker, now=now, new_id=self.new_id, next_ref=self.next_ref
        )

    def _with_rates(
        self, outcomes: list[Outcome], rules: IntakeRules, client: Client
    ) -> list[Outcome]:
        """Issue 6 guards: each accepted request carries its rate checks to the spool, which
        checks and counts them in the store's transaction (across nodes and restarts).

        Over a limit: ERROR 8 (by reply, like SPEC §5's flood) or, with `rate_action =
        "tempfail"`, nothing of the mail is stored or counted and it is answered 451.
        """
        rates = self.rates
        sender = (client.mail_from or "<>").lower()
        result: list[Outcome] = []
        for outcome in outcomes:
            adm = outcome.request.admission
            if not outcome.accepted or adm is None:
                result.append(outcome)
                continue
            checks = (
                RateCheck(
                    "account", outcome.login.lower(), self._account_limits(rules, outcome.login)
                ),
                RateCheck("sender", sender, rates.sender),
            )
            if not active(checks):  # no guard limits anything: the spools skip them anyway
                result.append(outcome)
                continue
            adm = replace(adm, rates=checks, rate_tempfail=rates.tempfail)
            result.append(replace(outcome, request=replace(outcome.request, admission=adm)))
        return result

    def _account_limits(self, rules: IntakeRules, login: str) -> RateLimits:
        default = self.rates.account
        account = rules.accounts.get(login.lower())
        if account is None:
            return default
        per_minute = account.rate_per_minute
        parts = account.parts_per_day
        return RateLimits(
            default.per_minute if per_minute is None else per_minute,
            default.parts_per_day if parts is None else parts,
        )

    def _auth_failed(self) -> None:
        self.counters.auth_failures += 1

    async def _store(
        self,
        outcomes: list[Outcome],
        raw: bytes,
        envs: list[PipelineEnvelope],
        rules: IntakeRules,
        now: float,
    ) -> list[Outcome] | None:
        """Store accepted requests (the spool's rate guards and SPEC §5 checks may refuse
        them), then refusals; None when a rate guard with `tempfail` kept the mail out.

        The accepted requests of the mail go in one transaction, in recipient order (a later
        recipient sees the earlier ones counted by the rate guards). Refusals go last so that
        `reject_invalid` knows whether all were refused before it drops their reply mails
        (refused in the DATA answer instead).
        """
        admitted = [i for i, o in enumerate(outcomes) if o.accepted]
        # Queued now (SQLite: a future; another spool: a task), then shielded: a client that
        # hangs up mid-DATA cancels this handler, never the commit nor the rest of the mail's
        # storing (`_store_rest`, in a task then; `drain` waits for them at a graceful stop).
        # No task per mail otherwise: a task and its shield cost ≈3 % of ingest (bench.ab).
        commit = self._kept(self.spool.store_all([outcomes[i].request for i in admitted]))

        def finish(results: list[StoreResult]) -> Awaitable[list[Outcome] | None]:
            return self._finish_store(results, outcomes, admitted, raw, envs, rules, now)

        try:
            results = await asyncio.shield(commit)
        except asyncio.CancelledError:
            self._kept(self._store_rest(commit, finish))
            raise
        if len(admitted) == len(outcomes) and all(r.stored and r.over is None for r in results):
            return list(outcomes)  # the usual mail: every request stored, nothing more to do
        return await asyncio.shield(self._kept(finish(results)))

    def _kept(self, work: Awaitable[T]) -> asyncio.Future[T]:
        """`work` as a future (a task for a coroutine) that `drain` waits for at a stop."""
        fut = asyncio.ensure_future(work)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        return fut

    async def _store_rest(
        self,
        commit: asyncio.Future[list[StoreResult]],
        finish: Callable[[list[StoreResult]], Awaitable[list[Outcome] | None]],
    ) -> None:
        """The rest of `_store` for a mail whose handler was cancelled (the client hung up):
        its refusals are stored all the same (a failure has nobody left to answer: logged)."""
        try:
            await finish(await commit)
        except SpoolError as exc:
            log.error("spool store failed after the client hung up: %s", exc)

    async def _finish_store(
        self,
        results: list[StoreResult],
        outcomes: list[Outcome],
        admitted: list[int],
        raw: bytes,
        envs: list[PipelineEnvelope],
        rules: IntakeRules,
        now: float,
    ) -> list[Outcome] | None:
        """`_store` after the accepted requests' commit: the refusals (of the pipeline, of the
        spool's SPEC §5 checks) are stored, and what the mail's answer is made of."""
        final = list(outcomes)
        held = False
        for i, result in zip(admitted, results, strict=True):
            if result.over is not None:
                self._rate_limited(outcomes[i], result.over)
            if result.refused:
                code = ErrorCode(result.refused)
                final[i] = reject_outcome(outcomes[i], code, rules, envs[i], raw, now)
            elif result.over is not None:
                held = True
        if held:
            return None
        if self.reject_invalid and final and all(not o.accepted for o in final):
            final = [_without_mails(o) for o in final]
        refusals = [o.request for o in final if not o.accepted]
        if refusals:  # most mails have none (a gather of nothing still makes a future)
            await asyncio.gather(*(self.spool.store(r) for r in refusals))
        return final

    def _rate_limited(self, outcome: Outcome, over: Exceeded) -> None:
        scope = over.scope
        self.counters.rate_limited[scope] = self.counters.rate_limited.get(scope, 0) + 1
        log.warning(
            "rate limit (%s) for %s=%s: id=%s refused",
            over.what,
            over.scope,
            over.key,
            outcome.request_id,
        )

    async def drain(self) -> None:
        """Wait for spool commits that a hung-up client left running (graceful stop)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _client(session: Session, envelope: Envelope) -> Client:
    peer = session.peer
    auth = session.auth_data if session.authenticated else None
    return Client(
        mail_from=envelope.mail_from or "",
        client_ip=peer[0] if isinstance(peer, tuple) else str(peer),
        auth_login=auth if isinstance(auth, str) else "",
    )


def _without_mails(o: Outcome) -> Outcome:
    return replace(o, request=replace(o.request, mails=()))


def smtp_factory(
    handler: CommandMailHandler,
    *,
    hostname: str,
    max_message_size: int,
    timeout: float,
    tls_context: ssl.SSLContext | None,
    loop: asyncio.AbstractEventLoop,
    auth_plain_loopback: bool = False,
) -> Callable[[], RelaySMTP]:
    """A protocol factory for `loop.create_server` (the whole daemon runs on one loop)."""
    tables = SessionTables.of(RelaySMTP, handler)  # once, not per connection

    def make() -> RelaySMTP:
        handler.counters.sessions += 1
        return RelaySMTP(
            handler,
            hostname=hostname,  # without it aiosmtpd calls a blocking getfqdn() per connection
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=timeout,
            tls_context=tls_context,
            require_starttls=False,
            ident="sms-relay ESMTP",
            loop=loop,
            authenticator=handler.authenticator,
            auth_require_tls=True,
            auth_plain_loopback=auth_plain_loopback,
            tables=tables,
        )

    return make
