"""PURE: a mobile-originated SMS → its text (any coding, parts reassembled) and its mail (issue 8).

Decoding follows SMPP 3.4 §5.2.19 and 3GPP TS 23.038 §4: data_coding 0x00 is the SMSC default
alphabet (GSM 03.38, unpacked septets as the relay sends them), 0x01 IA5/ASCII, 0x03 Latin-1,
0x08 UCS-2; the general (0x0X–0x3X after masking) and message-class (0xFX) groups say GSM 7-bit,
8-bit data or UCS-2 in two bits. 8-bit data has no text: it is shown as hex.

Concatenation arrives as a UDH (IEI 0x00 with an 8-bit reference, 0x08 with a 16-bit one; TS 23.040
§9.2.3.24.1/.8) or as the sar_* TLVs (SMPP 3.4 §5.3.2.22–24). The parts' bodies are joined as
octets before decoding, so a surrogate pair or escape sequence cut by a foreign sender survives.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import phonenumbers

from relay.sms import gsm7

ESM_UDHI = 0x40
_IEI_CONCAT8 = 0x00
_IEI_CONCAT16 = 0x08

TlvMap = Mapping[str, int | str | bytes]


@dataclass(frozen=True, slots=True)
class Concat:
    """Which part of which concatenated message: `ref` shared by the parts, `seq` 1-based."""

    ref: int
    total: int
    seq: int


@dataclass(frozen=True, slots=True)
class SmsBody:
    """A short_message (or message_payload) with its UDH taken off."""

    body: bytes
    data_coding: int
    concat: Concat | None


def _tlv_bytes(value: int | str | bytes | None) -> bytes:
    # The spool stores MO TLVs with bytes as hex text (relay.worker.on_deliver).
    if value is None or isinstance(value, int):
        return b""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            return value.encode("latin-1", "replace")
    return value


def split_body(esm_class: int, data_coding: int, short_message: bytes, tlvs: TlvMap) -> SmsBody:
    """Take the UDH (or the sar_* TLVs) off a PDU's message; a malformed UDH is kept as text."""
    data = short_message or _tlv_bytes(tlvs.get("message_payload"))
    concat: Concat | None = None
    if esm_class & ESM_UDHI and data:
        udhl = data[0]
        if 1 + udhl <= len(data):
            udh, data = data[1 : 1 + udhl], data[1 + udhl :]
            concat = _concat_ie(udh)
    if concat is None:
        ref, total, seq = (tlvs.get(k) for k in ("sar_msg_ref_num", "sar_total_segments",
                                                  "sar_segment_seqnum"))  # fmt: skip
        if isinstance(ref, int) and isinstance(total, int) and isinstance(seq, int) and total > 1:
            concat = Concat(ref, total, seq)
    return SmsBody(data, data_coding, concat)


def _concat_ie(udh: bytes) -> Concat | None:
    i = 0
    while i + 2 <= len(udh):
        iei, length = udh[i], udh[i + 1]
        value = udh[i + 2 : i + 2 + length]
        i += 2 + length
        if iei == _IEI_CONCAT8 and len(value) == 3 and value[1] > 1:
            return Concat(value[0], value[1], value[2])
        if iei == _IEI_CONCAT16 and len(value) == 4 and value[2] > 1:
            return Concat(int.from_bytes(value[:2], "big"), value[2], value[3])
    return None


def alphabet(data_coding: int) -> str:
    """`gsm`, `ascii`, `latin1`, `ucs2` or `binary` for a data_coding (TS 23.038 §4)."""
    dc = data_coding & 0xFF
    if dc in (0x00, 0x01, 0x03, 0x08):
        return {0x00: "gsm", 0x01: "ascii", 0x03: "latin1", 0x08: "ucs2"}[dc]
    if dc & 0xF0 == 0xF0:  # message class group: bit 2 = 8-bit data
        return "binary" if dc & 0x04 else "gsm"
    if dc & 0xC0 == 0x00:  # general data coding group (compressed bit 5 not supported)
        return {0: "gsm", 1: "binary", 2: "ucs2", 3: "binary"}[(dc >> 2) & 0x03]
    if dc & 0xF0 == 0xE0:  # message waiting group, UCS-2
        return "ucs2"
    if dc & 0xF0 in (0xC0, 0xD0):
        return "gsm"
    return "binary"


