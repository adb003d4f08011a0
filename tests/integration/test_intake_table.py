"""SPEC §4 rows and §5 codes through the real daemon: SMS bytes at the SMPP server, reply codes.

One daemon serves the whole table (module scope); each case uses its own envelope sender and
its own destination number, so replies and SMS are matched to their case exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from relay.smpp.simulator import SmscSimulator
from tests.integration.harness import (
    RelayProcess,
    ReplySink,
    command_mail,
    free_port,
    send_mail,
    write_config,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PSW = "table-pass"
_numbers = itertools.count(100)


@dataclass
class Daemon:
    relay: RelayProcess
    smsc: SmscSimulator
    sink: ReplySink
    port: int


def config(
    tmp: Path, smtp_port: int, smpp_port: int, sink_port: int, workers: int = 0, **limits: object
) -> Path:
    return write_config(
        tmp / "relay.toml",
        {
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "domains": ["sms.test"],
                "workers": workers,
            },
            "smpp": {"host": "127.0.0.1", "port": smpp_port, "reconnect_min": 0.1},
            "spool": {"url": f"sqlite:///{tmp / 'spool.db'}", "retry_min": 0.2, "retry_max": 1},
            "replies": {"smarthost": f"127.0.0.1:{sink_port}", "sender": "relay@sms.test"},
            "metrics": {"enabled": False},
            "limits": {
                "deny_patterns": ["casino"],
                "stop_list": ["+79160000000"],
                "ip_fail_count": 1000,
                **limits,
            },
        },
        [
            {
                "login": "alex",
                "password": PSW,
                "api_key": "alex-api-key",
                "senders": ["Alex", "79001112233"],
                "default_region": "RU",
                "tz": 0,
                "groups": {"1": ["+79165550001", "+79165550002"]},
            },
            {"login": "poor", "password": PSW, "senders": ["Poor"], "balance": 1},
            {"login": "ru", "password": PSW, "senders": ["Ru"], "allowed_prefixes": ["+7"]},
        ],
    )


# The whole table runs against the daemon alone and with its SMTP front in two worker
# processes (smtp.workers = 2; the daemon then does no SMTP itself): the answers must not
# depend on where the session runs.
@pytest_asyncio.fixture(
    loop_scope="module", scope="module", params=[0, 2], ids=["in-process", "2-workers"]
)
async def daemon(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Daemon]:
    tmp = tmp_path_factory.mktemp("table")
    smsc = SmscSimulator(host="127.0.0.1", port=0)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    port = free_port()
    cfg = config(tmp, port, smsc.port, sink.port, workers=request.param)
    relay = RelayProcess(cfg, tmp / "relay.log")
    await asyncio.to_thread(relay.start, port)
    yield Daemon(relay, smsc, sink, port)
    await asyncio.to_thread(relay.stop)
    await smsc.stop()
    await sink.stop()


def fresh_number() -> str:
    return f"7916{next(_numbers):07d}"


async def request(d: Daemon, body: str, *, charset: str | None = "utf-8") -> str:
    """Send one command mail from a unique sender; return that sender's address."""
    sender = f"case{next(_numbers)}@example.org"
    data = command_mail(body, charset=charset, sender=sender)
    await asyncio.to_thread(send_mail, d.port, sender, ["send@sms.test"], data)
    return sender


async def reply_for(d: Daemon, sender: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in d.sink.mails:
            if m.rcpt_tos == [sender]:
                return m.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"no reply to {sender}")


async def sms_to(d: Daemon, number: str, count: int = 1, timeout: float = 10) -> list[object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [s for s in d.smsc.received if s.destination_addr == number]
        if len(got) >= count:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"no SMS to {number}")


# -- §4 rows and §5 codes that end in a refusal: the reply's exact text ---------------------------

