"""Notices (final states, MO SMS) → status/MO callbacks and mails, queued atomically (issue 8).

The spool writes a notice in the very transaction that makes a message final or stores an MO
SMS (a transactional outbox), so a crash can delay a callback or a mail but never lose one. This
task reads the notices, decides per account what they become (`callback_url`, `status_mail`,
`mo_email`, the MO reply mapping), renders them with the pure modules (relay.callbacks, relay.mo)
and hands them back: `settle_notices` queues the callbacks and mails and drops the notices in one
transaction, so each notice yields its callbacks and mails exactly once.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from relay import callbacks as cb
from relay import mo as mo_text
from relay.config import AccountConfig, CallbacksConfig, MoConfig
from relay.errors import SpoolError
from relay.replies import reply_address
from relay.spool import Spool
from relay.spool.model import (
    JobState,
    NewCallback,
    NewMail,
    Notice,
    NoticeOutcome,
    SentMessage,
)
from relay.wakeup import Wakeup

log = logging.getLogger("relay.notifier")

_BATCH = 50


@dataclass
class NoticeCounters:
    status: int = 0  # final message states seen
    mo: int = 0  # MO messages complete (all parts) seen
    mo_incomplete: int = 0  # concatenated MO forwarded without all parts (mo.concat_timeout)
    mo_mailed: int = 0
    status_mailed: int = 0
    callbacks_queued: int = 0


@dataclass(frozen=True)
class NoticeRules:
    """The notifier's view of the config (rebuilt on SIGHUP)."""

    accounts: Mapping[str, AccountConfig]  # by lower-case login
    domains: Sequence[str]
    sender: str
    hostname: str
    mail_validity: float
    mails_enabled: bool
    mo: MoConfig
    callbacks: CallbacksConfig


