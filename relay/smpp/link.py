"""One SMPP bind to the upstream on asyncio: connect, bind, window, pacing, keepalive, reconnect.

The protocol lives in `session.EsmeSession` (sans-IO); this module only moves its bytes and keeps
time. Exceptions a caller of `UpstreamLink.submit` sees::

    ConnectionError
    └── LinkDown        the connection was lost (or the link is stopping) while the submit was
                        outstanding or before it could be sent: the outcome is unknown → retry
    TimeoutError
    └── SubmitTimeout   no submit_sm_resp within smpp.response_timeout: outcome unknown → retry

Both are SPEC §9 transient failures; the worker retries with backoff (at-least-once).

Throttling (SPEC §9): a submit_sm_resp with ESME_RTHROTTLED (0x58) or ESME_RMSGQFUL (0x14)
makes this link hold all further sends for a pause that starts at `throttle_pause` (1 s) and
doubles on each further throttle response up to `throttle_pause_max` (10 s); the first accepted
submit resets it. `submit(sm, throttle_retry_for=T)` then sends the same submit_sm again after the
pause, keeping its window slot and going before every other submit waiting on this link (a
throttled message never loses its place, unlike Kannel/Jasmin's requeue at the tail); after T
seconds of throttling the throttle outcome is returned. The throttled attempt was refused by the
SMSC, so resending it cannot create a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from relay.config import SmppConfig
from relay.smpp import codec
from relay.smpp.model import DeliverSm, SubmitOutcome, SubmitSm
from relay.smpp.session import (
    BindResponse,
    Deliver,
    EnquireLinkResponse,
    EsmeSession,
    Event,
    Nack,
    Rejected,
    SubmitResponse,
    UnbindRequested,
    UnbindResponse,
)

log = logging.getLogger("relay.smpp")

LinkState = Literal["down", "connecting", "binding", "bound", "unbinding", "stopped"]

# Bind refusals that mean the credentials are wrong (SMPP 3.4 §5.1.3): retried slowly.
CREDENTIAL_ERRORS: Final = frozenset(
    {codec.ESME_RBINDFAIL, codec.ESME_RINVPASWD, codec.ESME_RINVSYSID}
)
THROTTLE_STATUSES: Final = frozenset({codec.ESME_RTHROTTLED, codec.ESME_RMSGQFUL})
# How long stop() waits for the unbind_resp (SMPP 3.4 §4.2: the SMSC should answer at once).
UNBIND_WAIT: Final = 1.0
# deliver_sm handled at once per connection; more wait (and the SMSC waits for their resps).
MAX_CONCURRENT_DELIVERS: Final = 32
READ_SIZE: Final = 65536


class _BindLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the bind's name and state as fields (JSON logs get them as keys)."""

    def __init__(self, logger: logging.Logger, link: UpstreamLink) -> None:
        super().__init__(logger, {})
        self.link = link

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("bind", self.link.name)
        extra.setdefault("bind_state", self.link.state)
        kwargs["extra"] = extra
        return msg, kwargs


class LinkDown(ConnectionError):
    """The connection was lost, or the link is stopping; a submit's outcome is unknown."""


class SubmitTimeout(TimeoutError):
    """No submit_sm_resp within response_timeout; the submit's outcome is unknown."""


class _ConnectionEnded(Exception):
    """Internal: this connection is over (peer closed, unbind, dead keepalive, garbage)."""


