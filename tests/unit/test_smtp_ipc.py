"""relay.smtp_ipc over a real socket pair, and the workers' counter sums."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from relay.errors import SpoolError
from relay.smtp_front import IntakeCounters
from relay.smtp_ipc import Channel, ChannelClosed
from relay.smtp_workers import add_counters


async def pair(
    on_call: Any = None, on_event: Any = None
) -> tuple[Channel, Channel, list[asyncio.Task[None]]]:
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    caller = Channel(ra, wa)
    server = Channel(rb, wb, on_call=on_call, on_event=on_event)
    tasks = [asyncio.ensure_future(caller.serve()), asyncio.ensure_future(server.serve())]
    return caller, server, tasks


async def test_calls_in_one_iteration_all_get_their_own_answer() -> None:
    seen: list[tuple[str, tuple[Any, ...]]] = []

    async def on_call(method: str, args: tuple[Any, ...]) -> Any:
        seen.append((method, args))
        await asyncio.sleep(0.001 * (args[0] % 3))  # answers come back out of order
        return args[0] * 10

    caller, server, tasks = await pair(on_call)
    answers = await asyncio.gather(*(caller.call("times_ten", i) for i in range(50)))
    assert answers == [i * 10 for i in range(50)]
    assert sorted(a[0] for _, a in seen) == list(range(50))
    caller.close()
    server.close()
    await asyncio.gather(*tasks)


async def test_an_error_on_the_other_side_is_a_spool_error_and_the_channel_lives_on() -> None:
    async def on_call(method: str, args: tuple[Any, ...]) -> Any:
        if method == "fail":
            raise RuntimeError("disk full")
        return "fine"

    caller, server, tasks = await pair(on_call)
    with pytest.raises(SpoolError, match="RuntimeError: disk full"):
        await caller.call("fail")
    assert await caller.call("ok") == "fine"
    caller.close()
    server.close()
    await asyncio.gather(*tasks)


async def test_events_arrive_in_order_and_a_closed_peer_fails_what_waits() -> None:
    events: list[tuple[str, Any]] = []
    hold = asyncio.Event()

    async def on_call(method: str, args: tuple[Any, ...]) -> Any:
        await hold.wait()  # never answered before the close
        return None

    caller, server, tasks = await pair(
        on_call, lambda name, payload: events.append((name, payload))
    )
    for i in range(5):
        caller.event("counters", {"accepted": i})
    waiting = asyncio.ensure_future(caller.call("store", b"x" * 100_000))
    await asyncio.sleep(0.05)
    assert events == [("counters", {"accepted": i}) for i in range(5)]
    server.close()
    with pytest.raises(ChannelClosed):
        await waiting
    with pytest.raises(ChannelClosed):
        await caller.call("store", b"y")
    hold.set()
    caller.close()
    await asyncio.gather(*tasks)


def test_counter_snapshots_add_up_per_code() -> None:
    total = IntakeCounters()
    add_counters(total, {"sessions": 3, "accepted": 2, "refused": {2: 1, 8: 1}})
    add_counters(total, {"sessions": 1, "refused": {2: 4}, "rate_limited": {"account": 1}})
    assert (total.sessions, total.accepted) == (4, 2)
    assert total.refused == {2: 5, 8: 1}
    assert total.rate_limited == {"account": 1}
