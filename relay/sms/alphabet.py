"""Choosing the cheapest SMS alphabet for a text and encoding it per character (SPEC §7)."""

from __future__ import annotations

import enum

from relay.sms import gsm7
from relay.sms.model import SmsProfile


class Alphabet(enum.Enum):
    """The character sets an SMS text travels in (3GPP TS 23.038 §4, SMPP 3.4 §5.2.19)."""

    GSM7 = "gsm7"  # default alphabet, unpacked: one septet per octet
    LATIN1 = "latin1"  # ISO-8859-1, one octet per character
    UCS2 = "ucs2"  # UTF-16BE; outside the BMP a surrogate pair (two units, four octets)
    OCTETS = "octets"  # 8-bit data (binary formats): one octet per unit, no text

    @property
    def counts_septets(self) -> bool:
        """GSM 7-bit sizes are counted in septets (160 per SMS), the others in octets (140)."""
        return self is Alphabet.GSM7


def choose(text: str, *, latin1: bool = False) -> Alphabet:
    """SPEC §7: GSM 7-bit (or Latin-1 when `latin1`) if it carries the text exactly, else UCS-2."""
    if latin1:
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            return Alphabet.UCS2
        return Alphabet.LATIN1
    return Alphabet.GSM7 if gsm7.fits(text) else Alphabet.UCS2


def units(text: str, alphabet: Alphabet) -> list[bytes]:
    """The encoded text as indivisible units, one per character.

    A unit is what a segment boundary may never cut: an ESC + extension pair (TS 23.038
    §6.2.1.1) or a UTF-16 surrogate pair (TS 23.038 §6.2.3: UCS-2 users send them whole).
    Raises `UnicodeEncodeError` when a character does not fit the alphabet.
    """
    match alphabet:
        case Alphabet.GSM7:
            return gsm7.units(text)
        case Alphabet.LATIN1:
            return [ch.encode("latin-1") for ch in text]
        case Alphabet.UCS2:
            # A lone surrogate (e.g. from surrogateescape) is no character: send U+FFFD.
            return [
                ("\ufffd" if "\ud800" <= ch <= "\udfff" else ch).encode("utf-16-be") for ch in text
            ]
        case Alphabet.OCTETS:
            raise ValueError("octets carry bytes, not text")


def decode(data: bytes, alphabet: Alphabet) -> str:
    """The inverse of `units` joined; for tests, logs and the SMSC simulator."""
    match alphabet:
        case Alphabet.GSM7:
            return gsm7.decode(data)
        case Alphabet.LATIN1 | Alphabet.OCTETS:
            return data.decode("latin-1")
        case Alphabet.UCS2:
            return data.decode("utf-16-be", errors="surrogatepass")


def data_coding(alphabet: Alphabet, profile: SmsProfile) -> int:
    """SMPP 3.4 §5.2.19 data_coding of the profile for a text alphabet; 0x04 for 8-bit data."""
    match alphabet:
        case Alphabet.GSM7:
            return profile.data_coding_gsm
        case Alphabet.LATIN1:
            return profile.data_coding_latin1
        case Alphabet.UCS2:
            return profile.data_coding_ucs2
        case Alphabet.OCTETS:
            return DATA_CODING_8BIT


# TS 23.038 §4 general data coding group: bits 3..2 = 01 is 8-bit data, no message class.
DATA_CODING_8BIT = 0x04
