"""PURE: delivery receipts (SPEC §9) from deliver_sm text and TLVs; upstream-id matching keys.

The text form (SMPP 3.4 Appendix B, as SMSCs actually send it)::

    id:<id> sub:<n> dlvrd:<n> submit date:<YYMMDDhhmm> done date:<YYMMDDhhmm> stat:<STAT>
    err:<E> text:<...>

is parsed tolerantly: keys in any case and order, fields missing or extra, `text:` taking the
rest of the line. An HLR result (`id:… stat:… err:… imsi:… msc:… mcc:… mnc:… cn:… net:… rcn:…
rnet:…`, names url-encoded) lands its extra fields, url-decoded, in `Receipt.extra`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote_plus

from relay.smpp.model import Receipt
from relay.sms.model import TlvValue

# SMPP 3.4 §5.2.28 message_state values → the text-form stat names.
MESSAGE_STATES: Final[Mapping[int, str]] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
STATS: Final = frozenset(MESSAGE_STATES.values())
FINAL_STATS: Final = frozenset({"DELIVRD", "EXPIRED", "DELETED", "UNDELIV", "REJECTD"})

# Spellings seen in the wild for the canonical 7-letter stats.
_STAT_ALIASES: Final[Mapping[str, str]] = {
    "DELIVERED": "DELIVRD",
    "UNDELIVERABLE": "UNDELIV",
    "UNDELIVERED": "UNDELIV",
    "ACCEPTED": "ACCEPTD",
    "REJECTED": "REJECTD",
    "EXPIRD": "EXPIRED",
    "DELETD": "DELETED",
}

# SMPP 3.4 §5.2.12: esm_class bits 2–5 give the message type; 0x04 is an SMSC delivery receipt,
# 0x08 an SME delivery acknowledgement, 0x20 an intermediate delivery notification.
_RECEIPT_TYPES: Final = frozenset({0x04, 0x08, 0x20})

# A key is a word followed by ':' at the start or after white space; "submit date" and
# "done date" contain a space. Any Unicode letters (the seed's translated "Текст:").
_KEY: Final = re.compile(r"(?:^|(?<=\s))(submit[ _]date|done[ _]date|[^\W\d]\w*):", re.IGNORECASE)
_TEXT_KEYS: Final = frozenset({"text", "текст"})
_FIELD_KEYS: Final = frozenset({"id", "sub", "dlvrd", "submit_date", "done_date", "stat", "err"})
# Longest id that is converted between hex and decimal (ids are at most 65 octets, SMPP 3.4).
_MAX_CONVERTIBLE: Final = 32


def is_receipt(esm_class: int, tlvs: Mapping[str, TlvValue]) -> bool:
    """Whether a deliver_sm carries a receipt rather than a mobile-originated message."""
    return (esm_class & 0x3C) in _RECEIPT_TYPES or "receipted_message_id" in tlvs


def parse_receipt(text: str, tlvs: Mapping[str, TlvValue | str]) -> Receipt | None:
    """Receipt from the text form and/or the TLVs; None when no message id is found.

    The receipted_message_id TLV wins over the text's id (it is the form the upstream gave in its
    submit_sm_resp); the text's id is then kept as extra["text_id"] when it differs. A known text
    stat wins over message_state. Never raises.
    """
    found = _fields(text)
    tlv_id = _tlv_text(tlvs.get("receipted_message_id"))
    text_id = found.pop("id", "").strip()
    message_id = tlv_id or text_id
    if not message_id:
        return None
    extra = {k: v for k, v in found.items() if k not in _FIELD_KEYS and k != "text"}
    if tlv_id and text_id and text_id != tlv_id:
        extra["text_id"] = text_id
    return Receipt(
        message_id=message_id,
        stat=_stat(found.get("stat", ""), tlvs.get("message_state")),
        err=found.get("err", ""),
        sub=found.get("sub", ""),
        dlvrd=found.get("dlvrd", ""),
        submit_date=found.get("submit_date", ""),
        done_date=found.get("done_date", ""),
        text=found.get("text", ""),
        extra=extra,
    )


def _fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    matches = list(_KEY.finditer(text))
    for i, m in enumerate(matches):
        key = m.group(1).lower().replace(" ", "_")
        if key in _TEXT_KEYS:
            out.setdefault("text", text[m.end() :].strip())
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        value = text[m.end() : end].strip()
        if key in _FIELD_KEYS:
            out.setdefault(key, value)
        else:  # HLR fields and vendor extras are url-encoded (seed 000)
            out.setdefault(key, unquote_plus(value))
    return out


def _tlv_text(value: TlvValue | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("latin-1").strip()
    return str(value).strip()


def _stat(text_stat: str, state: TlvValue | str | None) -> str:
    stat = text_stat.strip().upper()
    stat = _STAT_ALIASES.get(stat, stat)
    if stat in STATS:
        return stat
    if isinstance(state, int) and state in MESSAGE_STATES:
        return MESSAGE_STATES[state]
    if isinstance(state, bytes) and len(state) == 1 and state[0] in MESSAGE_STATES:
        return MESSAGE_STATES[state[0]]
    return stat or "UNKNOWN"


def id_keys(message_id: str, fmt: str = "auto") -> tuple[str, ...]:
    """The normalized keys under which an upstream message id is matched (SPEC §9).

    Store every key of the id from submit_sm_resp; match a receipt when any key of its id is
    among them. `fmt` is `smpp.receipt_id_format`:

    - same: the id as-is (lowercased);
    - hex2dec: also the id read as hex, written in decimal (resp hex, receipt decimal);
    - dec2hex: also the id read as decimal, written in hex (resp decimal, receipt hex);
    - auto: the id as-is plus both conversions where they parse, and the canonical forms
      without leading zeros. Applied to both sides it matches either direction.
    """
    base = message_id.strip().lower()
    keys = [base]
    if not base or fmt == "same" or len(base) > _MAX_CONVERTIBLE:
        return (base,)
    is_dec = base.isascii() and base.isdigit()
    is_hex = base.isascii() and not base.strip("0123456789abcdef")  # all hex digits
    if fmt in ("hex2dec", "auto") and is_hex:
        keys.append(str(int(base, 16)))
    if fmt in ("dec2hex", "auto") and is_dec:
        keys.append(format(int(base), "x"))
    if fmt == "auto":
        if is_dec:
            keys.append(str(int(base)))
        if is_hex:
            keys.append(format(int(base, 16), "x"))
    return tuple(dict.fromkeys(keys))
