"""Issue 6 on real sockets: `<login>@` / `<phone>@` routes, sender checks, STARTTLS, implicit
TLS, SMTP AUTH (PLAIN, LOGIN with Go's prompts), a HELO-only client, rate guards.

The daemon runs as a subprocess (`sms-relay serve`); TLS uses certificates made by trustme at
test time, verified by the client (a real handshake with a trusted CA, no `CERT_NONE`).
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.smpp.simulator import ReceivedSms, SmscSimulator
from tests.integration.harness import RelayProcess, ReplySink, free_port, write_config
from tests.unit.test_email2sms import EXPECTED

SAMPLES = Path(__file__).parent.parent / "samples" / "email2sms"
PASSWORD = "s3cret-pass"
MON_PASSWORD = "mon-pass-1"


@dataclass
class Stack:
    relay: RelayProcess
    smsc: SmscSimulator
    sink: ReplySink
    smtp_port: int
    tls_port: int
    metrics_port: int
    ca: trustme.CA
    tmp: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def ca_file(self) -> Path:
        path = self.tmp / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return path


def accounts() -> list[dict[str, Any]]:
    return [
        {
            "login": "alex",
            "password": PASSWORD,
            "email2sms": ["+79990000001"],
            "cut_markers": ["===== LOG"],
        },
        {
            "login": "mon",
            "password": MON_PASSWORD,
            "email2sms": ["+79990000002", "89990000003"],
            "allowed_senders": ["*@monitoring.example.org"],
            "allowed_ips": ["127.0.0.1/32"],
            "senders": ["Monitoring"],
        },
        {"login": "storm", "password": "storm-pw", "email2sms": ["+79990000004"]},
    ]


async def start_stack(
    tmp: Path, *, smtp: dict[str, Any] | None = None, limits: dict[str, Any] | None = None
) -> Stack:
    smsc = SmscSimulator(host="127.0.0.1", port=0, receipt_delay=0.05)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(tmp / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    smtp_port, tls_port, metrics_port = free_port(), free_port(), free_port()
    smtp_cfg: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": smtp_port,
        "domains": ["sms.test"],
        "tls_cert": str(tmp / "cert.pem"),
        "tls_key": str(tmp / "key.pem"),
        "tls_port": tls_port,
        **(smtp or {}),
    }
    acc = accounts()
    acc[2]["rate_per_minute"] = 2
    cfg = write_config(
        tmp / "relay.toml",
        {
            "smtp": smtp_cfg,
            "smpp": {
                "host": "127.0.0.1",
                "port": smsc.port,
                "enquire_link_interval": 5,
                "reconnect_min": 0.1,
                "reconnect_max": 0.5,
            },
            "spool": {"url": f"sqlite:///{tmp / 'spool.db'}", "retry_min": 0.2, "retry_max": 1},
            "replies": {"smarthost": f"127.0.0.1:{sink.port}", "sender": "relay@sms.test"},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "limits": limits or {},
        },
        acc,
    )
    relay = RelayProcess(cfg, tmp / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    return Stack(relay, smsc, sink, smtp_port, tls_port, metrics_port, ca, tmp)


async def stop_stack(stack: Stack) -> None:
    await asyncio.to_thread(stack.relay.stop)
    await stack.smsc.stop()
    await stack.sink.stop()


# Each test runs against the daemon alone and with its SMTP front in two worker processes
# (smtp.workers = 2: AUTH, STARTTLS, implicit TLS and the argon2 thread there).
@pytest.fixture(params=[0, 2], ids=["in-process", "2-workers"])
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, smtp={"workers": request.param})
    try:
        yield s
    finally:
        await stop_stack(s)


def message_text(parts: list[ReceivedSms]) -> str:
    """The SMS text of one message, reassembled from its parts in UDH order."""
    ordered = sorted(parts, key=lambda p: p.part[2] if p.part else 0)
    return "".join(p.text for p in ordered)


def by_phone(received: list[ReceivedSms]) -> dict[str, str]:
    phones: dict[str, list[ReceivedSms]] = {}
    for sms in received:
        phones.setdefault(sms.destination_addr, []).append(sms)
    return {phone: message_text(parts) for phone, parts in phones.items()}


def mail(subject: str, body: str, sender: str = "ops@example.org") -> bytes:
    return (
        f"From: {sender}\r\nTo: x@sms.test\r\nSubject: {subject}\r\n"
        "Message-ID: <m1@example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
    ).encode()


def smtp_send(
    port: int, mail_from: str, rcpts: list[str], data: bytes
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return dict(client.sendmail(mail_from, rcpts, data))


async def no_more_sms(stack: Stack, count: int) -> None:
    await asyncio.sleep(0.7)
    assert len(stack.smsc.received) == count


# ---- routing ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_sample_to_login_reaches_the_smsc_as_the_exact_text(stack: Stack, name: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    refused = await asyncio.to_thread(
        smtp_send, stack.smtp_port, "alerts@example.org", ["alex@sms.test"], raw
    )
    assert refused == {}
    expected = EXPECTED[name]
    from relay.sms import count_parts

    received = await stack.smsc.wait_for(count_parts(expected), timeout=10)
    assert by_phone(received) == {"79990000001": expected}
    await no_more_sms(stack, count_parts(expected))
    assert stack.sink.mails == []  # success and test 0: no reply


# Mail as the monitoring tools themselves write it (tests/samples/email2sms/SOURCES.md).
TOOL_SAMPLES = [
    ("zabbix_html_base64_long_subject.eml", "zabbix@monitoring.example.org"),
    ("nagios_bsd_mailx_c_locale_host.eml", "nagios@monitoring.example.org"),
    ("cron_debian_c_locale_utf8.eml", "root@monitoring.example.org"),
]


@pytest.mark.parametrize(("name", "mail_from"), TOOL_SAMPLES)
async def test_tool_mail_to_a_group_login_parts_and_sender(
    stack: Stack, name: str, mail_from: str
) -> None:
    """`mon@` (allowed by sender and IP, no password): each of its two phones gets the whole
    text in UCS-2 parts (Cyrillic), concatenated by UDH, from the account's sender name."""
    raw = (SAMPLES / name).read_bytes()
    refused = await asyncio.to_thread(smtp_send, stack.smtp_port, mail_from, ["mon@sms.test"], raw)
    assert refused == {}
    expected = EXPECTED[name]
    received = await stack.smsc.wait_for(6, timeout=10)
    await no_more_sms(stack, 6)
    assert by_phone(received) == {"79990000002": expected, "79990000003": expected}
    for phone in ("79990000002", "79990000003"):
        parts = [sms for sms in received if sms.destination_addr == phone]
        assert sorted(sms.part[1:] for sms in parts if sms.part) == [(3, 1), (3, 2), (3, 3)]
        assert len({sms.part[0] for sms in parts if sms.part}) == 1
    assert {(sms.source_addr, sms.source_addr_ton, sms.data_coding) for sms in received} == {
        ("Monitoring", 5, 8)
    }
    assert stack.sink.mails == []