REFUSALS = [
    # (case, command template with {n} = destination, expected reply; {id} when the id is named)
    ("login unknown (2)", "nobody:{psw}:::,,,1:{n}:hi", "ERROR = 2 (invalid login or password)"),
    ("password wrong (2)", "alex:nope:::,,,1:{n}:hi", "ERROR = 2 (invalid login or password)"),
    ("id malformed (1)", "alex:{psw}:bad id!:::{n}:hi", "ERROR = 1 (parameters error)"),
    ("time malformed (5)", "alex:{psw}::3213991299::{n}:hi", "ERROR = 5 (invalid date format)"),
    ("tz malformed (5)", "alex:{psw}::+5,zz::{n}:hi", "ERROR = 5 (invalid date format)"),
    ("translit out of range (1)", "alex:{psw}:::7:{n}:hi", "ERROR = 1 (parameters error)"),
    ("format out of range (1)", "alex:{psw}:::,13:{n}:hi", "ERROR = 1 (parameters error)"),
    (
        "sender malformed (1)",
        "alex:{psw}:::,,Way Too Long Name:{n}:hi",
        "ERROR = 1 (parameters error)",
    ),
    (
        "sender not registered (6)",
        "alex:{psw}:61::,,Bob:{n}:hi",
        "ERROR = 6 (message is prohibited), ID - 61",
    ),
    ("test out of range (1)", "alex:{psw}:::,,,5:{n}:hi", "ERROR = 1 (parameters error)"),
    (
        "phone impossible (7)",
        "alex:{psw}:71:::12345:hi",
        "ERROR = 7 (invalid phone number format), ID - 71",
    ),
    (
        "group unknown (7)",
        "alex:{psw}:72:::G9:hi",
        "ERROR = 7 (invalid phone number format), ID - 72",
    ),
    ("mes empty (1)", "alex:{psw}::::{n}:", "ERROR = 1 (parameters error)"),
    ("mes over 1000 (1)", "alex:{psw}::::{n}:" + "x" * 1001, "ERROR = 1 (parameters error)"),
    ("grammar broken (1)", "alex {psw} {n} hi", "ERROR = 1 (parameters error)"),
    (
        "deny pattern (6)",
        "alex:{psw}:81:::{n}:win at the casino",
        "ERROR = 6 (message is prohibited), ID - 81",
    ),
    (
        "stop list (8)",
        "alex:{psw}:82:::79160000000:hi",
        "ERROR = 8 (message cannot be delivered to the number), ID - 82",
    ),
    (
        "outside allowed prefixes (8)",
        "ru:{psw}:83:::+447700900123:hi",
        "ERROR = 8 (message cannot be delivered to the number), ID - 83",
    ),
    (
        "format not carried (8)",
        "alex:{psw}:84::,7:{n}:__MMS__: pic",
        "ERROR = 8 (message cannot be delivered to the number), ID - 84",
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), REFUSALS, ids=[c[0] for c in REFUSALS])
async def test_refusal_reply(daemon: Daemon, case: str, body: str, expected: str) -> None:
    n = fresh_number()
    sender = await request(daemon, body.format(psw=PSW, n=n))
    assert await reply_for(daemon, sender) == expected
    assert [s for s in daemon.smsc.received if s.destination_addr == n] == []


# -- §4 rows that end in an SMS: the bytes at the SMPP server -------------------------------------


async def test_api_key_instead_of_password(daemon: Daemon) -> None:
    n = fresh_number()
    sender = await request(daemon, f"alex:alex-api-key:5001::,,,1:{n}:by key")
    assert await reply_for(daemon, sender) == "OK - 1 SMS, ID - 5001"
    [sms] = await sms_to(daemon, n)
    assert sms.short_message == b"by key"  # type: ignore[attr-defined]


async def test_phone_without_plus_is_normalised_for_region(daemon: Daemon) -> None:
    n = fresh_number()
    await request(daemon, f"alex:{PSW}::::8{n[1:]}:national")
    [sms] = await sms_to(daemon, n)
    assert sms.destination_addr == n  # type: ignore[attr-defined]


async def test_group_expands_and_duplicates_sent_once(daemon: Daemon) -> None:
    sender = await request(daemon, f"alex:{PSW}:5002::,,,1:G1,+79165550001:to the group")
    assert await reply_for(daemon, sender) == "OK - 2 SMS, ID - 5002"
    assert len(await sms_to(daemon, "79165550001")) == 1
    assert len(await sms_to(daemon, "79165550002")) == 1


async def test_translit_1_sends_gsm_latin(daemon: Daemon) -> None:
    n = fresh_number()
    await request(daemon, f"alex:{PSW}:::1:{n}:Привет")
    [sms] = await sms_to(daemon, n)
    assert sms.data_coding == 0x00  # type: ignore[attr-defined]
    assert sms.short_message == b"Privet"  # type: ignore[attr-defined]


async def test_flash_format_1(daemon: Daemon) -> None:
    n = fresh_number()
    await request(daemon, f"alex:{PSW}:::,1:{n}:flash")
    [sms] = await sms_to(daemon, n)
    assert sms.data_coding == 0x10 and sms.short_message == b"flash"  # type: ignore[attr-defined]


async def test_numeric_sender_and_default_sender(daemon: Daemon) -> None:
    n1, n2 = fresh_number(), fresh_number()
    await request(daemon, f"alex:{PSW}:::,,79001112233:{n1}:numeric")
    await request(daemon, f"alex:{PSW}::::{n2}:default")
    [a] = await sms_to(daemon, n1)
    [b] = await sms_to(daemon, n2)
    assert (a.source_addr, a.source_addr_ton, a.source_addr_npi) == ("79001112233", 1, 1)  # type: ignore[attr-defined]
    assert (b.source_addr, b.source_addr_ton) == ("Alex", 5)  # type: ignore[attr-defined]


async def test_test_0_no_reply_on_success(daemon: Daemon) -> None:
    n = fresh_number()
    sender = await request(daemon, f"alex:{PSW}::::{n}:quiet")
    await sms_to(daemon, n)
    await asyncio.sleep(0.5)
    assert not [m for m in daemon.sink.mails if m.rcpt_tos == [sender]]


