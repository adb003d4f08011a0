"""Russian and Ukrainian Cyrillic → GSM-safe Latin: translit 1 and look-alikes 2 (SPEC §4)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class Translit(enum.IntEnum):
    """SPEC §4 `translit`; seed 001: 1 → "translit", 2 → "mpaHc/Ium"."""

    NONE = 0
    LATIN = 1
    LOOKALIKE = 2


# Mode 1, "translit": the everyday SMS romanisation (close to the Yandex/"Wikipedia" schemes),
# one table for both languages because a message may mix them; Ukrainian-only letters follow
# the Ukrainian national romanisation (і i, ї yi, є ye, ґ g). PyPI's iuliia (0.13) has no
# Ukrainian letters, cyrtranslit works one language at a time and `transliterate` is
# unmaintained (2018), so the table lives here. Every value is in the GSM 7-bit default
# alphabet (3GPP TS 23.038 §6.2.1), so a transliterated text never needs UCS-2.
_LATIN_LOWER: Mapping[str, str] = MappingProxyType(
    {
        "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "yo", "ж": "zh",
        "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
        "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
        "ч": "ch", "ш": "sh", "щ": "sch", "ъ": "'", "ы": "y", "ь": "'", "э": "e", "ю": "yu",
        "я": "ya", "і": "i", "ї": "yi", "є": "ye", "ґ": "g",
    }
)  # fmt: skip

# Mode 2, "mpaHc/Ium" (seed 001, `translit` = 2): Latin letters, digits and signs that look like
# the Cyrillic glyph, as the seed's own example spells "транслит". All GSM 7-bit; `|` is in the
# extension table and costs two septets (TS 23.038 §6.2.1.1).
_LOOKALIKE: Mapping[str, str] = MappingProxyType(
    {
        "а": "a", "б": "6", "в": "B", "г": "r", "д": "g", "е": "e", "ё": "e", "ж": ">|<",
        "з": "3", "и": "u", "й": "u", "к": "k", "л": "/I", "м": "M", "н": "H", "о": "o",
        "п": "n", "р": "p", "с": "c", "т": "m", "у": "y", "ф": "<|>", "х": "x", "ц": "LL",
        "ч": "4", "ш": "w", "щ": "w,", "ъ": "'b", "ы": "bI", "ь": "b", "э": "3", "ю": "IO",
        "я": "9I", "і": "i", "ї": "i", "є": "e", "ґ": "r",
        "А": "A", "Б": "6", "В": "B", "Г": "r", "Д": "D", "Е": "E", "Ё": "E", "Ж": ">|<",
        "З": "3", "И": "U", "Й": "U", "К": "K", "Л": "/I", "М": "M", "Н": "H", "О": "O",
        "П": "n", "Р": "P", "С": "C", "Т": "T", "У": "Y", "Ф": "<|>", "Х": "X", "Ц": "LL",
        "Ч": "4", "Ш": "W", "Щ": "W,", "Ъ": "'b", "Ы": "bI", "Ь": "b", "Э": "3", "Ю": "IO",
        "Я": "9I", "І": "I", "Ї": "I", "Є": "E", "Ґ": "r",
    }
)  # fmt: skip

# Typography that would otherwise force the whole message into UCS-2: with translit on, the
# sender asked for a Latin (GSM) text, so these become their GSM 7-bit look-alikes.
_PUNCTUATION: Mapping[str, str] = MappingProxyType(
    {
        "«": '"', "»": '"', "„": '"', "“": '"', "”": '"', "‘": "'", "’": "'", "ʼ": "'",
        "–": "-", "—": "-", "‑": "-", "…": "...", "№": "N", "\u00a0": " ", "\t": " ",
    }
)  # fmt: skip


def _latin(text: str) -> str:
    out: list[str] = []
    for i, ch in enumerate(text):
        low = ch.lower()
        latin = _LATIN_LOWER.get(low)
        if latin is None:
            out.append(_PUNCTUATION.get(ch, ch))
        elif ch == low or len(latin) == 1:
            out.append(latin if ch == low else latin.upper())
        else:
            # A capital that becomes two letters: "ЖУК" → "ZHUK" but "Жук" → "Zhuk".
            neighbours = text[max(i - 1, 0) : i] + text[i + 1 : i + 2]
            shouting = any(n.isalpha() and n.isupper() for n in neighbours)
            out.append(latin.upper() if shouting else latin.capitalize())
    return "".join(out)


def _lookalike(text: str) -> str:
    return "".join(_LOOKALIKE.get(ch) or _PUNCTUATION.get(ch, ch) for ch in text)


def transliterate(text: str, mode: int) -> str:
    """SPEC §4 `translit`: 0 unchanged, 1 Latin transliteration, 2 look-alike Latin glyphs.

    Modes 1 and 2 map every Russian and Ukrainian letter and the common typographic quotes,
    dashes and spaces to GSM 7-bit characters; other characters pass unchanged.
    Raises `ValueError` for another mode.
    """
    match Translit(mode):
        case Translit.NONE:
            return text
        case Translit.LATIN:
            return _latin(text)
        case Translit.LOOKALIKE:
            return _lookalike(text)
