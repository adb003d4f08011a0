"""Operations on the real daemon (issue 7): /metrics values, /healthz, sd_notify, SIGHUP, logs, CLI.

The daemon runs as `python -m relay serve` in a subprocess; the SMPP server is the project's
simulator in the test's loop on 127.0.0.1; sd_notify goes to an AF_UNIX datagram socket the test
owns. Reloads are awaited through that socket (RELOADING=1 … READY=1), never by reading logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.smpp.simulator import SmscSimulator
from tests.integration.harness import (
    ROOT,
    RelayProcess,
    ReplySink,
    command_mail,
    free_port,
    send_mail,
    write_config,
)

PASSWORD = "acct-Passw0rd-X1"
NEW_PASSWORD = "acct-N3w-Passw0rd-Y2"
SMPP_PASSWORD = "smppPW77"  # SMPP 3.4 §5.2.3: at most 8 octets
WRONG_PASSWORD = "wrong-Guess-9Z"
BODY_MARKER = "body-Marker-4242"


# --------------------------------------------------------------------------- helpers


def relay_config(
    tmp: Path,
    *,
    smtp_port: int,
    smpp_port: int,
    sink_port: int,
    metrics_port: int = 0,
    password: str = PASSWORD,
    log: dict[str, Any] | None = None,
    smtp: dict[str, Any] | None = None,
    spool: dict[str, Any] | None = None,
) -> Path:
    return write_config(
        tmp / "relay.toml",
        {
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "domains": ["sms.test"],
                **(smtp or {}),
            },
            "smpp": {
                "host": "127.0.0.1",
                "port": smpp_port,
                "system_id": "relay",
                "password": SMPP_PASSWORD,
                "enquire_link_interval": 5,
                "reconnect_min": 0.1,
                "reconnect_max": 0.3,
            },
            "spool": {
                "url": f"sqlite:///{tmp / 'spool.db'}",
                "retry_min": 0.2,
                "retry_max": 1,
                **(spool or {}),
            },
            "replies": {"smarthost": f"127.0.0.1:{sink_port}", "sender": "relay@sms.test"},
            "metrics": {
                "enabled": bool(metrics_port),
                "host": "127.0.0.1",
                "port": metrics_port or 9464,
            },
            "log": log or {"format": "plain", "level": "info"},
        },
        [
            {
                "login": "alex",
                "password": password,
                "senders": ["Alex"],
                "default_region": "RU",
            }
        ],
    )


class NotifySocket:
    """A fake systemd: an AF_UNIX datagram socket that records what the daemon tells it."""

    def __init__(self) -> None:
        # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
        self.dir = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 10.0) -> list[str]:
        """Read datagrams until one has `line` among its lines; return all seen so far."""
        deadline = time.monotonic() + timeout
        while True:
            if any(line in m.splitlines() for m in self.messages):
                return self.messages
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line!r} from the daemon; got {self.messages}")
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def lines(self) -> list[str]:
        return [line for m in self.messages for line in m.splitlines()]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def scrape(port: int) -> dict[str, float]:
    """/metrics → {'name{k="v",…}': value} with labels sorted, for exact comparisons."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


