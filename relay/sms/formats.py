"""SPEC §4 `format` → the encoded message an upstream gets: text, flash, wap-push, binary, ping…"""

from __future__ import annotations

import enum
import string
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from relay.errors import ErrorCode, RejectError
from relay.sms import alphabet
from relay.sms.alphabet import Alphabet
from relay.sms.model import PartSpec, SmsProfile
from relay.sms.segment import Encoded, port_ie, segment
from relay.sms.translit import Translit, transliterate
from relay.sms.wap_push import WAP_PUSH_PORT, WSP_SOURCE_PORT, push_pdu


class Format(enum.IntEnum):
    """SPEC §4 `format` (seed 001)."""

    TEXT = 0
    FLASH = 1
    WAP_PUSH = 2
    HLR = 3
    BINARY = 4
    HEX = 5
    PING = 6
    MMS = 7
    MAIL = 8
    VOICE = 9
    VIBER = 10
    WHATSAPP = 11
    SOCIAL = 12


# Seed 000/001: on the seed SMSC these formats are a submit_sm whose text starts with a
# prefix. WHATSAPP (11) has none in the seeds (`__BOT__` is Telegram, not a format), so it
# cannot be sent there either.
SMSC_PREFIXES: Mapping[Format, str] = MappingProxyType(
    {
        Format.HLR: "__HLR__",
        Format.PING: "__PING__",
        Format.MMS: "__MMS__: ",
        Format.MAIL: "__MAIL__: ",
        Format.VOICE: "__CALL__: ",
        Format.VIBER: "__VIBER__: ",
        Format.SOCIAL: "__SOC__: ",
    }
)
_NO_TEXT = frozenset({Format.HLR, Format.PING})  # SPEC §3: `__PING__`, `__HLR__` take no text
COMMENT_SEPARATOR = "\n~~~\n"  # SPEC §3, seed 000: what follows is kept in history, not sent

# Seed 000: "data_coding = coding * 4" with coding 0 GSM, 1 ISO-8859-1, 2 UCS-2.
SMSC_CODING_PROFILE = SmsProfile(
    data_coding_gsm=0x00, data_coding_latin1=0x04, data_coding_ucs2=0x08, dialect="smsc"
)

# TS 23.038 §4 general data coding group with a message class: bit 4 set, class 0 (flash).
DATA_CODING_FLASH_GSM = 0x10
DATA_CODING_FLASH_UCS2 = 0x18
PROTOCOL_ID_TYPE0 = 0x40  # TS 23.040 §9.2.3.9: Short Message Type 0, acknowledged, discarded


def _text(text: str, profile: SmsProfile) -> Encoded:
    abc = alphabet.choose(text, latin1=profile.latin1)
    return Encoded(tuple(alphabet.units(text, abc)), abc, alphabet.data_coding(abc, profile))


def _flash(text: str) -> Encoded:
    # Latin-1 (SMPP data_coding 0x03) has no message-class form, so flash is GSM 7-bit or UCS-2.
    abc = alphabet.choose(text)
    dc = DATA_CODING_FLASH_GSM if abc is Alphabet.GSM7 else DATA_CODING_FLASH_UCS2
    return Encoded(tuple(alphabet.units(text, abc)), abc, dc)


def _octets(data: bytes, *, header: bytes = b"") -> Encoded:
    units = tuple(data[i : i + 1] for i in range(len(data)))
    return Encoded(units, Alphabet.OCTETS, alphabet.DATA_CODING_8BIT, header=header)


def binary_payload(text: str) -> bytes:
    """Format 4: each character is one octet, its code point (ISO-8859-1): U+0000..U+00FF.

    The mail layer decodes a binary body as Latin-1, which maps every byte to the character of
    the same number, so this gives the bytes back. Other characters → ERROR 1.
    """
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise RejectError(ErrorCode.PARAMETERS, "binary text beyond U+00FF") from exc


def hex_payload(text: str) -> bytes:
    """Format 5: an even number (≥ 2) of hex digits, either case; whitespace is ignored."""
    digits = "".join(text.split())
    if not digits or len(digits) % 2 or not set(digits) <= set(string.hexdigits):
        raise RejectError(ErrorCode.PARAMETERS, "format 5 needs an even number of hex digits")
    return bytes.fromhex(digits)


def wap_push_fields(text: str) -> tuple[str, str]:
    """Format 2: (url, title): the first line is the URL, the rest (trimmed) the title."""
    url, _, title = text.strip().partition("\n")
    url = url.strip()
    if not url or any(ch.isspace() for ch in url):
        raise RejectError(ErrorCode.PARAMETERS, "format 2 needs a URL on the first line")
    return url, title.strip()


def _smsc_text(
    fmt: Format, text: str, comment: str, prefix_extras: Sequence[tuple[str, str]]
) -> str:
    out = SMSC_PREFIXES[fmt]
    if fmt not in _NO_TEXT:
        out += text + "".join(f"\n{key}:{value}" for key, value in prefix_extras)
    if comment:
        out += COMMENT_SEPARATOR + comment
    return out


def encode(
    text: str,
    *,
    fmt: int,
    translit: int,
    profile: SmsProfile,
    comment: str = "",
    prefix_extras: Sequence[tuple[str, str]] = (),
) -> Encoded:
    """The message for `fmt` before segmentation; RejectError(1) or (8) when it cannot be."""
    try:
        form, translit = Format(fmt), Translit(translit)
    except ValueError as exc:
        raise RejectError(ErrorCode.PARAMETERS, f"format {fmt} / translit {translit}") from exc
    match form:
        case Format.TEXT:
            return _text(transliterate(text, translit), profile)
        case Format.FLASH:
            return _flash(transliterate(text, translit))
        case Format.WAP_PUSH:
            url, title = wap_push_fields(text)
            pdu = push_pdu(url, transliterate(title, translit))
            return _octets(pdu, header=port_ie(WAP_PUSH_PORT, WSP_SOURCE_PORT))
        case Format.BINARY:
            return _octets(binary_payload(text))
        case Format.HEX:
            return _octets(hex_payload(text))
        case Format.PING if profile.dialect == "generic":
            # Type 0 (TS 23.040 §9.2.3.9): the handset acknowledges it and shows nothing.
            dc = profile.data_coding_gsm
            return Encoded((), Alphabet.GSM7, dc, protocol_id=PROTOCOL_ID_TYPE0)
    if profile.dialect == "smsc" and form in SMSC_PREFIXES:
        message = _smsc_text(form, transliterate(text, translit), comment, prefix_extras)
        return _text(message, profile)
    raise RejectError(ErrorCode.UNDELIVERABLE, f"format {int(form)} needs another upstream")


def build(
    text: str,
    *,
    fmt: int,
    translit: int,
    profile: SmsProfile,
    ref: int,
    comment: str = "",
    prefix_extras: Sequence[tuple[str, str]] = (),
) -> tuple[list[PartSpec], int]:
    """The parts to submit and the number of SMS they cost (see `relay.sms.build_parts`)."""
    message = encode(
        text,
        fmt=fmt,
        translit=translit,
        profile=profile,
        comment=comment,
        prefix_extras=prefix_extras,
    )
    return segment(message, profile, ref)
