"""GSM 03.38 unpacked codec: tables and round-trip properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.sms import gsm7

GSM_CHARS = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
    "\f^{}\\[~]|€"
)


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("@", b"\x00"),
        ("§", b"\x5f"),
        ("A", b"\x41"),
        ("¿", b"\x60"),
        ("à", b"\x7f"),
        ("\f", b"\x1b\x0a"),
        ("^", b"\x1b\x14"),
        ("{", b"\x1b\x28"),
        ("}", b"\x1b\x29"),
        ("\\", b"\x1b\x2f"),
        ("[", b"\x1b\x3c"),
        ("~", b"\x1b\x3d"),
        ("]", b"\x1b\x3e"),
        ("|", b"\x1b\x40"),
        ("€", b"\x1b\x65"),
        ("Hi €5", b"\x48\x69\x20\x1b\x65\x35"),
    ],
)
def test_table(text: str, data: bytes) -> None:
    assert gsm7.encode(text) == data
    assert gsm7.decode(data) == text


@pytest.mark.parametrize("ch", ["`", "я", "ç", "😀", "\t", "\x1b"])
def test_not_encodable(ch: str) -> None:
    assert not gsm7.fits("a" + ch)
    with pytest.raises(ValueError) as info:
        gsm7.encode("a" + ch)
    assert isinstance(info.value, UnicodeEncodeError)
    assert info.value.start == 1
    with pytest.raises(UnicodeEncodeError):
        gsm7.septet_length(ch)


def test_septet_length() -> None:
    assert gsm7.septet_length("€") == 2
    assert gsm7.septet_length("a€[b") == 6
    assert gsm7.septet_length("") == 0


def test_decode_tolerant() -> None:
    assert gsm7.decode(b"\x1b\x41") == "A"  # unknown escape → the base character
    assert gsm7.decode(b"\x1b\x1b") == " "
    assert gsm7.decode(b"a\x1b".replace(b"a", b"\x61")) == "a"
    assert gsm7.decode(b"\x80") == "\ufffd"


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet=GSM_CHARS))
def test_round_trip(text: str) -> None:
    data = gsm7.encode(text)
    assert gsm7.fits(text)
    assert len(data) == gsm7.septet_length(text)
    assert all(b < 0x80 for b in data)
    assert gsm7.decode(data) == text


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet=GSM_CHARS + "`яç😀\t\x1b"))
def test_units_are_each_characters_encoding(text: str) -> None:
    """`units` (a table lookup, the pipeline's) equals encoding character by character, and
    refuses what `encode` refuses, at the same character."""
    try:
        expected = [gsm7.encode(ch) for ch in text]
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError) as info:
            gsm7.units(text)
        with pytest.raises(UnicodeEncodeError) as direct:
            gsm7.encode(text)
        assert info.value.start == direct.value.start
        return
    assert gsm7.units(text) == expected