async def test_each_recipient_is_routed_on_its_own_at_rcpt_time(stack: Stack) -> None:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("ops@example.org")[0] == 250
        assert client.rcpt("alex@sms.test") == (250, b"2.1.5 Recipient OK")
        assert client.rcpt("send@sms.test")[0] == 250
        assert client.rcpt("nobody@sms.test") == (550, b"5.1.1 No such recipient here")
        assert client.rcpt("alex@elsewhere.test") == (550, b"5.1.1 No such recipient here")
        # <phone>@ without AUTH from a sender no account allows: never an open relay.
        assert client.rcpt("+79991234567@sms.test") == (530, b"5.7.0 Authentication required")
        code, _ = client.data(mail("Disk", f"alex:{PASSWORD}::::79161234567:command text"))
        assert code == 250
    received = await stack.smsc.wait_for(2, timeout=10)
    # The command mail goes by its grammar; the login mail as subject + body.
    assert by_phone(received) == {
        "79990000001": f"Disk\nalex:{PASSWORD}::::79161234567:command text",
        "79161234567": "command text",
    }


async def test_allowed_sender_and_ip_use_login_and_phone_routes(stack: Stack) -> None:
    zabbix = "zabbix@monitoring.example.org"
    refused = await asyncio.to_thread(
        smtp_send,
        stack.smtp_port,
        zabbix,
        ["mon@sms.test", "79161112233@sms.test"],
        mail("Problem: PSU", "PSU 2 failed"),
    )
    assert refused == {}
    received = await stack.smsc.wait_for(3, timeout=10)
    assert by_phone(received) == {
        "79990000002": "Problem: PSU\nPSU 2 failed",
        "79990000003": "Problem: PSU\nPSU 2 failed",
        "79161112233": "Problem: PSU\nPSU 2 failed",  # paid by mon: its sender rule admits it
    }


