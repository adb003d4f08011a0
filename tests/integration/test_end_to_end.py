"""The whole path on real sockets: smtplib → `sms-relay serve` (subprocess) → SMPP server → reply.

The SMPP server is the project's simulator running in the test's own event loop on 127.0.0.1,
speaking real SMPP over TCP; the reply sink is an aiosmtpd server, also in the test.
"""

from __future__ import annotations

import asyncio
import re
import signal
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from relay.smpp.simulator import SimFaults, SmscSimulator
from tests.integration.harness import (
    RelayProcess,
    ReplySink,
    command_mail,
    free_port,
    send_mail,
    write_config,
)

PASSWORD = "s3cret-pass"


@dataclass
class Stack:
    relay: RelayProcess
    smsc: SmscSimulator
    sink: ReplySink
    smtp_port: int
    config: Path


def make_config(
    tmp: Path, *, smtp_port: int, smpp_port: int, sink_port: int, **smpp: object
) -> Path:
    return write_config(
        tmp / "relay.toml",
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "domains": ["sms.test"]},
            "smpp": {
                "host": "127.0.0.1",
                "port": smpp_port,
                "system_id": "relay",
                "password": "secret",
                "enquire_link_interval": 5,
                "reconnect_min": 0.1,
                "reconnect_max": 0.5,
                **smpp,
            },
            "spool": {"url": f"sqlite:///{tmp / 'spool.db'}", "retry_min": 0.2, "retry_max": 1},
            "replies": {"smarthost": f"127.0.0.1:{sink_port}", "sender": "relay@sms.test"},
            "metrics": {"enabled": False},
        },
        [
            {
                "login": "alex",
                "password": PASSWORD,
                "senders": ["Alex", "79001112233"],
                "default_region": "RU",
            }
        ],
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    smsc = SmscSimulator(host="127.0.0.1", port=0, receipt_delay=0.05)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    smtp_port = free_port()
    cfg = make_config(tmp_path, smtp_port=smtp_port, smpp_port=smsc.port, sink_port=sink.port)
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    try:
        yield Stack(relay, smsc, sink, smtp_port, cfg)
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()


async def send(port: int, data: bytes, rcpts: list[str] | None = None) -> None:
    await asyncio.to_thread(send_mail, port, "ops@example.org", rcpts or ["send@sms.test"], data)


async def test_utf8_command_mail_becomes_submit_sm_and_ok_reply(stack: Stack) -> None:
    body = f"alex:{PASSWORD}:::,0,Alex,1:89161234567:Сервер упал: disk full"
    await send(stack.smtp_port, command_mail(body, charset="utf-8"))
    [sms] = await stack.smsc.wait_for(1, timeout=10)
    assert sms.destination_addr == "79161234567"
    assert (sms.dest_addr_ton, sms.dest_addr_npi) == (1, 1)
    assert sms.source_addr == "Alex"
    assert (sms.source_addr_ton, sms.source_addr_npi) == (5, 0)
    assert sms.data_coding == 0x08  # Cyrillic → UCS-2
    assert sms.short_message == "Сервер упал: disk full".encode("utf-16-be")
    assert sms.registered_delivery == 1
    [reply] = await stack.sink.wait_for(1)
    assert reply.rcpt_tos == ["ops@example.org"]
    assert re.fullmatch(r"OK - 1 SMS, ID - \d+", reply.text), reply.text
    msg = reply.message
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<req-1@example.org>"
    assert PASSWORD not in reply.data.decode("utf-8", "replace")


async def test_undeclared_koi8r_and_numeric_sender(stack: Stack) -> None:
    body = f"alex:{PASSWORD}:42::,0,79001112233,1:+79161234567:Привет из 1С"
    await send(stack.smtp_port, command_mail(body, charset=None))
    [sms] = await stack.smsc.wait_for(1, timeout=10)
    assert sms.short_message.decode("utf-16-be") == "Привет из 1С"
    assert sms.source_addr == "79001112233"
    assert (sms.source_addr_ton, sms.source_addr_npi) == (1, 1)
    [reply] = await stack.sink.wait_for(1)
    assert reply.text == "OK - 1 SMS, ID - 42"


async def test_latin_text_goes_gsm7(stack: Stack) -> None:
    await send(stack.smtp_port, command_mail(f"alex:{PASSWORD}::::79161234567:disk {{full}} @ 90%"))
    [sms] = await stack.smsc.wait_for(1, timeout=10)
    assert sms.data_coding == 0x00
    # GSM 03.38 unpacked: '{' and '}' are escape pairs (0x1B 0x28 / 0x1B 0x29), '@' is 0x00.
    assert sms.short_message == b"disk \x1b(full\x1b) \x00 90%"
    assert sms.text == "disk {full} @ 90%"


