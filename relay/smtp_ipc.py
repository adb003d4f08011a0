"""The channel between the daemon and its SMTP worker processes (`smtp.workers` > 0).

One Unix socket pair per worker, inherited at spawn; each message is a 4-byte big-endian length
and a pickle. Pickle is safe here: both ends are this program, started by the same user, and the
socket is never reachable from outside the process pair (no name, no address). Written here
because nothing in the standard library or our dependencies speaks request/reply over an inherited
socket pair with asyncio (multiprocessing's Connection is blocking and has no event-loop side).

Messages are tuples:
  ("call", n, method, args)    the worker asks; the daemon answers with
  ("reply", n, True, value)    or ("reply", n, False, "Type: text") when the call raised;
  ("event", name, payload)     either way, no answer (config, counters, ready).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import pickle
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from relay.config import LimitsConfig
from relay.errors import SpoolError

_LENGTH = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # a stored mail is at most smtp.max_message_size × recipients

Call = Callable[[str, tuple[Any, ...]], Awaitable[Any]]
Event = Callable[[str, Any], None]


def frame(message: tuple[Any, ...]) -> bytes:
    """The bytes of one message on the channel."""
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    _Pickler(out, pickle.HIGHEST_PROTOCOL).dump(message)
    body = out.getbuffer()
    body[:4] = _LENGTH.pack(len(body) - 4)
    del body
    return out.getvalue()


# What a stored mail is made of are frozen, slotted dataclasses: pickle's default for them calls
# dataclasses.fields() per object on both ends (py-spy: most of the channel's cost). Rebuilt here
# from their field values in order, by their constructor; the config's LimitsConfig (a pydantic
# model, the same object in every request) travels as its JSON, parsed once per process.
_FIELDS: dict[type, tuple[str, ...]] = {}
_LIMITS_OUT: dict[int, tuple[LimitsConfig, str]] = {}
_LIMITS_IN: dict[str, LimitsConfig] = {}


def _limits(data: str) -> LimitsConfig:
    limits = _LIMITS_IN.get(data)
    if limits is None:
        if len(_LIMITS_IN) > 64:  # a config reloaded many times
            _LIMITS_IN.clear()
        limits = _LIMITS_IN[data] = LimitsConfig.model_validate_json(data)
    return limits


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        names = _FIELDS.get(cls)
        if names is None:
            if cls is LimitsConfig:
                known = _LIMITS_OUT.get(id(obj))
                if known is None or known[0] is not obj:
                    if len(_LIMITS_OUT) > 64:
                        _LIMITS_OUT.clear()
                    known = _LIMITS_OUT[id(obj)] = (obj, obj.model_dump_json())
                return _limits, (known[1],)
            if not (dataclasses.is_dataclass(cls) and all(f.init for f in dataclasses.fields(cls))):
                return NotImplemented
            names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
        return cls, tuple([getattr(obj, name) for name in names])


class ChannelClosed(SpoolError):
    """The other end of the channel is gone (the daemon or the worker stopped or died)."""


class Channel:
    """Request/reply and events over one stream, both directions, on the running loop."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_call: Call | None = None,
        on_event: Event | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_call = on_call
        self._on_event = on_event
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._out: list[bytes] = []  # frames of this loop iteration, written together
        self.closed = False

    async def call(self, method: str, *args: Any) -> Any:
        """Ask the other end; its answer, or SpoolError when it raised or is gone."""
        if self.closed:
            raise ChannelClosed("the relay's spool process is not reachable")
        self._next += 1
        n = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[n] = fut
        self._send(frame(("call", n, method, args)))
        try:
            return await fut
        finally:
            self._waiting.pop(n, None)

    def event(self, name: str, payload: Any = None) -> None:
        if not self.closed:
            self._send(frame(("event", name, payload)))

    def _send(self, data: bytes) -> None:
        """Queue a frame; the frames of one loop iteration go out in one write (one wakeup of
        the other process for many mails: under load the stores of several sessions, and the
        answers of one commit group, travel together)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        if self._out and not self.closed:
            self._writer.write(b"".join(self._out))
        self._out.clear()

    async def drain(self) -> None:
        self._flush()
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def serve(self) -> None:
        """Read messages until the other end closes; then fail what still waits."""
        try:
            while True:
                head = await self._reader.readexactly(_LENGTH.size)
                (size,) = _LENGTH.unpack(head)
                if size > MAX_FRAME:
                    raise ValueError(f"frame of {size} bytes")
                message = pickle.loads(await self._reader.readexactly(size))  # noqa: S301
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ChannelClosed("the channel closed before the answer"))
            self._waiting.clear()

    def close(self) -> None:
        self._flush()
        self.closed = True
        self._writer.close()

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "reply":
            _, n, ok, value = message
            fut = self._waiting.get(n)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(SpoolError(value))
        elif kind == "call" and self._on_call is not None:
            task = asyncio.ensure_future(self._answer(message[1], message[2], message[3]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "event" and self._on_event is not None:
            self._on_event(message[1], message[2])

    async def _answer(self, n: int, method: str, args: tuple[Any, ...]) -> None:
        assert self._on_call is not None
        try:
            value = await self._on_call(method, args)
        except Exception as exc:  # any failure is the caller's 451, never this loop's end
            reply: tuple[Any, ...] = ("reply", n, False, f"{type(exc).__name__}: {exc}")
        else:
            reply = ("reply", n, True, value)
        if not self.closed:
            self._send(frame(reply))

    async def finish(self) -> None:
        """Wait for the answers still being worked out (at a stop)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
