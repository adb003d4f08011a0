"""The daemon's side of the SMTP worker processes (`smtp.workers` = N > 0).

The daemon alone is one Python process: its SMTP sessions, parsing and the spool writer share one
interpreter lock, so ingest stops at about one core. With `workers = N` the daemon binds the SMTP
address N times with SO_REUSEPORT and starts N processes of relay.smtp_worker, one per set of
sockets (the kernel spreads new connections over them); each runs the SMTP front and asks the
daemon's spool over a socket pair to store what it accepted, while the daemon itself does no SMTP:
it spools, submits over SMPP, mails replies. Its one spool writer commits the stores of every
worker together (group commit) and the SPEC §5 checks see one state. On two cores one worker is
the fastest split (SMTP on one core, the rest on the other: bench/RESULTS.md).

A worker that dies is started again (its sessions in progress are cut: their clients retry, as
after any crash; what was answered `250` is in the spool). Counters for /metrics come from the
workers twice a second and at their stop; a killed worker's last half second is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from relay.config import RelayConfig
from relay.smtp_front import IntakeCounters
from relay.smtp_ipc import Channel
from relay.spool import Spool
from relay.spool.model import NewRequest

log = logging.getLogger("relay.smtp.workers")

READY_SECONDS = 20.0  # a worker that has not said "ready" by then is reported (and waited no more)
RESTART_MIN, RESTART_MAX = 0.5, 30.0
STOP_SECONDS = 6.0
STABLE_SECONDS = 60.0  # a worker that ran this long and exits is restarted at once
RELOAD_SECONDS = 5.0  # SIGTERM → exit; a worker finishes its transactions in ≤ 3 s


def listening_copy(sock: Any, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """A listening duplicate of a bound socket (from `create_server(start_serving=False)`,
    whose sockets are bound but not listening, and which closes them on its own)."""
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    dup.listen(backlog)
    return dup


def add_counters(total: IntakeCounters, snapshot: dict[str, Any]) -> None:
    """Add a worker's counter snapshot into `total` (ints add; by-code dicts add per key)."""
    for f in fields(IntakeCounters):
        value = snapshot.get(f.name)
        if isinstance(value, dict):
            into: dict[Any, int] = getattr(total, f.name)
            for k, n in value.items():
                into[k] = into.get(k, 0) + int(n)
        elif isinstance(value, int):
            setattr(total, f.name, getattr(total, f.name) + value)


async def _late(events: Sequence[asyncio.Event], seconds: float) -> int:
    """Wait until every event is set, at most `seconds`; how many were not."""
    if not events:
        return 0
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    _, late = await asyncio.wait(waits, timeout=seconds)
    for w in late:
        w.cancel()
    return len(late)


@dataclass
class _Slot:
    index: int
    listeners: list[tuple[socket.socket, bool]]  # (socket, implicit TLS)
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reloaded: asyncio.Event = field(default_factory=asyncio.Event)