async def wait_metric(port: int, key: str, value: float, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(scrape, port)
        if got.get(key) == value or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


async def send(port: int, body: str, *, sender: str = "ops@example.org") -> None:
    await asyncio.to_thread(
        send_mail, port, sender, ["send@sms.test"], command_mail(body, sender=sender)
    )


def run_cli(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@dataclass
class Daemon:
    relay: RelayProcess
    smsc: SmscSimulator
    sink: ReplySink
    notify: NotifySocket
    smtp_port: int
    metrics_port: int
    config: Path
    tmp: Path
    options: dict[str, Any]  # relay_config's keywords the daemon started with

    def rewrite(self, **kwargs: Any) -> None:
        relay_config(
            self.tmp,
            smtp_port=self.smtp_port,
            smpp_port=self.smsc.port,
            sink_port=self.sink.port,
            metrics_port=self.metrics_port,
            **{**self.options, **kwargs},
        )

    def reload(self) -> None:
        """SIGHUP, then wait until the daemon says READY=1 again (sd_notify reload protocol)."""
        self.notify.messages.clear()
        self.relay.signal(signal.SIGHUP)
        self.notify.wait_for("RELOADING=1")
        self.notify.wait_for("READY=1")


@contextlib.asynccontextmanager
async def daemon(tmp: Path, *, metrics: bool = True, **config: Any) -> AsyncIterator[Daemon]:
    smsc = SmscSimulator(host="127.0.0.1", port=0, receipt_delay=0.05)
    await smsc.start()
    sink = ReplySink()
    await sink.start()
    notify = NotifySocket()
    smtp_port, metrics_port = free_port(), free_port() if metrics else 0
    cfg = relay_config(
        tmp,
        smtp_port=smtp_port,
        smpp_port=smsc.port,
        sink_port=sink.port,
        metrics_port=metrics_port,
        **config,
    )
    relay = RelayProcess(cfg, tmp / "relay.log", env={"NOTIFY_SOCKET": notify.path})
    try:
        await asyncio.to_thread(relay.start, smtp_port)
        await asyncio.to_thread(notify.wait_for, "READY=1")
        yield Daemon(relay, smsc, sink, notify, smtp_port, metrics_port, cfg, tmp, config)
    finally:
        await asyncio.to_thread(relay.stop)
        await smsc.stop()
        await sink.stop()
        notify.close()


# --------------------------------------------------------------------------- /metrics


async def wait_metrics(
    port: int, expected: dict[str, float], timeout: float = 10.0
) -> dict[str, float]:
    """Scrape until every key has its expected value (SMTP worker processes report their
    counters twice a second); the last scrape either way."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(scrape, port)
        if all(got.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("workers", [0, 2])
async def test_metrics_exact_values_after_a_scripted_run(tmp_path: Path, workers: int) -> None:
    async with daemon(tmp_path, smtp={"workers": workers}) as d:
        await send(d.smtp_port, f"alex:{PASSWORD}::::79161234567:one")
        await send(d.smtp_port, f"alex:{PASSWORD}::::79161234568,79161234569:two recipients")
        await send(d.smtp_port, f"alex:{PASSWORD}::::79161234570:three")
        await send(d.smtp_port, f"alex:{WRONG_PASSWORD}::::79161234571:refused")
        expected = EXPECTED_AFTER_SCRIPT
        await d.smsc.wait_for(4, timeout=10)
        await d.sink.wait_for(1)  # the ERROR = 2 reply (test = 0: no reply for the accepted)
        await wait_metric(d.metrics_port, 'sms_relay_sms_parts_total{result="delivered"}', 4)
        await wait_metric(d.metrics_port, 'sms_relay_reply_mails_total{result="sent"}', 1)
        got = await wait_metrics(d.metrics_port, expected)
    assert {k: got.get(k) for k in expected} == expected
    assert 0 < got["sms_relay_end_to_end_seconds_sum{}"] < 40


EXPECTED_AFTER_SCRIPT = {
    "sms_relay_smtp_sessions_total{}": 5,  # 4 mails + the harness's readiness probe
    'sms_relay_mails_total{code="0",outcome="accepted"}': 3,
    'sms_relay_mails_total{code="2",outcome="refused"}': 1,
    'sms_relay_mails_total{code="0",outcome="tempfail"}': 0,
    'sms_relay_sms_parts_total{result="queued"}': 4,
    'sms_relay_sms_parts_total{result="submitted"}': 4,
    'sms_relay_sms_parts_total{result="delivered"}': 4,
    'sms_relay_sms_parts_total{result="undeliverable"}': 0,
    'sms_relay_sms_parts_total{result="failed"}': 0,
    'sms_relay_sms_parts_total{result="expired"}': 0,
    'sms_relay_sms_parts_total{result="retried"}': 0,
    "sms_relay_throttled_total{}": 0,
    'sms_relay_receipts_total{stat="DELIVRD"}': 4,
    "sms_relay_submit_latency_seconds_count{}": 4,
    'sms_relay_submit_latency_seconds_bucket{le="+Inf"}': 4,
    "sms_relay_end_to_end_seconds_count{}": 4,
    'sms_relay_end_to_end_seconds_bucket{le="+Inf"}': 4,
    'sms_relay_end_to_end_seconds_bucket{le="10.0"}': 4,
    'sms_relay_spool_jobs{state="delivered"}': 4,
    'sms_relay_spool_jobs{state="queued"}': 0,
    'sms_relay_spool_jobs{state="sending"}': 0,
    'sms_relay_spool_jobs{state="mail_sent"}': 1,
    "sms_relay_spool_oldest_due_seconds{}": 0,
    'sms_relay_bind_up{bind="0"}': 1,
    'sms_relay_bind_state{bind="0",state="bound"}': 1,
    'sms_relay_bind_state{bind="0",state="down"}': 0,
    'sms_relay_bind_reconnects_total{bind="0"}': 0,
    'sms_relay_reply_mails_total{result="sent"}': 1,
    'sms_relay_reply_mails_total{result="failed"}': 0,
    'sms_relay_reply_mails_total{result="retried"}': 0,
}


# --------------------------------------------------------------------------- /healthz


async def test_healthz_flips_to_503_when_the_smsc_stops_and_back(tmp_path: Path) -> None:
    async with daemon(tmp_path) as d:
        status, body = await asyncio.to_thread(http_get, d.metrics_port, "/healthz")
        assert status == 200
        assert json.loads(body) == {
            "ok": True,
            "spool_writable": True,
            "binds_up": 1,
            "binds": {"bind-0": "bound"},
            "virtual_smsc": False,
        }
        port = d.smsc.port
        await d.smsc.stop()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = await asyncio.to_thread(http_get, d.metrics_port, "/healthz")
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503
        detail = json.loads(body)
        assert (detail["ok"], detail["spool_writable"], detail["binds_up"]) == (False, True, 0)
        assert detail["binds"]["bind-0"] != "bound"
        d.smsc = SmscSimulator(host="127.0.0.1", port=port)
        await d.smsc.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = await asyncio.to_thread(http_get, d.metrics_port, "/healthz")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert status == 200
        got = await asyncio.to_thread(scrape, d.metrics_port)
        assert got['sms_relay_bind_reconnects_total{bind="0"}'] >= 1
        assert got['sms_relay_bind_up{bind="0"}'] == 1


# --------------------------------------------------------------------------- sd_notify


async def test_sd_notify_ready_then_stopping_on_sigterm(tmp_path: Path) -> None:
    async with daemon(tmp_path, metrics=False) as d:
        assert "READY=1" in d.notify.lines()
        assert "STOPPING=1" not in d.notify.lines()
        d.relay.signal(signal.SIGTERM)
        await asyncio.to_thread(d.notify.wait_for, "STOPPING=1")
        assert await asyncio.to_thread(d.relay.wait, 10) == 0
        lines = d.notify.lines()
        assert lines.index("READY=1") < lines.index("STOPPING=1")


# --------------------------------------------------------------------------- SIGHUP


@pytest.mark.parametrize("workers", [0, 2])
async def test_sighup_reloads_passwords_keeps_connections_and_refuses_bad_config(
    tmp_path: Path, workers: int
) -> None:
    async with daemon(tmp_path, metrics=False, smtp={"workers": workers}) as d:
        pw_file = tmp_path / "pw"
        cli_config = tmp_path / "cli.toml"  # the CLI's own copy: d.config gets broken below

        def cli_send(password: str, text: str) -> subprocess.CompletedProcess[str]:
            pw_file.write_text(password + "\n")
            shutil.copy(d.config, cli_config)
            return run_cli(
                "send", "-c", str(cli_config), "--login", "alex", "--password-file", str(pw_file),
                "79161234567", text,
            )  # fmt: skip

        # Distinct texts: an identical request within 60 s is a duplicate (ERROR 9, SPEC §5).
        assert (await asyncio.to_thread(cli_send, PASSWORD, "reload test 1")).returncode == 0
        # A connection opened before the reload, in the middle of a session.
        client = smtplib.SMTP("127.0.0.1", d.smtp_port, timeout=10)
        client.ehlo("before-reload")
        d.rewrite(password=NEW_PASSWORD)
        await asyncio.to_thread(d.reload)
        new = await asyncio.to_thread(cli_send, NEW_PASSWORD, "reload test 2")
        assert new.returncode == 0, new.stderr
        old = await asyncio.to_thread(cli_send, PASSWORD, "reload test old")
        assert old.returncode == 4
        assert "ERROR = 2" in old.stdout
        # The old connection was not dropped: it still sends, with the new password.
        refused = client.sendmail(
            "ops@example.org",
            ["send@sms.test"],
            command_mail(f"alex:{NEW_PASSWORD}::::79161234599:over the old connection"),
        )
        assert refused == {}
        client.quit()
        # A broken config: refused, the old one kept, the daemon keeps serving.
        shutil.copy(d.config, cli_config)
        pw_file.write_text(NEW_PASSWORD + "\n")
        d.config.write_text("[smtp\nport = 'not a number'\n")
        await asyncio.to_thread(d.reload)
        assert d.relay.proc is not None and d.relay.proc.poll() is None
        still = await asyncio.to_thread(run_cli, "send", "-c", str(cli_config), "--login", "alex",
                                        "--password-file", str(pw_file), "79161234567",
                                        "reload test 3")  # fmt: skip
        assert still.returncode == 0, still.stderr
        texts = sorted(s.text for s in await d.smsc.wait_for(4, timeout=10))
        assert texts == [
            "over the old connection",
            "reload test 1",
            "reload test 2",
            "reload test 3",
        ]


def _self_signed(directory: Path, name: str) -> tuple[Path, Path, bytes]:
    """A throwaway certificate for 127.0.0.1; returns (cert path, key path, DER)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


def _starttls(port: int) -> tuple[smtplib.SMTP, bytes]:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    client.starttls(context=ctx)
    assert isinstance(client.sock, ssl.SSLSocket)
    der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    return client, der


@pytest.mark.parametrize("workers", [0, 2])
async def test_sighup_reloads_the_tls_certificate_in_place(tmp_path: Path, workers: int) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    live_cert, live_key = certs / "live.crt", certs / "live.key"
    a_cert, a_key, a_der = _self_signed(certs, "cert-a")
    b_cert, b_key, b_der = _self_signed(certs, "cert-b")
    shutil.copy(a_cert, live_cert)
    shutil.copy(a_key, live_key)
    tls = {"tls_cert": str(live_cert), "tls_key": str(live_key), "workers": workers}
    async with daemon(tmp_path, metrics=False, smtp=tls) as d:
        before, der = await asyncio.to_thread(_starttls, d.smtp_port)
        assert der == a_der
        shutil.copy(b_cert, live_cert)  # certbot renews the files, then `systemctl reload`
        shutil.copy(b_key, live_key)
        await asyncio.to_thread(d.reload)
        after, der = await asyncio.to_thread(_starttls, d.smtp_port)
        assert der == b_der
        after.quit()
        # The session that negotiated TLS with the old certificate goes on working.
        body = command_mail(f"alex:{PASSWORD}::::79161234567:tls kept")
        assert before.sendmail("ops@example.org", ["send@sms.test"], body) == {}
        before.quit()
        # A broken certificate file: the reload is refused whole, cert B stays in service.
        live_cert.write_text("not a certificate\n")
        await asyncio.to_thread(d.reload)
        again, der = await asyncio.to_thread(_starttls, d.smtp_port)
        assert der == b_der
        again.quit()
        [sms] = await d.smsc.wait_for(1, timeout=10)
        assert sms.text == "tls kept"


# --------------------------------------------------------------------------- logs


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_logs_never_show_a_password_or_psw_and_carry_ids(tmp_path: Path, fmt: str) -> None:
    log_cfg = {"format": fmt, "level": "debug", "content": False}
    async with daemon(tmp_path, metrics=False, log=log_cfg) as d:
        await send(d.smtp_port, f"alex:{WRONG_PASSWORD}::::79161234567:{BODY_MARKER} wrong")
        await send(d.smtp_port, f"alex:{PASSWORD}:::,,,1:79161234567:{BODY_MARKER} right")
        await send(d.smtp_port, f"{PASSWORD}:{WRONG_PASSWORD}::::79161234567:swapped fields")
        await d.smsc.wait_for(1, timeout=10)
        await d.sink.wait_for(3)
        await asyncio.sleep(0.3)  # the receipt for the submitted part
        d.rewrite(password=NEW_PASSWORD)
        await asyncio.to_thread(d.reload)
        await send(d.smtp_port, f"alex:{PASSWORD}::::79161234567:old password after reload")
        await d.sink.wait_for(4)
        d.relay.signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.relay.wait, 10) == 0
    text = (tmp_path / "relay.log").read_text(encoding="utf-8")
    for secret in (PASSWORD, NEW_PASSWORD, SMPP_PASSWORD, WRONG_PASSWORD, BODY_MARKER):
        assert secret not in text, f"{secret!r} appears in the {fmt} log"
    lines = [line for line in text.splitlines() if line.strip()]
    if fmt == "plain":
        assert any(" accepted id=" in line for line in lines)
        assert sum(" refused id=" in line and " code=2 " in line for line in lines) == 3
        return
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    accepted = [r for r in records if r["msg"].startswith("accepted ")]
    refused = [r for r in records if r["msg"].startswith("refused ")]
    submitted = [r for r in records if r["msg"].startswith("submitted ")]
    receipts = [r for r in records if r["msg"].startswith("receipt ")]
    assert len(accepted) == 1 and len(refused) == 3 and len(submitted) == 1
    assert all(r["request_id"] for r in accepted + refused + submitted)
    assert [r["code"] for r in refused] == [2, 2, 2]
    assert submitted[0]["request_id"] == accepted[0]["request_id"]
    assert submitted[0]["message_id"]
    assert [r["message_id"] for r in receipts] == [submitted[0]["message_id"]]
    bound = [r for r in records if r["logger"] == "relay.smpp" and ": bound (" in r["msg"]]
    assert bound and all(r["bind"] == "bind-0" and r["bind_state"] == "bound" for r in bound)


async def test_log_content_shows_the_text_at_debug_only_when_enabled(tmp_path: Path) -> None:
    log_cfg = {"format": "json", "level": "debug", "content": True}
    async with daemon(tmp_path, metrics=False, log=log_cfg) as d:
        await send(d.smtp_port, f"alex:{PASSWORD}::::79161234567:{BODY_MARKER} shown")
        await d.smsc.wait_for(1, timeout=10)
        d.relay.signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.relay.wait, 10) == 0
    records = [json.loads(x) for x in (tmp_path / "relay.log").read_text().splitlines() if x]
    content = [r for r in records if BODY_MARKER in r["msg"]]
    assert len(content) == 1
    assert content[0]["level"] == "debug" and content[0]["msg"].startswith("content id=")
    assert content[0]["request_id"]
    assert not any(PASSWORD in r["msg"] for r in records)


