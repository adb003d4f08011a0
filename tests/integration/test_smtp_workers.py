"""`smtp.workers` = N > 0: the SMTP front in N worker processes, the spool in the daemon.

The real daemon (`python -m relay serve`), real SMTP clients (smtplib), the SMSC simulator: a
worker killed mid-run is replaced and nothing accepted is lost or sent twice; many concurrent
sessions over the workers each give exactly one SMS; the daemon's stop (or its death) ends
every worker and frees the port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.harness import command_mail, send_mail
from tests.integration.test_operations import PASSWORD, Daemon, daemon, http_get, scrape
from tests.postgres import pg_reset, pg_url  # noqa: F401 - pg_url is a fixture


def workers_of(d: Daemon) -> list[int]:
    """The daemon's child processes that run relay.smtp_worker (from /proc)."""
    assert d.relay.proc is not None
    pid = d.relay.proc.pid
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(k) for k in (task / "children").read_text().split()]
    return [k for k in kids if b"relay.smtp_worker" in _cmdline(k)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """Whether the process runs (an exited one not yet reaped, a zombie, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


async def send_text(port: int, text: str, phone: str = "79161234567") -> None:
    body = f"alex:{PASSWORD}::::{phone}:{text}"
    refused = await asyncio.to_thread(
        send_mail, port, "ops@example.org", ["send@sms.test"], command_mail(body)
    )
    assert refused == {}


async def test_a_killed_worker_is_replaced_and_no_accepted_mail_is_lost(tmp_path: Path) -> None:
    async with daemon(tmp_path, smtp={"workers": 2}) as d:
        first = workers_of(d)
        assert len(first) == 2
        for i in range(4):
            await send_text(d.smtp_port, f"before kill {i}")
        os.kill(first[0], signal.SIGKILL)
        # New connections keep being answered: by the other worker, and the ones the kernel
        # hashed to the killed worker's socket wait in its queue for the replacement.
        for i in range(16):
            await send_text(d.smtp_port, f"after kill {i}")
        got = await d.smsc.wait_for(20, timeout=20)
        texts = Counter(s.text for s in got)
        assert texts == Counter(
            [f"before kill {i}" for i in range(4)] + [f"after kill {i}" for i in range(16)]
        )
        assert await wait_until(lambda: len(workers_of(d)) == 2)
        now = workers_of(d)
        assert first[1] in now and first[0] not in now
        status, body = await asyncio.to_thread(http_get, d.metrics_port, "/healthz")
        assert status == 200
        assert json.loads(body)["smtp_workers"] == 2
        # Workers report their counters twice a second; the killed one's last report may be
        # missing, never the live ones' (16 sessions after the kill, summed over the workers).
        deadline = time.monotonic() + 5
        while True:
            got = await asyncio.to_thread(scrape, d.metrics_port)
            if got["sms_relay_smtp_sessions_total{}"] >= 16 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert got["sms_relay_smtp_sessions_total{}"] >= 16
        assert got["sms_relay_smtp_workers{}"] == 2
        assert got["sms_relay_smtp_worker_restarts_total{}"] == 1
        await asyncio.sleep(0.3)
        assert len(d.smsc.received) == 20  # nothing sent twice


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_concurrent_sessions_over_the_workers_each_give_one_sms(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    spool: dict[str, str] = {}
    if backend == "postgres":  # the daemon's spool is whatever it is: the workers only ask it
        url = request.getfixturevalue("pg_url")
        pg_reset(url)
        spool = {"url": url}
    async with daemon(tmp_path, smtp={"workers": 2}, metrics=False, spool=spool) as d:
        texts = [f"concurrent {i}" for i in range(60)]
        # Different numbers: the same text to one number within 60 s is a duplicate (SPEC §5).
        await asyncio.gather(
            *(send_text(d.smtp_port, t, phone=f"7916{i:07d}") for i, t in enumerate(texts))
        )
        got = await d.smsc.wait_for(60, timeout=20)
        assert sorted(s.text for s in got) == sorted(texts)
        assert sorted(s.destination_addr for s in got) == sorted(f"7916{i:07d}" for i in range(60))
        await asyncio.sleep(0.3)
        assert len(d.smsc.received) == 60


async def test_stop_ends_every_worker_and_frees_the_port(tmp_path: Path) -> None:
    async with daemon(tmp_path, smtp={"workers": 3}, metrics=False) as d:
        pids = workers_of(d)
        assert len(pids) == 3
        await send_text(d.smtp_port, "one before the stop")
        await d.smsc.wait_for(1)
        d.relay.signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.relay.wait, 15) == 0
        assert await wait_until(lambda: not any(alive(p) for p in pids))
        with pytest.raises(ConnectionRefusedError):  # nothing listens on the SMTP port
            socket.create_connection(("127.0.0.1", d.smtp_port), timeout=2).close()
        with socket.socket() as s:  # and a new daemon could bind it (as servers do, with
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT left over)
            s.bind(("127.0.0.1", d.smtp_port))


async def test_workers_end_when_the_daemon_is_killed(tmp_path: Path) -> None:
    async with daemon(tmp_path, smtp={"workers": 3}, metrics=False) as d:
        pids = workers_of(d)
        assert len(pids) == 3
        d.relay.signal(signal.SIGKILL)
        await asyncio.to_thread(d.relay.wait, 10)
        # The channel to the daemon closes: each worker stops instead of answering 451s.
        assert await wait_until(lambda: not any(alive(p) for p in pids), timeout=10)