class SmtpWorkers:
    """Starts, feeds, supervises and stops the SMTP worker processes."""

    def __init__(
        self,
        spool: Spool,
        cfg: RelayConfig,
        listeners: Sequence[Sequence[tuple[socket.socket, bool]]],
        *,
        on_stored: Callable[[bool, bool], None],  # (SMS jobs queued, mails queued)
    ) -> None:
        self.spool = spool
        self.cfg = cfg
        self.on_stored = on_stored
        # one slot per worker, each with its own listening sockets (SO_REUSEPORT)
        self.slots = [_Slot(i, list(socks)) for i, socks in enumerate(listeners)]
        self._retired = IntakeCounters()  # what workers that have exited had counted
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.restarts = 0

    @property
    def alive(self) -> int:
        return sum(1 for s in self.slots if s.proc is not None and s.proc.returncode is None)

    async def start(self) -> None:
        """Start every worker; return when all listen (or after READY_SECONDS, logged)."""
        self._tasks = [
            asyncio.create_task(self._supervise(slot), name=f"smtp-worker-{slot.index}")
            for slot in self.slots
        ]
        late = await _late([slot.ready for slot in self.slots], READY_SECONDS)
        if late:
            log.error("%d SMTP worker(s) not ready after %.0f s", late, READY_SECONDS)

    async def reload(self, cfg: RelayConfig) -> None:
        """SIGHUP: the new config to every worker (each swaps its rules and TLS certificate);
        returns when each has said it did (or after RELOAD_SECONDS, logged)."""
        self.cfg = cfg  # also what a worker started from now on gets
        dumped = cfg.model_dump(mode="json")
        told: list[asyncio.Event] = []
        for slot in self.slots:
            if slot.channel is not None and not slot.channel.closed:
                slot.reloaded.clear()
                slot.channel.event("config", dumped)
                told.append(slot.reloaded)
        late = await _late(told, RELOAD_SECONDS)
        if late:
            log.error("%d SMTP worker(s) did not confirm the reload", late)

    async def stop(self) -> None:
        """SIGTERM every worker, wait for them to finish their transactions, kill the rest."""
        self._stopping = True
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
            for slot in self.slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    log.warning("SMTP worker %d did not stop in time: killed", slot.index)
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.kill()
            if late:
                await asyncio.wait(late, timeout=2.0)
        for slot in self.slots:
            for sock, _ in slot.listeners:
                sock.close()

    # -- one worker ---------------------------------------------------------------------

    async def _supervise(self, slot: _Slot) -> None:
        delay = RESTART_MIN
        while not self._stopping:
            started = time.monotonic()
            try:
                code = await self._run_once(slot)
            except OSError as exc:
                log.error("cannot start SMTP worker %d: %s", slot.index, exc)
                code = None
            add_counters(self._retired, slot.counters)
            slot.counters = {}
            if time.monotonic() - started > STABLE_SECONDS:
                delay = RESTART_MIN  # it ran fine for a while: not a crash loop
            await asyncio.sleep(delay)  # (a stop of the whole daemon may be on its way)
            if self._stopping:
                return
            log.error("SMTP worker %d exited (%s): starting it again", slot.index, code)
            self.restarts += 1
            delay = min(delay * 2, RESTART_MAX)

    async def _run_once(self, slot: _Slot) -> int | None:
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(s.fileno() for s, _ in slot.listeners)]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.smtp_worker",
                "--channel",
                str(theirs.fileno()),
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
                # systemd's notify socket is the daemon's alone (NotifyAccess=main)
                env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
            )
        finally:
            theirs.close()
        slot.proc = proc
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        channel = Channel(
            reader,
            writer,
            on_call=self._call,
            on_event=lambda name, payload: self._event(slot, name, payload),
        )
        slot.channel = channel
        channel.event(
            "start",
            {
                "config": self.cfg.model_dump(mode="json"),
                "listen": [(s.fileno(), tls) for s, tls in slot.listeners],
            },
        )
        serving = asyncio.ensure_future(channel.serve())
        try:
            code = await proc.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(serving), 1.0)  # its last counters
            await channel.finish()
        finally:
            serving.cancel()
            channel.close()
            slot.channel = None
            slot.ready.clear()
        return code

    def _event(self, slot: _Slot, name: str, payload: Any) -> None:
        if name == "ready":
            log.info("SMTP worker %d (pid %s) listening", slot.index, payload)
            slot.ready.set()
        elif name == "reloaded":
            slot.reloaded.set()
        elif name == "counters" and isinstance(payload, dict):
            slot.counters = payload

    def total(self) -> IntakeCounters:
        """Every worker's counters summed (live ones, and those that exited)."""
        total = IntakeCounters()
        add_counters(total, asdict(self._retired))
        for slot in self.slots:
            add_counters(total, slot.counters)
        return total

    async def _call(self, method: str, args: tuple[Any, ...]) -> Any:
        spool = self.spool
        if method == "ip_blocked":
            return await spool.ip_blocked(str(args[0]), float(args[1]))
        if method == "store":
            requests: list[NewRequest] = [args[0]]
            result: Any = await spool.store(args[0])
        elif method == "store_all":
            requests = list(args[0])
            result = await spool.store_all(requests)
        else:
            raise ValueError(f"unknown call {method!r}")
        if any(r.ip_failure for r in requests):  # may have blocked an IP: every worker asks anew
            for slot in self.slots:
                if slot.channel is not None:
                    slot.channel.event("blocks")
        self.on_stored(
            any(r.jobs and not r.error for r in requests), any(r.mails for r in requests)
        )
        return result