# --------------------------------------------------------------------------- CLI


def _cli_config(tmp: Path) -> Path:
    return write_config(
        tmp / "relay.toml",
        {"spool": {"url": f"sqlite:///{tmp / 'spool.db'}", "validity": 3600}},
        [],
    )


def _seed_spool(tmp: Path) -> None:
    from relay.smpp.model import SubmitSm
    from relay.spool.model import NewJob, NewRequest
    from relay.spool.sqlite import SqliteSpool

    async def seed() -> None:
        spool = SqliteSpool(tmp / "spool.db")
        await spool.open()
        try:
            sm = SubmitSm("Alex", 5, 0, "79161234567", b"hi", 0)
            jobs = tuple(
                NewJob("+79161234567", 0, i + 1, 2, sm, not_before=1e12, expires_at=2e12)
                for i in range(2)
            )
            await spool.store(NewRequest("k1", "555", "alex", "a@x", "127.0.0.1", 100.0, jobs))
            await spool.store(NewRequest("k2", "556", "alex", "a@x", "127.0.0.1", 100.0, error=2))
        finally:
            await spool.close()

    asyncio.run(seed())


def _states(tmp: Path, request_id: str) -> list[tuple[str, int]]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp / "spool.db")) as conn:
        rows = conn.execute(
            "SELECT j.state, j.attempts FROM jobs j JOIN requests r ON r.pk = j.request_pk"
            " WHERE r.request_id = ? ORDER BY j.id",
            (request_id,),
        ).fetchall()
    return [(str(s), int(a)) for s, a in rows]