async def test_restricted_account_refuses_other_senders_with_error_2(stack: Stack) -> None:
    refused = await asyncio.to_thread(
        smtp_send, stack.smtp_port, "intruder@example.org", ["mon@sms.test"], mail("x", "y")
    )
    assert refused == {}  # SPEC §2.5/§6: accepted, answered ERROR 2 by reply mail
    [reply] = await stack.sink.wait_for(1)
    assert reply.rcpt_tos == ["intruder@example.org"]
    assert reply.text == "ERROR = 2 (invalid login or password)"
    await no_more_sms(stack, 0)


# ---- TLS and AUTH ----------------------------------------------------------------------


async def test_auth_is_refused_before_starttls_and_phone_needs_it(stack: Stack) -> None:
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10) as client:
        code, ehlo = client.ehlo("client.test")
        assert code == 250 and b"STARTTLS" in ehlo and b"AUTH" not in ehlo
        plain = base64.b64encode(f"\0alex\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {plain}") == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )


def _starttls(stack: Stack) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10)
    client.ehlo("client.test")
    code, _ = client.starttls(context=stack.client_context())
    assert code == 220
    code, ehlo = client.ehlo("client.test")
    assert b"AUTH LOGIN PLAIN" in ehlo and b"STARTTLS" not in ehlo
    return client


async def test_starttls_auth_plain_then_phone_route(stack: Stack) -> None:
    def run() -> None:
        with _starttls(stack) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                client.login("alex", "wrong")
            assert err.value.smtp_code == 535
            client.auth("PLAIN", lambda challenge=None: f"\0alex\0{PASSWORD}")
            assert (
                client.sendmail("ops@example.org", ["+79161234567@sms.test"], mail("Hi", "x")) == {}
            )
            assert client.noop()[0] == 250

    await asyncio.to_thread(run)
    [sms] = await stack.smsc.wait_for(1, timeout=10)
    assert (sms.destination_addr, sms.text) == ("79161234567", "Hi\nx")


async def test_starttls_auth_login_sends_the_prompts_go_expects(stack: Stack) -> None:
    def run() -> None:
        with _starttls(stack) as client:
            # RFC 4954 + Go's net/smtp: "Username:" / "Password:", base64.
            assert client.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
            assert client.docmd(base64.b64encode(b"mon").decode()) == (334, b"UGFzc3dvcmQ6")
            assert client.docmd(base64.b64encode(MON_PASSWORD.encode()).decode()) == (
                235,
                b"2.7.0 Authentication successful",
            )
            # An authenticated account may use its own route from any sender and IP rule.
            client.sendmail("someone@else.org", ["mon@sms.test"], mail("Auth", "ok"))

    await asyncio.to_thread(run)
    received = await stack.smsc.wait_for(2, timeout=10)
    assert by_phone(received) == {"79990000002": "Auth\nok", "79990000003": "Auth\nok"}


async def test_implicit_tls_port_offers_auth_without_starttls(stack: Stack) -> None:
    def run() -> None:
        with smtplib.SMTP_SSL(
            "127.0.0.1", stack.tls_port, timeout=10, context=stack.client_context()
        ) as client:
            _, ehlo = client.ehlo("client.test")
            assert b"AUTH LOGIN PLAIN" in ehlo and b"STARTTLS" not in ehlo
            assert client.login("alex", PASSWORD)[0] == 235
            client.sendmail("ops@example.org", ["89161234567@sms.test"], mail("TLS", "465"))

    await asyncio.to_thread(run)
    [sms] = await stack.smsc.wait_for(1, timeout=10)
    assert (sms.destination_addr, sms.text) == ("79161234567", "TLS\n465")


