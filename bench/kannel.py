"""Kannel (bearerbox + smsbox) as a peer gateway for the `peers` benchmark (issue #9, item 7).

`bench/setup` installs Debian's `kannel` package; nothing here runs in CI. The bench writes its
own kannel.conf into the work directory (every port on 127.0.0.1, free ports, one SMPP smsc
group pointed at the bench's SMPP sink), starts bearerbox and smsbox with `-v 2` (warnings
only: their per-message debug output would otherwise dominate the run) and always stops them.

Messages go in through smsbox's sendsms HTTP interface. The client below is a few lines of raw
asyncio HTTP/1.1 with keep-alive instead of httpx: measured here against the same smsbox (5000
requests, 20 connections), httpx.AsyncClient cost ≈2.2 ms of CPU per request and fed Kannel at
≈450/s, this client ≈50 µs per request at ≈8 500/s; with httpx the client, not Kannel, would be
the thing measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from bench.procs import START_TIMEOUT, terminate, wait_port
from tests.integration.harness import free_port

SENDSMS_USER = "bench"
SENDSMS_PASSWORD = "bench-pass"
# Kannel's default for SMPP (`max-pending-submits`): submit_sm outstanding without a response.
KANNEL_WINDOW = 10


def bearerbox_path() -> str | None:
    return shutil.which("bearerbox") or (
        "/usr/sbin/bearerbox" if Path("/usr/sbin/bearerbox").exists() else None
    )


def smsbox_path() -> str | None:
    return shutil.which("smsbox") or (
        "/usr/sbin/smsbox" if Path("/usr/sbin/smsbox").exists() else None
    )


def kannel_installed() -> bool:
    return bearerbox_path() is not None and smsbox_path() is not None


def config(
    *, admin_port: int, smsbox_port: int, sendsms_port: int, smpp_port: int, window: int
) -> str:
    """kannel.conf: core, one SMPP transceiver smsc group, smsbox, one sendsms user.

    No store-file: Kannel queues in memory (its default), so a crash loses what it holds; the
    relay commits every job to SQLite before its `250`. (Kannel's `store-type = file` was
    measured at the same rate here, and strace shows it write()s without any fsync: it survives
    a process crash, not a power loss.) No delivery reports are asked for.
    """
    return f"""\
group = core
admin-port = {admin_port}
admin-interface = 127.0.0.1
admin-password = bench
smsbox-port = {smsbox_port}
smsbox-interface = 127.0.0.1
box-allow-ip = 127.0.0.1
log-level = 2

group = smsc
smsc = smpp
smsc-id = sink
host = 127.0.0.1
port = {smpp_port}
transceiver-mode = true
smsc-username = relay
smsc-password = secret
system-type = ""
interface-version = 34
max-pending-submits = {window}
enquire-link-interval = 30
reconnect-delay = 1
source-addr-ton = 5
source-addr-npi = 0
dest-addr-ton = 1
dest-addr-npi = 1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox_port}
sendsms-port = {sendsms_port}
sendsms-interface = 127.0.0.1
log-level = 2

group = sendsms-user
username = {SENDSMS_USER}
password = {SENDSMS_PASSWORD}
max-messages = 1
concatenation = false
"""


class Kannel:
    """bearerbox + smsbox in `workdir`, feeding the SMPP server on `smpp_port`; stopped on exit."""

    def __init__(self, workdir: Path, smpp_port: int, *, window: int = KANNEL_WINDOW) -> None:
        bearerbox, smsbox = bearerbox_path(), smsbox_path()
        if bearerbox is None or smsbox is None:
            raise RuntimeError("Kannel is not installed: run bench/setup (Debian package kannel)")
        self.bearerbox_exe, self.smsbox_exe = bearerbox, smsbox
        self.workdir = workdir
        self.admin_port, self.smsbox_port, self.sendsms_port = free_port(), free_port(), free_port()
        self.conf = workdir / "kannel.conf"
        self.conf.write_text(
            config(
                admin_port=self.admin_port,
                smsbox_port=self.smsbox_port,
                sendsms_port=self.sendsms_port,
                smpp_port=smpp_port,
                window=window,
            )
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, exe: str, port: int) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [exe, "-v", "2", str(self.conf)], stdout=out, stderr=out, cwd=self.workdir
            )
        self.procs.append(proc)
        wait_port(port, proc, log, START_TIMEOUT)
        return proc

    def __enter__(self) -> Kannel:
        try:
            self.bearerbox = self._start("bearerbox", self.bearerbox_exe, self.smsbox_port)
            self.smsbox = self._start("smsbox", self.smsbox_exe, self.sendsms_port)
        except BaseException:
            self.stop()
            raise
        return self

    def status(self) -> str:
        """bearerbox's status.txt from the admin interface."""
        url = f"http://127.0.0.1:{self.admin_port}/status.txt?password=bench"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bytes(answer.read()).decode("latin-1")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the smsc is bound (`online`) and smsbox is connected to bearerbox."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.status()
            if "(online" in text and "No boxes connected" not in text:
                return
            time.sleep(0.1)
        raise RuntimeError(f"Kannel not ready within {timeout} s:\n{text}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """smsbox first, then bearerbox: SIGTERM, then SIGKILL after 10 s."""
        for proc in reversed(self.procs):
            terminate(proc)
        self.procs.clear()


# -- the sendsms HTTP load -----------------------------------------------------------------


@dataclass
class SendResult:
    accepted: int = 0  # 202 "Accepted for delivery" (or any 2xx)
    other: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0


def sendsms_target(i: int, sender: str = "Bench") -> bytes:
    """The request line's target for message `i`: a one-part text to one of 1000 numbers."""
    query = urllib.parse.urlencode(
        {
            "username": SENDSMS_USER,
            "password": SENDSMS_PASSWORD,
            "from": sender,
            "to": f"7916{i % 1000:07d}",
            "text": f"Disk full on db1 {i}",
        }
    )
    return f"/cgi-bin/sendsms?{query}".encode()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; its status and whether the server keeps the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, keep = 0, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


async def sendsms_load(port: int, count: int, *, concurrency: int, time_limit: float) -> SendResult:
    """`count` sendsms GETs over `concurrency` keep-alive connections, each one at a time.

    The connections are opened first, one after the other, and the clock starts only then:
    smsbox's listen backlog is small, and 20 SYNs at once get some of them dropped and retried
    by the kernel a second later, which would put a 1 s hole in the middle of the measurement.
    """
    result = SendResult()
    next_index = 0
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            writer.write(b"GET " + sendsms_target(i) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, keep = await _response(reader)
            if 200 <= status < 300:
                result.accepted += 1
            else:
                result.other[str(status)] = result.other.get(str(status), 0) + 1
            if not keep:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                conns.append((reader, writer))

    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(time_limit):
            for _ in range(concurrency):
                conns.append(await asyncio.open_connection("127.0.0.1", port))
            started = loop.time()
            await asyncio.gather(*(connection(r, w) for r, w in list(conns)))
            result.elapsed = loop.time() - started
    finally:
        for _, writer in conns:
            writer.close()
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0 when it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
        return ticks / os.sysconf("SC_CLK_TCK")
    return 0.0
