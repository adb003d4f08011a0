"""The drain baseline: a minimal asyncio loop that encodes submit_sm with smpplib and writes
them with a fixed window to the SMPP server — no spool, no retries, no pacing.
"""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

from smpplib import smpp

HEADER = struct.Struct(">IIII")
SUBMIT_SM_RESP = 0x80000004
BIND_TRANSCEIVER_RESP = 0x80000009


class _Client:
    """smpplib asks a client for sequence numbers; they are always given here."""

    sequence = 0


_CLIENT = _Client()


def encode(name: str, sequence: int, **fields: Any) -> bytes:
    return bytes(smpp.make_pdu(name, client=_CLIENT, sequence=sequence, **fields).generate())


def submit_sm(sequence: int, dest: str, text: bytes) -> bytes:
    return encode(
        "submit_sm",
        sequence,
        service_type="",
        source_addr_ton=5,
        source_addr_npi=0,
        source_addr="Bench",
        dest_addr_ton=1,
        dest_addr_npi=1,
        destination_addr=dest,
        esm_class=0,
        protocol_id=0,
        priority_flag=0,
        schedule_delivery_time="",
        validity_period="",
        registered_delivery=1,
        replace_if_present_flag=0,
        data_coding=0,
        sm_default_msg_id=0,
        short_message=text,
    )


async def raw_submit(port: int, count: int, window: int, time_limit: float) -> float:
    """Bind, then keep `window` submit_sm outstanding until `count` are answered; seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(time_limit):
            writer.write(
                encode(
                    "bind_transceiver",
                    1,
                    system_id="relay",
                    password="secret",
                    system_type="",
                    interface_version=0x34,
                    addr_ton=0,
                    addr_npi=0,
                    address_range="",
                )
            )
            head = await reader.readexactly(16)
            length, cid, status, _ = HEADER.unpack(head)
            await reader.readexactly(length - 16)
            if cid != BIND_TRANSCEIVER_RESP or status != 0:
                raise RuntimeError(f"bind refused: 0x{cid:08x} status {status}")
            started = time.monotonic()
            sent = answered = 0
            seq = 1
            buf = b""
            while answered < count:
                while sent < count and sent - answered < window:
                    seq += 1
                    writer.write(submit_sm(seq, f"7916{sent % 10000:07d}", b"%d" % sent))
                    sent += 1
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                buf += data
                at = 0
                while len(buf) - at >= 16:
                    length, cid, status, _ = HEADER.unpack_from(buf, at)
                    if len(buf) - at < length:
                        break
                    if cid == SUBMIT_SM_RESP:
                        answered += 1
                    at += length
                buf = buf[at:]
            return time.monotonic() - started
    finally:
        writer.close()
