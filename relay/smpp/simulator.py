"""A real SMPP 3.4 SMSC on asyncio: the "virtual" upstream (SPEC §10) and the integration-test peer.

It accepts binds (checking credentials only when given), answers submit_sm with unique message
ids, sends delivery receipts (deliver_sm, esm_class 0x04, the SPEC §9 text form plus the
receipted_message_id and message_state TLVs) to transceiver/receiver binds, answers
enquire_link and unbind, and generic_nacks unknown commands (ESME_RINVCMDID). Every accepted
SMS is decoded and logged as one INFO line on the "relay.smsc_sim" logger (and, when asked,
printed to stdout as one JSON line).

Faults (`SimFaults`, all off by default) make it misbehave the way real SMSCs do, for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

from relay.smpp import codec
from relay.smpp.model import SubmitSm
from relay.smpp.receipt import MESSAGE_STATES
from relay.sms import gsm7
from relay.sms.model import TlvValue

log = logging.getLogger("relay.smsc_sim")

_STATE_CODES: Final = {name: code for code, name in MESSAGE_STATES.items()}
# The first message id handed out: high enough that its hex and decimal forms differ visibly.
FIRST_MESSAGE_ID: Final = 100000
# Vendor TLVs sent with the `unknown_tlvs` fault: a vendor-range tag, and a tag that smpplib
# knows but not for deliver_sm (its own parser raises KeyError on that one).
UNKNOWN_TLVS: Final[tuple[tuple[str, TlvValue], ...]] = (
    ("0x1501", b"\x01\x02\x03"),
    ("sc_interface_version", 0x34),
    ("0x3fff", b""),
)


@dataclass
class SimFaults:
    """Ways to misbehave; all off by default.

    - throttle_every: every Nth submit_sm (counting all of them) is answered ESME_RTHROTTLED.
    - response_delay: seconds before each submit_sm_resp (responses are sent concurrently).
    - drop_after: once per simulator, the connection carrying the Nth submit_sm (counting all)
      is closed instead of answering it; that submit and any behind it in the same read are
      discarded (not in `received`), so a client that resends on LinkDown gets every SMS in
      exactly once. Later submits, on the next connection, are answered normally.
    - refuse_bind: a non-zero command_status refuses every bind with it.
    - receipts_before_resp: the receipt is sent before the submit_sm_resp (SPEC §9 allows it).
    - hex_ids_in_resp: submit_sm_resp carries the id in hex, the receipt in decimal.
    - unknown_tlvs: vendor/unexpected TLVs in deliver_sm and submit_sm_resp.
    - ignore_enquire_link: enquire_link is never answered.
    - error_every / error_status: every Nth submit_sm (counting all) is answered with
      error_status (e.g. 0x08 transient, 0x0B permanent, 0x14 queue full); throttle_every wins
      when both hit the same submit.
    """

    throttle_every: int = 0
    response_delay: float = 0.0
    drop_after: int = 0
    refuse_bind: int = 0
    receipts_before_resp: bool = False
    hex_ids_in_resp: bool = False
    unknown_tlvs: bool = False
    ignore_enquire_link: bool = False
    error_every: int = 0
    error_status: int = 0


@dataclass(frozen=True, slots=True)
class ReceivedSms:
    """One accepted submit_sm, decoded."""

    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str
    short_message: bytes
    data_coding: int
    esm_class: int
    protocol_id: int
    registered_delivery: int
    dest_addr_ton: int
    dest_addr_npi: int
    tlvs: tuple[tuple[str, TlvValue], ...]
    message_id: str  # as sent in submit_sm_resp
    sequence: int
    text: str  # decoded by data_coding; UDH stripped; message_payload when short_message is empty
    udh: bytes
    system_id: str  # of the bind it came on
    part: tuple[int, int, int] | None = None  # (reference, total, number) from UDH or sar_* TLVs

    @property
    def submit_sm(self) -> SubmitSm:
        return SubmitSm(
            source_addr=self.source_addr,
            source_addr_ton=self.source_addr_ton,
            source_addr_npi=self.source_addr_npi,
            destination_addr=self.destination_addr,
            short_message=self.short_message,
            data_coding=self.data_coding,
            esm_class=self.esm_class,
            protocol_id=self.protocol_id,
            registered_delivery=self.registered_delivery,
            dest_addr_ton=self.dest_addr_ton,
            dest_addr_npi=self.dest_addr_npi,
            tlvs=self.tlvs,
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["short_message"] = self.short_message.hex()
        out["udh"] = self.udh.hex()
        out["tlvs"] = {k: v.hex() if isinstance(v, bytes) else v for k, v in self.tlvs}
        out["part"] = list(self.part) if self.part else None
        return out


@dataclass(frozen=True, slots=True)
class BindRecord:
    system_id: str
    command: str  # bind_transmitter | bind_transceiver | bind_receiver
    status: int


class _Peer:
    """One client connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.kind = ""  # the bind command once bound
        self.system_id = ""
        self.seq = codec.SequenceNumbers()
        # Receipts sent and not yet answered with deliver_sm_resp: re-sent on another (or the
        # next) receiver bind when this connection ends, as real SMSCs retry receipts.
        self.unacked: dict[int, tuple[str, bytes, list[tuple[str, TlvValue]]]] = {}

    @property
    def bound(self) -> bool:
        return bool(self.kind)

    @property
    def receives(self) -> bool:
        return self.kind in ("bind_transceiver", "bind_receiver")

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


