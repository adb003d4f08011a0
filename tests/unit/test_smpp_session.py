"""The sans-IO ESME session fed with bytes: answers, events, states."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smpp import codec
from relay.smpp.model import SubmitSm
from relay.smpp.session import (
    BindResponse,
    Deliver,
    EnquireLinkResponse,
    EsmeSession,
    Nack,
    Rejected,
    SessionStateError,
    SubmitResponse,
    UnbindRequested,
    UnbindResponse,
    submit_response,
)

SM = SubmitSm("Alex", 5, 0, "79990000001", b"hi", 0)


def bound_session() -> EsmeSession:
    s = EsmeSession()
    seq = s.bind("transceiver", system_id="relay", password="secret")
    assert seq == 1
    out = codec.decode(s.data_to_send())
    assert (out.command, out.text("system_id"), out.text("password")) == (
        "bind_transceiver",
        "relay",
        "secret",
    )
    events = s.receive_data(codec.encode_bind_resp("bind_transceiver", 1, 0, "smsc"))
    assert events == [BindResponse(1, 0, "smsc")]
    assert s.state == "bound"
    return s


def test_submit_before_bound_refused() -> None:
    s = EsmeSession()
    with pytest.raises(SessionStateError):
        s.submit(SM)


def test_bind_refused_closes() -> None:
    s = EsmeSession()
    s.bind("transmitter", system_id="relay", password="x")
    events = s.receive_data(codec.encode_bind_resp("bind_transmitter", 1, 0x0E, ""))
    assert events == [BindResponse(1, 0x0E, "")]
    assert s.state == "closed"


def test_bind_answered_by_generic_nack_is_a_refusal() -> None:
    s = EsmeSession()
    s.bind("transmitter", system_id="relay", password="x")
    assert s.receive_data(codec.encode_generic_nack(1, 0)) == [BindResponse(1, 0x0D)]


def test_submit_and_response_sequences() -> None:
    s = bound_session()
    assert [s.submit(SM), s.submit(SM)] == [2, 3]
    sent = s.data_to_send()
    reader = codec.PduReader()
    assert [codec.decode(p).sequence for p in reader.feed(sent)] == [2, 3]
    events = s.receive_data(
        codec.encode_submit_sm_resp(3, 0, "b") + codec.encode_submit_sm_resp(2, 0x58, "")
    )
    assert events == [SubmitResponse(3, 0, "b"), SubmitResponse(2, 0x58, "")]


def test_enquire_link_answered() -> None:
    s = bound_session()
    assert s.receive_data(codec.encode_enquire_link(77)) == []
    assert s.data_to_send() == codec.encode_enquire_link_resp(77)
    seq = s.enquire_link()
    assert s.data_to_send() == codec.encode_enquire_link(seq)
    assert s.receive_data(codec.encode_enquire_link_resp(seq)) == [EnquireLinkResponse(seq)]


def test_unknown_command_gets_generic_nack_invcmdid() -> None:
    s = bound_session()
    events = s.receive_data(struct.pack(">LLLL", 16, 0x00000099, 0, 555))
    assert len(events) == 1 and isinstance(events[0], Rejected)
    assert s.data_to_send() == bytes.fromhex("0000001080000000000000030000022b")


def test_known_but_unexpected_request_gets_generic_nack() -> None:
    s = bound_session()
    s.receive_data(codec.encode_submit_sm(SM, 9))  # an SMSC never submits to an ESME
    assert codec.decode(s.data_to_send()).status == codec.ESME_RINVCMDID


def test_garbled_response_not_answered() -> None:
    s = bound_session()
    events = s.receive_data(struct.pack(">LLLL", 16, 0x80000099, 0, 5))
    assert isinstance(events[0], Rejected)
    assert s.data_to_send() == b""


def test_impossible_length_raises_frame_error() -> None:
    s = bound_session()
    with pytest.raises(codec.FrameError):
        s.receive_data(struct.pack(">LLLL", 8, 0x15, 0, 5))


def test_unbind_from_peer() -> None:
    s = bound_session()
    assert s.receive_data(codec.encode_unbind(12)) == [UnbindRequested(12)]
    assert s.data_to_send() == codec.encode_unbind_resp(12)
    assert s.state == "closed"


def test_our_unbind() -> None:
    s = bound_session()
    seq = s.unbind()
    assert codec.decode(s.data_to_send()).command == "unbind"
    assert s.receive_data(codec.encode_unbind_resp(seq)) == [UnbindResponse(seq)]


def test_generic_nack_to_submit() -> None:
    s = bound_session()
    seq = s.submit(SM)
    assert s.receive_data(codec.encode_generic_nack(seq, 0x03)) == [Nack(seq, 3)]


def test_deliver_receipt_parsed_and_answered() -> None:
    s = bound_session()
    pdu = codec.encode_deliver_sm(
        40,
        source_addr="79990000001",
        destination_addr="Alex",
        short_message=b"id:100 sub:001 dlvrd:001 stat:DELIVRD err:000 text:hi",
        esm_class=0x04,
        tlvs=[("0x1501", b"\x01"), ("receipted_message_id", b"64"), ("message_state", 2)],
    )
    (event,) = s.receive_data(pdu)
    assert isinstance(event, Deliver)
    assert event.sequence == 40 and event.command == "deliver_sm"
    receipt = event.deliver.receipt
    assert receipt is not None
    assert (receipt.message_id, receipt.stat, receipt.extra) == (
        "64",
        "DELIVRD",
        {"text_id": "100"},
    )
    s.deliver_resp(40, 0)
    assert s.data_to_send() == codec.encode_deliver_sm_resp(40, 0)


def test_mo_deliver_has_no_receipt() -> None:
    s = bound_session()
    pdu = codec.encode_deliver_sm(
        41, source_addr="7999", destination_addr="Alex", short_message=b"id:1 stat:x"
    )
    (event,) = s.receive_data(pdu)
    assert isinstance(event, Deliver)
    assert event.deliver.receipt is None
    assert event.deliver.short_message == b"id:1 stat:x"


def test_data_sm_answered_with_data_sm_resp() -> None:
    s = bound_session()
    body = (
        b"\x00" + b"\x01\x01" + b"7999\x00" + b"\x05\x00" + b"Alex\x00" + b"\x00\x00\x08"
    ) + codec.encode_tlvs([("message_payload", "Да".encode("utf-16-be"))])
    pdu = struct.pack(">LLLL", 16 + len(body), 0x103, 0, 50) + body
    (event,) = s.receive_data(pdu)
    assert isinstance(event, Deliver)
    assert event.command == "data_sm"
    assert (event.deliver.source_addr, event.deliver.data_coding) == ("7999", 8)
    assert event.deliver.short_message == "Да".encode("utf-16-be")
    s.deliver_resp(event.sequence, 0, event.command)
    assert codec.decode(s.data_to_send()).command == "data_sm_resp"


# --- the submit_sm_resp fast path is the generic decoder's answer, or no answer -------------

_message_ids = st.binary(max_size=70).filter(lambda b: b"\0" not in b)
_bodies = st.one_of(
    st.just(b""),
    _message_ids.map(lambda m: m + b"\0"),
    st.tuples(_message_ids, st.binary(min_size=1, max_size=12)).map(lambda t: t[0] + b"\0" + t[1]),
    st.binary(max_size=80),
)


def _generic(raw: bytes) -> SubmitResponse:
    pdu = codec.decode(raw)
    assert pdu.command == "submit_sm_resp"
    return SubmitResponse(pdu.sequence, pdu.status, pdu.text("message_id").strip())


@settings(max_examples=500, deadline=None)
@given(body=_bodies, status=st.integers(0, 0xFFFFFFFF), seq=st.integers(1, 0x7FFFFFFF))
def test_submit_response_fast_path_equals_the_generic_decoder(
    body: bytes, status: int, seq: int
) -> None:
    raw = struct.pack(">LLLL", 16 + len(body), 0x80000004, status, seq) + body
    fast = submit_response(raw)
    if fast is not None:
        assert fast == _generic(raw)
    else:  # only what the fast path does not claim to know goes the generic way
        assert body and (body.find(b"\0") != len(body) - 1 or len(body) > 65)


def test_submit_response_fast_path_takes_the_common_answers() -> None:
    plain = struct.pack(">LLLL", 16 + 5, 0x80000004, 0, 9) + b"a1b2\0"
    assert submit_response(plain) == SubmitResponse(9, 0, "a1b2")
    empty = struct.pack(">LLLL", 16, 0x80000004, 0x58, 10)
    assert submit_response(empty) == SubmitResponse(10, 0x58, "")
    other = struct.pack(">LLLL", 16, 0x80000015, 0, 11)  # enquire_link: not for the fast path
    assert submit_response(other) is None