class _Window:
    """The bind's window: `size` slots, taken at once when one is free (`try_take`, the submit
    fast path) or waited for in arrival order (`take`). Hand-written rather than an
    asyncio.Semaphore, which has no non-blocking acquire: the fast path must not await."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # give() hands its slot over by resolving this
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # the slot was handed over as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


Answered = Callable[[SubmitOutcome | BaseException], None]


class _Answer:
    """A fast-path submit's entry in `_Connection.pending`: takes what the read loop, the
    timeout sweep and a lost connection give a Future, but calls back at once, where a Future
    would schedule its callbacks for later loop turns (issue 9: three turns per window-full)."""

    __slots__ = ("_callback", "_done")

    def __init__(self, callback: Answered) -> None:
        self._callback = callback
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, outcome: SubmitOutcome) -> None:
        if not self._done:
            self._done = True
            self._callback(outcome)

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._done = True
            self._callback(exc)


class _Connection:
    """One TCP connection and what is outstanding on it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, now: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = EsmeSession()
        # sequence → (the submit's future, its response deadline on the loop clock); in send
        # order, so the deadlines are in order too (see UpstreamLink._expire).
        self.pending: dict[int, tuple[asyncio.Future[SubmitOutcome] | _Answer, float]] = {}
        self.enquiries: dict[int, asyncio.Future[None]] = {}
        self.unbind_done: asyncio.Future[None] | None = None
        self.last_rx = now
        self.closed = False
        self.deliver_slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERS)
        # Events read together with the bind response (a receipt right behind bind_resp).
        self.early_events: list[Event] = []
        self._flush_due = False

    def flush(self) -> None:
        self._flush_due = False
        data = self.session.data_to_send()
        if data and not self.closed:
            self.writer.write(data)

    def flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Write at the next loop turn: the submits made in this turn leave in one write
        (one syscall for a whole round, not one per submit_sm)."""
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self.flush)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    def fail_all(self, reason: str) -> None:
        for fut, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(LinkDown(reason))
        self.pending.clear()
        for waiter in self.enquiries.values():
            waiter.cancel()
        self.enquiries.clear()
        if self.unbind_done is not None and not self.unbind_done.done():
            self.unbind_done.cancel()


class UpstreamLink:
    """One bind (SPEC §9). Run `run()` in the daemon's TaskGroup; submit from any task."""

    def __init__(
        self,
        cfg: SmppConfig,
        *,
        name: str = "bind-0",
        on_deliver: Callable[[DeliverSm], Awaitable[None]],
        throttle_pause: float = 1.0,
        throttle_pause_max: float = 10.0,
    ) -> None:
        self._cfg = cfg
        self.name = name
        self._log = _BindLog(log, self)
        self._on_deliver = on_deliver
        self._throttle_pause = throttle_pause
        self._throttle_pause_max = throttle_pause_max
        # State and counters for metrics (read-only for others).
        self.state: LinkState = "down"
        self.connects = 0  # TCP connections made
        self.reconnects = 0  # connections lost or refused after which we try again
        self.bind_refusals = 0
        self.submits = 0  # submit_sm sent
        self.throttled = 0  # ESME_RTHROTTLED / ESME_RMSGQFUL responses
        self.submit_timeouts = 0
        self.enquire_link_timeouts = 0
        self.delivers = 0  # deliver_sm/data_sm received
        self.rejected_pdus = 0  # PDUs from the SMSC answered with generic_nack
        self.last_bind_status: int | None = None
        self._conn: _Connection | None = None
        self._window = _Window(cfg.window)
        self._resends: set[asyncio.Task[None]] = set()  # throttled fast-path submits, re-sent
        self._bound = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._attempt: asyncio.Task[float | None] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._next_slot = 0.0  # throughput pacing: the earliest time of the next send
        self._throughput = cfg.throughput  # submits per second on this bind; 0 = unlimited
        self._pause_until = 0.0
        self._pause = throttle_pause
        # Throttled submits waiting to be re-sent; other sends wait until they have gone.
        self._retrying = 0
        self._retries_sent = asyncio.Event()
        self._retries_sent.set()

    # --- public -----------------------------------------------------------------------------

    def set_throughput(self, per_second: float) -> None:
        """Change the cap (issue 10: this node's share of `smpp.throughput_total` changed);
        sends already reserved keep their slots, the next ones follow the new pace."""
        self._throughput = per_second

    @property
    def bound(self) -> bool:
        return self._bound.is_set()

    @property
    def outstanding(self) -> int:
        """submit_sm sent and not yet answered on the current connection."""
        return len(self._conn.pending) if self._conn is not None else 0

    async def wait_bound(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                await self._bound.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Connect, bind, serve; reconnect with backoff; until stop()."""
        if self._running:
            raise RuntimeError(f"{self.name}: run() is already running")
        self._running = True
        self._finished.clear()
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not self._stopping.is_set():
                self._attempt = loop.create_task(self._connect_and_serve())
                await asyncio.wait({self._attempt})
                if self._attempt.cancelled():
                    if self._stopping.is_set():
                        break
                    raise asyncio.CancelledError  # not ours: run() itself is being cancelled
                hint = self._attempt.result()  # a bug in the link raises here, loudly
                if self._stopping.is_set():
                    break
                if self.last_bind_status == codec.ESME_ROK:
                    failures = 0
                self.reconnects += 1
                delay = hint if hint is not None else self._backoff(failures)
                failures += 1
                self._log.info("%s: reconnecting in %.2f s", self.name, delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            if self._attempt is not None and not self._attempt.done():
                self._attempt.cancel()
                await asyncio.wait({self._attempt})
            self.state = "stopped" if self._stopping.is_set() else "down"
            self._bound.clear()
            self._running = False
            self._finished.set()

    async def submit(self, sm: SubmitSm, *, throttle_retry_for: float = 0.0) -> SubmitOutcome:
        """Send one submit_sm and return the SMSC's answer (see the module doc for errors).

        With `throttle_retry_for` > 0 a throttled submit is re-sent first after the pause, for up
        to that many seconds; the outcome's `throttled` counts the throttle responses.
        """
        if self._stopping.is_set():
            raise LinkDown(f"{self.name} is stopping")
        loop = asyncio.get_running_loop()
        give_up = loop.time() + throttle_retry_for
        self._inflight += 1
        self._idle.clear()
        try:
            await self._window.take()
            try:
                return await self._until_not_throttled(sm, loop, give_up, throttled=0)
            finally:
                self._window.give()
        finally:
            self._done_one()

    def submit_nowait(
        self, sm: SubmitSm, on_answer: Answered, *, throttle_retry_for: float = 0.0
    ) -> bool:
        """`submit` without a task, a coroutine or a Future (issue 9: they were a third of a
        window-10 round). When the link can send at once — bound, a window slot free, no
        throttle pause, no throttled submit waiting to go first, the throughput cap's next slot
        due — the submit_sm joins this loop turn's write, `on_answer` is called (from the read
        loop, the timeout sweep or the connection's end) with `submit`'s outcome or exception
        (a throttled one is re-sent first, by a task, as `submit` does), and True is returned.
        False: it cannot go now (nothing was sent); use `submit`, which waits."""
        conn = self._conn
        if (
            conn is None
            or conn.closed
            or conn.session.state != "bound"
            or self._stopping.is_set()
            or self._retrying
        ):
            return False
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pause_until > now:
            return False
        if self._throughput > 0 and self._next_slot > now:
            return False
        if not self._window.try_take():
            return False
        if self._throughput > 0:
            self._next_slot = now + 1.0 / self._throughput
        self._inflight += 1
        self._idle.clear()
        give_up = now + throttle_retry_for
        answer = _Answer(lambda got: self._fast_answered(sm, on_answer, give_up, got))
        self._send(conn, sm, loop, answer)
        return True

    def _fast_answered(
        self, sm: SubmitSm, on_answer: Answered, give_up: float, got: SubmitOutcome | BaseException
    ) -> None:
        if isinstance(got, SubmitOutcome) and got.command_status in THROTTLE_STATUSES:
            loop = asyncio.get_running_loop()
            if loop.time() + max(0.0, self._pause_until - loop.time()) < give_up:
                # Re-send first after the pause, keeping the window slot (as `submit`).
                task = loop.create_task(self._resend(sm, on_answer, give_up))
                self._resends.add(task)
                task.add_done_callback(self._resends.discard)
                return
            got = SubmitOutcome(got.command_status, got.message_id, 1)
        self._window.give()
        self._done_one()
        on_answer(got)

    async def _resend(self, sm: SubmitSm, on_answer: Answered, give_up: float) -> None:
        got: SubmitOutcome | BaseException = LinkDown(f"{self.name} is stopping")
        try:
            got = await self._until_not_throttled(
                sm, asyncio.get_running_loop(), give_up, throttled=1
            )
        except (ConnectionError, TimeoutError, OSError) as exc:
            got = exc
        finally:  # also when cancelled (the link's task group is going away): LinkDown
            self._window.give()
            self._done_one()
            on_answer(got)

    def _done_one(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    async def _until_not_throttled(
        self, sm: SubmitSm, loop: asyncio.AbstractEventLoop, give_up: float, *, throttled: int
    ) -> SubmitOutcome:
        """Send until the answer is not a throttle, or throttling outlasts `give_up`."""
        while True:
            outcome = await self._submit_once(sm, loop, first=throttled > 0)
            if outcome.command_status not in THROTTLE_STATUSES:
                break
            throttled += 1
            if loop.time() + max(0.0, self._pause_until - loop.time()) >= give_up:
                break
        return SubmitOutcome(outcome.command_status, outcome.message_id, throttled)

    def _send(
        self,
        conn: _Connection,
        sm: SubmitSm,
        loop: asyncio.AbstractEventLoop,
        answer: asyncio.Future[SubmitOutcome] | _Answer,
    ) -> None:
        """Queue one submit_sm for this loop turn's write; `answer` gets its outcome."""
        seq = conn.session.submit(sm)
        conn.pending[seq] = (answer, loop.time() + self._cfg.response_timeout)
        conn.flush_soon(loop)
        self.submits += 1

    async def _submit_once(
        self, sm: SubmitSm, loop: asyncio.AbstractEventLoop, *, first: bool
    ) -> SubmitOutcome:
        if first:
            self._retrying += 1
            self._retries_sent.clear()
        try:
            conn = await self._ready_to_send(loop, first=first)
            fut: asyncio.Future[SubmitOutcome] = loop.create_future()
            self._send(conn, sm, loop, fut)
        finally:
            if first:
                self._retrying -= 1
                if self._retrying == 0:
                    self._retries_sent.set()
        return await fut  # SubmitTimeout comes from _expire

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """No new submits; let in-flight ones finish (up to `timeout`); unbind; close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._stopping.set()
        if self._conn is None and self._attempt is not None and not self._attempt.done():
            self._attempt.cancel()  # connecting or binding: nothing to finish
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - loop.time() - UNBIND_WAIT)):
                await self._idle.wait()
        conn = self._conn
        if conn is not None and not conn.closed and conn.session.state == "bound":
            self.state = "unbinding"
            conn.session.unbind()
            conn.unbind_done = loop.create_future()
            conn.flush()
            wait = max(0.0, min(UNBIND_WAIT, deadline - loop.time()))
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(wait):
                    await conn.unbind_done
        if conn is not None:
            conn.close()
        if self._running:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, deadline - loop.time())):
                    await self._finished.wait()
            if self._running and self._attempt is not None:
                self._attempt.cancel()

    # --- sending ----------------------------------------------------------------------------

    async def _ready_to_send(
        self, loop: asyncio.AbstractEventLoop, *, first: bool = False
    ) -> _Connection:
        """Wait for a bound connection, the end of a throttle pause, and a pacing slot.

        `first`: a throttled submit being re-sent; the others wait until it has gone.
        """
        while True:
            if self._stopping.is_set():
                raise LinkDown(f"{self.name} is stopping")
            if not self._bound.is_set():
                await self._wait_bound_or_stop()
                continue
            now = loop.time()
            if self._pause_until > now:
                await asyncio.sleep(self._pause_until - now)
                continue
            if not first and not self._retries_sent.is_set():
                await self._retries_sent.wait()
                continue
            if self._throughput > 0:
                # SPEC §9 throughput cap: one send per 1/throughput s, reserved in call order.
                slot = max(now, self._next_slot)
                self._next_slot = slot + 1.0 / self._throughput
                if slot > now:
                    await asyncio.sleep(slot - now)
            conn = self._conn
            if conn is not None and not conn.closed and conn.session.state == "bound":
                return conn

    async def _wait_bound_or_stop(self) -> None:
        bound = asyncio.ensure_future(self._bound.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({bound, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            bound.cancel()
            stopping.cancel()

    # --- one connection ---------------------------------------------------------------------

    async def _connect_and_serve(self) -> float | None:
        """One connection's life; returns a reconnect delay hint (None: the normal backoff)."""
        cfg = self._cfg
        loop = asyncio.get_running_loop()
        self.state = "connecting"
        self.last_bind_status = None
        try:
            async with asyncio.timeout(cfg.bind_timeout):
                reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
        except (OSError, TimeoutError) as exc:
            self._log.warning("%s: cannot connect to %s:%d: %s", self.name, cfg.host, cfg.port, exc)
            self.state = "down"
            return None
        self.connects += 1
        conn = _Connection(reader, writer, loop.time())
        try:
            hint = await self._bind(conn)
            if hint is not False:
                return hint
            self._conn = conn
            self.state = "bound"
            self._bound.set()
            self._pause = self._throttle_pause
            self._log.info("%s: bound (%s) to %s:%d", self.name, cfg.bind, cfg.host, cfg.port)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read(conn, tg))
                    tg.create_task(self._keepalive(conn))
                    tg.create_task(self._expire(conn))
            except* (_ConnectionEnded, OSError) as group:
                reason = "; ".join(str(e) for e in group.exceptions)
                level = logging.INFO if self._stopping.is_set() else logging.WARNING
                log.log(level, "%s: connection ended: %s", self.name, reason)
            return None
        finally:
            self._bound.clear()
            if self._conn is conn:
                self._conn = None
            conn.fail_all("connection lost")
            conn.close()
            if not self._stopping.is_set():
                self.state = "down"

    async def _bind(self, conn: _Connection) -> float | Literal[False] | None:
        """Bind within bind_timeout. False: bound. Otherwise the reconnect delay hint."""
        cfg = self._cfg
        self.state = "binding"
        conn.session.bind(
            cfg.bind, system_id=cfg.system_id, password=cfg.password, system_type=cfg.system_type
        )
        conn.flush()
        try:
            async with asyncio.timeout(cfg.bind_timeout):
                status = await self._await_bind_response(conn)
        except TimeoutError:
            self._log.warning("%s: no bind response within %s s", self.name, cfg.bind_timeout)
            return None
        except (OSError, _ConnectionEnded, codec.FrameError) as exc:
            self._log.warning("%s: connection lost while binding: %s", self.name, exc)
            return None
        self.last_bind_status = status
        if status == codec.ESME_ROK:
            return False
        self.bind_refusals += 1
        if status in CREDENTIAL_ERRORS:
            self._log.error(
                "%s: bind refused for system_id=%r: status 0x%02x (bad credentials?); "
                "retrying every %s s",
                self.name,
                cfg.system_id,
                status,
                cfg.reconnect_max,
            )
            return cfg.reconnect_max
        if status == codec.ESME_RALYBND:
            self._log.warning("%s: SMSC says already bound (0x05); waiting it out", self.name)
            return None
        self._log.warning("%s: bind refused: status 0x%02x", self.name, status)
        return None

    async def _await_bind_response(self, conn: _Connection) -> int:
        while True:
            data = await conn.reader.read(READ_SIZE)
            if not data:
                raise _ConnectionEnded("closed by the SMSC")
            events = conn.session.receive_data(data)
            conn.flush()  # e.g. an enquire_link_resp
            for i, event in enumerate(events):
                if isinstance(event, BindResponse):
                    # What came in the same read (queued receipts) is handled once bound.
                    conn.early_events = events[i + 1 :]
                    return event.status

    async def _read(self, conn: _Connection, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        early, conn.early_events = conn.early_events, []
        for event in early:
            self._on_event(conn, event, tg, loop)
        conn.flush()
        while True:
            data = await conn.reader.read(READ_SIZE)
            if not data:
                raise _ConnectionEnded("closed by the SMSC")
            conn.last_rx = loop.time()
            try:
                events = conn.session.receive_data(data)
            except codec.FrameError as exc:
                conn.flush()
                raise _ConnectionEnded(f"garbage from the SMSC: {exc}") from exc
            for event in events:
                self._on_event(conn, event, tg, loop)
            conn.flush()

    def _on_event(
        self,
        conn: _Connection,
        event: Event,
        tg: asyncio.TaskGroup,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if isinstance(event, SubmitResponse):
            self._on_submit_response(conn, event.sequence, event.status, event.message_id, loop)
        elif isinstance(event, Nack):
            # generic_nack to one of our submits answers it with that status.
            self._on_submit_response(conn, event.sequence, event.status, "", loop)
            waiter = conn.enquiries.pop(event.sequence, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)  # the SMSC is alive, just picky
        elif isinstance(event, Deliver):
            self.delivers += 1
            tg.create_task(self._deliver(conn, event))
        elif isinstance(event, EnquireLinkResponse):
            waiter = conn.enquiries.pop(event.sequence, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(event, UnbindRequested):
            conn.flush()  # the unbind_resp
            raise _ConnectionEnded("the SMSC unbound")
        elif isinstance(event, UnbindResponse):
            if conn.unbind_done is not None and not conn.unbind_done.done():
                conn.unbind_done.set_result(None)
        elif isinstance(event, Rejected):
            self.rejected_pdus += 1
            self._log.warning(
                "%s: PDU 0x%08x seq %d rejected (0x%02x): %s",
                self.name,
                event.command_id,
                event.sequence,
                event.status,
                event.reason,
            )

    def _on_submit_response(
        self,
        conn: _Connection,
        sequence: int,
        status: int,
        message_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        entry = conn.pending.pop(sequence, None)
        if entry is None:
            return  # late (after SubmitTimeout) or unknown: nothing waits for it
        fut = entry[0]
        if status in THROTTLE_STATUSES:
            self.throttled += 1
            self._pause_until = max(self._pause_until, loop.time() + self._pause)
            self._log.warning(
                "%s: throttled (0x%02x): pausing %.2f s", self.name, status, self._pause
            )
            self._pause = min(self._pause * 2, self._throttle_pause_max)
        elif status == codec.ESME_ROK:
            self._pause = self._throttle_pause
        if not fut.done():
            fut.set_result(SubmitOutcome(status, message_id))

    async def _deliver(self, conn: _Connection, event: Deliver) -> None:
        """Hand a deliver_sm to the receiver; resp ROK only after it returns (SPEC §8)."""
        async with conn.deliver_slots:
            try:
                await self._on_deliver(event.deliver)
                status = codec.ESME_ROK
            except Exception:
                self._log.exception("%s: on_deliver failed; answering ESME_RX_T_APPN", self.name)
                status = codec.ESME_RX_T_APPN
            conn.session.deliver_resp(event.sequence, status, event.command)
            conn.flush()

    async def _keepalive(self, conn: _Connection) -> None:
        """enquire_link when idle; no enquire_link_resp in response_timeout: the link is dead."""
        loop = asyncio.get_running_loop()
        interval = self._cfg.enquire_link_interval
        while True:
            idle = loop.time() - conn.last_rx
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            seq = conn.session.enquire_link()
            waiter: asyncio.Future[None] = loop.create_future()
            conn.enquiries[seq] = waiter
            conn.flush()
            try:
                async with asyncio.timeout(self._cfg.response_timeout):
                    await waiter
            except TimeoutError:
                self.enquire_link_timeouts += 1
                raise _ConnectionEnded(
                    f"no enquire_link_resp within {self._cfg.response_timeout} s"
                ) from None
            conn.last_rx = max(conn.last_rx, loop.time())

    async def _expire(self, conn: _Connection) -> None:
        """Fail the submits whose response is overdue with SubmitTimeout (SPEC §9).

        One sweep every tenth of response_timeout (at most 0.1 s) instead of a timer per
        submit: a submit times out between response_timeout and 1.1 × response_timeout.
        """
        loop = asyncio.get_running_loop()
        timeout = self._cfg.response_timeout
        tick = min(0.1, max(0.005, timeout / 10))
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            while conn.pending:
                seq, (fut, deadline) = next(iter(conn.pending.items()))
                if deadline > now:
                    break
                del conn.pending[seq]
                if fut.done():
                    continue
                self.submit_timeouts += 1
                fut.set_exception(
                    SubmitTimeout(
                        f"{self.name}: no submit_sm_resp for sequence {seq} within {timeout} s"
                    )
                )

    def _backoff(self, failures: int) -> float:
        """Exponential backoff reconnect_min·2^n, capped at reconnect_max, ±20 % jitter."""
        cfg = self._cfg
        base = min(cfg.reconnect_max, cfg.reconnect_min * (2.0 ** min(failures, 30)))
        return min(cfg.reconnect_max, base * random.uniform(0.8, 1.2))