def test_cli_cancel_and_retry_change_the_spool_with_documented_exit_codes(tmp_path: Path) -> None:
    from relay import cli

    cfg = str(_cli_config(tmp_path))
    _seed_spool(tmp_path)
    assert cli.main(["cancel", "-c", cfg, "555"]) == 0
    assert _states(tmp_path, "555") == [("cancelled", 0), ("cancelled", 0)]
    assert cli.main(["cancel", "-c", cfg, "555"]) == cli.EXIT_NOT_FOUND  # nothing queued now
    assert cli.main(["cancel", "-c", cfg, "999"]) == cli.EXIT_NOT_FOUND  # no such request
    started = time.time()
    assert cli.main(["retry", "-c", cfg, "555"]) == 0
    assert _states(tmp_path, "555") == [("queued", 0), ("queued", 0)]
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "spool.db")) as conn:
        for not_before, expires_at in conn.execute("SELECT not_before, expires_at FROM jobs"):
            assert started <= not_before <= time.time()
            assert expires_at == pytest.approx(not_before + 3600)
    assert cli.main(["retry", "-c", cfg, "555"]) == cli.EXIT_NOT_FOUND  # nothing failed now
    assert cli.main(["retry", "-c", cfg, "556"]) == cli.EXIT_NOT_FOUND  # refused: no parts
    assert cli.main(["retry", "-c", cfg, "999"]) == cli.EXIT_NOT_FOUND


COMMANDS = ["serve", "check-config", "hash-password", "smsc-sim", "status", "queue", "retry",
            "cancel", "send"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from relay import cli

    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sms-relay {command}")
    assert len(out) > 200


def test_top_level_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    from relay import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code in ("0  success", "1  runtime failure", "2  bad usage", "3  not found",
                 "4  refused", "5  pending"):  # fmt: skip
        assert code in out


def test_readable_errors_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from relay import cli

    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nport = 'x'\n")
    assert cli.main(["check-config", "-c", str(bad)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("sms-relay: ") and "port" in err and "Traceback" not in err
    cfg = _cli_config(tmp_path)
    missing = tmp_path / "nope"
    argv = ["send", "-c", str(cfg), "--login", "a", "--password-file", str(missing), "7", "x"]
    assert cli.main(argv) == cli.EXIT_CONFIG
    assert "--password-file" in capsys.readouterr().err
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    port = free_port()  # nothing listens here
    argv = ["send", "-c", str(cfg), "--login", "a", "--password-file", str(pw),
            "--relay", f"127.0.0.1:{port}", "79161234567", "x"]  # fmt: skip
    assert cli.main(argv) == cli.EXIT_FAILURE
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
