"""PURE: mail to `postmaster` (RFC 5321 §4.5.1), forwarded to the operator.

Every SMTP server that delivers mail MUST accept the reserved mailbox `postmaster` (any case), at
each of its domains and also without a domain (`RCPT TO:<Postmaster>`). The relay has no
mailboxes of its own: such mail is spooled like a reply mail and forwarded through
`replies.smarthost` to `smtp.postmaster` (default `postmaster`, i.e. the smarthost's own
postmaster, which on a Postfix host is the `postmaster` alias). Forwarding keeps the original
envelope sender, as an alias does, and adds a trace header; a mail that already carries this
relay's trace header, or more trace headers than a sane path has, is a loop and refused.
"""

from __future__ import annotations

import email.utils
import re

LOCALPART = "postmaster"
TRACE_HEADER = "X-SMS-Relay-Postmaster"
# RFC 5321 §6.3: a loop is usually detected by counting Received headers; 100 is its upper
# suggestion, sendmail's default is 25 and Postfix's 50.
MAX_RECEIVED = 50

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_TRACE = re.compile(rb"^" + TRACE_HEADER.lower().encode() + rb":", re.IGNORECASE | re.MULTILINE)

NOT_CONFIGURED = "550 5.1.1 No postmaster mailbox here (smtp.postmaster is not set)"
SEPARATELY = "452 4.5.3 Send mail for postmaster in a separate transaction"
LOOP = "554 5.4.6 Mail loop detected"


def is_postmaster(address: str, domains: frozenset[str] | set[str]) -> bool:
    """`postmaster` without a domain, or `postmaster@<one of our domains>`, in any case."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address.strip().lower() == LOCALPART
    return local.lower() == LOCALPART and domain.lower() in domains


def _headers(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return raw if end < 0 else raw[:end]


def is_loop(raw: bytes) -> bool:
    """The mail came back through us, or has passed more hops than any sane path."""
    head = _headers(raw)
    return bool(_TRACE.search(head)) or len(_RECEIVED.findall(head)) > MAX_RECEIVED


def forwarded(
    raw: bytes,
    *,
    rcpt: str,
    helo: str,
    client_ip: str,
    hostname: str,
    request_id: str,
    now: float,
) -> bytes:
    """The mail as it goes on to the operator: a Received line and our trace header on top."""
    when = email.utils.formatdate(now)
    helo = re.sub(r"[^\x21-\x7e]", "", helo) or "unknown"
    rcpt = re.sub(r"[^\x21-\x7e]", "", rcpt)
    trace = (
        f"Received: from {helo} ([{client_ip}])\r\n"
        f"\tby {hostname} (sms-relay) with ESMTP id {request_id}\r\n"
        f"\tfor <{rcpt}>; {when}\r\n"
        f"{TRACE_HEADER}: {hostname}\r\n"
    )
    body = raw if raw.endswith(b"\n") else raw + b"\r\n"
    return trace.encode("ascii") + body
