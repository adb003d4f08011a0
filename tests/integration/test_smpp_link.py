"""UpstreamLink ↔ SmscSimulator over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.config import SmppConfig
from relay.smpp.link import LinkDown, SubmitTimeout, UpstreamLink
from relay.smpp.model import DeliverSm, SubmitOutcome, SubmitSm
from relay.smpp.receipt import id_keys
from relay.smpp.simulator import BindRecord, SimFaults, SmscSimulator

pytestmark = pytest.mark.timeout(10)


def sm(text: str = "hello", dest: str = "79990000001", registered: int = 1) -> SubmitSm:
    return SubmitSm("Alex", 5, 0, dest, text.encode(), 0, registered_delivery=registered)


def config(port: int, **kw: Any) -> SmppConfig:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "enquire_link_interval": 5,
        "response_timeout": 2,
        "bind_timeout": 1,
        "reconnect_min": 0.02,
        "reconnect_max": 0.1,
    }
    base.update(kw)
    return SmppConfig(**base)


class Delivered:
    def __init__(self) -> None:
        self.items: list[DeliverSm] = []
        self.event = asyncio.Event()
        self.fail = False

    async def __call__(self, deliver: DeliverSm) -> None:
        if self.fail:
            raise RuntimeError("receiver cannot store it")
        self.items.append(deliver)
        self.event.set()

    async def wait(self, count: int, within: float = 3) -> list[DeliverSm]:
        async with asyncio.timeout(within):
            while len(self.items) < count:
                self.event.clear()
                await self.event.wait()
        return self.items


@contextlib.asynccontextmanager
async def running(link: UpstreamLink, bind: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(link.run())
    try:
        if bind:
            assert await link.wait_bound(3), "link did not bind"
        yield task
    finally:
        await link.stop(timeout=2)
        async with asyncio.timeout(3):
            await task


@pytest.fixture
async def sim() -> AsyncIterator[SmscSimulator]:
    async with SmscSimulator(receipt_delay=0.01) as s:
        yield s


async def test_bind_submit_and_receipt(sim: SmscSimulator) -> None:
    got = Delivered()
    link = UpstreamLink(config(sim.port), on_deliver=got)
    async with running(link):
        assert link.bound and link.state == "bound"
        outcome = await link.submit(sm("hello"))
        assert outcome == SubmitOutcome(0, "100000")
        [d] = await got.wait(1)
    assert sim.binds == [BindRecord("relay", "bind_transceiver", 0)]
    [rx] = sim.received
    assert (rx.text, rx.destination_addr, rx.source_addr, rx.source_addr_ton) == (
        "hello",
        "79990000001",
        "Alex",
        5,
    )
    assert d.esm_class == 0x04
    assert d.receipt is not None
    assert (d.receipt.message_id, d.receipt.stat, d.receipt.err) == ("100000", "DELIVRD", "000")
    assert d.receipt.text == "hello"
    assert [status for _, status in sim.deliver_resps] == [0]


async def test_transmitter_bind_gets_no_receipts(sim: SmscSimulator) -> None:
    got = Delivered()
    link = UpstreamLink(config(sim.port, bind="transmitter"), on_deliver=got)
    async with running(link):
        assert (await link.submit(sm())).command_status == 0
        await asyncio.sleep(0.1)
    assert sim.binds[0].command == "bind_transmitter"
    assert got.items == []


async def test_window_limits_outstanding_submits() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(response_delay=0.1)) as sim:
        link = UpstreamLink(config(sim.port, window=3), on_deliver=Delivered())
        seen: list[int] = []
        async with running(link):

            async def one(i: int) -> SubmitOutcome:
                out = await link.submit(sm(f"m{i}"))
                seen.append(link.outstanding)
                return out

            outcomes = await asyncio.gather(*(one(i) for i in range(10)))
        assert [o.command_status for o in outcomes] == [0] * 10
        assert len({o.message_id for o in outcomes}) == 10
        assert sim.max_outstanding == 3
        assert max(seen) <= 3


async def test_throttled_response_returned_and_link_pauses() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(throttle_every=2)) as sim:
        link = UpstreamLink(config(sim.port), on_deliver=Delivered(), throttle_pause=0.2)
        async with running(link):
            first = await link.submit(sm("a"))
            second = await link.submit(sm("b"))
            started = time.monotonic()
            third = await link.submit(sm("c"))
            paused = time.monotonic() - started
        assert (first.command_status, second.command_status, third.command_status) == (0, 0x58, 0)
        assert link.throttled == 1
        assert paused >= 0.18  # held back by the throttle pause
        assert [r.text for r in sim.received] == ["a", "c"]


async def test_reconnect_after_drop_every_submit_answered_once() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(drop_after=3)) as sim:
        link = UpstreamLink(config(sim.port, window=4), on_deliver=Delivered())
        async with running(link):
            lost = 0

            async def send_until_answered(text: str) -> SubmitOutcome:
                # The worker's pattern: LinkDown means the outcome is unknown → send again.
                nonlocal lost
                while True:
                    try:
                        return await link.submit(sm(text))
                    except LinkDown:
                        lost += 1

            texts = [f"m{i}" for i in range(8)]
            outcomes = await asyncio.gather(*(send_until_answered(t) for t in texts))
        assert [o.command_status for o in outcomes] == [0] * 8
        assert lost >= 1
        assert sorted(r.text for r in sim.received) == sorted(texts)
        assert link.reconnects >= 1
        assert sim.bind_count >= 2


async def test_rebinds_after_connections_dropped(sim: SmscSimulator) -> None:
    link = UpstreamLink(config(sim.port), on_deliver=Delivered())
    async with running(link):
        await sim.drop_connections()
        await sim.wait_until(lambda: sim.bind_count == 2 and sim.bound_peers == 1, 3)
        assert await link.wait_bound(2)
        assert (await link.submit(sm())).command_status == 0
    assert link.reconnects == 1


async def test_submit_outstanding_when_link_drops_raises_link_down() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(response_delay=1.0)) as sim:
        link = UpstreamLink(config(sim.port), on_deliver=Delivered())
        async with running(link):
            task = asyncio.create_task(link.submit(sm()))
            await sim.wait_for(1, 2)
            await sim.drop_connections()
            with pytest.raises(LinkDown):
                await task
            with pytest.raises(ConnectionError):  # LinkDown is a ConnectionError
                raise LinkDown("x")


async def test_submit_timeout() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(response_delay=1.0)) as sim:
        link = UpstreamLink(config(sim.port, response_timeout=0.2), on_deliver=Delivered())
        async with running(link):
            with pytest.raises(SubmitTimeout) as err:
                await link.submit(sm())
            assert isinstance(err.value, TimeoutError)
            assert link.submit_timeouts == 1


async def test_enquire_link_sent_when_idle(sim: SmscSimulator) -> None:
    link = UpstreamLink(config(sim.port, enquire_link_interval=0.05), on_deliver=Delivered())
    async with running(link):
        await sim.wait_until(lambda: sim.enquire_links >= 3, 2)
        assert link.reconnects == 0
    assert sim.connections == 1


async def test_enquire_link_timeout_reconnects() -> None:
    async with SmscSimulator(faults=SimFaults(ignore_enquire_link=True)) as sim:
        cfg = config(sim.port, enquire_link_interval=0.05, response_timeout=0.15)
        link = UpstreamLink(cfg, on_deliver=Delivered())
        async with running(link):
            await sim.wait_until(lambda: sim.connections >= 2 and sim.bound_peers == 1, 3)
            assert link.enquire_link_timeouts >= 1
            assert link.reconnects >= 1


async def test_unknown_tlvs_in_deliver_sm_do_not_break_the_link() -> None:
    async with SmscSimulator(receipt_delay=0.01, faults=SimFaults(unknown_tlvs=True)) as sim:
        got = Delivered()
        link = UpstreamLink(config(sim.port), on_deliver=got)
        async with running(link):
            outcome = await link.submit(sm())
            [d] = await got.wait(1)
            assert (await link.submit(sm("again"))).command_status == 0
            await got.wait(2)
        assert outcome.command_status == 0
        assert d.receipt is not None and d.receipt.stat == "DELIVRD"
        assert d.tlvs["0x1501"] == b"\x01\x02\x03"
        assert d.tlvs["sc_interface_version"] == 0x34
        assert [s for _, s in sim.deliver_resps] == [0, 0]
        assert sim.connections == 1 and link.rejected_pdus == 0


async def test_receipt_before_resp_and_hex_ids() -> None:
    faults = SimFaults(receipts_before_resp=True, hex_ids_in_resp=True)
    async with SmscSimulator(faults=faults) as sim:
        got = Delivered()
        link = UpstreamLink(config(sim.port), on_deliver=got)
        async with running(link):
            outcome = await link.submit(sm())
            [d] = await got.wait(1)
    assert outcome.message_id == "186a0"
    assert d.receipt is not None and d.receipt.message_id == "100000"
    assert set(id_keys(outcome.message_id, "auto")) & set(id_keys(d.receipt.message_id, "auto"))


async def test_on_deliver_failure_answers_rx_t_appn(sim: SmscSimulator) -> None:
    got = Delivered()
    got.fail = True
    link = UpstreamLink(config(sim.port), on_deliver=got)
    async with running(link):
        await sim.send_mo("79990000001", "Alex", b"hi there")
        await sim.wait_until(lambda: len(sim.deliver_resps) == 1, 2)
    assert [s for _, s in sim.deliver_resps] == [0x64]


async def test_mo_sms_delivered_without_receipt(sim: SmscSimulator) -> None:
    got = Delivered()
    link = UpstreamLink(config(sim.port), on_deliver=got)
    async with running(link):
        await sim.send_mo("79990000001", "Alex", "привет".encode("utf-16-be"), data_coding=8)
        [d] = await got.wait(1)
        await sim.wait_until(lambda: len(sim.deliver_resps) == 1, 2)
    assert d.receipt is None
    assert (d.source_addr, d.data_coding) == ("79990000001", 8)
    assert d.short_message.decode("utf-16-be") == "привет"
    assert [s for _, s in sim.deliver_resps] == [0]


async def test_deliver_resp_only_after_on_deliver_returns(sim: SmscSimulator) -> None:
    release = asyncio.Event()

    async def slow(deliver: DeliverSm) -> None:
        await release.wait()

    link = UpstreamLink(config(sim.port), on_deliver=slow)
    async with running(link):
        await sim.send_mo("1", "2", b"x")
        await asyncio.sleep(0.1)
        assert sim.deliver_resps == []
        release.set()
        await sim.wait_until(lambda: len(sim.deliver_resps) == 1, 2)


async def test_stop_sends_unbind_and_is_quick(sim: SmscSimulator) -> None:
    link = UpstreamLink(config(sim.port), on_deliver=Delivered())
    task = asyncio.create_task(link.run())
    assert await link.wait_bound(3)
    started = time.monotonic()
    await link.stop(timeout=5)
    async with asyncio.timeout(1):
        await task
    assert time.monotonic() - started < 2
    assert sim.unbinds == 1
    assert link.state == "stopped" and not link.bound
    with pytest.raises(LinkDown):
        await link.submit(sm())


async def test_stop_waits_for_in_flight_submits() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(response_delay=0.3)) as sim:
        link = UpstreamLink(config(sim.port), on_deliver=Delivered())
        task = asyncio.create_task(link.run())
        assert await link.wait_bound(3)
        submits = [asyncio.create_task(link.submit(sm(f"m{i}"))) for i in range(3)]
        await sim.wait_for(3, 2)
        await link.stop(timeout=3)
        outcomes = [s.result() for s in submits]
        assert [o.command_status for o in outcomes] == [0, 0, 0]
        assert sim.unbinds == 1
        await task


async def test_stop_while_never_bound_is_quick() -> None:
    link = UpstreamLink(config(1, reconnect_min=5, reconnect_max=5), on_deliver=Delivered())
    task = asyncio.create_task(link.run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await link.stop(timeout=2)
    await task
    assert time.monotonic() - started < 1
    assert link.connects == 0


async def test_unknown_command_from_smsc_gets_generic_nack(sim: SmscSimulator) -> None:
    link = UpstreamLink(config(sim.port), on_deliver=Delivered())
    async with running(link):
        await sim.send_raw(struct.pack(">LLLL", 16, 0x00000099, 0, 555))
        await sim.wait_until(lambda: len(sim.nacks_received) == 1, 2)
        assert (await link.submit(sm())).command_status == 0
    assert sim.nacks_received == [(555, 0x03)]
    assert sim.connections == 1
    assert link.rejected_pdus == 1


async def test_impossible_length_drops_and_reconnects(sim: SmscSimulator) -> None:
    link = UpstreamLink(config(sim.port), on_deliver=Delivered())
    async with running(link):
        await sim.send_raw(struct.pack(">LLLL", 7, 0x15, 0, 1))
        await sim.wait_until(lambda: sim.bind_count == 2 and sim.bound_peers == 1, 3)
        assert await link.wait_bound(2)
        assert (await link.submit(sm())).command_status == 0
    assert link.reconnects == 1


async def test_unbind_from_smsc_answered_then_reconnect(sim: SmscSimulator) -> None:
    link = UpstreamLink(config(sim.port), on_deliver=Delivered())
    async with running(link):
        await sim.send_unbind()
        await sim.wait_until(lambda: sim.bind_count == 2 and sim.bound_peers == 1, 3)
    assert link.reconnects == 1


async def test_bad_credentials_retried_slowly() -> None:
    async with SmscSimulator(password="other") as sim:
        cfg = config(sim.port, reconnect_min=0.01, reconnect_max=0.3)
        link = UpstreamLink(cfg, on_deliver=Delivered())
        async with running(link, bind=False):
            await asyncio.sleep(0.5)
            assert not link.bound
        # Normal backoff from 10 ms would have tried ~6 times; credentials wait reconnect_max.
        assert 1 <= sim.bind_count <= 2
        assert {b.status for b in sim.binds} == {0x0E}
        assert link.last_bind_status == 0x0E and link.bind_refusals == sim.bind_count


async def test_already_bound_waited_out() -> None:
    async with SmscSimulator(faults=SimFaults(refuse_bind=0x05)) as sim:
        link = UpstreamLink(config(sim.port), on_deliver=Delivered())
        async with running(link, bind=False):
            await sim.wait_until(lambda: sim.bind_count >= 2, 3)
            sim.faults.refuse_bind = 0
            assert await link.wait_bound(3)


async def test_throughput_cap() -> None:
    async with SmscSimulator(receipts=False) as sim:
        link = UpstreamLink(config(sim.port, throughput=50), on_deliver=Delivered())
        async with running(link):
            started = time.monotonic()
            await asyncio.gather(*(link.submit(sm(f"m{i}")) for i in range(51)))
            elapsed = time.monotonic() - started
        # 51 sends at 50/s: the last goes 1.0 s after the first (±5 %, plus scheduling slack).
        assert 0.95 <= elapsed <= 1.15


# -- issue 9: the submit fast path (no task, no coroutine per submit) ------------------------


def nowait(link: UpstreamLink, text: str, **kw: Any) -> asyncio.Future[SubmitOutcome] | None:
    """`submit_nowait` with its answer in a future (None: it did not send)."""
    fut: asyncio.Future[SubmitOutcome] = asyncio.get_running_loop().create_future()

    def on_answer(got: SubmitOutcome | BaseException) -> None:
        assert not fut.done(), "answered twice"
        if isinstance(got, BaseException):
            fut.set_exception(got)
        else:
            fut.set_result(got)

    return fut if link.submit_nowait(sm(text), on_answer, **kw) else None


async def test_submit_nowait_fills_the_window_without_tasks_then_says_wait() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(response_delay=0.1)) as sim:
        link = UpstreamLink(config(sim.port, window=3), on_deliver=Delivered())
        async with running(link):
            tasks = len(asyncio.all_tasks())
            futures = [nowait(link, f"m{i}") for i in range(4)]
            assert len(asyncio.all_tasks()) == tasks  # no task per submit
            assert futures[3] is None  # the window is full: the caller must use submit()
            assert link.outstanding == 3
            outcomes = await asyncio.gather(*(f for f in futures if f is not None))
            assert [o.command_status for o in outcomes] == [0, 0, 0]
            assert len({o.message_id for o in outcomes}) == 3
            again = nowait(link, "m3")  # the slots are free again
            assert again is not None and (await again).command_status == 0
            await link.stop(timeout=2)
            assert nowait(link, "late") is None
        assert sim.max_outstanding == 3
        assert [r.text for r in sim.received] == ["m0", "m1", "m2", "m3"]


async def test_submit_nowait_throttled_is_resent_first_after_the_pause() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(throttle_every=2)) as sim:
        link = UpstreamLink(config(sim.port, window=2), on_deliver=Delivered(), throttle_pause=0.2)
        async with running(link):
            first = nowait(link, "a")
            second = nowait(link, "b", throttle_retry_for=5)  # answered throttled
            assert first is not None and second is not None
            assert (await first).command_status == 0
            await sim.wait_until(lambda: link.throttled == 1, 2)  # "b" throttled: a pause
            assert nowait(link, "c") is None  # paused: no fast path
            # Waits for the pause and for "b"; it is the 4th submit: throttled, re-sent too.
            waiting = asyncio.create_task(link.submit(sm("c"), throttle_retry_for=5))
            started = time.monotonic()
            outcome = await second
            assert time.monotonic() - started >= 0.1
            assert (outcome.command_status, outcome.throttled) == (0, 1)
            assert (await waiting).command_status == 0
        assert [r.text for r in sim.received] == ["a", "b", "c"]  # "b" kept its place
        assert link.throttled == 2


async def test_submit_nowait_outstanding_when_link_drops_raises_link_down() -> None:
    async with SmscSimulator(receipts=False, faults=SimFaults(response_delay=1.0)) as sim:
        link = UpstreamLink(config(sim.port), on_deliver=Delivered())
        async with running(link):
            fut = nowait(link, "hello")
            assert fut is not None
            await sim.wait_for(1, 2)
            await sim.drop_connections()
            with pytest.raises(LinkDown):
                await fut
