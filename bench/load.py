"""SMTP load: Postfix's smtp-source when installed, else an asyncio client of our own.

Both send the same bytes: a pre-formatted command mail (smtp-source `-F`), EHLO once per
connection, then MAIL/RCPT/DATA per mail, without pipelining; either one connection per
session for all its mails (`reuse`) or a new connection per mail.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import PASSWORD

MAIL_FROM = "ops@example.org"
RCPT = "send@sms.test"


def command_mail(text: str, phone: str = "89161234567", *, size: int = 500) -> bytes:
    """A single-mode command mail (SPEC §3), padded with headers to about `size` octets."""
    head = [
        f"From: {MAIL_FROM}",
        f"To: {RCPT}",
        "Subject: sms",
        "Message-ID: <bench@example.org>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    body = f"bench:{PASSWORD}:::,0,Bench,0:{phone}:{text}\r\n"
    raw = "\r\n".join(head) + "\r\n"
    pad = size - len(raw) - len(body) - 2 - len("X-Pad: \r\n")
    if pad > 0:
        raw += "X-Pad: " + "x" * pad + "\r\n"
    return (raw + "\r\n" + body).encode("utf-8")


def list_mail(chars: int = 1000) -> bytes:
    """A list-mode command mail (SPEC §3) whose list is about `chars` characters long."""
    lines: list[str] = []
    n = 0
    while sum(len(x) + 1 for x in lines) < chars:
        lines.append(f"8916{1000000 + n:07d}:Disk {n} on host db{n} is 91% full, check it now")
        n += 1
    body = f"bench:{PASSWORD}:::,0,Bench,0::\r\n" + "\r\n".join(lines) + "\r\n"
    head = f"From: {MAIL_FROM}\r\nTo: {RCPT}\r\nSubject: sms\r\nContent-Type: text/plain\r\n\r\n"
    return (head + body).encode("utf-8")


def smtp_source_path() -> str | None:
    return shutil.which("smtp-source") or (
        "/usr/sbin/smtp-source" if Path("/usr/sbin/smtp-source").exists() else None
    )


def run_smtp_source(
    exe: str, port: int, *, sessions: int, count: int, reuse: bool, mail_file: Path, timeout: float
) -> float:
    """Run smtp-source to completion (bounded by `timeout`); the wall-clock seconds it took."""
    args = [exe, "-s", str(sessions), "-m", str(count), "-f", MAIL_FROM, "-t", RCPT]
    args += ["-M", "bench.example.org", "-F", str(mail_file)]
    if reuse:
        args.append("-d")
    started = time.monotonic()
    done = subprocess.run(
        [*args, f"127.0.0.1:{port}"], capture_output=True, timeout=timeout, check=False
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stderr.decode()[:500]}")
    return elapsed


@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0  # 250 answers to DATA
    other: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    answered: dict[int, float] = field(default_factory=dict)  # mail index → time of its 250


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return line

    async def command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self.reply()


async def _connect(port: int) -> _Client:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = _Client(reader, writer)
    await client.reply()
    await client.command(b"EHLO bench.example.org")
    return client


async def _close(client: _Client) -> None:
    try:
        await client.command(b"QUIT")
    finally:
        client.writer.close()


async def drive(
    port: int,
    *,
    sessions: int,
    count: int,
    reuse: bool,
    make_mail: Callable[[int], bytes],
    time_limit: float,
    rate: float | None = None,
) -> LoadResult:
    """Send `count` mails over `sessions` sessions (paced at `rate`/s when given)."""
    result = LoadResult()
    next_index = 0
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def session() -> None:
        nonlocal next_index
        client: _Client | None = None
        try:
            while next_index < count:
                i = next_index
                next_index += 1
                if rate is not None:
                    delay = started + i / rate - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if client is None:
                    client = await _connect(port)
                data = make_mail(i)
                await client.command(b"MAIL FROM:<" + MAIL_FROM.encode() + b">")
                await client.command(b"RCPT TO:<" + RCPT.encode() + b">")
                await client.command(b"DATA")
                client.writer.write(data + b".\r\n")
                result.sent += 1
                answer = await client.reply()
                if answer.startswith(b"250"):
                    result.accepted += 1
                    result.answered[i] = time.monotonic()
                else:
                    key = answer[:3].decode()
                    result.other[key] = result.other.get(key, 0) + 1
                if not reuse:
                    await _close(client)
                    client = None
        finally:
            if client is not None:
                await _close(client)

    async with asyncio.timeout(time_limit):
        await asyncio.gather(*(session() for _ in range(sessions)))
    result.elapsed = loop.time() - started
    return result


def send(
    exe: str | None,
    port: int,
    *,
    sessions: int,
    count: int,
    reuse: bool,
    mail: bytes,
    mail_file: Path,
    timeout: float,
) -> tuple[float, int, dict[str, int]]:
    """`count` copies of `mail` by smtp-source (`exe`), or by `drive` when it is None: the wall
    seconds, the mails answered `250` (smtp-source fails as a whole instead) and other answers."""
    if exe is not None:
        elapsed = run_smtp_source(
            exe,
            port,
            sessions=sessions,
            count=count,
            reuse=reuse,
            mail_file=mail_file,
            timeout=timeout,
        )
        return elapsed, count, {}
    res = asyncio.run(
        drive(
            port,
            sessions=sessions,
            count=count,
            reuse=reuse,
            make_mail=lambda i: mail,
            time_limit=timeout,
        )
    )
    return res.elapsed, res.accepted, res.other
