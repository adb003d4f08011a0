"""The SMSC simulator driven by a raw client (codec + sockets): what it answers and records."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator

import pytest

from relay.smpp import codec
from relay.smpp.model import SubmitSm
from relay.smpp.simulator import SimFaults, SmscSimulator, decode_text, serve_forever
from relay.sms import gsm7

pytestmark = pytest.mark.timeout(10)


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = codec.PduReader()
        self.queue: list[bytes] = []
        self.seq = codec.SequenceNumbers()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> codec.Pdu:
        async with asyncio.timeout(2):
            while not self.queue:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                self.queue += self.frames.feed(data)
        return codec.decode(self.queue.pop(0))

    async def bind(self, kind: str = "transceiver", password: str = "secret") -> codec.Pdu:
        await self.send(
            codec.encode_bind(kind, self.seq.next(), system_id="relay", password=password)
        )
        return await self.recv()


@contextlib.asynccontextmanager
async def client(sim: SmscSimulator) -> AsyncIterator[RawClient]:
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        yield RawClient(reader, writer)
    finally:
        writer.close()


async def test_credentials_checked_when_given() -> None:
    async with SmscSimulator(system_id="relay", password="secret") as sim:
        async with client(sim) as c:
            assert (await c.bind(password="wrong")).status == codec.ESME_RINVPASWD
        async with client(sim) as c:
            resp = await c.bind()
            assert (resp.command, resp.status) == ("bind_transceiver_resp", 0)
            assert (await c.bind()).status == codec.ESME_RALYBND
        assert [b.status for b in sim.binds] == [0x0E, 0, 0x05]


async def test_submit_before_bind_refused() -> None:
    async with SmscSimulator() as sim, client(sim) as c:
        await c.send(codec.encode_submit_sm(SubmitSm("A", 5, 0, "1", b"x", 0), 1))
        assert (await c.recv()).status == codec.ESME_RINVBNDSTS
        assert sim.received == []


async def test_unknown_command_nacked_and_enquire_link_answered() -> None:
    async with SmscSimulator() as sim, client(sim) as c:
        await c.bind()
        await c.send(struct.pack(">LLLL", 16, 0x00000077, 0, 9))
        nack = await c.recv()
        assert (nack.command, nack.status, nack.sequence) == ("generic_nack", 3, 9)
        await c.send(codec.encode_enquire_link(10))
        assert (await c.recv()).command == "enquire_link_resp"
        await c.send(codec.encode_unbind(11))
        assert (await c.recv()).command == "unbind_resp"
        assert (sim.enquire_links, sim.unbinds) == (1, 1)


async def test_submit_decoded_and_receipt_sent() -> None:
    async with SmscSimulator(receipt_delay=0.01, receipt_stat="UNDELIV") as sim, client(sim) as c:
        await c.bind()
        udh = b"\x05\x00\x03\x2a\x02\x01"
        sm = SubmitSm("Alex", 5, 0, "79990000001", udh + "Привет".encode("utf-16-be"), 8, 0x40)
        await c.send(codec.encode_submit_sm(sm, 2))
        resp = await c.recv()
        assert (resp.command, resp.status, resp.text("message_id")) == (
            "submit_sm_resp",
            0,
            "100000",
        )
        receipt = await c.recv()
        assert (receipt.command, receipt.number("esm_class")) == ("deliver_sm", 0x04)
        assert receipt.octets("short_message").startswith(b"id:100000 sub:001 dlvrd:000 ")
        assert b" stat:UNDELIV err:001 text:" in receipt.octets("short_message")
        assert receipt.tlvs["receipted_message_id"] == b"100000"
        assert receipt.tlvs["message_state"] == 5
        await c.send(codec.encode_deliver_sm_resp(receipt.sequence))
        await sim.wait_until(lambda: len(sim.deliver_resps) == 1, 2)
    [rx] = sim.received
    assert (rx.text, rx.udh, rx.part, rx.message_id, rx.system_id) == (
        "Привет",
        udh,
        (0x2A, 2, 1),
        "100000",
        "relay",
    )
    assert rx.submit_sm == sm


async def test_receipts_queued_until_a_receiver_binds() -> None:
    async with SmscSimulator(receipt_delay=0.0) as sim:
        async with client(sim) as tx:
            await tx.bind("transmitter")
            await tx.send(codec.encode_submit_sm(SubmitSm("A", 5, 0, "1", b"x", 0), 2))
            assert (await tx.recv()).status == 0
            await asyncio.sleep(0.05)
        async with client(sim) as rx:
            await rx.bind("receiver")
            assert (await rx.recv()).command == "deliver_sm"


@pytest.mark.parametrize(
    ("dcs", "data", "text"),
    [
        (0x00, gsm7.encode("Hi {€}"), "Hi {€}"),
        (0x03, "café".encode("latin-1"), "café"),
        (0x04, b"\xff\x00", "\xff\x00"),
        (0x08, "Жук 😀".encode("utf-16-be"), "Жук 😀"),
        (0x18, "Жук".encode("utf-16-be"), "Жук"),
        (0x10, gsm7.encode("flash"), "flash"),
        (0xF0, gsm7.encode("class0"), "class0"),
    ],
)
def test_decode_text(dcs: int, data: bytes, text: str) -> None:
    assert decode_text(dcs, data) == text


async def test_fault_throttle_and_hex_ids() -> None:
    faults = SimFaults(throttle_every=2, hex_ids_in_resp=True)
    async with SmscSimulator(receipts=False, faults=faults) as sim, client(sim) as c:
        await c.bind()
        statuses = []
        for seq in range(2, 6):
            await c.send(codec.encode_submit_sm(SubmitSm("A", 5, 0, "1", b"x", 0), seq))
            resp = await c.recv()
            statuses.append((resp.status, resp.text("message_id")))
        assert statuses == [(0, "186a0"), (0x58, ""), (0, "186a1"), (0x58, "")]
        assert sim.throttled == 2 and len(sim.received) == 2


async def test_serve_forever_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    ports: list[int] = []
    listening = asyncio.Event()

    def on_listening(port: int) -> None:
        ports.append(port)
        listening.set()

    task = asyncio.create_task(
        serve_forever("127.0.0.1", 0, json_lines=True, on_listening=on_listening)
    )
    try:
        async with asyncio.timeout(2):
            await listening.wait()
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
        c = RawClient(reader, writer)
        await c.bind()
        await c.send(codec.encode_submit_sm(SubmitSm("A", 5, 0, "79990000001", b"hi", 0), 2))
        assert (await c.recv()).status == 0
        writer.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["destination_addr"], line["text"], line["message_id"]) == (
        "79990000001",
        "hi",
        "100000",
    )
