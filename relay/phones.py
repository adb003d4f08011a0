"""Recipient addresses (SPEC §4 `phones`): raw tokens → E.164 numbers or e-mail addresses."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

import phonenumbers

from relay.errors import ErrorCode, RejectError

# A hostile command must not make us parse an unbounded recipient list.
MAX_RECIPIENTS = 5000

# What may appear in a written number: digits, formatting and one leading '+'. phonenumbers
# itself would also accept letters (vanity numbers) and extensions, which SMS cannot use.
_NUMBER = re.compile(r"\+?[0-9][0-9 ()\-.]{0,30}")
_GROUP = re.compile(r"[Gg]([0-9]{1,9})")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_MAX_EMAIL = 254


def _bad(detail: str) -> RejectError:
    return RejectError(ErrorCode.PHONE_FORMAT, detail)


def _split(tokens: Iterable[str]) -> list[str]:
    out: list[str] = []
    for token in tokens:
        out.extend(t.strip() for t in token.replace(";", ",").split(","))
    return [t for t in out if t]


# Pure and slow (libphonenumber ≈60 µs per number), while the same few numbers recur on every
# alert: remembered per (token, region). Refusals raise, so they are never cached.
@functools.lru_cache(maxsize=4096)
def normalize_number(token: str, region: str) -> str:
    """One written number → E.164 with '+' (SPEC §4); RejectError(PHONE_FORMAT) when impossible.

    With '+' the number is taken as written. Without '+' it is read as a number of `region`
    (RU: 89991234567 and 79991234567 → +79991234567); when that is not a possible number it is
    read as international without the '+' (380501234567 → +380501234567). "Possible" is
    libphonenumber's length rule; numbers only dialable locally (no area code) are refused.
    """
    written = token.strip()
    if not _NUMBER.fullmatch(written):
        raise _bad(f"not a number: {written[:40]!r}")
    digits = re.sub(r"[^0-9]", "", written)
    candidates: list[tuple[str, str | None]]
    if written.startswith("+"):
        candidates = [(f"+{digits}", None)]
    else:
        candidates = [(digits, region.upper() or None), (f"+{digits}", None)]
    for text, where in candidates:
        try:
            number = phonenumbers.parse(text, where)
        except phonenumbers.NumberParseException:
            continue
        reason = phonenumbers.is_possible_number_with_reason(number)
        if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    raise _bad(f"impossible number: {written[:40]!r}")


def normalize_phones(
    tokens: Sequence[str], *, region: str, groups: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """SPEC §4 `phones`: tokens (each may hold ',' / ';' lists) → unique E.164 numbers, in order.

    `G<n>` expands to the account's group `n` (its members follow the same rules). Any bad number,
    an unknown group or an empty result → RejectError(PHONE_FORMAT).
    """
    out: dict[str, None] = {}
    for token in _split(tokens):
        group = _GROUP.fullmatch(token)
        if group:
            members = groups.get(group.group(1))
            if members is None:
                members = groups.get(token) or groups.get(token.upper())
            if not members:
                raise _bad(f"unknown group {token!r}")
            for member in _split(members):
                out.setdefault(normalize_number(member, region))
        else:
            out.setdefault(normalize_number(token, region))
        if len(out) > MAX_RECIPIENTS:
            raise _bad("too many recipients")
    if not out:
        raise _bad("no recipients")
    return tuple(out)


def normalize_emails(tokens: Sequence[str]) -> tuple[str, ...]:
    """SPEC §4 `phones` for format 8: e-mail addresses, unique (case-insensitively), in order."""
    out: dict[str, str] = {}
    for token in _split(tokens):
        if len(token) > _MAX_EMAIL or not _EMAIL.fullmatch(token):
            raise _bad(f"not an e-mail address: {token[:40]!r}")
        local, _, domain = token.rpartition("@")
        address = f"{local}@{domain.lower()}"
        out.setdefault(address.lower(), address)
        if len(out) > MAX_RECIPIENTS:
            raise _bad("too many recipients")
    if not out:
        raise _bad("no recipients")
    return tuple(out.values())
