"""The SPEC §4 field rules: a raw field of a command → its checked value, or RejectError(code).

Time (`relay.timespec`) and recipients (`relay.phones`) have their own modules; they are
re-exported here so that a validator needs one import.
"""

from __future__ import annotations

import re

from relay.config import AccountConfig
from relay.errors import ErrorCode, RejectError
from relay.phones import normalize_emails, normalize_number, normalize_phones
from relay.timespec import parse_tz, parse_when

__all__ = [
    "FORMAT_EMAIL",
    "FORMAT_HLR",
    "FORMAT_PING",
    "FORMAT_VOICE",
    "MAX_MESSAGE_CHARS",
    "VOICES",
    "check_message",
    "check_sender",
    "normalize_emails",
    "normalize_number",
    "normalize_phones",
    "parse_format",
    "parse_id",
    "parse_test",
    "parse_translit",
    "parse_tz",
    "parse_voice",
    "parse_when",
]

MAX_MESSAGE_CHARS = 1000
FORMAT_HLR, FORMAT_PING, FORMAT_EMAIL, FORMAT_VOICE = 3, 6, 8, 9
VOICES = ("m", "m2", "w", "w2", "w3", "w4")  # SPEC §3; "m" is the default

_ID = re.compile(r"[A-Za-z0-9._-]{1,40}")
_SENDER_NAME = re.compile(r"[A-Za-z0-9 \-_.!&+]{1,11}")
_SENDER_NUMBER = re.compile(r"[0-9]{1,15}")
_SMALL_INT = re.compile(r"[0-9]{1,3}")


def _params(detail: str) -> RejectError:
    return RejectError(ErrorCode.PARAMETERS, detail)


def parse_id(raw: str) -> str | None:
    """SPEC §4 `id`: None when absent (the relay assigns one); the id exactly as written otherwise.

    Integers 1..2147483647 and strings of up to 40 `[A-Za-z0-9._-]` are accepted (so a longer
    digit string is a string id); an all-digit id is kept as written ("007" stays "007") since
    the reply must name the client's own id. An all-zero id ("0") means "none", like `time` 0.
    """
    value = raw.strip()
    if not value or value.strip("0") == "":
        return None
    if not _ID.fullmatch(value):
        raise _params(f"id {value[:50]!r}")
    return value


def _small_int(raw: str, name: str, top: int) -> int:
    value = raw.strip()
    if not value:
        return 0
    if not _SMALL_INT.fullmatch(value) or int(value) > top:
        raise _params(f"{name} {value[:20]!r}")
    return int(value)


def parse_translit(raw: str) -> int:
    """SPEC §4 `translit`: 0 (default), 1 Latin transliteration, 2 look-alike glyphs."""
    return _small_int(raw, "translit", 2)


def parse_format(raw: str) -> int:
    """SPEC §4 `format`: 0 (default) … 12."""
    return _small_int(raw, "format", 12)


def parse_test(raw: str) -> int:
    """SPEC §4 `test`: 0 (default) reply on error only, 1 always reply, 2 also multi-line lists."""
    return _small_int(raw, "test", 2)


def parse_voice(raw: str) -> str:
    """SPEC §3 `voice:` (format 9): one of m, m2, w, w2, w3, w4; empty → "m"."""
    value = raw.strip().lower()
    if not value:
        return VOICES[0]
    if value not in VOICES:
        raise _params(f"voice {value[:20]!r}")
    return value


def check_sender(raw: str, account: AccountConfig) -> str:
    """SPEC §4 `sender` → the sender name to use.

    Malformed (not ≤ 11 of Latin letters, digits, space and `-_.!&+`, nor ≤ 15 digits) → code 1.
    Not among `account.senders` → code 6. The comparison ignores case, and the registered
    spelling is what gets sent ("alex" → "Alex" when "Alex" is registered). Empty → the account's
    default sender: the first of its `senders`, or "" (the upstream's default) when it has none.
    """
    value = raw.strip()
    if not value:
        return account.senders[0] if account.senders else ""
    if not (_SENDER_NAME.fullmatch(value) or _SENDER_NUMBER.fullmatch(value)):
        raise _params(f"sender {value[:20]!r}")
    for registered in account.senders:
        if registered == value:
            return registered
    folded = value.casefold()
    for registered in account.senders:
        if registered.casefold() == folded:
            return registered
    raise RejectError(ErrorCode.PROHIBITED, f"sender {value!r} not registered")


def check_message(text: str, fmt: int) -> None:
    """SPEC §4 `mes`: 1..1000 characters once the comment is cut; may be empty for HLR and ping.

    `text` is an entry's text as the grammar leaves it (comment already cut). Characters are
    Unicode code points, as the seed counts them.
    """
    if len(text) > MAX_MESSAGE_CHARS:
        raise _params(f"message of {len(text)} characters")
    if not text.strip() and fmt not in (FORMAT_HLR, FORMAT_PING):
        raise _params("empty message")
