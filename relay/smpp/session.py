"""PURE: the ESME side of one SMPP 3.4 session (sans-IO, like h11): bytes in → events out.

The caller feeds received bytes to `receive_data` and writes whatever `data_to_send` returns.
Sequence numbers are assigned here. PDUs that need no decision are answered here, at this one
boundary: enquire_link → enquire_link_resp, unbind → unbind_resp, an unknown or undecodable
request → generic_nack with the error's status (SMPP 3.4 §4.3; ESME_RINVCMDID for an unknown
command_id). An impossible command_length raises `codec.FrameError`: drop the connection.

States (SMPP 3.4 §2.3)::

    open ──bind()──▶ binding ──resp ok──▶ bound ──unbind()──▶ unbinding ──▶ closed
                        └──resp error──▶ closed      └──unbind from peer──▶ closed
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal

from relay.smpp import codec
from relay.smpp.model import DeliverSm, SubmitSm
from relay.smpp.receipt import is_receipt, parse_receipt

State = Literal["open", "binding", "bound", "unbinding", "closed"]
BindKind = Literal["transmitter", "transceiver", "receiver"]


@dataclass(frozen=True, slots=True)
class BindResponse:
    sequence: int
    status: int
    system_id: str = ""


@dataclass(frozen=True, slots=True)
class SubmitResponse:
    sequence: int
    status: int
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class EnquireLinkResponse:
    sequence: int


@dataclass(frozen=True, slots=True)
class UnbindResponse:
    sequence: int


@dataclass(frozen=True, slots=True)
class UnbindRequested:
    """The peer sent unbind; the unbind_resp is already queued. Close after sending it."""

    sequence: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """A deliver_sm or data_sm: answer it with `Session.deliver_resp(sequence, status, command)`."""

    sequence: int
    command: Literal["deliver_sm", "data_sm"]
    deliver: DeliverSm


@dataclass(frozen=True, slots=True)
class Nack:
    """The peer answered our request `sequence` with generic_nack."""

    sequence: int
    status: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """A PDU from the peer we could not take (a generic_nack went back); for counters/logs."""

    command_id: int
    sequence: int
    status: int
    reason: str


Event = (
    BindResponse
    | SubmitResponse
    | EnquireLinkResponse
    | UnbindResponse
    | UnbindRequested
    | Deliver
    | Nack
    | Rejected
)

# Requests an ESME answers itself; any other request from the SMSC gets ESME_RINVCMDID.
_ANSWERED: Final = frozenset({"enquire_link", "unbind", "deliver_sm", "data_sm"})
_HEADER: Final = struct.Struct(">LLLL")
SUBMIT_SM_RESP: Final = 0x80000004
_MESSAGE_ID_MAX: Final = 64  # SMPP 3.4 §4.4.2: C-Octet String of at most 65 octets with the NUL


class SessionStateError(RuntimeError):
    """A request that the session's state does not allow (e.g. submit before bound)."""


