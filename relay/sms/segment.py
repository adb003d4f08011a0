"""Splitting an encoded message into SMS parts and concatenating them (UDH, SAR, payload)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from relay.errors import ErrorCode, RejectError
from relay.sms.alphabet import Alphabet
from relay.sms.model import PartSpec, SmsProfile

SMS_OCTETS = 140  # TS 23.040 §9.2.3.16: TP-UD holds at most 140 octets
SMS_SEPTETS = 160  # ... which is 160 septets of the GSM 7-bit default alphabet, packed
MAX_PARTS = 255  # TS 23.040 §9.2.3.24.1: "maximum number of short messages" is one octet

IEI_CONCAT_8BIT = 0x00  # TS 23.040 §9.2.3.24.1, concatenated SMS, 8-bit reference
IEI_PORT_16BIT = 0x05  # TS 23.040 §9.2.3.24.4, application port addressing, 16-bit
IEI_CONCAT_16BIT = 0x08  # TS 23.040 §9.2.3.24.8, concatenated SMS, 16-bit reference
ESM_UDHI = 0x40  # SMPP 3.4 §5.2.12 esm_class bit 6: short_message starts with a UDH


def udh_septets(udh_length: int) -> int:
    """Septets a UDH of `udh_length` octets (UDHL included) takes with its fill bits (§9.2.3.24)."""
    return math.ceil(udh_length * 8 / 7)


def capacity(alphabet: Alphabet, udh_length: int) -> int:
    """Room for text in one SMS beside a UDH of `udh_length` octets (0: no UDH).

    GSM 7-bit is counted in septets: we send it unpacked, one septet per octet, and the SMSC
    packs it, so a part may be up to 160 octets in short_message (153 + a 6-octet UDH, which
    packs into 7 septets). Latin-1, UCS-2 and 8-bit data are counted in octets: 140 with the UDH.
    """
    if alphabet.counts_septets:
        return SMS_SEPTETS - udh_septets(udh_length)
    return SMS_OCTETS - udh_length


def split(units: Sequence[bytes], room: int) -> list[bytes]:
    """Greedy split of indivisible units (escape pairs, surrogate pairs stay whole) into chunks.

    A unit's cost is its length in octets, which for unpacked GSM 7-bit is its septet count.
    """
    chunks: list[bytes] = []
    current = bytearray()
    for unit in units:
        if len(current) + len(unit) > room:
            chunks.append(bytes(current))
            current = bytearray()
        current += unit
    if current or not chunks:
        chunks.append(bytes(current))
    return chunks


def concat_ie(ref: int, total: int, seq: int, *, ref16: bool) -> bytes:
    """The concatenation information element (TS 23.040 §9.2.3.24.1 / §9.2.3.24.8)."""
    if ref16:
        return bytes((IEI_CONCAT_16BIT, 4, (ref >> 8) & 0xFF, ref & 0xFF, total, seq))
    return bytes((IEI_CONCAT_8BIT, 3, ref & 0xFF, total, seq))


def port_ie(destination: int, source: int) -> bytes:
    """Application port addressing, 16-bit ports (TS 23.040 §9.2.3.24.4)."""
    return bytes((IEI_PORT_16BIT, 4)) + destination.to_bytes(2, "big") + source.to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Encoded:
    """A message ready to be cut: its indivisible units and the submit_sm fields of every part.

    `header` holds information elements every part's UDH must carry (e.g. port addressing);
    a message with a header is always concatenated by UDH, whatever `long_sms` says, because
    those elements must reach the handset (TS 23.040 §9.2.3.24).
    """

    units: tuple[bytes, ...]
    alphabet: Alphabet
    data_coding: int
    esm_class: int = 0
    protocol_id: int = 0
    header: bytes = b""


def segment(message: Encoded, profile: SmsProfile, ref: int) -> tuple[list[PartSpec], int]:
    """The submit_sm contents for `message` and the number of SMS it costs (SPEC §7).

    Single-part messages carry no concatenation. Longer ones per `profile.long_sms`: `udh`
    prepends `UDHL + [header] + concat IE` and sets esm_class 0x40; `sar` sends the same parts
    bare with the SMPP 3.4 §5.3.2.22-24 TLVs; `payload` sends one submit_sm with an empty
    short_message and the whole text in `message_payload` (SMPP 3.4 §5.3.2.32), which the SMSC
    splits; its cost is still the number of parts.
    """
    body = b"".join(message.units)
    base_udh = 1 + len(message.header) if message.header else 0
    esm_class = message.esm_class | (ESM_UDHI if message.header else 0)

    if len(body) <= capacity(message.alphabet, base_udh):
        udh = bytes((len(message.header),)) + message.header if message.header else b""
        part = PartSpec(udh + body, message.data_coding, esm_class, message.protocol_id)
        return [part], 1

    ref16 = profile.udh_ref16
    ref &= 0xFFFF if ref16 else 0xFF
    header_length = len(message.header) + (6 if ref16 else 5)
    chunks = split(message.units, capacity(message.alphabet, 1 + header_length))
    total = len(chunks)
    if total > MAX_PARTS:
        raise RejectError(ErrorCode.PARAMETERS, f"message needs {total} parts (> {MAX_PARTS})")

    mode = "udh" if message.header else profile.long_sms
    dc, pid = message.data_coding, message.protocol_id
    if mode == "payload":
        return [PartSpec(b"", dc, esm_class, pid, (("message_payload", body),))], total
    parts: list[PartSpec] = []
    for seq, chunk in enumerate(chunks, start=1):
        if mode == "sar":
            sar = (
                ("sar_msg_ref_num", ref),
                ("sar_total_segments", total),
                ("sar_segment_seqnum", seq),
            )
            parts.append(PartSpec(chunk, dc, esm_class, pid, sar))
        else:
            udh = bytes((header_length,)) + message.header + concat_ie(ref, total, seq, ref16=ref16)
            parts.append(PartSpec(udh + chunk, dc, esm_class | ESM_UDHI, pid))
    return parts, total
