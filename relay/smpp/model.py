"""Data crossing the SMPP layer's boundary: what to submit, what came back (SMPP 3.4 §4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.sms.model import TlvValue


@dataclass(frozen=True, slots=True)
class SubmitSm:
    """One submit_sm, fully decided before it is spooled (so a retry sends the same bytes)."""

    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str  # E.164 digits, no '+'
    short_message: bytes
    data_coding: int
    esm_class: int = 0
    protocol_id: int = 0
    registered_delivery: int = 1
    dest_addr_ton: int = 1
    dest_addr_npi: int = 1
    tlvs: tuple[tuple[str, TlvValue], ...] = ()


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """The upstream's answer to one submit_sm: command_status 0 means accepted."""

    command_status: int
    message_id: str = ""
    throttled: int = 0  # throttle responses to this submit before this outcome (link retries)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery receipt (SPEC §9), from the text form and/or the TLVs."""

    message_id: str
    stat: str  # DELIVRD, EXPIRED, DELETED, UNDELIV, ACCEPTD, UNKNOWN, REJECTD, ENROUTE
    err: str = ""
    sub: str = ""
    dlvrd: str = ""
    submit_date: str = ""
    done_date: str = ""
    text: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # HLR fields: imsi, msc, mcc, mnc, …


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """A deliver_sm from the upstream: a receipt (`receipt` set) or a mobile-originated SMS."""

    source_addr: str
    destination_addr: str
    esm_class: int
    data_coding: int
    short_message: bytes
    tlvs: dict[str, TlvValue] = field(default_factory=dict)
    receipt: Receipt | None = None
