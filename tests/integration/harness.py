"""Test harness: the real daemon in a subprocess, a reply sink, and mail-sending helpers.

Everything listens on 127.0.0.1 with ports the OS picks; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SinkMail:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def text(self) -> str:
        msg = self.message
        assert isinstance(msg, EmailMessage)
        body = msg.get_body(("plain",))
        assert body is not None
        return str(body.get_content()).strip()  # type: ignore[attr-defined]


@dataclass
class ReplySink:
    """An aiosmtpd server in the test's loop that keeps every mail it receives."""

    mails: list[SinkMail] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mails.append(
            SinkMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        self._arrived.set()
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="sink.test", loop=loop), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMail]:
        deadline = time.monotonic() + timeout
        while len(self.mails) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"expected {count} mail(s), got {len(self.mails)}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return self.mails


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        items = (f"{toml_value(str(k))} = {toml_value(x)}" for k, x in v.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(v)


def write_config(
    path: Path, sections: dict[str, dict[str, Any]], accounts: list[dict[str, Any]]
) -> Path:
    lines: list[str] = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for acc in accounts:
        lines.append("[[accounts]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in acc.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class RelayProcess:
    """`python -m relay serve -c FILE` as a child process, as an operator would run it."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, smtp_port: int, timeout: float = 15.0) -> None:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "-c", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
            cwd=self.config.parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"relay exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", smtp_port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"relay did not listen on {smtp_port}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def send_mail(port: int, mail_from: str, rcpts: list[str], data: bytes | str) -> dict[str, Any]:
    """Send with Python's smtplib (a real client); returns the refused-recipients dict."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return dict(client.sendmail(mail_from, rcpts, data))


def command_mail(
    body: str,
    *,
    charset: str | None = "utf-8",
    sender: str = "ops@example.org",
    to: str = "send@sms.test",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A plain-text command mail; `charset=None` leaves the charset undeclared (8bit body)."""
    enc = charset or "koi8-r"
    head = [
        f"From: {sender}",
        f"To: {to}",
        "Subject: sms",
        "Message-ID: <req-1@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain" + (f"; charset={charset}" if charset else ""),
        "Content-Transfer-Encoding: 8bit",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body.encode(enc) + b"\r\n"