def decode_text(body: bytes, data_coding: int) -> str:
    """The text of an SMS body (UDH removed) in its coding."""
    kind = alphabet(data_coding)
    if kind == "gsm":
        if any(b > 0x7F for b in body):
            # Not unpacked septets: an SMSC that forwards MO as Latin-1/ASCII octets with dc 0.
            return body.decode("latin-1")
        return gsm7.decode(body)
    if kind == "ascii":
        return body.decode("ascii", "replace")
    if kind == "latin1":
        return body.decode("latin-1")
    if kind == "ucs2":
        # UTF-16BE decodes UCS-2 and keeps surrogate pairs (characters outside the BMP).
        return body[: len(body) // 2 * 2].decode("utf-16-be", "replace")
    return body.hex()


def reassemble(parts: Sequence[SmsBody]) -> str | None:
    """The text of a message from all its parts, or None while a part is missing.

    One unconcatenated part is a whole message. Parts are joined in `seq` order; a repeated part
    (an SMSC resending) counts once.
    """
    if not parts:
        return None
    first = parts[0]
    if first.concat is None:
        return decode_text(first.body, first.data_coding)
    by_seq: dict[int, SmsBody] = {}
    for p in parts:
        if p.concat is not None and p.concat.ref == first.concat.ref:
            by_seq.setdefault(p.concat.seq, p)
    if sorted(by_seq) != list(range(1, first.concat.total + 1)):
        return None
    ordered = [by_seq[i] for i in range(1, first.concat.total + 1)]
    return decode_text(b"".join(p.body for p in ordered), ordered[0].data_coding)


@dataclass(frozen=True, slots=True)
class Partial:
    """What arrived of a concatenated message whose parts did not all come (mo.concat_timeout):
    the text with each gap marked, and which parts (1-based) are missing of how many."""

    text: str
    missing: tuple[int, ...]
    total: int


def missing_mark(seq: int, total: int) -> str:
    return f"[part {seq} of {total} missing]"


def reassemble_partial(parts: Sequence[SmsBody]) -> Partial | None:
    """The parts that arrived, in `seq` order, each run of consecutive parts joined as octets
    before decoding (as in `reassemble`), a mark where a part is missing; None when `parts`
    holds no concatenated part. A character cut by a gap decodes as U+FFFD, never raises."""
    first = next((p for p in parts if p.concat is not None), None)
    if first is None or first.concat is None:
        return None
    ref, total = first.concat.ref, first.concat.total
    by_seq: dict[int, SmsBody] = {}
    for p in parts:
        if p.concat is not None and (p.concat.ref, p.concat.total) == (ref, total):
            by_seq.setdefault(p.concat.seq, p)
    pieces: list[str] = []
    run: list[SmsBody] = []
    missing: list[int] = []
    for seq in range(1, total + 1):
        part = by_seq.get(seq)
        if part is not None:
            run.append(part)
            continue
        if run:
            pieces.append(decode_text(b"".join(p.body for p in run), run[0].data_coding))
            run = []
        missing.append(seq)
        pieces.append(missing_mark(seq, total))
    if run:
        pieces.append(decode_text(b"".join(p.body for p in run), run[0].data_coding))
    return Partial("".join(pieces), tuple(missing), total)


def same_message(a: SmsBody, b: SmsBody) -> bool:
    """Parts of one concatenated message (same reference and total)."""
    return (
        a.concat is not None
        and b.concat is not None
        and (a.concat.ref, a.concat.total) == (b.concat.ref, b.concat.total)
    )


@dataclass(frozen=True, slots=True)
class SentSms:
    """The relay message an MO SMS answers: its id, the request's envelope sender, its text."""

    request_id: str
    login: str
    mail_from: str
    phone: str
    sent: float
    text: str


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def mo_mail_text(
    *,
    phone: str,
    to: str,
    text: str,
    received: float,
    sent: SentSms | None,
    partial: Partial | None = None,
) -> str:
    """The body of the mail that forwards an MO SMS: who, when, the text, the SMS it answers;
    for an incomplete concatenated SMS, which parts never came."""
    lines = [f"SMS from {phone} to {to} at {_utc(received)}:", ""]
    if partial is not None:
        gone = ", ".join(str(i) for i in partial.missing)
        lines += [
            f"(incomplete: part(s) {gone} of {partial.total} did not arrive; "
            "the text below marks where)",
            "",
        ]
    lines += [text, ""]
    if sent is not None:
        lines += [
            f"In reply to message ID {sent.request_id} sent to {sent.phone} at {_utc(sent.sent)}:",
            *(f"> {line}" for line in sent.text.splitlines() or [""]),
            "",
        ]
    return "\n".join(lines)


def render_notice(
    text: str, *, subject: str, to: str, sender: str, message_id: str, now: float
) -> bytes:
    """A mail the relay sends on its own (an MO forward, a status report).

    RFC 3834 §5: `Auto-Submitted: auto-generated` (not a reply to a mail), so a well-behaved
    autoresponder never answers it, and the relay's own guard (relay.replies.is_auto_mail) would
    not answer it either if it came back. Never carries a password: it holds only the phone, the
    times, the SMS texts and the message id.
    """
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(text, charset="utf-8")
    return msg.as_bytes()


def may_mail(rcpt: str, *, own_domains: Sequence[str], sender: str) -> bool:
    """Loop guard for mails the relay starts: never to `<>`/no address, never to itself.

    A mail to one of the served domains would come back in as a command or e-mail-to-SMS mail
    and could turn one SMS into an SMS↔mail loop.
    """
    if not rcpt or rcpt == "<>" or "@" not in rcpt:
        return False
    domain = rcpt.rsplit("@", 1)[1].strip(">").lower()
    if domain in {d.lower() for d in own_domains}:
        return False
    return rcpt.strip("<>").lower() != sender.strip("<>").lower()


def sender_candidates(source_addr: str, regions: Sequence[str]) -> tuple[str, ...]:
    """The E.164 numbers an MO sender address may stand for, the likeliest first.

    SMSCs send the sender international without '+' (79161234567), with '+', or in national
    format (89161234567, 9161234567 with TON 2): the number as international comes first, then
    the number read as a national one of each region the accounts use, when that is a valid
    number. The first one that the relay sent to within the reply window is the one answered.
    """
    written = source_addr.strip()
    digits = written.removeprefix("+")
    if not digits.isdigit():
        return (written,)
    international = "+" + digits
    if written.startswith("+"):
        return (international,)
    found = [international]
    for region in regions:
        try:
            number = phonenumbers.parse(digits, region.upper())
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            if e164 not in found:
                found.append(e164)
    return tuple(found)


def likeliest_sender(candidates: Sequence[str]) -> str:
    """Of `sender_candidates`, the first that is a valid number (else the first)."""
    for candidate in candidates:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(candidate, None)):
                return candidate
        except phonenumbers.NumberParseException:
            continue
    return candidates[0]
