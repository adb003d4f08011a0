"""One SMTP worker process (`smtp.workers` > 1): `python -m relay.smtp_worker --channel FD`.

The daemon binds the listening sockets and starts the workers with them inherited; each worker
accepts connections on them and runs the same SMTP front as the daemon does alone (sessions,
AUTH, parsing, validation, SPEC §5's IP check) on its own event loop and its own core. What needs
the spool goes back to the daemon over the channel (relay.smtp_ipc): the daemon's spool writer
commits the stores of all workers together (group commit) and only then does the worker answer
`250`. The daemon sends the config at start and again after a SIGHUP; the worker never reads it
from disk. The worker stops when it gets SIGTERM (after its transactions in progress, like the
daemon alone) or when the daemon's end of the channel closes; SIGINT (Ctrl-C in a terminal
reaches the whole process group) is left to the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from relay.config import RelayConfig
from relay.logs import Redactor, secrets_of, setup_logging
from relay.smtp_front import CommandMailHandler, IntakeCounters
from relay.smtp_ipc import Channel
from relay.spool.model import NewRequest, StoreResult

log = logging.getLogger("relay.smtp.worker")

COUNTERS_EVERY = 0.5  # seconds between the counter snapshots sent for /metrics
BLOCK_CACHE_SECONDS = 1.0  # an IP's block state is asked again after this long
DRAIN_SECONDS = 3.0  # like relay.app.SMTP_DRAIN_SECONDS


class RemoteSpool:
    """The three spool calls the SMTP front makes, answered by the daemon's spool.

    The IP-block answers are kept for up to a second per IP (the daemon tells every worker at
    once when a stored refusal may have blocked an IP, which clears them)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._blocks: dict[str, tuple[bool, float]] = {}

    async def ip_blocked(self, client_ip: str, now: float) -> bool:
        tick = time.monotonic()
        known = self._blocks.get(client_ip)
        if known is not None and tick - known[1] < BLOCK_CACHE_SECONDS:
            return known[0]
        blocked = bool(await self.channel.call("ip_blocked", client_ip, now))
        if len(self._blocks) > 10_000:
            self._blocks.clear()
        self._blocks[client_ip] = (blocked, tick)
        return blocked

    def blocks_changed(self) -> None:
        self._blocks.clear()

    async def store(self, request: NewRequest) -> StoreResult:
        result: StoreResult = await self.channel.call("store", request)
        return result

    async def store_all(self, requests: Sequence[NewRequest]) -> list[StoreResult]:
        results: list[StoreResult] = await self.channel.call("store_all", list(requests))
        return results


class Worker:
    """The SMTP front of one worker process."""

    def __init__(self, channel_fd: int) -> None:
        self.channel_fd = channel_fd
        self.cfg: asyncio.Future[RelayConfig] | None = None
        self.handler: CommandMailHandler | None = None
        self.redactor: Redactor | None = None
        self.tls: ssl.SSLContext | None = None
        self.spool: RemoteSpool | None = None
        self.channel: Channel | None = None
        self._listen: list[tuple[int, bool]] = []  # (fd, implicit TLS)
        self._stop = asyncio.Event()

    def on_event(self, name: str, payload: Any) -> None:
        if name == "start":
            cfg = RelayConfig.model_validate(payload["config"])
            self._listen = [(int(fd), bool(tls)) for fd, tls in payload["listen"]]
            if self.cfg is not None and not self.cfg.done():
                self.cfg.set_result(cfg)
        elif name == "config":
            self._reload(RelayConfig.model_validate(payload))
            if self.channel is not None:
                self.channel.event("reloaded")
        elif name == "blocks" and self.spool is not None:
            self.spool.blocks_changed()

    def _reload(self, cfg: RelayConfig) -> None:
        from relay.app import intake_rules, rate_rules, reload_tls

        if self.redactor is not None:
            self.redactor.update([*self.redactor.secrets, *secrets_of(cfg)])
        try:
            reload_tls(self.tls, cfg)
        except Exception as exc:  # the daemon checked the files a moment ago; keep the old one
            log.error("SIGHUP: TLS certificate not reloaded: %s", exc)
        if self.handler is not None:
            self.handler.rules = intake_rules(cfg)
            self.handler.rates = rate_rules(cfg)

    async def run(self) -> None:
        from relay.app import smtp_front, tls_context

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        # Ctrl-C in a terminal reaches every process of the group: the daemon decides (it
        # stops the workers with SIGTERM after it stopped taking connections itself).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the daemon sends the new config
        sock = socket.socket(fileno=self.channel_fd)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        channel = Channel(reader, writer, on_event=self.on_event)
        self.channel = channel
        self.cfg = loop.create_future()
        serving = asyncio.ensure_future(channel.serve())
        serving.add_done_callback(lambda _: self._stop.set())  # the daemon's end closed
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((self.cfg, stopped), timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not self.cfg.done():
            if not self._stop.is_set():
                log.error("no configuration from the daemon within 30 s")
            stopped.cancel()
            return
        cfg = self.cfg.result()
        self.redactor = setup_logging(cfg.log, secrets_of(cfg))
        self.spool = RemoteSpool(channel)
        counters = IntakeCounters()
        self.tls = tls_context(cfg)
        self.handler, factory = smtp_front(
            cfg,
            spool=self.spool,
            on_stored=lambda _: None,  # the daemon wakes its dispatcher when it stores
            counters=counters,
            tls=self.tls,
            loop=loop,
        )
        servers = []
        for fd, implicit_tls in self._listen:
            listener = socket.socket(fileno=fd)
            ssl_ctx = self.tls if implicit_tls else None
            servers.append(await loop.create_server(factory, sock=listener, ssl=ssl_ctx))
        channel.event("ready", os.getpid())
        reporter = asyncio.ensure_future(self._report(channel, counters))
        await stopped
        for server in servers:
            server.close()
        if not channel.closed:  # finish the transactions in progress (they need the daemon)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.handler.drain(), DRAIN_SECONDS)
        reporter.cancel()
        channel.event("counters", asdict(counters))
        await channel.drain()
        channel.close()
        serving.cancel()

    async def _report(self, channel: Channel, counters: IntakeCounters) -> None:
        last: dict[str, Any] = {}
        while True:
            await asyncio.sleep(COUNTERS_EVERY)
            now = asdict(counters)
            if now != last:
                channel.event("counters", now)
                last = now


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m relay.smtp_worker", description=__doc__)
    ap.add_argument("--channel", type=int, required=True, help="the inherited socket's fd")
    args = ap.parse_args(argv)
    # Until the daemon's config arrives (and after a crash before that), errors go to stderr.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(Worker(args.channel).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
