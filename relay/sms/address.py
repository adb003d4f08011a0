"""The submit_sm source address for a sender name or number (SPEC §7, SMPP 3.4 §5.2.5-6)."""

from __future__ import annotations

TON_UNKNOWN = 0
TON_INTERNATIONAL = 1
TON_ALPHANUMERIC = 5  # SMPP 3.4 §5.2.5
NPI_UNKNOWN = 0
NPI_ISDN = 1  # SMPP 3.4 §5.2.6, E.163/E.164


def source_address(sender: str) -> tuple[str, int, int]:
    """(source_addr, source_addr_ton, source_addr_npi) for `sender`.

    Digits with an optional leading `+` → the digits, TON 1 / NPI 1; anything else non-empty is
    an alphanumeric sender → TON 5 / NPI 0; empty → ("", 0, 0): the SMSC picks its default.
    """
    digits = sender.removeprefix("+")
    if digits.isascii() and digits.isdigit():
        return digits, TON_INTERNATIONAL, NPI_ISDN
    if not sender:
        return "", TON_UNKNOWN, NPI_UNKNOWN
    return sender, TON_ALPHANUMERIC, NPI_UNKNOWN