class EsmeSession:
    """One connection's protocol state; no I/O, no clock."""

    def __init__(self, first_sequence: int = 1) -> None:
        self.state: State = "open"
        self._seq = codec.SequenceNumbers(first_sequence)
        self._reader = codec.PduReader()
        self._out = bytearray()
        self._bind_seq: int | None = None

    # --- outgoing ---------------------------------------------------------------------------

    def bind(self, kind: BindKind, *, system_id: str, password: str, system_type: str = "") -> int:
        if self.state != "open":
            raise SessionStateError(f"bind in state {self.state}")
        seq = self._seq.next()
        self._out += codec.encode_bind(
            kind, seq, system_id=system_id, password=password, system_type=system_type
        )
        self._bind_seq = seq
        self.state = "binding"
        return seq

    def submit(self, sm: SubmitSm) -> int:
        if self.state != "bound":
            raise SessionStateError(f"submit_sm in state {self.state}")
        seq = self._seq.next()
        self._out += codec.encode_submit_sm(sm, seq)
        return seq

    def enquire_link(self) -> int:
        seq = self._seq.next()
        self._out += codec.encode_enquire_link(seq)
        return seq

    def unbind(self) -> int:
        if self.state != "bound":
            raise SessionStateError(f"unbind in state {self.state}")
        seq = self._seq.next()
        self._out += codec.encode_unbind(seq)
        self.state = "unbinding"
        return seq

    def deliver_resp(
        self, sequence: int, status: int = codec.ESME_ROK, command: str = "deliver_sm"
    ) -> None:
        if command == "data_sm":
            self._out += codec.encode_data_sm_resp(sequence, status)
        else:
            self._out += codec.encode_deliver_sm_resp(sequence, status)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    # --- incoming ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the peer → events. Raises codec.FrameError: the stream is garbage."""
        events: list[Event] = []
        for raw in self._reader.feed(data):
            event = self._handle(raw)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, raw: bytes) -> Event | None:
        fast = submit_response(raw)
        if fast is not None:
            return fast
        try:
            pdu = codec.decode(raw)
        except codec.DecodeError as exc:
            if exc.command_id & codec.RESPONSE_BIT:
                # Never answer a response (SMPP 3.4 §4.3 generic_nack is for requests).
                return Rejected(exc.command_id, exc.sequence, exc.status, str(exc))
            self._out += codec.encode_generic_nack(exc.sequence, exc.status)
            return Rejected(exc.command_id, exc.sequence, exc.status, str(exc))
        if not pdu.is_response and pdu.command not in _ANSWERED:
            self._out += codec.encode_generic_nack(pdu.sequence, codec.ESME_RINVCMDID)
            return Rejected(pdu.command_id, pdu.sequence, codec.ESME_RINVCMDID, pdu.command)
        return self._dispatch(pdu)

    def _dispatch(self, pdu: codec.Pdu) -> Event | None:
        cmd = pdu.command
        if cmd.startswith("bind_") and cmd.endswith("_resp"):
            if self.state == "binding" and pdu.sequence == self._bind_seq:
                self.state = "bound" if pdu.status == codec.ESME_ROK else "closed"
            return BindResponse(pdu.sequence, pdu.status, pdu.text("system_id"))
        if cmd == "submit_sm_resp":
            return SubmitResponse(pdu.sequence, pdu.status, pdu.text("message_id").strip())
        if cmd == "enquire_link":
            self._out += codec.encode_enquire_link_resp(pdu.sequence)
            return None
        if cmd == "enquire_link_resp":
            return EnquireLinkResponse(pdu.sequence)
        if cmd == "unbind":
            self._out += codec.encode_unbind_resp(pdu.sequence)
            self.state = "closed"
            return UnbindRequested(pdu.sequence)
        if cmd == "unbind_resp":
            self.state = "closed"
            return UnbindResponse(pdu.sequence)
        if cmd == "generic_nack":
            if self.state == "binding" and pdu.sequence == self._bind_seq:
                self.state = "closed"
                return BindResponse(pdu.sequence, pdu.status or codec.ESME_RBINDFAIL)
            return Nack(pdu.sequence, pdu.status)
        if cmd in ("deliver_sm", "data_sm"):
            kind: Literal["deliver_sm", "data_sm"] = "data_sm" if cmd == "data_sm" else "deliver_sm"
            return Deliver(pdu.sequence, kind, deliver(pdu))
        return None  # a response we never asked for (deliver_sm_resp, …): nothing to do


def submit_response(raw: bytes) -> SubmitResponse | None:
    """A plain submit_sm_resp (nothing but a message_id, or no body) without the generic
    decoder, which builds an smpplib object per PDU (issue 9: ≈15 % of the event loop at
    thousands of responses a second); None: anything else, for `codec.decode` to judge.
    Proven equal to the generic path by tests/unit/test_smpp_session.py."""
    length, command_id, status, sequence = _HEADER.unpack_from(raw)
    if command_id != SUBMIT_SM_RESP or length != len(raw):
        return None
    if length == codec.HEADER_SIZE:
        return SubmitResponse(sequence, status, "")
    end = raw.find(b"\0", codec.HEADER_SIZE)
    if end != length - 1 or end - codec.HEADER_SIZE > _MESSAGE_ID_MAX:
        return None
    return SubmitResponse(sequence, status, raw[codec.HEADER_SIZE : end].decode("latin-1").strip())


def deliver(pdu: codec.Pdu) -> DeliverSm:
    """deliver_sm/data_sm → DeliverSm, with the receipt parsed when it is one (SPEC §9)."""
    short_message = pdu.octets("short_message")
    payload = pdu.tlvs.get("message_payload")
    if not short_message and isinstance(payload, bytes):
        short_message = payload
    esm_class = pdu.number("esm_class")
    data_coding = pdu.number("data_coding")
    receipt = None
    if is_receipt(esm_class, pdu.tlvs):
        receipt = parse_receipt(receipt_text(short_message, data_coding), pdu.tlvs)
    return DeliverSm(
        source_addr=pdu.text("source_addr"),
        destination_addr=pdu.text("destination_addr"),
        esm_class=esm_class,
        data_coding=data_coding,
        short_message=short_message,
        tlvs=dict(pdu.tlvs),
        receipt=receipt,
    )


def receipt_text(short_message: bytes, data_coding: int) -> str:
    """A receipt's text is ASCII in practice; some SMSCs send it in UCS-2 (data_coding 0x08)."""
    if data_coding & 0x0C == 0x08 and len(short_message) % 2 == 0:
        return short_message.decode("utf-16-be", errors="replace")
    return short_message.decode("latin-1")
