"""Data that the SMS builder hands to the rest of the relay (SPEC §7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TlvValue = int | bytes


@dataclass(frozen=True, slots=True)
class SmsProfile:
    """How the upstream (and the account) wants SMS built: SPEC §7, config `[smpp]` + account."""

    latin1: bool = False
    data_coding_gsm: int = 0x00
    data_coding_latin1: int = 0x03
    data_coding_ucs2: int = 0x08
    long_sms: Literal["udh", "sar", "payload"] = "udh"
    udh_ref16: bool = False
    dialect: Literal["generic", "smsc"] = "generic"


@dataclass(frozen=True, slots=True)
class PartSpec:
    """The content of one submit_sm: everything but the addresses and registered_delivery.

    `tlvs` are optional parameters by their SMPP 3.4 names as smpplib spells them
    (e.g. ("sar_msg_ref_num", 7), ("message_payload", b"...")), in the order to send.
    """

    short_message: bytes
    data_coding: int
    esm_class: int = 0
    protocol_id: int = 0
    tlvs: tuple[tuple[str, TlvValue], ...] = ()