class Notifier:
    def __init__(
        self,
        spool: Spool,
        rules: NoticeRules,
        *,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        counters: NoticeCounters | None = None,
    ) -> None:
        self.spool = spool
        self.rules = rules
        self.on_queued = on_queued
        self.clock = clock
        self.counters = counters or NoticeCounters()
        self._wakeup = Wakeup()

    def wake(self) -> None:
        self._wakeup.wake()

    async def stop(self) -> None:
        self._wakeup.stop()

    async def run(self) -> None:
        while not self._wakeup.stopping:
            notices = await self.spool.claim_notices(_BATCH, self.clock())
            if not notices:
                await self._wakeup.nap(None, self.clock(), 1.0)
                continue
            outcomes = [await self.outcome(n) for n in notices]
            await self.spool.settle_notices(outcomes, self.clock())
            if any(o.callbacks or o.mails for o in outcomes):
                self.on_queued()

    async def outcome(self, notice: Notice) -> NoticeOutcome:
        try:
            if notice.kind == "status":
                return self._status(notice)
            if notice.kind == "mo":
                return await self._mo(notice)
        except SpoolError:
            raise  # the spool is failing: stop loudly, the notice stays for the next start
        except Exception:  # one bad notice must not stop the others, nor loop for ever
            log.exception("notice id=%d (%s) not rendered; dropped", notice.id, notice.kind)
        return NoticeOutcome(notice.id)

    # -- final states ----------------------------------------------------------------------

    def _status(self, n: Notice) -> NoticeOutcome:
        self.counters.status += 1
        acc = self.rules.accounts.get(n.login.lower())
        if acc is None:
            return NoticeOutcome(n.id)
        calls: list[NewCallback] = []
        if acc.callback_url and self.rules.callbacks.enabled:
            fields = cb.status_fields(
                message_id=n.request_id,
                phone=n.phone,
                state=n.state,
                err=n.err,
                at=n.at,
                parts=n.parts,
            )
            stream = f"status/{n.request_id}/{n.entry}/{n.phone}"
            calls.append(self._callback(acc.callback_url, fields, stream, mo=False))
        mails: list[NewMail] = []
        failed = n.state != JobState.DELIVERED.value
        if acc.status_mail == "all" or (acc.status_mail == "failed" and failed):
            rcpt = reply_address(n.mail_from, "", "")
            if rcpt and self._may_mail(rcpt):
                text = f"Message ID - {n.request_id} to {n.phone}: {n.state}"
                if failed and n.err:
                    text += f" (error {n.err})"
                mails.append(self._mail(rcpt, text, text + "\n"))
                self.counters.status_mailed += 1
        return NoticeOutcome(n.id, tuple(calls), tuple(mails))

    # -- incoming SMS ----------------------------------------------------------------------

    async def _mo(self, n: Notice) -> NoticeOutcome:
        mo = n.mo
        if mo is None:
            return NoticeOutcome(n.id)
        body = mo_text.split_body(mo.esm_class, mo.data_coding, mo.short_message, mo.tlvs)
        partial: mo_text.Partial | None = None
        if body.concat is None:
            text: str | None = mo_text.decode_text(body.body, body.data_coding)
        else:
            since = n.at - self.rules.mo.concat_window
            stored = await self.spool.mo_from(mo.source_addr, since)
            siblings = []
            for mo_id, _, m in stored:
                part = mo_text.split_body(m.esm_class, m.data_coding, m.short_message, m.tlvs)
                if mo_text.same_message(body, part):
                    siblings.append((mo_id, part))
            # The part stored last decides: it completes the message, or (a part missing)
            # waits until mo.concat_timeout after it arrived and then forwards what came, as
            # Kannel does after sms-combine-concatenated-mo-timeout. An older part's notice
            # is dropped once a newer part came. A part repeated by the SMSC after the message
            # was complete (same seq as an earlier part) is ignored.
            if any(i > n.mo_id for i, _ in siblings):
                return NoticeOutcome(n.id)
            earlier = [p for i, p in siblings if i < n.mo_id]
            repeated = any(p.concat and p.concat.seq == body.concat.seq for p in earlier)
            if repeated and mo_text.reassemble(earlier) is not None:
                return NoticeOutcome(n.id)
            parts = [p for _, p in siblings]
            text = mo_text.reassemble(parts)
            if text is None:
                due = n.at + self.rules.mo.concat_timeout
                if self.clock() < due:
                    return NoticeOutcome(n.id, defer_until=due)  # stored; looked at again then
                partial = mo_text.reassemble_partial(parts)
                text = partial.text if partial is not None else None
                self.counters.mo_incomplete += 1
        if text is None:
            return NoticeOutcome(n.id)
        if partial is None:
            self.counters.mo += 1
        # The sender as the SMSC wrote it may be national (89161234567) where we sent to
        # +79161234567: each reading of it is tried against what was sent.
        regions = sorted({a.default_region for a in self.rules.accounts.values()})
        candidates = mo_text.sender_candidates(mo.source_addr, regions)
        phone, sent = mo_text.likeliest_sender(candidates), None
        for candidate in candidates:
            sent = await self.spool.last_sent_to(candidate, n.at - self.rules.mo.reply_window)
            if sent is not None:
                phone = candidate
                break
        acc = self._account_for_number(mo.destination_addr)
        if acc is None and sent is not None:
            acc = self.rules.accounts.get(sent.login.lower())
        calls: list[NewCallback] = []
        if acc is not None and acc.callback_url and self.rules.callbacks.enabled:
            fields = cb.mo_fields(
                mo_id=n.mo_id,
                phone=phone,
                text=text,
                to=mo.destination_addr,
                at=n.at,
                sms_id=sent.request_id if sent else "",
            )
            calls.append(self._callback(acc.callback_url, fields, f"mo/{phone}", mo=True))
        rcpt = None
        if sent is not None:
            rcpt = reply_address(sent.mail_from, "", "")
            if rcpt is not None and not self._may_mail(rcpt):
                rcpt = None
        if rcpt is None and acc is not None and acc.mo_email and self._may_mail(acc.mo_email):
            rcpt = acc.mo_email
            sent = sent if sent is not None and acc.login.lower() == sent.login.lower() else None
        mails: list[NewMail] = []
        if rcpt is not None:
            body_text = mo_text.mo_mail_text(
                phone=phone,
                to=mo.destination_addr,
                text=text,
                received=n.at,
                sent=_sent_sms(sent) if sent else None,
                partial=partial,
            )
            subject = f"SMS from {phone}" + (" (incomplete)" if partial is not None else "")
            mails.append(self._mail(rcpt, subject, body_text))
            self.counters.mo_mailed += 1
        log.info("mo id=%d from=%s mailed=%s callbacks=%d", n.mo_id, phone, bool(mails), len(calls))
        return NoticeOutcome(n.id, tuple(calls), tuple(mails))

    def _account_for_number(self, number: str) -> AccountConfig | None:
        """The account one of whose numeric sender ids is the number the SMS was sent to."""
        digits = number.lstrip("+")
        if not digits.isdigit():
            return None
        for acc in self.rules.accounts.values():
            if any(s.lstrip("+") == digits for s in acc.senders):
                return acc
        return None

    # -- rendering -------------------------------------------------------------------------

    def _callback(
        self, url: str, fields: list[tuple[str, str]], stream: str, *, mo: bool
    ) -> NewCallback:
        call = cb.render(cb.parse_callback_url(url), fields, mo=mo)
        self.counters.callbacks_queued += 1
        return NewCallback(
            stream=stream,
            url=call.url,
            body=call.body,
            content_type=call.content_type,
            expires_at=self.clock() + self.rules.callbacks.validity,
        )

    def _may_mail(self, rcpt: str) -> bool:
        return self.rules.mails_enabled and mo_text.may_mail(
            rcpt, own_domains=self.rules.domains, sender=self.rules.sender
        )

    def _mail(self, rcpt: str, subject: str, text: str) -> NewMail:
        now = self.clock()
        data = mo_text.render_notice(
            text,
            subject=subject,
            to=rcpt,
            sender=self.rules.sender,
            message_id=email.utils.make_msgid(domain=self.rules.hostname),
            now=now,
        )
        return NewMail(self.rules.sender, rcpt, data, now + self.rules.mail_validity)


def _sent_sms(sent: SentMessage) -> mo_text.SentSms:
    """The text the relay sent, decoded back from its spooled submit_sm parts."""
    parts = [
        mo_text.split_body(s.esm_class, s.data_coding, s.short_message, dict(s.tlvs))
        for s in sent.submits
    ]
    text = mo_text.reassemble(parts)
    if text is None:
        text = "".join(mo_text.decode_text(p.body, p.data_coding) for p in parts)
    return mo_text.SentSms(
        sent.request_id, sent.login, sent.mail_from, sent.phone, sent.created, text
    )