class SmscSimulator:
    """The simulated SMSC. Use `async with SmscSimulator(...) as sim:`; `sim.port` is the port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        system_id: str | None = None,
        password: str | None = None,
        receipts: bool = True,
        receipt_delay: float = 0.05,
        receipt_stat: str = "DELIVRD",
        faults: SimFaults | None = None,
        on_sms: Callable[[ReceivedSms], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._system_id = system_id
        self._password = password
        self.receipts = receipts
        self.receipt_delay = receipt_delay
        self.receipt_stat = receipt_stat
        self.faults = faults if faults is not None else SimFaults()
        self._on_sms = on_sms
        # What happened, for tests and the CLI.
        self.received: list[ReceivedSms] = []
        self.binds: list[BindRecord] = []
        self.connections = 0  # accepted TCP connections
        self.submits = 0  # every submit_sm seen, throttled and dropped ones included
        self.throttled = 0
        self.unbinds = 0  # unbind requests received
        self.enquire_links = 0  # enquire_link requests received
        self.deliver_resps: list[tuple[int, int]] = []  # (sequence, command_status) received
        self.nacks_received: list[tuple[int, int]] = []  # generic_nack (sequence, status)
        self.outstanding = 0  # submits received, not yet answered
        # Every submit_sm in arrival order: (short_message, command_status answered; -1 dropped).
        self.submit_log: list[tuple[bytes, int]] = []
        self.received_at: list[float] = []  # time.monotonic() of each entry of `received`
        self.unbind_resps = 0  # unbind_resp received (answers to send_unbind)
        self.max_outstanding = 0
        self._next_id = FIRST_MESSAGE_ID
        self._dropped = False
        self._peers: set[_Peer] = set()
        self._queued_receipts: list[tuple[str, bytes, list[tuple[str, TlvValue]]]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMSC simulator listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_connections()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> SmscSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def drop_connections(self) -> None:
        """Close every client connection at once, without unbind (a network failure)."""
        peers = list(self._peers)
        for peer in peers:
            peer.writer.close()
        for peer in peers:
            with contextlib.suppress(OSError):
                await peer.writer.wait_closed()

    # --- test helpers -----------------------------------------------------------------------

    async def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedSms]:  # noqa: ASYNC109
        """Wait until `count` SMS have been received; TimeoutError otherwise."""
        await self.wait_until(lambda: len(self.received) >= count, timeout)
        return list(self.received)

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10,  # noqa: ASYNC109 - a test helper: one call, one deadline
    ) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    @property
    def bind_count(self) -> int:
        """Bind requests received (accepted or not)."""
        return len(self.binds)

    @property
    def unbinds_received(self) -> int:
        return self.unbinds

    @property
    def enquire_links_received(self) -> int:
        return self.enquire_links

    @property
    def bound_peers(self) -> int:
        return sum(1 for p in self._peers if p.bound)

    async def send_mo(
        self,
        source: str,
        dest: str,
        short_message: bytes,
        data_coding: int = 0,
        esm_class: int = 0,
        tlvs: Iterable[tuple[str, TlvValue]] = (),
    ) -> None:
        """Send a mobile-originated deliver_sm to the first bound transceiver/receiver."""
        peer = self._receiver()
        if peer is None:
            raise RuntimeError("no transceiver or receiver bind to deliver to")
        peer.send(
            codec.encode_deliver_sm(
                peer.seq.next(),
                source_addr=source,
                destination_addr=dest,
                short_message=short_message,
                data_coding=data_coding,
                esm_class=esm_class,
                tlvs=list(tlvs),
            )
        )

    async def send_raw(self, data: bytes) -> None:
        """Write raw bytes to every bound client (tests: garbled or unknown PDUs)."""
        for peer in list(self._peers):
            if peer.bound:
                peer.send(data)

    async def send_unbind(self) -> None:
        """Ask every bound client to unbind (an SMSC going down for maintenance)."""
        for peer in list(self._peers):
            if peer.bound:
                peer.send(codec.encode_unbind(peer.seq.next()))

    # --- the protocol -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Peer(writer)
        self._peers.add(peer)
        self.connections += 1
        frames = codec.PduReader()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for raw in frames.feed(data):
                    if not self._handle(peer, raw):
                        return
        except codec.FrameError as exc:
            log.warning("dropping a client that sent garbage: %s", exc)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._peers.discard(peer)
            writer.close()
            unacked, peer.unacked = list(peer.unacked.values()), {}
            for receipt in unacked:
                self._send_receipt(*receipt)
            self._notify()

    def _handle(self, peer: _Peer, raw: bytes) -> bool:
        """One PDU from a client; False: close the connection."""
        try:
            pdu = codec.decode(raw)
        except codec.DecodeError as exc:
            if not exc.command_id & codec.RESPONSE_BIT:
                peer.send(codec.encode_generic_nack(exc.sequence, exc.status))
            return True
        cmd = pdu.command
        if cmd.startswith("bind_") and not pdu.is_response:
            self._bind(peer, pdu)
        elif cmd == "submit_sm":
            keep = self._submit(peer, pdu)
            self._notify()
            return keep
        elif cmd == "enquire_link":
            self.enquire_links += 1
            if not self.faults.ignore_enquire_link:
                peer.send(codec.encode_enquire_link_resp(pdu.sequence))
        elif cmd == "unbind":
            self.unbinds += 1
            peer.send(codec.encode_unbind_resp(pdu.sequence))
            peer.kind = ""
            self._notify()
            return False
        elif cmd in ("deliver_sm_resp", "data_sm_resp"):
            self.deliver_resps.append((pdu.sequence, pdu.status))
            peer.unacked.pop(pdu.sequence, None)
        elif cmd == "generic_nack":
            self.nacks_received.append((pdu.sequence, pdu.status))
        elif cmd == "unbind_resp":
            self.unbind_resps += 1
        elif cmd == "enquire_link_resp":
            pass
        elif not pdu.is_response:
            peer.send(codec.encode_generic_nack(pdu.sequence, codec.ESME_RINVCMDID))
        self._notify()
        return True

    def _bind(self, peer: _Peer, pdu: codec.Pdu) -> None:
        system_id = pdu.text("system_id")
        if peer.bound:
            status = codec.ESME_RALYBND
        elif self.faults.refuse_bind:
            status = self.faults.refuse_bind
        elif self._system_id is not None and system_id != self._system_id:
            status = codec.ESME_RINVSYSID
        elif self._password is not None and pdu.text("password") != self._password:
            status = codec.ESME_RINVPASWD
        else:
            status = codec.ESME_ROK
        self.binds.append(BindRecord(system_id, pdu.command, status))
        peer.send(codec.encode_bind_resp(pdu.command, pdu.sequence, status, "smsc-sim"))
        if status == codec.ESME_ROK:
            peer.kind, peer.system_id = pdu.command, system_id
            log.info("bind %s system_id=%s accepted", pdu.command, system_id)
            if peer.receives:
                queued, self._queued_receipts = self._queued_receipts, []
                for dest, text, tlvs in queued:
                    self._send_receipt(dest, text, tlvs)
        else:
            log.info("bind %s system_id=%s refused 0x%02x", pdu.command, system_id, status)

    def _submit(self, peer: _Peer, pdu: codec.Pdu) -> bool:
        self.submits += 1
        if not peer.bound or peer.kind == "bind_receiver":
            peer.send(codec.encode_submit_sm_resp(pdu.sequence, codec.ESME_RINVBNDSTS, ""))
            return True
        faults = self.faults
        short_message = pdu.octets("short_message")
        if faults.throttle_every and self.submits % faults.throttle_every == 0:
            self.throttled += 1
            self.submit_log.append((short_message, codec.ESME_RTHROTTLED))
            peer.send(codec.encode_submit_sm_resp(pdu.sequence, codec.ESME_RTHROTTLED, ""))
            return True
        if faults.error_every and self.submits % faults.error_every == 0:
            self.submit_log.append((short_message, faults.error_status))
            peer.send(codec.encode_submit_sm_resp(pdu.sequence, faults.error_status, ""))
            return True
        if faults.drop_after and not self._dropped and self.submits >= faults.drop_after:
            self._dropped = True
            self.submit_log.append((short_message, -1))
            log.info("fault: dropping the connection at submit #%d", self.submits)
            return False
        number = self._next_id
        self._next_id += 1
        resp_id = format(number, "x") if faults.hex_ids_in_resp else str(number)
        sms = _received(pdu, resp_id, peer.system_id)
        self.submit_log.append((short_message, codec.ESME_ROK))
        self.received.append(sms)
        self.received_at.append(time.monotonic())
        _log_sms(sms)
        if self._on_sms is not None:
            self._on_sms(sms)
        self.outstanding += 1
        self.max_outstanding = max(self.max_outstanding, self.outstanding)
        receipt = self._receipt_for(sms, number) if sms.registered_delivery & 0x03 else None
        if faults.response_delay > 0:
            self._spawn(self._respond_later(peer, pdu.sequence, resp_id, receipt))
        else:
            self._respond(peer, pdu.sequence, resp_id, receipt)
        return True

    async def _respond_later(
        self,
        peer: _Peer,
        sequence: int,
        resp_id: str,
        receipt: tuple[str, bytes, list[tuple[str, TlvValue]]] | None,
    ) -> None:
        await asyncio.sleep(self.faults.response_delay)
        self._respond(peer, sequence, resp_id, receipt)

    def _respond(
        self,
        peer: _Peer,
        sequence: int,
        resp_id: str,
        receipt: tuple[str, bytes, list[tuple[str, TlvValue]]] | None,
    ) -> None:
        self.outstanding -= 1
        if receipt is not None and self.faults.receipts_before_resp:
            self._send_receipt(*receipt)
            receipt = None
        resp = codec.encode_submit_sm_resp(sequence, codec.ESME_ROK, resp_id)
        if self.faults.unknown_tlvs:
            resp = codec._with_tlvs(resp, codec.encode_tlvs(UNKNOWN_TLVS))
        peer.send(resp)
        if receipt is not None:
            self._spawn(self._receipt_later(receipt))
        self._notify()

    def _receipt_for(
        self, sms: ReceivedSms, number: int
    ) -> tuple[str, bytes, list[tuple[str, TlvValue]]] | None:
        if not self.receipts:
            return None
        stat = self.receipt_stat
        if sms.registered_delivery & 0x03 == 2 and stat == "DELIVRD":
            return None  # receipt on failure only (SMPP 3.4 §5.2.17)
        now = time.strftime("%y%m%d%H%M", time.gmtime())
        rid = str(number)  # decimal, also when the resp id was hex (the hex_ids_in_resp fault)
        delivered = stat == "DELIVRD"
        text = (
            f"id:{rid} sub:001 dlvrd:{'001' if delivered else '000'} submit date:{now} "
            f"done date:{now} stat:{stat} err:{'000' if delivered else '001'} "
            f"text:{sms.text[:20]}"
        )
        tlvs: list[tuple[str, TlvValue]] = [
            ("receipted_message_id", rid.encode()),
            ("message_state", _STATE_CODES.get(stat, 7)),
        ]
        if self.faults.unknown_tlvs:
            tlvs = [UNKNOWN_TLVS[0], *tlvs, *UNKNOWN_TLVS[1:]]
        return sms.source_addr, text.encode("latin-1", errors="replace"), tlvs

    async def _receipt_later(self, receipt: tuple[str, bytes, list[tuple[str, TlvValue]]]) -> None:
        await asyncio.sleep(self.receipt_delay)
        self._send_receipt(*receipt)

    def _send_receipt(self, dest: str, text: bytes, tlvs: list[tuple[str, TlvValue]]) -> None:
        peer = self._receiver()
        if peer is None:  # kept until a transceiver/receiver binds, like a real SMSC
            self._queued_receipts.append((dest, text, tlvs))
            return
        seq = peer.seq.next()
        peer.unacked[seq] = (dest, text, tlvs)
        peer.send(
            codec.encode_deliver_sm(
                seq,
                source_addr="smsc",
                destination_addr=dest,
                short_message=text,
                esm_class=0x04,  # SMPP 3.4 §5.2.12: SMSC delivery receipt
                source_addr_ton=5,
                source_addr_npi=0,
                tlvs=tlvs,
            )
        )

    def _receiver(self) -> _Peer | None:
        for peer in self._peers:
            if peer.receives and not peer.writer.is_closing():
                return peer
        return None

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# --- decoding a submit_sm for people ------------------------------------------------------------


def _received(pdu: codec.Pdu, message_id: str, system_id: str) -> ReceivedSms:
    short_message = pdu.octets("short_message")
    esm_class = pdu.number("esm_class")
    data_coding = pdu.number("data_coding")
    content = short_message
    payload = pdu.tlvs.get("message_payload")
    if not content and isinstance(payload, bytes):
        content = payload
    udh = b""
    if esm_class & 0x40 and content:  # SMPP 3.4 §5.2.12: UDHI
        udh = content[: 1 + content[0]]
        content = content[1 + content[0] :]
    return ReceivedSms(
        source_addr=pdu.text("source_addr"),
        source_addr_ton=pdu.number("source_addr_ton"),
        source_addr_npi=pdu.number("source_addr_npi"),
        destination_addr=pdu.text("destination_addr"),
        short_message=short_message,
        data_coding=data_coding,
        esm_class=esm_class,
        protocol_id=pdu.number("protocol_id"),
        registered_delivery=pdu.number("registered_delivery"),
        dest_addr_ton=pdu.number("dest_addr_ton"),
        dest_addr_npi=pdu.number("dest_addr_npi"),
        tlvs=tuple(pdu.tlvs.items()),
        message_id=message_id,
        sequence=pdu.sequence,
        text=decode_text(data_coding, content),
        udh=udh,
        system_id=system_id,
        part=_part(udh, pdu.tlvs),
    )


def decode_text(data_coding: int, data: bytes) -> str:
    """User data → text by data_coding (SMPP 3.4 §5.2.19 and 3GPP TS 23.038 §4)."""
    alphabet = _alphabet(data_coding)
    if alphabet == "gsm":
        return gsm7.decode(data)
    if alphabet == "ucs2":
        return data.decode("utf-16-be", errors="replace")
    if alphabet == "cyrillic":
        return data.decode("iso-8859-5", errors="replace")
    if alphabet == "hebrew":
        return data.decode("iso-8859-8", errors="replace")
    return data.decode("latin-1")


def _alphabet(dcs: int) -> str:
    if dcs <= 0x0F:  # SMPP 3.4 §5.2.19's own table
        return {0x00: "gsm", 0x06: "cyrillic", 0x07: "hebrew", 0x08: "ucs2"}.get(dcs, "latin1")
    group = dcs >> 4
    if group <= 0x07:  # TS 23.038 general data coding (0x10–0x7F): bits 3–2 are the alphabet
        return ("gsm", "latin1", "ucs2", "latin1")[(dcs >> 2) & 0x03]
    if group in (0x0C, 0x0D):  # message waiting, GSM 7-bit
        return "gsm"
    if group == 0x0E:  # message waiting, UCS-2
        return "ucs2"
    if group == 0x0F:  # data coding / message class: bit 2 chooses 8-bit data
        return "latin1" if dcs & 0x04 else "gsm"
    return "latin1"


def _part(udh: bytes, tlvs: dict[str, TlvValue]) -> tuple[int, int, int] | None:
    """(reference, total, number) of a concatenated part (TS 23.040 §9.2.3.24.1/.8, sar TLVs)."""
    pos = 1
    while pos + 2 <= len(udh):
        iei, length = udh[pos], udh[pos + 1]
        value = udh[pos + 2 : pos + 2 + length]
        if iei == 0x00 and len(value) == 3:
            return value[0], value[1], value[2]
        if iei == 0x08 and len(value) == 4:
            return (value[0] << 8) | value[1], value[2], value[3]
        pos += 2 + length
    ref, total, num = (
        tlvs.get("sar_msg_ref_num"),
        tlvs.get("sar_total_segments"),
        tlvs.get("sar_segment_seqnum"),
    )
    if isinstance(ref, int) and isinstance(total, int) and isinstance(num, int):
        return ref, total, num
    return None


def _log_sms(sms: ReceivedSms) -> None:
    part = f"part {sms.part[2]}/{sms.part[1]} ref {sms.part[0]}" if sms.part else "single"
    log.info(
        "SMS id=%s to=%s from=%s dcs=0x%02x %s text=%r",
        sms.message_id,
        sms.destination_addr,
        sms.source_addr,
        sms.data_coding,
        part,
        sms.text,
    )


def _print_json(sms: ReceivedSms) -> None:
    print(json.dumps(sms.as_json(), ensure_ascii=False), flush=True)


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = 2775,
    *,
    json_lines: bool = False,
    on_listening: Callable[[int], None] | None = None,
    **kw: Any,
) -> None:
    """Run a simulator until cancelled (`sms-relay smsc-sim`); each SMS as a JSON line if asked.

    `on_listening` gets the bound port once listening (useful with port 0). `kw` goes to
    SmscSimulator (system_id, password, receipts, receipt_delay, receipt_stat, faults).
    """
    sim = SmscSimulator(host=host, port=port, on_sms=_print_json if json_lines else None, **kw)
    async with sim:
        if on_listening is not None:
            on_listening(sim.port)
        if json_lines:
            print(json.dumps({"listening": f"{host}:{sim.port}"}), file=sys.stderr, flush=True)
        await asyncio.Event().wait()
