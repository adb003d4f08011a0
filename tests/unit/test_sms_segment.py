"""Segmentation and concatenation: properties over any text, and the boundary tables.

GSM 7-bit is sent unpacked (one septet per octet) and the SMSC packs it, so a GSM part's
short_message may be up to 160 octets: the limit is 160 septets, the UDH counting
ceil(UDHL+1 octets × 8 / 7) septets (3GPP TS 23.040 §9.2.3.24). Latin-1, UCS-2 and 8-bit data
are octets: a part's short_message, UDH included, never exceeds 140 octets (TS 23.040 §9.2.3.16).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ErrorCode, RejectError
from relay.sms import PartSpec, SmsProfile, build_parts, count_parts, gsm7, transliterate

GSM_BASE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXT = "\f^{}\\[~]|€"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґІЇЄҐ"
EMOJI = "😀🎉𝄞🇷🇺"
LATIN1_ONLY = "çÿþ«»±µ"

PROFILES = [
    SmsProfile(),
    SmsProfile(latin1=True),
    SmsProfile(long_sms="sar"),
    SmsProfile(long_sms="payload"),
    SmsProfile(udh_ref16=True),
    SmsProfile(udh_ref16=True, long_sms="sar", latin1=True),
    SmsProfile(data_coding_gsm=0, data_coding_latin1=4, data_coding_ucs2=8, dialect="smsc"),
]

texts = st.one_of(
    st.text(alphabet=GSM_BASE + GSM_EXT, max_size=700),
    st.text(alphabet=CYRILLIC + GSM_BASE + GSM_EXT + EMOJI, max_size=500),
    st.text(max_size=400),
    # Long texts, rich in two-unit characters, so that boundaries fall on escape/surrogate pairs.
    st.text(alphabet=GSM_BASE + GSM_EXT * 8 + LATIN1_ONLY, min_size=150, max_size=700),
    st.text(alphabet=CYRILLIC + EMOJI * 10, min_size=65, max_size=300),
    st.text(alphabet="aé€", min_size=130, max_size=400),
)


def alphabet_of(part: PartSpec, profile: SmsProfile) -> str:
    dc = part.data_coding
    if dc == profile.data_coding_gsm:
        return "gsm"
    if dc == profile.data_coding_ucs2:
        return "ucs2"
    assert dc == profile.data_coding_latin1
    return "latin1"


def split_udh(part: PartSpec) -> tuple[bytes, bytes]:
    sm = part.short_message
    if part.esm_class & 0x40:
        return sm[: sm[0] + 1], sm[sm[0] + 1 :]
    return b"", sm


def decode(data: bytes, abc: str) -> str:
    if abc == "gsm":
        return gsm7.decode(data)
    if abc == "latin1":
        return data.decode("latin-1")
    return data.decode("utf-16-be")  # strict: a split surrogate pair raises here


def reassemble(parts: list[PartSpec], profile: SmsProfile) -> str:
    if profile.long_sms == "payload" and parts[0].tlvs:
        (name, payload), *_ = parts[0].tlvs
        assert name == "message_payload" and isinstance(payload, bytes)
        return decode(payload, alphabet_of(parts[0], profile))
    # Decoding each part on its own is what proves that no escape/surrogate pair is split.
    return "".join(decode(split_udh(p)[1], alphabet_of(p, profile)) for p in parts)


@settings(max_examples=300, derandomize=True)
@given(
    text=texts,
    translit=st.integers(0, 2),
    profile=st.sampled_from(PROFILES),
    ref=st.integers(0, 0xFFFFFF),
)
def test_parts_reassemble_and_fit(text: str, translit: int, profile: SmsProfile, ref: int) -> None:
    parts = build_parts(text, translit=translit, profile=profile, ref=ref)
    assert reassemble(parts, profile) == transliterate(text, translit)

    count = count_parts(text, translit=translit, profile=profile)
    if profile.long_sms == "payload":
        assert len(parts) == 1
        as_udh = replace(profile, long_sms="udh")
        assert count == count_parts(text, translit=translit, profile=as_udh)
    else:
        assert count == len(parts)

    for seq, part in enumerate(parts, start=1):
        udh, body = split_udh(part)
        abc = alphabet_of(part, profile)
        if abc == "gsm":
            udh_septets = math.ceil(len(udh) * 8 / 7)
            assert len(body) + udh_septets <= 160
            assert all(b < 0x80 for b in body)
            assert not body.endswith(b"\x1b")  # no escape pair split
        else:
            assert len(part.short_message) <= 140
        if len(parts) == 1:
            assert udh == b"" and part.esm_class == 0 and (part.tlvs == () or count > 1)
        elif profile.long_sms == "udh":
            assert part.esm_class == 0x40 and part.tlvs == ()
            if profile.udh_ref16:
                assert udh == bytes((6, 8, 4, (ref >> 8) & 0xFF, ref & 0xFF, len(parts), seq))
            else:
                assert udh == bytes((5, 0, 3, ref & 0xFF, len(parts), seq))
        elif profile.long_sms == "sar":
            assert udh == b"" and part.esm_class == 0
            mask = 0xFFFF if profile.udh_ref16 else 0xFF
            assert part.tlvs == (
                ("sar_msg_ref_num", ref & mask),
                ("sar_total_segments", len(parts)),
                ("sar_segment_seqnum", seq),
            )


def expected_count(n: int, single: int, per_part: int) -> int:
    return 1 if n <= single else math.ceil(n / per_part)


@settings(max_examples=300, derandomize=True)
@given(
    n=st.integers(0, 1200),
    kind=st.sampled_from(["gsm", "latin1", "ucs2"]),
    ref16=st.booleans(),
    long_sms=st.sampled_from(["udh", "sar", "payload"]),
)
def test_count_follows_the_spec_arithmetic(n: int, kind: str, ref16: bool, long_sms: str) -> None:
    # One-unit characters only: no boundary adjustment, so the count is plain arithmetic.
    char, single, per_part = {
        "gsm": ("a", 160, 153),
        "latin1": ("ç", 140, 134),
        "ucs2": ("ж", 70, 67),
    }[kind]
    per_part -= ref16
    profile = replace(SmsProfile(latin1=kind == "latin1", udh_ref16=ref16), long_sms=long_sms)
    assert count_parts(char * n, profile=profile) == expected_count(n, single, per_part)


@pytest.mark.parametrize(
    ("text", "sizes"),
    [
        ("a" * 160, [160]),
        ("a" * 161, [153, 8]),
        ("a" * 306, [153, 153]),
        ("a" * 307, [153, 153, 1]),
        ("€" * 80, [160]),  # € costs two septets
        ("€" * 80 + "a", [152, 9]),
        ("a" * 152 + "€" + "b" * 10, [152, 12]),  # the escape pair moves whole to part 2
        ("a" * 151 + "€" + "b" * 10, [153, 10]),
        ("ж" * 70, [140]),
        ("ж" * 71, [134, 8]),
        ("ж" * 66 + "😀" + "ж" * 5, [132, 14]),  # the surrogate pair moves whole to part 2
        ("ж" * 65 + "😀" + "ж" * 5, [134, 10]),
        ("😀" * 35, [140]),
    ],
)
def test_boundaries(text: str, sizes: list[int]) -> None:
    parts = build_parts(text, ref=7)
    assert [len(split_udh(p)[1]) for p in parts] == sizes
    assert count_parts(text) == len(sizes)


def test_161_gsm_bytes() -> None:
    parts = build_parts("a" * 160 + "b", ref=0x1A7)
    assert parts == [
        PartSpec(b"\x05\x00\x03\xa7\x02\x01" + b"a" * 153, 0x00, 0x40),
        PartSpec(b"\x05\x00\x03\xa7\x02\x02" + b"a" * 7 + b"b", 0x00, 0x40),
    ]


def test_16bit_reference_udh() -> None:
    parts = build_parts("a" * 161, ref=0x1234, profile=SmsProfile(udh_ref16=True))
    assert parts == [
        PartSpec(b"\x06\x08\x04\x12\x34\x02\x01" + b"a" * 152, 0x00, 0x40),
        PartSpec(b"\x06\x08\x04\x12\x34\x02\x02" + b"a" * 9, 0x00, 0x40),
    ]


def test_sar_tlvs() -> None:
    parts = build_parts("ж" * 71, ref=0x305, profile=SmsProfile(long_sms="sar"))
    assert parts == [
        PartSpec(
            "ж".encode("utf-16-be") * 67,
            0x08,
            tlvs=(("sar_msg_ref_num", 0x05), ("sar_total_segments", 2), ("sar_segment_seqnum", 1)),
        ),
        PartSpec(
            "ж".encode("utf-16-be") * 4,
            0x08,
            tlvs=(("sar_msg_ref_num", 0x05), ("sar_total_segments", 2), ("sar_segment_seqnum", 2)),
        ),
    ]


def test_payload() -> None:
    profile = SmsProfile(long_sms="payload")
    text = "x" * 200
    assert build_parts(text, profile=profile) == [
        PartSpec(b"", 0x00, tlvs=(("message_payload", b"x" * 200),))
    ]
    assert count_parts(text, profile=profile) == 2
    # Single-part messages are plain, whatever long_sms says.
    assert build_parts("hi", profile=profile) == [PartSpec(b"hi", 0x00)]


def test_encoding_choice_and_data_coding() -> None:
    assert build_parts("Hi {€}") == [PartSpec(b"Hi \x1b\x28\x1b\x65\x1b\x29", 0x00)]
    assert build_parts("ça") == [PartSpec("ça".encode("utf-16-be"), 0x08)]
    latin1 = SmsProfile(latin1=True)
    assert build_parts("ça", profile=latin1) == [PartSpec(b"\xe7a", 0x03)]
    assert build_parts("€", profile=latin1) == [PartSpec(b"\x20\xac", 0x08)]
    assert build_parts("😀") == [PartSpec(b"\xd8\x3d\xde\x00", 0x08)]
    assert build_parts("") == [PartSpec(b"", 0x00)]


def test_latin1_lengths() -> None:
    latin1 = SmsProfile(latin1=True)
    assert count_parts("é" * 140, profile=latin1) == 1
    parts = build_parts("é" * 141, profile=latin1)
    assert [len(p.short_message) for p in parts] == [140, 13]


def test_lone_surrogate_is_replaced_not_raised() -> None:
    assert build_parts("a\udc80") == [PartSpec("a\ufffd".encode("utf-16-be"), 0x08)]


def test_too_many_parts() -> None:
    assert count_parts("a" * 153 * 255) == 255
    with pytest.raises(RejectError) as info:
        build_parts("a" * (153 * 255 + 1))
    assert info.value.code is ErrorCode.PARAMETERS
