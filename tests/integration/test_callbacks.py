"""Issue 8 end to end: the daemon (subprocess) → a real HTTP server on 127.0.0.1 (callbacks), and
MO SMS from the SMSC simulator → a mail to the original sender through the reply sink.

The callback receiver is a minimal HTTP/1.1 server written here on asyncio streams, so what it
records is exactly the bytes the relay sent. Expected hashes are computed here with hashlib/zlib.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from relay.smpp.simulator import SmscSimulator
from tests.integration.harness import (
    RelayProcess,
    ReplySink,
    command_mail,
    free_port,
    send_mail,
    write_config,
)

PASSWORD = "cb-s3cret-pass"
MO_CONCAT_TIMEOUT = 2.0
SECRET = "my_Secret-1"


@dataclass
class HttpHit:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpSink:
    """Records every request; answers 200 (or 500 while `failing`)."""

    hits: list[HttpHit] = field(default_factory=list)
    port: int = 0
    failing: bool = False
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path, _, query = target.partition("?")
                status = "500 Internal Server Error" if self.failing else "200 OK"
                if not self.failing:
                    self.hits.append(HttpHit(method, path, query, headers, body))
                    self._arrived.set()
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[HttpHit]:
        deadline = time.monotonic() + timeout
        while len(self.hits) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {count} callback(s), got {self.hits}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self.hits


@dataclass
class Stack:
    relay: RelayProcess
    smsc: SmscSimulator
    sink: ReplySink
    http: HttpSink
    smtp_port: int
    metrics_port: int = 0


def accounts(http_port: int) -> list[dict[str, object]]:
    base = f"http://127.0.0.1:{http_port}"
    return [
        # form, default charset windows-1251, md5, GET/POST split
        {
            "login": "form",
            "password": PASSWORD,
            "senders": ["Alert", "79005550001"],
            "callback_url": f"{base}/form!gk=g1&md5={SECRET}?pk=p%201",
            "status_mail": "failed",
        },
        {
            "login": "xml",
            "password": PASSWORD,
            "senders": ["Alert"],
            "callback_url": f"{base}/xml?fmt=2&sha1={SECRET}",
            "status_mail": "all",
        },
        {
            "login": "json",
            "password": PASSWORD,
            "senders": ["Alert", "79005550003"],
            "callback_url": f"{base}/json?fmt=3&crc32={SECRET}&charset=utf-8",
            "mo_email": "mo-inbox@example.net",
        },
        {
            "login": "utf",
            "password": PASSWORD,
            "senders": ["Alert", "79005550004"],
            "callback_url": f"{base}/utf?charset=utf-8&md5={SECRET}",
        },
    ]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    smsc = SmscSimulator(host="127.0.0.1", port=0, receipt_delay=0.05)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    http = HttpSink()
    await http.start()
    smtp_port = free_port()
    metrics_port = free_port()
    cfg = write_config(
        tmp_path / "relay.toml",
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "domains": ["sms.test"]},
            "smpp": {
                "host": "127.0.0.1",
                "port": smsc.port,
                "enquire_link_interval": 5,
                "reconnect_min": 0.1,
                "reconnect_max": 0.5,
            },
            "spool": {
                "url": f"sqlite:///{tmp_path / 'spool.db'}",
                "retry_min": 0.2,
                "retry_max": 1,
            },
            "replies": {"smarthost": f"127.0.0.1:{sink.port}", "sender": "relay@sms.test"},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "callbacks": {"retry_min": 0.2, "retry_max": 0.5, "timeout": 5},
            # An incomplete concatenated MO SMS is forwarded this long after its last part.
            "mo": {"concat_timeout": MO_CONCAT_TIMEOUT},
        },
        accounts(http.port),
    )
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    try:
        yield Stack(relay, smsc, sink, http, smtp_port, metrics_port)
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()
        await http.stop()


async def send(port: int, login: str, phone: str, text: str, sender: str) -> str:
    body = f"{login}:{PASSWORD}::::{phone}:{text}"
    await asyncio.to_thread(send_mail, port, sender, ["send@sms.test"], command_mail(body))
    return body


def md5(s: str, enc: str = "utf-8") -> str:
    return hashlib.md5(s.encode(enc)).hexdigest()


def no_password(stack: Stack) -> None:
    for hit in stack.http.hits:
        assert PASSWORD.encode() not in hit.body and PASSWORD not in hit.query
    for mail in stack.sink.mails:
        assert PASSWORD.encode() not in mail.data


async def test_status_callbacks_form_xml_json_and_hashes(stack: Stack) -> None:
    await send(stack.smtp_port, "form", "79161110001", "form one", "a@example.org")
    hits = await stack.http.wait_for(1)
    await send(stack.smtp_port, "xml", "79161110002", "xml two", "b@example.org")
    hits = await stack.http.wait_for(2)
    await send(stack.smtp_port, "json", "79161110003", "json three", "c@example.org")
    hits = await stack.http.wait_for(3)
    by_path = {h.path: h for h in hits}

    form = by_path["/form"]
    assert form.method == "POST"
    # GET part: `!gk=g1&md5=…` in the query string, the md5 secret replaced by the hash.
    get = dict(parse_qsl(form.query))
    post = dict(parse_qsl(form.body.decode("ascii"), encoding="windows-1251"))
    msg_id = post["id"]
    assert get["gk"] == "g1"
    assert get["md5"] == md5(f"{msg_id}:79161110001:1:{SECRET}")
    assert "md5" not in post and "gk" not in post
    assert post["pk"] == "p 1"  # the URL's POST parameter
    assert post["phone"] == "79161110001"
    assert post["status"] == "1" and post["status_name"] == "delivered"
    assert post["err"] == "0"
    assert abs(int(post["time"]) - time.time()) < 60
    assert form.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert "windows-1251" in form.headers["content-type"]

    xml = by_path["/xml"]
    assert xml.method == "POST" and xml.query == ""
    root = ET.fromstring(xml.body)
    fields = {child.tag: child.text or "" for child in root}
    expected = hashlib.sha1(f"{fields['id']}:79161110002:1:{SECRET}".encode()).hexdigest()
    assert fields["sha1"] == expected
    assert fields["phone"] == "79161110002" and fields["status"] == "1"
    assert fields["fmt"] == "2"

    js = by_path["/json"]
    data = json.loads(js.body)
    crc = zlib.crc32(f"{data['id']}:79161110003:1:{SECRET}".encode()) & 0xFFFFFFFF
    assert data["crc32"] == str(crc)
    assert data["phone"] == "79161110003" and data["status_name"] == "delivered"
    assert js.headers["content-type"].startswith("application/json")

    # status_mail = "all" for the xml account: its sender gets the final state by mail;
    # "failed" for the form account: a delivered message gets none.
    [status_mail] = await stack.sink.wait_for(1)
    assert status_mail.rcpt_tos == ["b@example.org"]
    assert "delivered" in status_mail.text and "+79161110002" in status_mail.text
    assert status_mail.message["Auto-Submitted"] == "auto-generated"
    await asyncio.sleep(0.5)
    assert len(stack.sink.mails) == 1
    assert len(stack.http.hits) == 3  # each once
    no_password(stack)


async def test_failed_message_gets_status_mail_and_error_callback(stack: Stack) -> None:
    """status_mail = "failed": an UNDELIV receipt mails the final state to the request's sender."""
    stack.smsc.receipt_stat = "UNDELIV"
    await send(stack.smtp_port, "form", "79161110009", "will fail", "ops@example.org")
    [hit] = await stack.http.wait_for(1)
    post = dict(parse_qsl(hit.body.decode("ascii"), encoding="windows-1251"))
    assert post["phone"] == "79161110009"
    assert post["status"] == "20" and post["status_name"] == "undeliverable"
    get = dict(parse_qsl(hit.query))
    assert get["md5"] == md5(f"{post['id']}:79161110009:20:{SECRET}")
    [mail] = await stack.sink.wait_for(1)
    assert mail.rcpt_tos == ["ops@example.org"]
    assert "undeliverable" in mail.text and "+79161110009" in mail.text
    assert mail.message["Auto-Submitted"] == "auto-generated"
    await asyncio.sleep(0.5)
    assert len(stack.sink.mails) == 1 and len(stack.http.hits) == 1
    no_password(stack)
    metrics = await asyncio.to_thread(
        lambda: (
            urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
    )
    assert 'sms_relay_callbacks_total{result="sent"} 1.0' in metrics
    assert 'sms_relay_callbacks_total{result="failed"} 0.0' in metrics
    assert 'sms_relay_sms_parts_total{result="undeliverable"} 1.0' in metrics


async def test_mo_single_and_two_part_ucs2_mailed_to_sender_and_called_back(
    stack: Stack,
) -> None:
    await send(stack.smtp_port, "utf", "79162220001", "Сервер упал", "alerts@example.org")
    await stack.smsc.wait_for(1, timeout=10)
    await stack.http.wait_for(1)  # its status callback

    # A single GSM 7-bit answer (unpacked septets, '@' is 0x00) …
    await stack.smsc.send_mo("79162220001", "79005550004", b"OK \x00 ack")
    # … and a two-part UCS-2 answer with a concatenation UDH (IEI 0x00), parts out of order.
    text2 = "Перезагрузил сервер, всё работает. Проверьте, пожалуйста, мониторинг ещё раз!"
    raw = text2.encode("utf-16-be")
    p1, p2 = raw[:134], raw[134:]
    await stack.smsc.send_mo(
        "79162220001", "79005550004", b"\x05\x00\x03\x2a\x02\x02" + p2, 0x08, 0x40
    )
    await stack.smsc.send_mo(
        "79162220001", "79005550004", b"\x05\x00\x03\x2a\x02\x01" + p1, 0x08, 0x40
    )
    mails = await stack.sink.wait_for(2)
    assert [m.rcpt_tos for m in mails] == [["alerts@example.org"], ["alerts@example.org"]]
    texts = sorted(m.text for m in mails)  # the mailer sends concurrently: any order
    assert sum("OK @ ack" in t for t in texts) == 1
    assert sum(text2 in t for t in texts) == 1
    for m in mails:
        assert "+79162220001" in m.text
        assert "> Сервер упал" in m.text  # the original SMS quoted
        assert m.message["Auto-Submitted"] == "auto-generated"

    # MO callbacks: the utf account (its number 79005550004), charset utf-8, md5 of
    # id:phone:mes:to:<secret>.
    hits = await stack.http.wait_for(3)
    mo_hits = [dict(parse_qsl(h.body.decode("ascii"), encoding="utf-8")) for h in hits[1:]]
    assert sorted(h["mes"] for h in mo_hits) == sorted(["OK @ ack", text2])
    for h in mo_hits:
        assert h["phone"] == "79162220001" and h["to"] == "79005550004"
        assert h["md5"] == md5(f"{h['id']}:79162220001:{h['mes']}:79005550004:{SECRET}")
        assert re.fullmatch(r"\d+", h["sms_id"])
    await asyncio.sleep(0.5)
    assert len(stack.sink.mails) == 2 and len(stack.http.hits) == 3
    no_password(stack)


async def test_mo_missing_a_part_is_forwarded_after_concat_timeout_with_the_gap_marked(
    stack: Stack,
) -> None:
    """Parts 1 and 3 of a 3-part answer come, part 2 never does: after mo.concat_timeout the
    mail (and the MO callback) carries what came, the gap marked. A 2-part answer whose parts
    come 0.5 s apart is mailed once, whole, and nothing more after the timeout."""
    await send(stack.smtp_port, "utf", "79166660001", "Backup failed", "night@example.org")
    await stack.smsc.wait_for(1, timeout=10)
    await stack.http.wait_for(1)  # its status callback

    udh = b"\x05\x00\x03\x51\x03"  # reference 0x51, 3 parts (GSM 7-bit, unpacked septets)
    await stack.smsc.send_mo("79166660001", "79005550004", udh + b"\x01Restarted ", 0, 0x40)
    sent_at = time.monotonic()
    await stack.smsc.send_mo("79166660001", "79005550004", udh + b"\x03it works.", 0, 0x40)
    await asyncio.sleep(MO_CONCAT_TIMEOUT * 0.5)
    assert stack.sink.mails == []  # still waiting for part 2
    [mail] = await stack.sink.wait_for(1, timeout=10)
    assert time.monotonic() - sent_at >= MO_CONCAT_TIMEOUT * 0.9
    assert mail.rcpt_tos == ["night@example.org"]
    assert mail.message["Subject"] == "SMS from +79166660001 (incomplete)"
    assert "Restarted [part 2 of 3 missing]it works." in mail.text
    assert "part(s) 2 of 3 did not arrive" in mail.text
    assert "> Backup failed" in mail.text
    hits = await stack.http.wait_for(2)
    mo = dict(parse_qsl(hits[1].body.decode("ascii"), encoding="utf-8"))
    assert mo["mes"] == "Restarted [part 2 of 3 missing]it works."

    udh2 = b"\x05\x00\x03\x52\x02"
    await stack.smsc.send_mo("79166660001", "79005550004", udh2 + b"\x01all ", 0, 0x40)
    await asyncio.sleep(0.5)
    await stack.smsc.send_mo("79166660001", "79005550004", udh2 + b"\x02good", 0, 0x40)
    mails = await stack.sink.wait_for(2, timeout=10)
    assert "all good" in mails[1].text and "incomplete" not in mails[1].text
    await asyncio.sleep(MO_CONCAT_TIMEOUT + 1.5)
    assert len(stack.sink.mails) == 2 and len(stack.http.hits) == 3


async def test_mo_from_a_national_sender_finds_the_sms_it_answers(stack: Stack) -> None:
    """An SMSC that writes the sender in national format (89…, TON 2) where the relay sent to
    +7…: the answer still goes to whoever sent that SMS, with the number in E.164."""
    await send(stack.smtp_port, "utf", "79165550001", "Диск заполнен", "oncall@example.org")
    await stack.smsc.wait_for(1, timeout=10)
    await stack.http.wait_for(1)  # its status callback
    await stack.smsc.send_mo("89165550001", "79005550004", b"on it")
    [mail] = await stack.sink.wait_for(1)
    assert mail.rcpt_tos == ["oncall@example.org"]
    assert "on it" in mail.text and "+79165550001" in mail.text
    assert "> Диск заполнен" in mail.text
    [_, hit] = await stack.http.wait_for(2)
    mo = dict(parse_qsl(hit.body.decode("ascii"), encoding="utf-8"))
    assert mo["phone"] == "79165550001" and mo["mes"] == "on it"
    assert re.fullmatch(r"\d+", mo["sms_id"])


async def test_mo_from_unknown_phone_goes_to_mo_email(stack: Stack) -> None:
    await stack.smsc.wait_for(0)
    deadline = time.monotonic() + 10
    while True:  # the relay binds shortly after it listens for SMTP
        try:
            await stack.smsc.send_mo("79163330001", "79005550003", b"hello relay")
            break
        except RuntimeError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    [mail] = await stack.sink.wait_for(1)
    assert mail.rcpt_tos == ["mo-inbox@example.net"]
    assert "hello relay" in mail.text
    [hit] = await stack.http.wait_for(1)
    data = json.loads(hit.body)
    assert data["mes"] == "hello relay" and data["sms_id"] == ""
    crc = zlib.crc32(f"{data['id']}:79163330001:hello relay:79005550003:{SECRET}".encode())
    assert data["crc32"] == str(crc & 0xFFFFFFFF)


async def test_cp1251_charset_of_form_callback(stack: Stack) -> None:
    # The form account has no charset: windows-1251; a Cyrillic MO to its number.
    await send(stack.smtp_port, "form", "79164440001", "ping", "ops@example.org")
    await stack.http.wait_for(1)
    await stack.smsc.send_mo("79164440001", "79005550001", "Привет".encode("utf-16-be"), 0x08)
    hits = await stack.http.wait_for(2)
    body = hits[1].body
    assert b"%CF%F0%E8%E2%E5%F2" in body  # "Привет" in windows-1251, url-encoded
    post = dict(parse_qsl(body.decode("ascii"), encoding="windows-1251"))
    get = dict(parse_qsl(hits[1].query))
    assert post["mes"] == "Привет"
    hashed = f"{post['id']}:79164440001:Привет:79005550001:{SECRET}"
    assert get["md5"] == md5(hashed, "windows-1251")


async def test_endpoint_down_gets_every_callback_later_exactly_once(tmp_path: Path) -> None:
    smsc = SmscSimulator(host="127.0.0.1", port=0, receipt_delay=0.05)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    http_port = free_port()  # nothing listens here yet: the handler is down
    http = HttpSink()
    smtp_port = free_port()
    cfg = write_config(
        tmp_path / "relay.toml",
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "domains": ["sms.test"]},
            "smpp": {"host": "127.0.0.1", "port": smsc.port, "reconnect_min": 0.1},
            "spool": {
                "url": f"sqlite:///{tmp_path / 'spool.db'}",
                "retry_min": 0.2,
                "retry_max": 1,
            },
            "replies": {"smarthost": f"127.0.0.1:{sink.port}", "sender": "relay@sms.test"},
            "metrics": {"enabled": False},
            "callbacks": {"retry_min": 0.2, "retry_max": 0.5, "timeout": 2},
        },
        accounts(http_port),
    )
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    try:
        phones = [f"7916555000{i}" for i in range(5)]
        for phone in phones:
            await send(smtp_port, "json", phone, f"to {phone}", "ops@example.org")
        await smsc.wait_for(5, timeout=10)
        await asyncio.sleep(1.5)  # several failed attempts: connection refused
        await http.start(http_port)
        http.failing = True  # then up but answering 500 for a while
        await asyncio.sleep(1.0)
        http.failing = False
        await http.wait_for(5, timeout=15)
        await asyncio.sleep(1.5)
        got = sorted(json.loads(h.body)["phone"] for h in http.hits)
        assert got == phones  # every one, exactly once
        assert "HTTP 500" in relay.log() or "callback retry" in relay.log()
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()
        await http.stop()
