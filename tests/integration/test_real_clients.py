"""Issue 6 with real mail software against the real daemon: swaks (STARTTLS + AUTH), Postfix
(`sendmail` → relayhost → the relay), and Prometheus Alertmanager (STARTTLS + AUTH LOGIN, the Go
client that needs the `Username:`/`Password:` prompts).

The tools come from Debian packages that `.ci/deps-clients` installs; a test skips, naming the
tool, only when it is not installed. Everything is on 127.0.0.1 and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay.smpp.simulator import ReceivedSms
from tests.integration.harness import free_port
from tests.integration.test_email2sms import (
    PASSWORD,
    Stack,
    by_phone,
    start_stack,
    stop_stack,
)

SAMPLES = Path(__file__).parent.parent / "samples" / "email2sms"


def need(tool: str) -> str:
    path = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if path is None:
        pytest.skip(f"{tool} is not installed (.ci/deps-clients installs it from Debian packages)")
    return path


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path)
    try:
        yield s
    finally:
        await stop_stack(s)


# ---- swaks -----------------------------------------------------------------------------


async def test_swaks_starttls_auth_login_to_a_phone(stack: Stack) -> None:
    swaks = need("swaks")
    cmd = [
        swaks,
        "--server", f"127.0.0.1:{stack.smtp_port}",
        "--from", "swaks@example.org",
        "--to", "89161234567@sms.test",  # swaks reads a leading "+" as an option
        "--tls", "--tls-verify", "--tls-ca-path", str(stack.ca_file()),
        "--auth", "LOGIN", "--auth-user", "alex", "--auth-password", PASSWORD,
        "--header", "Subject: swaks test",
        "--body", "sent by swaks",
    ]  # fmt: skip
    proc = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<~  235 2.7.0 Authentication successful" in proc.stdout
    [sms] = await stack.smsc.wait_for(1, timeout=10)
    assert (sms.destination_addr, sms.text) == ("79161234567", "swaks test\nsent by swaks")


async def test_swaks_wrong_password_gets_535(stack: Stack) -> None:
    swaks = need("swaks")
    cmd = [
        swaks,
        "--server", f"127.0.0.1:{stack.smtp_port}",
        "--to", "89161234567@sms.test",  # swaks reads a leading "+" as an option
        "--tls", "--tls-verify", "--tls-ca-path", str(stack.ca_file()),
        "--auth", "PLAIN", "--auth-user", "alex", "--auth-password", "wrong",
    ]  # fmt: skip
    proc = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode != 0
    assert "<~* 535 5.7.8 Authentication credentials invalid" in proc.stdout  # ~: inside TLS
    await asyncio.sleep(0.5)
    assert stack.smsc.received == []


# ---- Postfix ---------------------------------------------------------------------------


@contextlib.contextmanager
def postfix_instance(relay_port: int) -> Iterator[Path]:
    """A private Postfix (own config and queue, no listener) relaying all mail to the relay."""
    postfix = need("postfix")
    # A short path: Postfix's UNIX sockets live under the queue directory (108-byte limit).
    base = Path(tempfile.mkdtemp(prefix="pfx"))
    base.chmod(0o755)
    conf, queue, data = base / "conf", base / "queue", base / "data"
    for d in (conf, queue, data):
        d.mkdir()
    shutil.chown(data, "postfix")
    master = Path("/etc/postfix/master.cf").read_text()
    # Local submission only: no smtpd listener.
    master = "\n".join(
        "#" + line if line.startswith(("smtp      inet", "smtp inet")) else line
        for line in master.splitlines()
    )
    (conf / "master.cf").write_text(master + "\n")
    deploy = Path(__file__).parents[2] / "deploy" / "postfix"
    transport = (deploy / "sms-relay-transport").read_text()
    (conf / "sms-relay-transport").write_text(
        transport.replace("sms.example.com", "sms.test").replace(":2525", f":{relay_port}")
    )
    (conf / "main.cf").write_text(
        (deploy / "main.cf.snippet")
        .read_text()
        .replace("sms.example.com", "sms.test")
        .replace("/etc/postfix/sms-relay-transport", str(conf / "sms-relay-transport"))
        + f"""
