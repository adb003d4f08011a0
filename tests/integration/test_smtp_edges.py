"""SMTP-level answers of the real front on a real socket: size limit, spool failure, RCPT rules."""

from __future__ import annotations

import asyncio
import smtplib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config import AccountConfig
from relay.errors import SpoolError
from relay.pipeline import IntakeRules, Outcome
from relay.sms.model import SmsProfile
from relay.smtp_front import CommandMailHandler, smtp_factory
from relay.spool.model import NewRequest, StoreResult
from relay.spool.sqlite import SqliteSpool


class FailingSpool:
    """A spool whose disk is gone: every store fails (a fake of the interface, not a mock)."""

    def __init__(self) -> None:
        self.attempts = 0

    async def store(self, request: NewRequest) -> StoreResult:
        self.attempts += 1
        raise SpoolError("disk full")

    async def store_all(self, requests: Sequence[NewRequest]) -> list[StoreResult]:
        return [await self.store(r) for r in requests]

    async def ip_blocked(self, client_ip: str, now: float) -> bool:
        return False


class MemorySpool:
    def __init__(self) -> None:
        self.stored: list[NewRequest] = []

    async def store(self, request: NewRequest) -> StoreResult:
        self.stored.append(request)
        return StoreResult(stored=True)

    async def store_all(self, requests: Sequence[NewRequest]) -> list[StoreResult]:
        return [await self.store(r) for r in requests]

    async def ip_blocked(self, client_ip: str, now: float) -> bool:
        return False


def _rules() -> IntakeRules:
    acc = AccountConfig(login="alex", password="psw", senders=["Alex"])
    return IntakeRules(
        accounts={"alex": acc},
        profile=SmsProfile(),
        registered_delivery=True,
        validity=86400,
        reply_sender="relay@sms.test",
        hostname="sms.test",
    )


@dataclass
class Front:
    port: int
    spool: object
    outcomes: list[Outcome]
    handler: CommandMailHandler


async def _front(
    spool: object, *, reject_invalid: bool = False, size: int = 2048
) -> tuple[Front, Callable[[], None]]:
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []
    handler = CommandMailHandler(
        domains=["sms.test"],
        rules=_rules(),
        spool=spool,  # type: ignore[arg-type]
        reject_invalid=reject_invalid,
        max_recipients=3,
        on_stored=outcomes.extend,
    )
    server = await loop.create_server(
        smtp_factory(
            handler,
            hostname="relay.test",
            max_message_size=size,
            timeout=10,
            tls_context=None,
            loop=loop,
        ),
        "127.0.0.1",
        0,
    )
    return Front(server.sockets[0].getsockname()[1], spool, outcomes, handler), server.close


@pytest.fixture
async def memory_front() -> AsyncIterator[Front]:
    front, close = await _front(MemorySpool())
    yield front
    close()