async def test_comment_is_never_sent(daemon: Daemon) -> None:
    n = fresh_number()
    await request(daemon, f"alex:{PSW}::::{n}:visible\n~~~\nsecret note")
    [sms] = await sms_to(daemon, n)
    assert sms.short_message == b"visible"  # type: ignore[attr-defined]


async def test_scheduled_time_waits_then_goes(daemon: Daemon) -> None:
    # `0<unix ts>` two seconds ahead: not sent before, sent within ~1 s after (SPEC §4, §8).
    n = fresh_number()
    due = int(time.time()) + 2
    sender = await request(daemon, f"alex:{PSW}:5003:0{due}:,,,1:{n}:later")
    assert await reply_for(daemon, sender) == "OK - 1 SMS, ID - 5003"
    assert [s for s in daemon.smsc.received if s.destination_addr == n] == []
    await sms_to(daemon, n, timeout=5)
    assert time.time() >= due


async def test_list_mode_one_id_for_all(daemon: Daemon) -> None:
    n1, n2 = fresh_number(), fresh_number()
    sender = await request(daemon, f"alex:{PSW}:5004::,,,1::\n{n1}:first\n{n2};second\\nline")
    assert await reply_for(daemon, sender) == "OK - 2 SMS, ID - 5004"
    [a] = await sms_to(daemon, n1)
    [b] = await sms_to(daemon, n2)
    assert a.short_message == b"first" and b.short_message == b"second\nline"  # type: ignore[attr-defined]


async def test_undeclared_windows_1251(daemon: Daemon) -> None:
    n = fresh_number()
    await request(daemon, f"alex:{PSW}::::{n}:Сервер недоступен", charset=None)
    # command_mail(charset=None) encodes koi8-r; windows-1251 is sent by hand here.
    sender = f"case{next(_numbers)}@example.org"
    n2 = fresh_number()
    raw = (
        f"From: {sender}\r\nSubject: x\r\nContent-Type: text/plain\r\n\r\n".encode()
        + f"alex:{PSW}::::{n2}:Сервер недоступен, проверьте питание".encode("windows-1251")
    )
    await asyncio.to_thread(send_mail, daemon.port, sender, ["send@sms.test"], raw)
    [a] = await sms_to(daemon, n)
    [b] = await sms_to(daemon, n2)
    assert a.short_message.decode("utf-16-be") == "Сервер недоступен"  # type: ignore[attr-defined]
    assert b.short_message.decode("utf-16-be") == "Сервер недоступен, проверьте питание"  # type: ignore[attr-defined]


# -- §5 state codes: duplicate (9), balance (3) ---------------------------------------------------


async def test_duplicate_within_window_is_9(daemon: Daemon) -> None:
    n = fresh_number()
    body = f"alex:{PSW}:::,,,1:{n}:same text"
    first = await request(daemon, body)
    second = await request(daemon, body)
    assert (await reply_for(daemon, first)).startswith("OK - 1 SMS")
    assert await reply_for(daemon, second) == "ERROR = 9 (duplicate request)"
    await asyncio.sleep(0.3)
    assert len(await sms_to(daemon, n)) == 1


async def test_balance_exhausted_is_3(daemon: Daemon) -> None:
    n1, n2 = fresh_number(), fresh_number()
    ok = await request(daemon, f"poor:{PSW}:3001::,,,1:{n1}:one")
    assert await reply_for(daemon, ok) == "OK - 1 SMS, ID - 3001"
    refused = await request(daemon, f"poor:{PSW}:3002::,,,1:{n2}:two")
    assert await reply_for(daemon, refused) == "ERROR = 3 (insufficient funds), ID - 3002"
    assert [s for s in daemon.smsc.received if s.destination_addr == n2] == []


# -- §5 IP block (4): its own daemon, with a low threshold ----------------------------------------


@pytest.mark.asyncio(loop_scope="function")
@pytest.mark.parametrize("workers", [0, 2])
async def test_ip_blocked_after_repeated_failures_is_4(tmp_path: Path, workers: int) -> None:
    smsc = SmscSimulator(host="127.0.0.1", port=0)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    port = free_port()
    cfg = config(tmp_path, port, smsc.port, sink.port, workers=workers, ip_fail_count=2)
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, port)
    d = Daemon(relay, smsc, sink, port)
    try:
        for _ in range(3):  # more than ip_fail_count failures
            s = await request(d, "alex:wrong::::79161234567:x")
            assert await reply_for(d, s) == "ERROR = 2 (invalid login or password)"
        blocked = await request(d, f"alex:{PSW}::::79161234567:right password, blocked IP")
        assert await reply_for(d, blocked) == "ERROR = 4 (IP address temporarily blocked)"
        await asyncio.sleep(0.3)
        assert smsc.received == []
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()