compatibility_level = 3.6
# Test instance only: its own directories, no listener, log to a file.
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
myhostname = mta.test
myorigin = mta.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
maillog_file = {base}/maillog
maillog_file_prefixes = {base}
smtp_tls_security_level = none
"""
    )
    start = subprocess.run(
        [postfix, "-c", str(conf), "start"], capture_output=True, text=True, timeout=30
    )
    if start.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise AssertionError(f"postfix start failed: {start.stdout}{start.stderr}")
    try:
        yield base
    finally:
        subprocess.run([postfix, "-c", str(conf), "stop"], capture_output=True, timeout=30)
        pid_file = queue / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)


async def _into_postfix(
    stack: Stack,
    base: Path,
    argv: list[str],
    *,
    sms: int,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> list[ReceivedSms]:
    """Run a mail-submitting command against the private Postfix at `base`; the `sms` SMS it
    leads to (Postfix's pickup → qmgr → smtp → the relay flushes at once on submission)."""
    proc = await asyncio.to_thread(
        subprocess.run, argv, input=input, env=env, capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    try:
        return await stack.smsc.wait_for(sms, timeout=30)
    except TimeoutError:
        log = (base / "maillog").read_text(errors="replace")
        raise AssertionError(f"no SMS; postfix log:\n{log}") from None


async def test_postfix_sendmail_reaches_the_smsc(stack: Stack) -> None:
    need("postfix")
    sendmail = need("sendmail")
    with postfix_instance(stack.smtp_port) as base:
        raw = (SAMPLES / "zabbix_base64_utf8_ru.eml").read_bytes()
        received = await _into_postfix(
            stack,
            base,
            [sendmail, "-C", str(base / "conf"), "-f", "zabbix@example.org", "alex@sms.test"],
            sms=3,
            input=raw,
        )
    from tests.unit.test_email2sms import EXPECTED

    assert by_phone(received) == {"79990000001": EXPECTED["zabbix_base64_utf8_ru.eml"]}


# ---- Alertmanager ----------------------------------------------------------------------


async def test_alertmanager_fires_through_starttls_and_auth_login(
    stack: Stack, tmp_path: Path
) -> None:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed (.ci/deps-clients installs it)")
    web = free_port()
    config = (
        (Path(__file__).parents[2] / "deploy" / "alertmanager" / "alertmanager.yml")
        .read_text()
        .replace("sms-relay.example.com:587", f"127.0.0.1:{stack.smtp_port}")
        .replace("/etc/alertmanager/sms-relay-ca.pem", str(stack.ca_file()))
        .replace("ALERT_PASSWORD", PASSWORD)
        .replace("oncall@sms.example.com", "alex@sms.test")
        .replace("auth_username: oncall", "auth_username: alex")
        .replace("group_wait: 30s", "group_wait: 0s")
    )
    (tmp_path / "am.yml").write_text(config)
    log = (tmp_path / "am.log").open("wb")
    am = subprocess.Popen(  # noqa: ASYNC220 - starts at once; waited for in a thread below
        [
            binary,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        alert = [
            {
                "labels": {"alertname": "DiskFull", "instance": "db1:9100", "severity": "critical"},
                "annotations": {"summary": "Disk /var is 97% full on db1"},
            }
        ]

        def post() -> int:
            deadline = time.monotonic() + 20
            while True:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{web}/api/v2/alerts",
                    data=json.dumps(alert).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        return int(resp.status)
                except OSError:
                    if time.monotonic() > deadline or am.poll() is not None:
                        raise
                    time.sleep(0.2)

        assert await asyncio.to_thread(post) == 200
        try:
            received = await stack.smsc.wait_for(2, timeout=30)
        except TimeoutError:
            raise AssertionError(
                "no SMS from Alertmanager; its log:\n"
                + (tmp_path / "am.log").read_text(errors="replace")[-3000:]
            ) from None
    finally:
        am.terminate()
        try:
            am.wait(10)
        except subprocess.TimeoutExpired:
            am.kill()
            am.wait(5)
        log.close()
    # Alertmanager's default HTML-only mail (group_by: alertname, instance), as text.
    assert by_phone(received) == {
        "79990000001": (
            "[FIRING:1] DiskFull db1:9100 (critical)\n"
            "1 alert for alertname=DiskFull instance=db1:9100\nView in Alertmanager\n"
            "[1] Firing\nLabels\nalertname = DiskFull\ninstance = db1:9100\nseverity = critical\n"
            "Annotations\nsummary = Disk /var is 97% full on db1\nSource\nSent by Alertmanager"
        )
    }
    relay_log = stack.relay.log()
    assert PASSWORD not in relay_log


# ---- Nagios' mail command: bsd-mailx → Postfix → the relay ----------------------------

# Nagios 4's stock `notify-host-by-email` (sample config commands.cfg), macros expanded.
NAGIOS_BODY = (
    "***** Nagios *****\\n\\nNotification Type: PROBLEM\\nHost: db1 (Сервер БД, стойка 4)\\n"
    "State: DOWN\\nAddress: 10.0.0.5\\nInfo: PING CRITICAL - Packet loss = 100%\\n\\n"
    "Date/Time: Mon Mar 3 10:12:05 MSK 2025\\n"
)


async def test_nagios_notify_host_by_email_through_bsd_mailx_and_postfix(stack: Stack) -> None:
    """The stock command line as Nagios runs it (no LANG: mailx labels the UTF-8 host alias
    ANSI_X3.4-1968), through the private Postfix configured from deploy/postfix/."""
    need("postfix")
    mail = need("mail")
    with postfix_instance(stack.smtp_port) as base:
        # Nagios runs commands through /bin/sh; MAIL_CONFIG points mailx's sendmail (Postfix)
        # at the private instance.
        command = (
            f'/usr/bin/printf "%b" "{NAGIOS_BODY}" | {mail} '
            '-s "** PROBLEM Host Alert: db1 is DOWN **" alex@sms.test'
        )
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(base / "conf")}
        received = await _into_postfix(stack, base, ["/bin/sh", "-c", command], sms=3, env=env)
    from tests.unit.test_email2sms import EXPECTED

    # The same text as the sample captured from mailx: Postfix's added headers change nothing.
    assert by_phone(received) == {"79990000001": EXPECTED["nagios_bsd_mailx_c_locale_host.eml"]}
    assert len(received) == 3


# ---- Exim: the router and transport of deploy/email2sms-clients.md ---------------------

EXIM_DIR = Path("/opt/sms-relay-ci/exim4")


def exim_binary() -> str:
    """Debian's exim4 conflicts with postfix (both are the system MTA), so .ci/deps-clients
    unpacks exim4-daemon-light's binary instead of installing the package."""
    found = shutil.which("exim4")
    path = found or str(EXIM_DIR / "usr" / "sbin" / "exim4")
    if not Path(path).exists():
        pytest.skip("exim4 is not installed (.ci/deps-clients unpacks exim4-daemon-light)")
    try:
        import pwd

        pwd.getpwnam("Debian-exim")
    except KeyError:
        pytest.skip("no Debian-exim user (Debian's exim4 runs deliveries as it)")
    return path


def exim_snippet() -> tuple[str, str]:
    """(router, transport) as written in deploy/email2sms-clients.md."""
    doc = (Path(__file__).parents[2] / "deploy" / "email2sms-clients.md").read_text()
    section = doc[doc.index("## Exim 4") :]
    block = section.split("```\n")[1]
    router, transport = block.split("# transports\n")
    return router, transport


@contextlib.contextmanager
def exim_instance(binary: str, relay_port: int) -> Iterator[tuple[Path, Path]]:
    """(config, log dir) of a private Exim: own spool and logs, the docs' router and transport."""
    router, transport = exim_snippet()
    base = Path(tempfile.mkdtemp(prefix="exim"))
    base.chmod(0o755)
    spool, logs = base / "spool", base / "log"
    for d in (spool, logs):  # Exim writes both as Debian-exim once it drops root
        d.mkdir()
        shutil.chown(d, "Debian-exim", "Debian-exim")
    conf = base / "exim.conf"
    conf.write_text(
        f"exim_path = {binary}\nspool_directory = {spool}\n"
        f"log_file_path = {logs}/%slog\nprimary_hostname = mta.test\nkeep_environment =\n"
        "begin routers\n"
        + router.replace("sms.example.com", "sms.test").replace("::2525", f"::{relay_port}")
        + "begin transports\n"
        + transport
    )
    try:
        yield conf, logs
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_exim_router_and_transport_from_the_docs(stack: Stack) -> None:
    binary = exim_binary()
    raw = (SAMPLES / "zabbix_html_base64_long_subject.eml").read_bytes()
    with exim_instance(binary, stack.smtp_port) as (conf, logs):
        # -odf: deliver in the foreground, so the mail has reached the relay when exim exits.
        proc = await asyncio.to_thread(
            subprocess.run,
            [binary, "-C", str(conf), "-odf", "-f", "zabbix@example.org", "alex@sms.test"],
            input=raw,
            capture_output=True,
            timeout=30,
            check=False,
        )
        log = await asyncio.to_thread(_read_if_any, logs / "mainlog")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace") + log
    assert "=> alex@sms.test R=sms_relay T=sms_relay_smtp H=127.0.0.1" in log, log
    received = await stack.smsc.wait_for(3, timeout=10)
    from tests.unit.test_email2sms import EXPECTED

    assert by_phone(received) == {"79990000001": EXPECTED["zabbix_html_base64_long_subject.eml"]}
    assert len(received) == 3


def _read_if_any(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