def _data(port: int, body: bytes, rcpt: str = "send@sms.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("client.test")
        c.mail("ops@example.org")
        code, _ = c.rcpt(rcpt)
        assert code == 250
        return c.data(body)


async def test_spool_failure_answers_451_never_250() -> None:
    spool = FailingSpool()
    front, close = await _front(spool)
    try:
        code, text = await asyncio.to_thread(
            _data, front.port, b"Subject: x\r\n\r\nalex:psw::::79161234567:hi\r\n"
        )
    finally:
        close()
    assert code == 451
    assert text.startswith(b"4.3.0")
    assert spool.attempts == 1
    assert b"disk full" not in text  # internals are not leaked to the client


async def test_oversized_mail_gets_552_5_3_4(memory_front: Front) -> None:
    body = b"Subject: x\r\n\r\nalex:psw::::79161234567:" + b"x" * 4000 + b"\r\n"
    code, text = await asyncio.to_thread(_data, memory_front.port, body)
    assert (code, text[:5]) == (552, b"5.3.4")
    assert memory_front.spool.stored == []  # type: ignore[attr-defined]


async def test_one_endless_line_is_552_too(memory_front: Front) -> None:
    # A single line longer than the size limit (and than aiosmtpd's reader limit): still 552.
    body = b"Subject: x\r\n\r\nalex:psw::::79161234567:" + b"x" * 200_000 + b"\r\n"
    code, text = await asyncio.to_thread(_data, memory_front.port, body)
    assert (code, text[:5]) == (552, b"5.3.4")
    code, _ = await asyncio.to_thread(
        _data, memory_front.port, b"\r\nalex:psw::::79161234567:next one fine\r\n"
    )
    assert code == 250


async def test_250_only_after_store_and_names_the_id(memory_front: Front) -> None:
    code, text = await asyncio.to_thread(
        _data, memory_front.port, b"Subject: x\r\n\r\nalex:psw:555:::79161234567:hi\r\n"
    )
    assert code == 250 and text.endswith(b"555")
    [req] = memory_front.spool.stored  # type: ignore[attr-defined]
    assert req.request_id == "555" and len(req.jobs) == 1


@pytest.mark.parametrize(
    "rcpt", ["alex@sms.test", "send@other.test", "postmaster@sms.test", "send@sms.test.evil.org"]
)
async def test_rcpt_outside_send_at_domains_is_550_5_1_1(memory_front: Front, rcpt: str) -> None:
    def go() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", memory_front.port, timeout=10) as c:
            c.ehlo("client.test")
            c.mail("ops@example.org")
            return c.rcpt(rcpt)

    code, text = await asyncio.to_thread(go)
    assert (code, text[:5]) == (550, b"5.1.1")


async def test_send_at_is_case_insensitive(memory_front: Front) -> None:
    code, _ = await asyncio.to_thread(
        _data, memory_front.port, b"\r\nalex:psw::::79161234567:hi\r\n", "SEND@SMS.TEST"
    )
    assert code == 250


async def test_too_many_recipients_452(memory_front: Front) -> None:
    def go() -> list[int]:
        with smtplib.SMTP("127.0.0.1", memory_front.port, timeout=10) as c:
            c.helo("zabbix.test")  # HELO, not EHLO, as Zabbix does
            c.mail("ops@example.org")
            return [c.rcpt("send@sms.test")[0] for _ in range(4)]

    assert await asyncio.to_thread(go) == [250, 250, 250, 452]


async def test_reject_invalid_answers_550_5_7_1_with_error_code() -> None:
    spool = MemorySpool()
    front, close = await _front(spool, reject_invalid=True)
    try:
        code, text = await asyncio.to_thread(
            _data, front.port, b"Subject: x\r\n\r\nalex:bad::::79161234567:hi\r\n"
        )
    finally:
        close()
    assert code == 550
    assert text == b"5.7.1 ERROR = 2 (invalid login or password)"
    [req] = spool.stored
    assert req.error == 2 and req.mails == ()  # recorded, but no reply mail


async def test_client_hanging_up_mid_session_does_not_break_server(memory_front: Front) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", memory_front.port)
    await reader.readline()
    writer.write(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<send@sms.test>\r\nDATA\r\npartial")
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.1)
    code, _ = await asyncio.to_thread(
        _data, memory_front.port, b"\r\nalex:psw::::79161234567:after\r\n"
    )
    assert code == 250


_OK = b"alex:psw::::79161234567:disk full"


@pytest.mark.parametrize(
    ("text", "before", "expected"),
    [
        # accepted: its request and job
        (_OK, False, ([("alex", 0)], 1, 0)),
        # refused by the pipeline (password): the refusal and its ERROR reply
        (b"alex:wrong::::79161234567:disk full", False, ([("alex", 2)], 0, 1)),
        # refused by the spool's duplicate check (9) in the commit itself: then stored
        (_OK, True, ([("alex", 0), ("alex", 9)], 1, 1)),
    ],
)
async def test_a_client_that_hangs_up_before_the_250_still_has_its_mail_stored(
    tmp_path: Path, text: bytes, before: bool, expected: tuple[list[tuple[str, int]], int, int]
) -> None:
    """The whole mail came, the client left before the answer: aiosmtpd cancels the handler,
    but the commit goes on, and so does the storing of a refusal (with its reply mail)."""
    spool = SqliteSpool(tmp_path / "spool.db")
    await spool.open()
    front, close = await _front(spool)
    if before:  # the same text once, answered: the next one is a duplicate
        code, _ = await asyncio.to_thread(_data, front.port, b"Subject: x\r\n\r\n" + text)
        assert code == 250
        front.outcomes.clear()
    gate = threading.Event()
    held = asyncio.ensure_future(spool._do(lambda c: gate.wait(10)))  # the writer is busy
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        await reader.readline()
        writer.write(b"HELO x\r\nMAIL FROM:<ops@example.org>\r\nRCPT TO:<send@sms.test>\r\n")
        writer.write(b"DATA\r\n")
        for _ in range(4):
            await reader.readline()  # 250 HELO, 250 MAIL, 250 RCPT, 354
        writer.write(b"Subject: x\r\n\r\n" + text + b"\r\n.\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler waits for the commit
        writer.close()
        await asyncio.sleep(0.2)  # the server sees the hang-up and cancels the handler
        gate.set()
        await held
        await asyncio.wait_for(front_drained(front), 5)
    finally:
        gate.set()
        close()
        await spool.close()
    assert front.outcomes == []  # the handler did not get to its answer: it was cancelled
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        rows = conn.execute("SELECT login, error FROM requests ORDER BY pk").fetchall()
        replies = conn.execute("SELECT COUNT(*) FROM mails").fetchone()[0]
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    assert (rows, jobs, replies) == expected


async def front_drained(front: Front) -> None:
    """Until the handler's commits and the rest of their storing are done."""
    handler = front.handler
    await handler.drain()
    while handler._pending:
        await asyncio.sleep(0.01)
        await handler.drain()
