"""Outbound mail (replies, later status and MO mails): spool → smarthost, retried (SPEC §6)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from relay.spool import Spool
from relay.spool.model import Mail
from relay.wakeup import Wakeup
from relay.worker import backoff

log = logging.getLogger("relay.mailer")

_BATCH = 20


@dataclass
class MailCounters:
    sent: int = 0
    failed: int = 0
    retried: int = 0


class ReplyMailer:
    """Sends spooled mails through the configured smarthost with aiosmtplib."""

    def __init__(
        self,
        spool: Spool,
        *,
        smarthost: tuple[str, int],
        timeout: float,
        retry_min: float,
        retry_max: float,
        clock: Callable[[], float] = time.time,
        counters: MailCounters | None = None,
    ) -> None:
        self.spool = spool
        self.host, self.port = smarthost
        self.timeout = timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.clock = clock
        self.counters = counters or MailCounters()
        self._wakeup = Wakeup()

    def wake(self) -> None:
        self._wakeup.wake()

    async def stop(self) -> None:
        self._wakeup.stop()

    async def run(self) -> None:
        while not self._wakeup.stopping:
            mails = await self.spool.claim_mails(_BATCH, self.clock())
            if not mails:
                await self._wakeup.nap(await self.spool.next_mail_due(), self.clock(), 5.0)
                continue
            await asyncio.gather(*(self._send(m) for m in mails))

    async def _send(self, mail: Mail) -> None:
        try:
            await aiosmtplib.send(
                mail.data,
                sender=mail.mail_from,
                recipients=[mail.rcpt],
                hostname=self.host,
                port=self.port,
                timeout=self.timeout,
                start_tls=False,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await self._permanent_or_retry(mail, exc.recipients[0].code, str(exc))
        except aiosmtplib.SMTPResponseException as exc:
            await self._permanent_or_retry(mail, exc.code, str(exc))
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._retry(mail, f"{type(exc).__name__}: {exc}")
        else:
            await self.spool.mark_mail_sent(mail.id, self.clock())
            self.counters.sent += 1
            log.info("mail sent id=%d to=%s", mail.id, mail.rcpt)

    async def _permanent_or_retry(self, mail: Mail, code: int, error: str) -> None:
        if 500 <= code < 600:
            await self.spool.mark_mail_failed(mail.id, error, self.clock())
            self.counters.failed += 1
            log.warning("mail refused id=%d to=%s: %s", mail.id, mail.rcpt, error)
        else:
            await self._retry(mail, error)

    async def _retry(self, mail: Mail, error: str) -> None:
        now = self.clock()
        delay = backoff(mail.attempts, self.retry_min, self.retry_max)
        if now + delay >= mail.expires_at:
            await self.spool.mark_mail_failed(mail.id, f"expired: {error}", now)
            self.counters.failed += 1
            return
        self.counters.retried += 1
        await self.spool.mark_mail_retry(mail.id, now + delay, error)
        log.info("mail retry id=%d in %.1fs: %s", mail.id, delay, error)
