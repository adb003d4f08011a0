"""Formats (SPEC §4, §7): byte-exact submit_sm contents, rejections, source addresses."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ErrorCode, RejectError
from relay.sms import (
    SMSC_CODING_PROFILE,
    PartSpec,
    SmsProfile,
    build_parts,
    count_parts,
    gsm7,
    source_address,
)
from relay.sms.wap_push import push_pdu, uintvar

SMSC = SMSC_CODING_PROFILE
UCS2 = "utf-16-be"


def test_smsc_coding_profile_is_coding_times_4() -> None:
    assert (SMSC.data_coding_gsm, SMSC.data_coding_latin1, SMSC.data_coding_ucs2) == (0, 4, 8)
    assert SMSC.dialect == "smsc"
    assert build_parts("ж", profile=SMSC) == [PartSpec("ж".encode(UCS2), 8)]
    assert build_parts("ç", profile=replace(SMSC, latin1=True)) == [PartSpec(b"\xe7", 4)]


def test_flash() -> None:
    assert build_parts("Hi", fmt=1) == [PartSpec(b"Hi", 0x10)]
    assert build_parts("Привет", fmt=1) == [PartSpec("Привет".encode(UCS2), 0x18)]
    # Latin-1 has no message-class data_coding: flash falls back to GSM 7-bit / UCS-2.
    latin1 = SmsProfile(latin1=True)
    assert build_parts("é", fmt=1, profile=latin1) == [PartSpec(b"\x05", 0x10)]
    assert build_parts("ç", fmt=1, profile=latin1) == [PartSpec(b"\x00\xe7", 0x18)]
    assert build_parts("Привет", fmt=1, translit=1) == [PartSpec(b"Privet", 0x10)]
    parts = build_parts("a" * 161, fmt=1, ref=3)
    assert [(p.data_coding, p.esm_class) for p in parts] == [(0x10, 0x40), (0x10, 0x40)]


WAP_UDH = bytes.fromhex("0605040b8423f0")
WSP_PUSH_SIC = bytes.fromhex("01060403ae81ea")
WBXML_SI = bytes.fromhex("02056a00")


def test_wap_push_bytes() -> None:
    parts = build_parts("http://example.com/a\nTitle", fmt=2)
    expected = (
        WAP_UDH
        + WSP_PUSH_SIC
        + WBXML_SI
        + b"\x45\xc6\x0c\x03example.com/a\x00\x01\x03Title\x00\x01\x01"
    )
    assert parts == [PartSpec(expected, 0x04, 0x40)]


@pytest.mark.parametrize(
    ("url", "attr"),
    [
        ("https://www.x.ru", b"\x0f\x03x.ru\x00"),
        ("https://x.ru", b"\x0e\x03x.ru\x00"),
        ("http://www.x.ru", b"\x0d\x03x.ru\x00"),
        ("x.ru/p?q=1", b"\x0c\x03x.ru/p?q=1\x00"),  # no scheme: http:// is assumed
        ("ftp://x.ru", b"\x0b\x03ftp://x.ru\x00"),
    ],
)
def test_wap_push_href(url: str, attr: bytes) -> None:
    pdu = push_pdu(url, "")
    assert pdu == WSP_PUSH_SIC + WBXML_SI + b"\x45\x86" + attr + b"\x01\x01"


def test_wap_push_title_is_utf8_and_transliterated() -> None:
    pdu = build_parts("x.ru\nПривет", fmt=2)[0].short_message
    assert "Привет".encode() + b"\x00" in pdu
    pdu = build_parts("x.ru\nПривет", fmt=2, translit=1)[0].short_message
    assert pdu.endswith(b"\x03Privet\x00\x01\x01")


def test_long_wap_push_keeps_ports_in_every_part() -> None:
    url = "http://example.com/" + "p" * 200
    for profile in (SmsProfile(), SmsProfile(long_sms="sar"), SmsProfile(long_sms="payload")):
        parts = build_parts(url + "\nT", fmt=2, ref=0x42, profile=profile)
        assert len(parts) == 2
        for seq, part in enumerate(parts, start=1):
            assert part.short_message[:12] == bytes.fromhex("0b05040b8423f0000342") + bytes(
                (2, seq)
            )
            assert len(part.short_message) <= 140
            assert (part.data_coding, part.esm_class, part.tlvs) == (0x04, 0x40, ())
        body = b"".join(p.short_message[12:] for p in parts)
        assert body == push_pdu(url, "T")
        assert count_parts(url + "\nT", fmt=2, profile=profile) == 2


@pytest.mark.parametrize("text", ["", "\n  \n", "http://a b\nT"])
def test_wap_push_needs_a_url(text: str) -> None:
    with pytest.raises(RejectError) as info:
        build_parts(text, fmt=2)
    assert info.value.code is ErrorCode.PARAMETERS


def test_uintvar() -> None:
    assert uintvar(0) == b"\x00"
    assert uintvar(0x7F) == b"\x7f"
    assert uintvar(0x80) == b"\x81\x00"
    assert uintvar(0x3FFF) == b"\xff\x7f"


def test_binary() -> None:
    assert build_parts("\x00\x01AB\xff", fmt=4) == [PartSpec(b"\x00\x01AB\xff", 0x04)]
    with pytest.raises(RejectError) as info:
        build_parts("Привет", fmt=4)
    assert info.value.code is ErrorCode.PARAMETERS
    parts = build_parts("\xaa" * 141, fmt=4, ref=9)
    assert parts == [
        PartSpec(b"\x05\x00\x03\x09\x02\x01" + b"\xaa" * 134, 0x04, 0x40),
        PartSpec(b"\x05\x00\x03\x09\x02\x02" + b"\xaa" * 7, 0x04, 0x40),
    ]


def test_binary_is_not_transliterated() -> None:
    assert build_parts("\xe9", fmt=4, translit=2) == [PartSpec(b"\xe9", 0x04)]


def test_hex() -> None:
    assert build_parts("0A ff\n10", fmt=5) == [PartSpec(b"\x0a\xff\x10", 0x04)]
    assert build_parts("00" * 140, fmt=5) == [PartSpec(bytes(140), 0x04)]
    assert count_parts("00" * 141, fmt=5) == 2
    parts = build_parts("01" * 200, fmt=5, profile=SmsProfile(long_sms="sar"), ref=0x1FF)
    assert parts[0] == PartSpec(
        b"\x01" * 134,
        0x04,
        tlvs=(("sar_msg_ref_num", 0xFF), ("sar_total_segments", 2), ("sar_segment_seqnum", 1)),
    )


@pytest.mark.parametrize("text", ["", "abc", "zz", "0x10", "  ", "ЖЖ"])
def test_bad_hex(text: str) -> None:
    with pytest.raises(RejectError) as info:
        build_parts(text, fmt=5)
    assert info.value.code is ErrorCode.PARAMETERS


def test_ping() -> None:
    assert build_parts("", fmt=6) == [PartSpec(b"", 0x00, 0, 0x40)]
    assert build_parts("ignored", fmt=6, comment="c") == [PartSpec(b"", 0x00, 0, 0x40)]
    assert count_parts("", fmt=6) == 1


@pytest.mark.parametrize("fmt", [3, 7, 8, 9, 10, 11, 12])
def test_generic_upstream_cannot_carry(fmt: int) -> None:
    with pytest.raises(RejectError) as info:
        build_parts("text", fmt=fmt)
    assert info.value.code is ErrorCode.UNDELIVERABLE
    with pytest.raises(RejectError):
        count_parts("text", fmt=fmt)


@pytest.mark.parametrize(("fmt", "translit"), [(-1, 0), (13, 0), (99, 0), (0, 3), (0, -1)])
def test_out_of_range(fmt: int, translit: int) -> None:
    for profile in (SmsProfile(), SMSC):
        with pytest.raises(RejectError) as info:
            build_parts("text", fmt=fmt, translit=translit, profile=profile)
        assert info.value.code is ErrorCode.PARAMETERS


@pytest.mark.parametrize(
    ("fmt", "text", "extras", "comment", "sent"),
    [
        (3, "ignored", (), "", "__HLR__"),
        (6, "", (), "why", "__PING__\n~~~\nwhy"),
        (7, "pic", (("subj", "Hi"),), "", "__MMS__: pic\nsubj:Hi"),
        (8, "body", (("subj", "Re"),), "note", "__MAIL__: body\nsubj:Re\n~~~\nnote"),
        (9, "call me", (("voice", "w"),), "param=1", "__CALL__: call me\nvoice:w\n~~~\nparam=1"),
        (10, "hi", (), "", "__VIBER__: hi"),
        (12, "hi", (), "", "__SOC__: hi"),
    ],
)
def test_smsc_prefixed_formats(
    fmt: int, text: str, extras: tuple[tuple[str, str], ...], comment: str, sent: str
) -> None:
    parts = build_parts(text, fmt=fmt, profile=SMSC, comment=comment, prefix_extras=extras)
    assert parts == [PartSpec(gsm7.encode(sent), 0x00)]
    assert gsm7.decode(parts[0].short_message) == sent


def test_smsc_prefixed_text_is_encoded_and_transliterated() -> None:
    parts = build_parts("Привет", fmt=10, profile=SMSC)
    assert parts == [PartSpec("__VIBER__: Привет".encode(UCS2), 0x08)]
    parts = build_parts("Привет", fmt=10, translit=1, profile=SMSC, comment="Коммент")
    assert parts == [PartSpec("__VIBER__: Privet\n~~~\nКоммент".encode(UCS2), 0x08)]
    parts = build_parts("Привет", fmt=10, translit=1, profile=SMSC, comment="note")
    assert parts == [PartSpec(gsm7.encode("__VIBER__: Privet\n~~~\nnote"), 0x00)]


def test_smsc_whatsapp_has_no_prefix() -> None:
    with pytest.raises(RejectError) as info:
        build_parts("hi", fmt=11, profile=SMSC)
    assert info.value.code is ErrorCode.UNDELIVERABLE


def test_comment_never_sent_with_sms_formats() -> None:
    for profile in (SmsProfile(), SMSC):
        assert build_parts("hi", profile=profile, comment="secret") == [PartSpec(b"hi", 0)]


@settings(max_examples=300, derandomize=True)
@given(
    text=st.text(max_size=400),
    fmt=st.integers(-1, 13),
    translit=st.integers(0, 2),
    profile=st.sampled_from([SmsProfile(), SMSC, SmsProfile(long_sms="payload", latin1=True)]),
)
def test_only_reject_errors_and_counts_agree(
    text: str, fmt: int, translit: int, profile: SmsProfile
) -> None:
    try:
        parts = build_parts(text, fmt=fmt, translit=translit, profile=profile, comment="c")
    except RejectError as exc:
        assert exc.code in (ErrorCode.PARAMETERS, ErrorCode.UNDELIVERABLE)
        return
    count = count_parts(text, fmt=fmt, translit=translit, profile=profile, comment="c")
    assert count == len(parts) or profile.long_sms == "payload"
    assert count >= len(parts) >= 1


@pytest.mark.parametrize(
    ("sender", "address"),
    [
        ("Alex", ("Alex", 5, 0)),
        ("My Shop-1", ("My Shop-1", 5, 0)),
        ("79991234567", ("79991234567", 1, 1)),
        ("+79991234567", ("79991234567", 1, 1)),
        ("", ("", 0, 0)),
        ("+", ("+", 5, 0)),
        ("٣٤٥", ("٣٤٥", 5, 0)),  # non-ASCII digits are not a number
    ],
)
def test_source_address(sender: str, address: tuple[str, int, int]) -> None:
    assert source_address(sender) == address
