"""A minimal fast SMPP 3.4 server for the drain benchmarks, so the server is not the bottleneck.

It answers bind_*, enquire_link, unbind and submit_sm (ESME_ROK, a counter as message_id), one
write per read, and sends no receipts. It counts submit_sm with their arrival time
(`time.monotonic()`, CLOCK_MONOTONIC: comparable across processes on Linux) and, with `--record`,
keeps each one's destination and short_message for latency and ordering checks.

`python -m bench.smpp_sink SMPP_PORT CONTROL_PORT [--record]`; the control port speaks one line
per request: `stats` → {"count", "first", "last"}; `dump` → [[dest, sm_hex, t], …]; `reset`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import sys
import time

HEADER = struct.Struct(">IIII")
BIND_IDS = {0x00000001, 0x00000002, 0x00000009}
SUBMIT_SM = 0x00000004
ENQUIRE_LINK = 0x00000015
UNBIND = 0x00000006
RESPONSE_BIT = 0x80000000
MAX_PDU = 0x10000 + 1024


def cstring(body: bytes, at: int) -> tuple[bytes, int]:
    end = body.index(b"\0", at)
    return body[at:end], end + 1


def submit_fields(body: bytes) -> tuple[str, bytes]:
    """destination_addr and short_message of a submit_sm body (SMPP 3.4 §4.4.1)."""
    _, at = cstring(body, 0)  # service_type
    _, at = cstring(body, at + 2)  # source_addr after ton, npi
    dest, at = cstring(body, at + 2)
    at += 3  # esm_class, protocol_id, priority_flag
    _, at = cstring(body, at)  # schedule_delivery_time
    _, at = cstring(body, at)  # validity_period
    at += 4  # registered_delivery, replace_if_present, data_coding, sm_default_msg_id
    length = body[at]
    return dest.decode("latin-1"), body[at + 1 : at + 1 + length]


class Sink:
    def __init__(self, record: bool) -> None:
        self.record = record
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.records: list[tuple[str, str, float]] = []

    def reset(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.records.clear()

    async def serve_smpp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    return
                now = time.monotonic()
                buf += data
                out: list[bytes] = []
                at = 0
                while len(buf) - at >= 16:
                    length, cid, _, seq = HEADER.unpack_from(buf, at)
                    if length < 16 or length > MAX_PDU:
                        return
                    if len(buf) - at < length:
                        break
                    if cid == SUBMIT_SM:
                        self.count += 1
                        msgid = b"%x\0" % self.count
                        out.append(HEADER.pack(16 + len(msgid), cid | RESPONSE_BIT, 0, seq) + msgid)
                        if self.count == 1:
                            self.first = now
                        self.last = now
                        if self.record:
                            dest, sm = submit_fields(buf[at + 16 : at + length])
                            self.records.append((dest, sm.hex(), now))
                    elif cid in BIND_IDS:
                        out.append(HEADER.pack(16 + 5, cid | RESPONSE_BIT, 0, seq) + b"sink\0")
                    elif cid in (ENQUIRE_LINK, UNBIND):
                        out.append(HEADER.pack(16, cid | RESPONSE_BIT, 0, seq))
                    at += length
                buf = buf[at:]
                if out:
                    writer.write(b"".join(out))
        except (ConnectionError, ValueError):
            return
        finally:
            writer.close()

    async def serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := (await reader.readline()).strip():
                if line == b"stats":
                    reply: object = {"count": self.count, "first": self.first, "last": self.last}
                elif line == b"dump":
                    reply = self.records
                elif line == b"reset":
                    self.reset()
                    reply = "ok"
                else:
                    reply = "unknown"
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


async def serve(smpp_port: int, control_port: int, record: bool) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink(record)
    smpp = await asyncio.start_server(sink.serve_smpp, "127.0.0.1", smpp_port)
    control = await asyncio.start_server(sink.serve_control, "127.0.0.1", control_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    smpp.close()
    control.close()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), "--record" in sys.argv[3:]))