async def test_untrusted_certificate_fails_the_handshake(stack: Stack) -> None:
    def run() -> None:
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10) as client:
            client.ehlo("client.test")
            with pytest.raises(ssl.SSLCertVerificationError):
                client.starttls(context=ssl.create_default_context())  # system CAs only

    await asyncio.to_thread(run)


async def test_helo_client_that_quits_without_waiting(stack: Stack) -> None:
    """Zabbix-style: HELO (not EHLO), one command at a time, QUIT and close at once."""

    def run() -> None:
        with socket.create_connection(("127.0.0.1", stack.smtp_port), timeout=10) as sock:
            f = sock.makefile("rb")

            def say(line: bytes, expect: bytes) -> None:
                sock.sendall(line)
                answer = f.readline()
                assert answer.startswith(expect), answer

            assert f.readline().startswith(b"220 ")
            say(b"HELO zabbix.example.org\r\n", b"250 ")
            say(b"MAIL FROM:<zabbix@example.org>\r\n", b"250 ")
            say(b"RCPT TO:<alex@sms.test>\r\n", b"250 ")
            say(b"DATA\r\n", b"354 ")
            raw = (SAMPLES / "zabbix_base64_utf8_ru.eml").read_bytes()
            say(raw.rstrip(b"\r\n") + b"\r\n.\r\n", b"250 ")
            sock.sendall(b"QUIT\r\n")  # and hang up without reading 221

    await asyncio.to_thread(run)
    received = await stack.smsc.wait_for(3, timeout=10)
    assert by_phone(received) == {"79990000001": EXPECTED["zabbix_base64_utf8_ru.eml"]}


# ---- rate guards -----------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def test_account_rate_limit_answers_error_8_and_counts(stack: Stack) -> None:
    for i in range(3):
        await asyncio.to_thread(
            smtp_send, stack.smtp_port, "loop@example.org", ["storm@sms.test"], mail(f"a{i}", "x")
        )
    [reply] = await stack.sink.wait_for(1)
    assert reply.text.startswith("ERROR = 8 (message cannot be delivered to the number), ID - ")
    received = await stack.smsc.wait_for(2, timeout=10)
    await no_more_sms(stack, 2)
    assert sorted(s.text for s in received) == ["a0\nx", "a1\nx"]
    metrics = await asyncio.to_thread(scrape, stack.metrics_port)
    assert 'sms_relay_rate_limited_total{scope="account"} 1.0' in metrics


async def test_loopback_plain_auth_and_sender_rate_tempfail(tmp_path: Path) -> None:
    stack = await start_stack(
        tmp_path,
        smtp={"auth_plain_loopback": True, "tls_port": 0},
        limits={"sender_rate_per_minute": 2, "rate_action": "tempfail"},
    )
    try:

        def run() -> list[int]:
            codes = []
            with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10) as client:
                _, ehlo = client.ehlo("client.test")
                assert b"AUTH LOGIN PLAIN" in ehlo  # in clear: loopback, allowed by config
                client.login("alex", PASSWORD)
                for i in range(3):
                    client.mail("cron@example.org")
                    client.rcpt("79161234567@sms.test")
                    codes.append(client.data(mail(f"n{i}", "x"))[0])
            return codes

        assert await asyncio.to_thread(run) == [250, 250, 451]
        received = await stack.smsc.wait_for(2, timeout=10)
        await no_more_sms(stack, 2)
        assert sorted(s.text for s in received) == ["n0\nx", "n1\nx"]
        metrics = await asyncio.to_thread(scrape, stack.metrics_port)
        assert 'sms_relay_rate_limited_total{scope="sender"} 1.0' in metrics
    finally:
        await stop_stack(stack)
