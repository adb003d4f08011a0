"""Transliteration (SPEC §4 `translit`): Russian and Ukrainian letters always end up GSM 7-bit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.sms import build_parts, count_parts, gsm7, transliterate

RUSSIAN = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
UKRAINIAN = "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя'ʼ"
CYRILLIC = RUSSIAN + RUSSIAN.upper() + UKRAINIAN + UKRAINIAN.upper()
GSM_ASCII = "abcXYZ 0123456789.,!?-:;()\n"
TYPOGRAPHY = "«»„“”‘’ʼ–—‑…№\u00a0\t"  # every character translit.py maps to GSM


@pytest.mark.parametrize(
    ("text", "latin", "lookalike"),
    [
        ("транслит", "translit", "mpaHc/Ium"),  # seed 001's own example of mode 2
        ("Привет, мир!", "Privet, mir!", "npuBem, Mup!"),
        ("Щука ЖУК Жук", "Schuka ZHUK Zhuk", "W,yka >|<YK >|<yk"),
        (
            "Київ, Ґанок, Європа, їжак",
            "Kiyiv, Ganok, Yevropa, yizhak",
            "KuiB, raHok, EBpona, i>|<ak",
        ),
        ("съешь объём", "s'esh' ob'yom", "c'bewb o6'beM"),
        ("«Да» — №1…", '"Da" - N1...', '"Da" - N1...'),
        ("Hello €", "Hello €", "Hello €"),
    ],
)
def test_examples(text: str, latin: str, lookalike: str) -> None:
    assert transliterate(text, 0) == text
    assert transliterate(text, 1) == latin
    assert transliterate(text, 2) == lookalike


def test_unknown_mode() -> None:
    with pytest.raises(ValueError):
        transliterate("a", 3)


@settings(max_examples=300, derandomize=True)
@given(
    text=st.text(alphabet=CYRILLIC + GSM_ASCII + TYPOGRAPHY, max_size=300),
    mode=st.sampled_from([1, 2]),
)
def test_cyrillic_always_fits_gsm(text: str, mode: int) -> None:
    out = transliterate(text, mode)
    assert gsm7.fits(out)
    parts = build_parts(text, translit=mode)
    assert all(p.data_coding == 0x00 for p in parts)
    assert count_parts(text, translit=mode) == len(parts)


@settings(max_examples=300, derandomize=True)
@given(text=st.text(max_size=200), mode=st.sampled_from([1, 2]))
def test_non_cyrillic_letters_untouched(text: str, mode: int) -> None:
    out = transliterate(text, mode)
    if not any(ch in CYRILLIC + TYPOGRAPHY for ch in text):
        assert out == text