async def test_wrong_password_gets_error_2_and_no_submit(stack: Stack) -> None:
    await send(stack.smtp_port, command_mail("alex:wrong:::,,,1:79161234567:hello"))
    [reply] = await stack.sink.wait_for(1)
    assert reply.text == "ERROR = 2 (invalid login or password)"
    assert "wrong" not in reply.data.decode()
    await asyncio.sleep(0.5)
    assert stack.smsc.received == []


async def test_unknown_recipient_refused_at_rcpt(stack: Stack) -> None:
    refused = await asyncio.to_thread(
        send_mail,
        stack.smtp_port,
        "ops@example.org",
        ["send@sms.test", "someone@elsewhere.org"],
        command_mail(f"alex:{PASSWORD}::::79161234567:x"),
    )
    assert refused["someone@elsewhere.org"][0] == 550
    await stack.smsc.wait_for(1, timeout=10)


async def test_sigterm_stops_within_5s_and_unbinds(stack: Stack) -> None:
    await send(stack.smtp_port, command_mail(f"alex:{PASSWORD}::::79161234567:before stop"))
    await stack.smsc.wait_for(1, timeout=10)
    started = time.monotonic()
    stack.relay.signal(signal.SIGTERM)
    code = await asyncio.to_thread(stack.relay.wait, 10)
    assert time.monotonic() - started < 5
    assert code == 0
    assert stack.smsc.unbinds_received >= 1


async def test_sigkill_after_250_loses_nothing(tmp_path: Path) -> None:
    smpp_port = free_port()  # nothing listens yet: the relay cannot submit before the kill
    sink = ReplySink()
    await sink.start()
    smtp_port = free_port()
    cfg = make_config(tmp_path, smtp_port=smtp_port, smpp_port=smpp_port, sink_port=sink.port)
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    smsc = SmscSimulator(host="127.0.0.1", port=smpp_port)
    try:
        for i in range(3):
            await send(smtp_port, command_mail(f"alex:{PASSWORD}::::7916123456{i}:kill test {i}"))
        relay.signal(signal.SIGKILL)
        await asyncio.to_thread(relay.wait, 5)
        await smsc.start()
        await asyncio.to_thread(relay.start, smtp_port)
        got = await smsc.wait_for(3, timeout=15)
        assert sorted(s.text for s in got) == [f"kill test {i}" for i in range(3)]
        await asyncio.sleep(0.5)
        assert len(smsc.received) == 3
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()


async def test_smsc_drops_connection_mid_stream_all_sent_exactly_once(tmp_path: Path) -> None:
    smsc = SmscSimulator(host="127.0.0.1", port=0, faults=SimFaults(drop_after=5))
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    smtp_port = free_port()
    cfg = make_config(tmp_path, smtp_port=smtp_port, smpp_port=smsc.port, sink_port=sink.port)
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    try:
        for i in range(20):
            await send(smtp_port, command_mail(f"alex:{PASSWORD}::::79161234{i:03d}:msg {i}"))
        await smsc.wait_for(20, timeout=20)
        await asyncio.sleep(0.5)
        texts = sorted(s.text for s in smsc.received)
        assert texts == sorted(f"msg {i}" for i in range(20))
        assert smsc.bind_count >= 2  # it really reconnected
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()


async def test_three_part_cyrillic_reassembles_from_pdus(stack: Stack) -> None:
    text = ("Авария на узле связи №7: питание отключено, ИБП разряжен. " * 3)[:180].rstrip()
    assert 134 < len(text) <= 201  # three UCS-2 parts of 67
    await send(stack.smtp_port, command_mail(f"alex:{PASSWORD}:::,,,1:79161234567:{text}"))
    parts = await stack.smsc.wait_for(3, timeout=10)
    assert len(parts) == 3
    udhs = [p.short_message[:6] for p in parts]
    refs = {u[3] for u in udhs}
    assert len(refs) == 1  # one concatenation reference for the message
    assert all(u[:3] == b"\x05\x00\x03" and u[4] == 3 for u in udhs)
    assert all(p.esm_class & 0x40 and p.data_coding == 0x08 for p in parts)
    assert all(len(p.short_message) <= 140 for p in parts)
    ordered = sorted(parts, key=lambda p: p.short_message[5])
    assert [p.short_message[5] for p in ordered] == [1, 2, 3]
    assert "".join(p.short_message[6:].decode("utf-16-be") for p in ordered) == text
    [reply] = await stack.sink.wait_for(1)
    assert reply.text.startswith("OK - 3 SMS, ID - ")


