"""SPEC §4: the field rules, each with the error code of the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import AccountConfig
from relay.errors import ErrorCode, RejectError
from relay.fields import (
    check_message,
    check_sender,
    normalize_emails,
    normalize_phones,
    parse_format,
    parse_id,
    parse_test,
    parse_translit,
    parse_voice,
    parse_when,
)

# 2030-03-10 09:30 UTC = 12:30 Moscow.
NOW = datetime(2030, 3, 10, 9, 30, tzinfo=UTC)


def _code(fn: object, *args: object, **kwargs: object) -> ErrorCode:
    with pytest.raises(RejectError) as err:
        fn(*args, **kwargs)  # type: ignore[operator]
    return err.value.code


# ---- id ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("  ", None),
        ("0", None),
        ("1", "1"),
        ("2147483647", "2147483647"),
        ("007", "007"),
        ("order-17.a_b", "order-17.a_b"),
        ("x" * 40, "x" * 40),
        (" 42 ", "42"),
    ],
)
def test_id_ok(raw: str, expected: str | None) -> None:
    assert parse_id(raw) == expected


@pytest.mark.parametrize("raw", ["x" * 41, "a b", "id#1", "ид", "1,2", "a/b"])
def test_id_bad(raw: str) -> None:
    assert _code(parse_id, raw) is ErrorCode.PARAMETERS


# ---- small integers ------------------------------------------------------------------------


@pytest.mark.parametrize(("fn", "top"), [(parse_translit, 2), (parse_format, 12), (parse_test, 2)])
def test_small_ints(fn: object, top: int) -> None:
    assert fn("") == 0  # type: ignore[operator]
    for value in range(top + 1):
        assert fn(str(value)) == value  # type: ignore[operator]
        assert fn(f" {value} ") == value  # type: ignore[operator]
    for bad in (str(top + 1), "-1", "x", "1.0", "1e1", "0x1", "9999"):
        assert _code(fn, bad) is ErrorCode.PARAMETERS


def test_voice() -> None:
    assert parse_voice("") == "m"
    assert parse_voice(" W2 ") == "w2"
    assert _code(parse_voice, "x") is ErrorCode.PARAMETERS


# ---- time ----------------------------------------------------------------------------------


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


@pytest.mark.parametrize(
    ("time", "tz", "account_tz", "expected"),
    [
        ("", "", 0, None),
        ("0", "", 0, None),
        ("0", "5", 0, None),
        # DDMMYYhhmm in Moscow time (UTC+3), the account's tz, or the given tz.
        ("1103301200", "", 0, _utc(2030, 3, 11, 9, 0)),
        ("1103301200", "", 2, _utc(2030, 3, 11, 7, 0)),
        ("1103301200", "-3", 2, _utc(2030, 3, 11, 12, 0)),
        ("1103301200", "+1", 0, _utc(2030, 3, 11, 8, 0)),
        ("11.03.30 12.00", "", 0, _utc(2030, 3, 11, 9, 0)),
        ("1.3.2031 7.05", "", 0, _utc(2031, 3, 1, 4, 5)),
        ("11.03.30 12:00", "0", 0, _utc(2030, 3, 11, 9, 0)),
        # Past → now.
        ("1003301200", "", 0, None),
        ("01.01.20 00.00", "", 0, None),
        # 0<unix ts>.
        ("01900000000", "", 0, _utc(2030, 3, 17, 17, 46, 40)),
        ("01000000000", "", 0, None),
        # +minutes.
        ("+90", "", 0, NOW + timedelta(minutes=90)),
        ("+0", "", 0, None),
        # Hour windows, local to Moscow (12:30 there).
        ("9-18", "", 0, None),  # within → now
        ("14-18", "", 0, _utc(2030, 3, 10, 11, 0)),  # before → h1 today
        ("8-12", "", 0, _utc(2030, 3, 11, 5, 0)),  # after → h1 tomorrow
        ("12-13", "", 0, None),
        ("9-18", "-10", 0, _utc(2030, 3, 10, 16, 0)),  # UTC-7: 02:30 there → 09:00 there
        ("22-6", "", 0, _utc(2030, 3, 10, 19, 0)),  # over midnight, outside → 22:00 today
        ("10-24", "", 0, None),
    ],
)
def test_when(time: str, tz: str, account_tz: int, expected: datetime | None) -> None:
    assert parse_when(time, tz, account_tz, NOW) == expected


@pytest.mark.parametrize(
    ("time", "tz"),
    [
        ("tomorrow", ""),
        ("3202301200", ""),  # 32nd day
        ("1113301200", ""),  # 13th month
        ("1103302500", ""),
        ("11.03.30", ""),
        ("11.03.30 12.60", ""),
        ("110330120", ""),
        ("25-30", ""),
        ("+", ""),
        ("+99999999", ""),
        ("0999999999999", ""),
        ("1103301200", "x"),
        ("1103301200", "2,3"),
        ("1103301200", "40"),
        ("1103301200", "1.5"),
    ],
)
def test_when_bad(time: str, tz: str) -> None:
    assert _code(parse_when, time, tz, 0, NOW) is ErrorCode.DATE_FORMAT


def test_when_bad_tz_even_when_now() -> None:
    assert _code(parse_when, "", "zz", 0, NOW) is ErrorCode.DATE_FORMAT


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.text(max_size=20), st.text(max_size=5), st.integers(-20, 20))
def test_when_raises_only_code_5(time: str, tz: str, account_tz: int) -> None:
    try:
        at = parse_when(time, tz, account_tz, NOW)
    except RejectError as err:
        assert err.code is ErrorCode.DATE_FORMAT
    else:
        assert at is None or (at > NOW and at.utcoffset() == timedelta(0))


# ---- sender --------------------------------------------------------------------------------


def _account(**kw: object) -> AccountConfig:
    return AccountConfig(login="alex", password="pw", **kw)  # type: ignore[arg-type]


def test_sender() -> None:
    acc = _account(senders=["Alex", "79991234567", "My-Shop.ru"])
    assert check_sender("", acc) == "Alex"
    assert check_sender("Alex", acc) == "Alex"
    assert check_sender(" alex ", acc) == "Alex"  # case-insensitive; registered spelling sent
    assert check_sender("MY-SHOP.RU", acc) == "My-Shop.ru"
    assert check_sender("79991234567", acc) == "79991234567"
    assert check_sender("", _account()) == ""
    assert _code(check_sender, "Bob", acc) is ErrorCode.PROHIBITED
    assert _code(check_sender, "Alex", _account()) is ErrorCode.PROHIBITED
    for malformed in ("TwelveChars1", "Алекс", "a,b", "a@b", "1234567890123456", "a:b"):
        assert _code(check_sender, malformed, acc) is ErrorCode.PARAMETERS


# ---- phones --------------------------------------------------------------------------------


GROUPS = {"1": ["+79990000001", "89990000002"], "G2": ["79990000003"]}


@pytest.mark.parametrize(
    ("tokens", "region", "expected"),
    [
        (["89991234567"], "RU", ("+79991234567",)),
        (["79999999999"], "RU", ("+79999999999",)),
        (["+79999999999"], "RU", ("+79999999999",)),
        (["9991234567"], "RU", ("+79991234567",)),
        (["8 (999) 123-45-67"], "RU", ("+79991234567",)),
        (["380501234567"], "RU", ("+380501234567",)),
        (["+380501234567"], "RU", ("+380501234567",)),
        (["0501234567"], "UA", ("+380501234567",)),
        (["79999999999"], "UA", ("+79999999999",)),
        (["+4915112345678"], "RU", ("+4915112345678",)),
        (["79999999999,89999999999;+79999999999"], "RU", ("+79999999999",)),
        (["79990000009", "G1"], "RU", ("+79990000009", "+79990000001", "+79990000002")),
        (["g2", "G1", "79990000003"], "RU", ("+79990000003", "+79990000001", "+79990000002")),
        (["79999999999", "", " "], "RU", ("+79999999999",)),
    ],
)
def test_phones(tokens: list[str], region: str, expected: tuple[str, ...]) -> None:
    assert normalize_phones(tokens, region=region, groups=GROUPS) == expected


@pytest.mark.parametrize(
    "tokens",
    [
        [],
        [""],
        ["123"],
        ["+7999"],
        ["1-800-FLOWERS"],
        ["7999999999x"],
        ["+79999999999 ext 1"],
        ["++79999999999"],
        ["G9"],
        ["79999999999", "abc"],
        ["1234567"],  # local-only in RU: no area code
        ["+999123456789"],  # no such country code
        ["9" * 40],
    ],
)
def test_phones_bad(tokens: list[str]) -> None:
    assert _code(normalize_phones, tokens, region="RU", groups=GROUPS) is ErrorCode.PHONE_FORMAT


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4), st.sampled_from(["RU", "UA", "BG", "US", ""]))
def test_phones_raise_only_code_7(tokens: list[str], region: str) -> None:
    try:
        numbers = normalize_phones(tokens, region=region, groups=GROUPS)
    except RejectError as err:
        assert err.code is ErrorCode.PHONE_FORMAT
    else:
        assert numbers and all(n.startswith("+") and n[1:].isdigit() for n in numbers)
        assert len(set(numbers)) == len(numbers)


def test_emails() -> None:
    assert normalize_emails(["a@Example.com,b.c+d@x.org", "A@example.COM"]) == (
        "a@example.com",
        "b.c+d@x.org",
    )
    for bad in ([], ["a"], ["a@b"], ["a b@c.d"], ["@c.d"], ["a@@c.d"]):
        assert _code(normalize_emails, bad) is ErrorCode.PHONE_FORMAT


# ---- message -------------------------------------------------------------------------------


def test_message() -> None:
    check_message("x", 0)
    check_message("я" * 1000, 0)
    check_message("", 3)
    check_message("", 6)
    assert _code(check_message, "", 0) is ErrorCode.PARAMETERS
    assert _code(check_message, "  \n", 1) is ErrorCode.PARAMETERS
    assert _code(check_message, "я" * 1001, 0) is ErrorCode.PARAMETERS
    assert _code(check_message, "x" * 1001, 3) is ErrorCode.PARAMETERS
