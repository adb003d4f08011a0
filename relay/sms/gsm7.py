"""GSM 7-bit default alphabet (3GPP TS 23.038 §6.2.1), unpacked: one septet per octet."""

from __future__ import annotations

# 3GPP TS 23.038 §6.2.1, "GSM 7 bit Default Alphabet", indexed by septet value 0x00..0x7F.
# 0x1B is the escape to the extension table; it maps to no character of its own.
_DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10 (0x1B = ESC, never encoded as a character)
    " !\"#¤%&'()*+,-./"  # 0x20
    "0123456789:;<=>?"  # 0x30
    "¡ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50
    "¿abcdefghijklmno"  # 0x60
    "pqrstuvwxyzäöñüà"  # 0x70
)
assert len(_DEFAULT) == 128

ESCAPE = 0x1B

# 3GPP TS 23.038 §6.2.1.1, "GSM 7 bit default alphabet extension table": ESC + septet.
_EXTENSION: dict[int, str] = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_BASE_CODE: dict[str, int] = {ch: i for i, ch in enumerate(_DEFAULT) if i != ESCAPE}
_EXT_CODE: dict[str, int] = {ch: code for code, ch in _EXTENSION.items()}


class GsmEncodeError(UnicodeEncodeError):
    """A character that the GSM 7-bit default alphabet and its extension table cannot carry."""


def char_septets(ch: str) -> int:
    """Septets one character costs: 1 (default table), 2 (ESC + extension), 0 (not encodable)."""
    if ch in _BASE_CODE:
        return 1
    if ch in _EXT_CODE:
        return 2
    return 0


def encode(text: str) -> bytes:
    """Text → unpacked septets; extension characters as ESC (0x1B) + code (TS 23.038 §6.2.1.1).

    Raises `GsmEncodeError` (a `UnicodeEncodeError`, hence `ValueError`) at the first character
    that does not fit.
    """
    out = bytearray()
    for i, ch in enumerate(text):
        code = _BASE_CODE.get(ch)
        if code is not None:
            out.append(code)
            continue
        code = _EXT_CODE.get(ch)
        if code is None:
            raise GsmEncodeError("gsm0338", text, i, i + 1, "not in the GSM 7-bit alphabet")
        out += bytes((ESCAPE, code))
    return bytes(out)


# Each character's encoding as one unit (what `encode(ch)` gives), looked up without a call.
_UNIT: dict[str, bytes] = {ch: bytes((code,)) for ch, code in _BASE_CODE.items()} | {
    ch: bytes((ESCAPE, code)) for ch, code in _EXT_CODE.items()
}


def units(text: str) -> list[bytes]:
    """`[encode(ch) for ch in text]`: one unit per character (an ESC pair stays whole).

    A table lookup per character instead of a call (the pipeline encodes every SMS text this
    way: bench parser profile); raises like `encode` at the first character that does not fit.
    """
    try:
        return [_UNIT[ch] for ch in text]
    except KeyError:
        encode(text)  # raises GsmEncodeError at the first character that does not fit
        raise AssertionError("unreachable: encode() accepted a character _UNIT lacks") from None


def decode(data: bytes) -> str:
    """Unpacked septets → text, tolerantly.

    TS 23.038 §6.2.1.1: an ESC followed by a code that the extension table does not define shows
    the default-table character of that code; ESC ESC (reserved for a further table) shows a
    space; a trailing lone ESC is dropped. Octets above 0x7F are not septets: they become U+FFFD.
    """
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        i += 1
        if b > 0x7F:
            out.append("\ufffd")
        elif b != ESCAPE:
            out.append(_DEFAULT[b])
        elif i < n:
            nxt = data[i]
            i += 1
            if nxt == ESCAPE:
                out.append(" ")
            elif nxt > 0x7F:
                out.append("\ufffd")
            else:
                out.append(_EXTENSION.get(nxt, _DEFAULT[nxt]))
    return "".join(out)


def septet_length(text: str) -> int:
    """Septets the text costs in GSM 7-bit (extension characters count 2); raises if it can't."""
    total = 0
    for i, ch in enumerate(text):
        cost = char_septets(ch)
        if not cost:
            raise GsmEncodeError("gsm0338", text, i, i + 1, "not in the GSM 7-bit alphabet")
        total += cost
    return total


def fits(text: str) -> bool:
    """True when every character is in the default alphabet or its extension table."""
    return all(ch in _BASE_CODE or ch in _EXT_CODE for ch in text)