async def test_smsc_sim_command_as_separate_process(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.integration.harness import ROOT

    smpp_port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sim = subprocess.Popen(  # noqa: ASYNC220 - started once, before any await matters
        [sys.executable, "-m", "relay", "smsc-sim", "--port", str(smpp_port), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    sink = ReplySink()
    await sink.start()
    smtp_port = free_port()
    cfg = make_config(tmp_path, smtp_port=smtp_port, smpp_port=smpp_port, sink_port=sink.port)
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    try:
        await asyncio.to_thread(relay.start, smtp_port)
        await send(smtp_port, command_mail(f"alex:{PASSWORD}::::79161234567:via the CLI sim"))
        assert sim.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 15)
        sms = json.loads(line)
        assert sms["destination_addr"] == "79161234567"
        assert sms["text"] == "via the CLI sim"
    finally:
        await asyncio.to_thread(relay.stop)
        sim.terminate()
        sim.wait(5)
        await sink.stop()


async def test_reply_is_retried_until_the_smarthost_comes_up(tmp_path: Path) -> None:
    smsc = SmscSimulator(host="127.0.0.1", port=0)
    await smsc.start()
    sink_port = free_port()  # the smarthost is down: nothing listens here yet
    smtp_port = free_port()
    cfg = make_config(tmp_path, smtp_port=smtp_port, smpp_port=smsc.port, sink_port=sink_port)
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    sink = ReplySink()
    try:
        await asyncio.to_thread(relay.start, smtp_port)
        await send(smtp_port, command_mail(f"alex:{PASSWORD}:9:::79161234567:hello"))
        await send(smtp_port, command_mail("alex:wrong::::79161234567:hello"))
        await smsc.wait_for(1, timeout=10)
        await asyncio.sleep(1.0)  # a few failed delivery attempts (retry_min 0.2 s)
        sink.port = sink_port
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(sink, hostname="sink.test", loop=loop), "127.0.0.1", sink_port
        )
        try:
            mails = await sink.wait_for(1, timeout=15)
            await asyncio.sleep(1.5)
            assert [m.text for m in mails] == ["ERROR = 2 (invalid login or password)"]
        finally:
            server.close()
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()


def _raw_smtp(port: int, lines: list[str]) -> list[str]:
    """A raw SMTP dialogue (each line's first answer line), for addresses smtplib won't send."""
    import socket

    answers: list[str] = []
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        f = s.makefile("rb")

        def answer() -> str:
            first = f.readline().decode()
            line = first
            while line[3:4] == "-":
                line = f.readline().decode()
            return first[:3] + line[3:].rstrip()

        answers.append(answer())
        for cmd in lines:
            s.sendall(cmd.encode() + b"\r\n")
            answers.append(answer())
    return answers


async def test_postmaster_is_accepted_and_forwarded_alone(stack: Stack) -> None:
    """RFC 5321 §4.5.1: postmaster@<domain> and bare <postmaster> are accepted, any case, and
    the mail goes to `smtp.postmaster` (default: the smarthost's own postmaster)."""
    body = "Subject: bounce report\r\n\r\nyour relay bounced my mail\r\n"
    refused = await asyncio.to_thread(
        send_mail, stack.smtp_port, "admin@example.org", ["PostMaster@SMS.test"], body
    )
    assert refused == {}
    [fwd] = await stack.sink.wait_for(1)
    assert fwd.rcpt_tos == ["postmaster"]
    assert fwd.mail_from == "admin@example.org"
    assert fwd.message["Subject"] == "bounce report"
    assert fwd.message["X-SMS-Relay-Postmaster"] == "sms.test"
    assert "for <PostMaster@SMS.test>" in str(fwd.message["Received"])
    assert fwd.data.endswith(b"your relay bounced my mail\r\n")
    assert stack.smsc.received == []

    answers = await asyncio.to_thread(
        _raw_smtp,
        stack.smtp_port,
        [
            "EHLO client.test",
            "MAIL FROM:<admin@example.org>",
            "RCPT TO:<Postmaster>",
            "RCPT TO:<send@sms.test>",  # never in the same transaction as postmaster
            "DATA",
            "Subject: second\r\n\r\nhello\r\n.",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<send@sms.test>",
            "RCPT TO:<postmaster@sms.test>",
            "RSET",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<postmaster@other.test>",  # not our domain: not ours to accept
            "QUIT",
        ],
    )
    codes = [a[:3] for a in answers]
    assert codes == [
        "220", "250", "250", "250", "452", "354", "250",
        "250", "250", "452", "250", "250", "550", "221",
    ], answers  # fmt: skip
    mails = await stack.sink.wait_for(2)
    assert mails[1].rcpt_tos == ["postmaster"]
    assert mails[1].message["Subject"] == "second"


async def test_postmaster_mail_that_came_back_is_a_loop(stack: Stack) -> None:
    looped = "X-SMS-Relay-Postmaster: sms.test\r\nSubject: again\r\n\r\nround and round\r\n"
    with pytest.raises(smtplib.SMTPDataError) as err:
        await asyncio.to_thread(
            send_mail, stack.smtp_port, "a@example.org", ["postmaster@sms.test"], looped
        )
    assert err.value.smtp_code == 554
    await asyncio.sleep(0.5)
    assert stack.sink.mails == []
