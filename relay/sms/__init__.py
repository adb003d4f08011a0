"""PURE: text → SMS parts (encodings, transliteration, segmentation, formats): SPEC §7.

What each `fmt` (SPEC §4) needs as `text` and produces:

- 0 text: any text; GSM 7-bit (data_coding `profile.data_coding_gsm`) when every character
  fits, else Latin-1 when `profile.latin1` and it fits, else UCS-2 (UTF-16BE).
- 1 flash: any text; message class 0: data_coding 0x10 (GSM 7-bit) or 0x18 (UCS-2).
- 2 wap-push: first line the URL (`http://` added when it has no scheme), the rest the title;
  a WSP Push PDU with a WBXML Service Indication, data_coding 0x04, UDH with application port
  addressing 2948 ← 9200 in every part (always UDH concatenation, whatever `long_sms` says).
- 4 binary: each character is one octet (its code point, U+0000..U+00FF, i.e. the Latin-1
  decoding of the bytes); data_coding 0x04. Anything beyond U+00FF → ERROR 1.
- 5 hex: hex digits (either case, whitespace ignored, even count) → those octets; data_coding
  0x04. Anything else → ERROR 1.
- 6 ping: text ignored; one empty short_message, protocol_id 0x40 (Type 0), data_coding
  `profile.data_coding_gsm`.
- 3, 7-12: `dialect="generic"` → ERROR 8. `dialect="smsc"` (the seed SMSC): a text message
  `<prefix><text>[\\n<key>:<value>…][\\n~~~\\n<comment>]` with the prefixes of
  `formats.SMSC_PREFIXES` (3 `__HLR__` and 6 `__PING__` carry no text); 11 (whatsapp) has no
  prefix → ERROR 8. `comment` is sent only here (elsewhere it is never sent).
- Anything else → ERROR 1. translit (0..2, else ERROR 1) applies to text formats, the
  wap-push title and the prefixed message text, never to binary, hex or comments.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.sms import formats
from relay.sms.address import source_address
from relay.sms.formats import SMSC_CODING_PROFILE, SMSC_PREFIXES, Format
from relay.sms.model import PartSpec, SmsProfile, TlvValue
from relay.sms.translit import Translit, transliterate

__all__ = [
    "SMSC_CODING_PROFILE",
    "SMSC_PREFIXES",
    "Format",
    "PartSpec",
    "SmsProfile",
    "TlvValue",
    "Translit",
    "build_parts",
    "count_parts",
    "source_address",
    "transliterate",
]

_DEFAULT_PROFILE = SmsProfile()


def build_parts(
    text: str,
    *,
    fmt: int = 0,
    translit: int = 0,
    profile: SmsProfile = _DEFAULT_PROFILE,
    ref: int = 0,
    comment: str = "",
    prefix_extras: Sequence[tuple[str, str]] = (),
) -> list[PartSpec]:
    """The submit_sm contents, in order, that carry `text` as format `fmt` (SPEC §7).

    `ref` is the concatenation reference the caller keeps per destination; only its low 8 bits
    are used (16 with `profile.udh_ref16`). `comment` and `prefix_extras` (e.g.
    `[("subj", "Hello")]`, `[("voice", "w")]`) matter only for the seed SMSC's prefixed formats.
    Raises `RejectError` (code 1 or 8) when the request cannot be built.
    """
    parts, _ = formats.build(
        text,
        fmt=fmt,
        translit=translit,
        profile=profile,
        ref=ref,
        comment=comment,
        prefix_extras=prefix_extras,
    )
    return parts


def count_parts(
    text: str,
    *,
    fmt: int = 0,
    translit: int = 0,
    profile: SmsProfile = _DEFAULT_PROFILE,
    comment: str = "",
    prefix_extras: Sequence[tuple[str, str]] = (),
) -> int:
    """The billable number of SMS for `text`: `len(build_parts(...))` with the same arguments,
    except with `long_sms="payload"`, where one submit_sm carries all parts and this is still
    the number of segments the SMSC sends. Raises `RejectError` like `build_parts`.
    """
    _, count = formats.build(
        text,
        fmt=fmt,
        translit=translit,
        profile=profile,
        ref=0,
        comment=comment,
        prefix_extras=prefix_extras,
    )
    return count
