"""The PDU codec: round trips, exact bytes, framing in any chunking, garbage never crashes."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smpp import codec
from relay.smpp.model import SubmitSm

SM = SubmitSm(
    source_addr="Alex",
    source_addr_ton=5,
    source_addr_npi=0,
    destination_addr="79990000001",
    short_message=b"\x05\x00\x03\x07\x02\x01hello",
    data_coding=0,
    esm_class=0x40,
    tlvs=(("sar_msg_ref_num", 7), ("message_payload", b"")),
)


def test_submit_sm_exact_bytes() -> None:
    sm = SubmitSm("1234", 1, 1, "79990000001", b"hi", 8)
    data = codec.encode_submit_sm(sm, 42)
    body = (
        b"\x00"  # service_type
        + b"\x01\x01"
        + b"1234\x00"
        + b"\x01\x01"
        + b"79990000001\x00"
        + b"\x00\x00\x00"  # esm_class, protocol_id, priority_flag
        + b"\x00\x00"  # schedule_delivery_time, validity_period
        + b"\x01\x00\x08\x00"  # registered_delivery, replace, data_coding, sm_default_msg_id
        + b"\x02hi"
    )
    assert data == struct.pack(">LLLL", 16 + len(body), 4, 0, 42) + body


def test_submit_sm_round_trip_with_tlvs_in_order() -> None:
    sm = SubmitSm(
        "Alex",
        5,
        0,
        "79990000001",
        b"\x05\x00\x03\x07\x02\x01hello",
        0,
        esm_class=0x40,
        registered_delivery=0,
        tlvs=(("sar_segment_seqnum", 1), ("sar_msg_ref_num", 700), ("0x1501", b"xy")),
    )
    data = codec.encode_submit_sm(sm, 7)
    # TLVs go out in the given order, each with its standard size.
    assert data.endswith(
        b"\x02\x0f\x00\x01\x01" + b"\x02\x0c\x00\x02\x02\xbc" + b"\x15\x01\x00\x02xy"
    )
    pdu = codec.decode(data)
    assert (pdu.command, pdu.sequence, pdu.status) == ("submit_sm", 7, 0)
    assert pdu.text("source_addr") == "Alex"
    assert pdu.number("source_addr_ton") == 5
    assert pdu.text("destination_addr") == "79990000001"
    assert pdu.number("esm_class") == 0x40
    assert pdu.number("registered_delivery") == 0
    assert pdu.octets("short_message") == sm.short_message
    assert pdu.tlvs == {"sar_segment_seqnum": 1, "sar_msg_ref_num": 700, "0x1501": b"xy"}


def test_message_payload_tlv_round_trip() -> None:
    payload = bytes(range(256)) * 3
    sm = SubmitSm("A", 5, 0, "1", b"", 4, tlvs=(("message_payload", payload),))
    pdu = codec.decode(codec.encode_submit_sm(sm, 1))
    assert pdu.octets("short_message") == b""
    assert pdu.tlvs["message_payload"] == payload


def test_short_message_over_254_refused() -> None:
    with pytest.raises(ValueError):
        codec.encode_submit_sm(SubmitSm("A", 5, 0, "1", b"x" * 255, 4), 1)


@pytest.mark.parametrize(
    ("data", "command", "status", "seq"),
    [
        (codec.encode_enquire_link(3), "enquire_link", 0, 3),
        (codec.encode_enquire_link_resp(3), "enquire_link_resp", 0, 3),
        (codec.encode_unbind(4), "unbind", 0, 4),
        (codec.encode_unbind_resp(4), "unbind_resp", 0, 4),
        (codec.encode_generic_nack(5, 3), "generic_nack", 3, 5),
        (codec.encode_deliver_sm_resp(9, 0x64), "deliver_sm_resp", 0x64, 9),
        (codec.encode_data_sm_resp(9), "data_sm_resp", 0, 9),
        (codec.encode_submit_sm_resp(11, 0x58, ""), "submit_sm_resp", 0x58, 11),
    ],
)
def test_simple_pdus(data: bytes, command: str, status: int, seq: int) -> None:
    pdu = codec.decode(data)
    assert (pdu.command, pdu.status, pdu.sequence) == (command, status, seq)
    assert struct.unpack(">L", data[:4])[0] == len(data)


def test_header_only_pdus_are_16_octets() -> None:
    assert codec.encode_enquire_link(0x7FFFFFFF) == bytes.fromhex(
        "0000001000000015000000007fffffff"
    )
    assert codec.encode_generic_nack(2, 3) == bytes.fromhex("00000010800000000000000300000002")


def test_bind_and_resp() -> None:
    data = codec.encode_bind("transceiver", 1, system_id="relay", password="secret")
    pdu = codec.decode(data)
    assert pdu.command == "bind_transceiver"
    assert pdu.text("system_id") == "relay"
    assert pdu.text("password") == "secret"
    assert pdu.number("interface_version") == 0x34
    ok = codec.decode(codec.encode_bind_resp("bind_transceiver", 1, 0, "sim"))
    assert (ok.command, ok.status, ok.text("system_id")) == ("bind_transceiver_resp", 0, "sim")
    refused = codec.encode_bind_resp("bind_transmitter", 2, 0x0E, "sim")
    assert len(refused) == 16
    assert codec.decode(refused).status == 0x0E


def test_submit_sm_resp_message_id() -> None:
    pdu = codec.decode(codec.encode_submit_sm_resp(8, 0, "1f3a"))
    assert pdu.text("message_id") == "1f3a"
    assert pdu.is_response


def test_deliver_sm_with_unknown_and_misplaced_tlvs() -> None:
    data = codec.encode_deliver_sm(
        7,
        source_addr="79990000001",
        destination_addr="Alex",
        short_message=b"id:12 stat:DELIVRD",
        esm_class=4,
        tlvs=[
            ("0x1600", b"\x01\x02"),  # vendor tag
            ("receipted_message_id", b"c"),
            ("message_state", 2),
            ("sc_interface_version", 0x34),  # known to smpplib, not for deliver_sm
            ("network_error_code", b"\x03\x00\x01"),
        ],
    )
    pdu = codec.decode(data)
    assert pdu.tlvs == {
        "0x1600": b"\x01\x02",
        "receipted_message_id": b"c",
        "message_state": 2,
        "sc_interface_version": 0x34,
        "network_error_code": b"\x03\x00\x01",
    }


def test_int_tlv_read_by_wire_length() -> None:
    # message_state sent in 4 octets by a sloppy SMSC: read by its length, not smpplib's size.
    base = codec.encode_deliver_sm(1, source_addr="1", destination_addr="2", short_message=b"")
    data = codec._with_tlvs(base, b"\x04\x27\x00\x04\x00\x00\x00\x05")
    assert codec.decode(data).tlvs == {"message_state": 5}


def test_unknown_command_is_decode_error_with_invcmdid() -> None:
    data = struct.pack(">LLLL", 16, 0x00000099, 0, 77)
    with pytest.raises(codec.DecodeError) as err:
        codec.decode(data)
    assert (err.value.status, err.value.sequence, err.value.command_id) == (3, 77, 0x99)


def test_truncated_tlv_is_decode_error() -> None:
    base = codec.encode_deliver_sm(1, source_addr="1", destination_addr="2", short_message=b"x")
    with pytest.raises(codec.DecodeError) as err:
        codec.decode(codec._with_tlvs(base, b"\x04\x27\x00\x05\x01"))
    assert err.value.status == codec.ESME_RINVCMDLEN


def test_unterminated_string_is_decode_error() -> None:
    data = struct.pack(">LLLL", 20, 5, 0, 1) + b"abcd"
    with pytest.raises(codec.DecodeError):
        codec.decode(data)


@pytest.mark.parametrize("length", [0, 4, 15, codec.MAX_PDU_SIZE + 1, 0xFFFFFFFF])
def test_impossible_length_is_frame_error(length: int) -> None:
    reader = codec.PduReader()
    with pytest.raises(codec.FrameError):
        reader.feed(struct.pack(">LLLL", length, 0x15, 0, 1))


def test_sequence_numbers_wrap_to_one() -> None:
    seq = codec.SequenceNumbers(start=codec.MAX_SEQUENCE - 1)
    assert [seq.next() for _ in range(3)] == [codec.MAX_SEQUENCE - 1, codec.MAX_SEQUENCE, 1]


_STREAM = [
    codec.encode_enquire_link(1),
    codec.encode_submit_sm(SM, 2),
    codec.encode_generic_nack(3, 3),
    codec.encode_submit_sm_resp(4, 0, "abc"),
    codec.encode_deliver_sm(5, source_addr="1", destination_addr="2", short_message=b"x" * 200),
]


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.integers(min_value=1, max_value=60), max_size=40))
def test_framing_in_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(_STREAM)
    reader = codec.PduReader()
    got: list[bytes] = []
    pos = 0
    for n in cuts:
        got += reader.feed(stream[pos : pos + n])
        pos += n
    got += reader.feed(stream[pos:])
    assert got == _STREAM
    assert reader.buffered == 0


@settings(derandomize=True, max_examples=300)
@given(st.binary(min_size=0, max_size=300))
def test_decode_never_raises_anything_else(body: bytes) -> None:
    for command_id in (4, 5, 0x80000004, 0x80000009, 9, 0x103, 0x15):
        data = struct.pack(">LLLL", 16 + len(body), command_id, 0, 1) + body
        with contextlib.suppress(codec.DecodeError):
            codec.decode(data)
