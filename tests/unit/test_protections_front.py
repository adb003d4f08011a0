"""SPEC §5 protections through the SMTP front's DATA handler, with a real SQLite spool: the reply
(or `550 5.7.1`) names the code the spool refused with; a blocked IP is refused before parsing."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope, Session

from relay.config import AccountConfig, LimitsConfig
from relay.passwords import PasswordChecker
from relay.pipeline import IntakeRules
from relay.sms.model import SmsProfile
from relay.smtp_front import CommandMailHandler
from relay.spool.sqlite import SqliteSpool


class CountingChecker(PasswordChecker):
    """Counts password checks: a blocked IP must not cost one."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def verify(self, stored: str, given: str) -> bool:
        self.calls += 1
        return super().verify(stored, given)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[SqliteSpool]:
    s = SqliteSpool(tmp_path / "s.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def handler(
    spool: SqliteSpool,
    limits: LimitsConfig | None = None,
    *,
    reject_invalid: bool = False,
    **acc: object,
) -> CommandMailHandler:
    account = AccountConfig(login="alex", password="psw", senders=["Alex"], **acc)  # type: ignore[arg-type]
    rules = IntakeRules(
        accounts={"alex": account},
        profile=SmsProfile(),
        registered_delivery=True,
        validity=86400,
        reply_sender="relay@sms.test",
        hostname="sms.test",
        limits=limits or LimitsConfig(),
    )
    h = CommandMailHandler(
        domains=["sms.test"],
        rules=rules,
        spool=spool,
        reject_invalid=reject_invalid,
        max_recipients=10,
        on_stored=lambda outcomes: None,
    )
    h.checker = CountingChecker()
    return h


async def send(h: CommandMailHandler, body: str, *, ip: str = "192.0.2.1") -> str:
    session = Session(asyncio.get_running_loop())
    session.peer = (ip, 40000)
    env = Envelope()
    env.mail_from = "ops@example.org"
    env.rcpt_tos = ["send@sms.test"]
    env.original_content = (
        "From: ops@example.org\r\nMessage-ID: <m@example.org>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
    return await h.handle_DATA(None, session, env)  # type: ignore[arg-type]


async def replies(spool: SqliteSpool) -> list[str]:
    mails = await spool.claim_mails(1000, now=time.time() + 60)
    return [
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]) for m in mails
    ]


async def test_identical_request_gets_error_9(spool: SqliteSpool) -> None:
    h = handler(spool)
    assert (await send(h, "alex:psw::::79990000001:disk full")).startswith("250 ")
    assert (await send(h, "alex:psw::::79990000001:disk full")).startswith("250 ")
    assert await replies(spool) == ["ERROR = 9 (duplicate request)"]
    assert (await spool.counts())["queued"] == 1
    assert h.counters.accepted == 1 and h.counters.refused == {9: 1}


async def test_reject_invalid_answers_the_spool_code(spool: SqliteSpool) -> None:
    h = handler(spool, reject_invalid=True)
    assert (await send(h, "alex:psw::::79990000001:disk full")).startswith("250 ")
    answer = await send(h, "alex:psw::::79990000001:disk full")
    assert answer == "550 5.7.1 ERROR = 9 (duplicate request)"
    assert await replies(spool) == []  # refused in the DATA answer: no reply mail


async def test_balance_refusal_names_the_id(spool: SqliteSpool) -> None:
    h = handler(spool, balance=2)
    for n in (1, 2):
        assert (await send(h, f"alex:psw:{n}:::79990000001:alert {n}")).startswith("250 ")
    await send(h, "alex:psw:3:::79990000001:alert 3")
    assert await replies(spool) == ["ERROR = 3 (insufficient funds), ID - 3"]
    assert await spool.balance("alex") == 0


async def test_blocked_ip_is_refused_before_parsing(spool: SqliteSpool) -> None:
    h = handler(spool, LimitsConfig(ip_fail_count=2))
    checker = h.checker
    assert isinstance(checker, CountingChecker)
    for _ in range(3):  # more than 2 failures
        await send(h, "alex:wrong::::79990000001:hi")
    assert len(await replies(spool)) == 3  # three ERROR 2 replies
    calls = checker.calls
    for _ in range(3):  # even a valid request, and only one ERROR 4 reply
        assert (await send(h, "alex:psw::::79990000001:hi")).startswith("250 ")
    assert await replies(spool) == ["ERROR = 4 (IP address temporarily blocked)"]
    assert checker.calls == calls  # no password was checked for a blocked IP
    assert h.counters.refused == {2: 3, 4: 3}
    assert (await spool.counts())["queued"] == 0
    # another client is not affected
    assert (await send(h, "alex:psw::::79990000001:hi", ip="192.0.2.2")).startswith("250 ")
    assert (await spool.counts())["queued"] == 1
    h.reject_invalid = True
    answer = await send(h, "alex:psw::::79990000001:hi")
    assert answer == "550 5.7.1 ERROR = 4 (IP address temporarily blocked)"


async def test_exempt_network_is_never_blocked(spool: SqliteSpool) -> None:
    h = handler(spool, LimitsConfig(ip_fail_count=1, ip_block_exempt=["127.0.0.0/8"]))
    for _ in range(3):
        await send(h, "alex:wrong::::79990000001:hi", ip="127.0.0.1")
    assert (await send(h, "alex:psw::::79990000001:hi", ip="127.0.0.1")).startswith("250 ")
    assert (await spool.counts())["queued"] == 1
