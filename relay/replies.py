"""PURE: an outcome → the reply text, the reply mail, and the SMTP status line (SPEC §6)."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

from relay.errors import ErrorCode


def ok_text(parts_total: int, request_id: str) -> str:
    """SPEC §6: `OK - <n> SMS, ID - <id>`, n = SMS parts × recipients."""
    return f"OK - {parts_total} SMS, ID - {request_id}"


def error_text(code: ErrorCode, request_id: str | None) -> str:
    """SPEC §5/§6: `ERROR = N (description)` plus `, ID - <id>` for the codes that carry it."""
    text = f"ERROR = {int(code)} ({code.description})"
    if code.carries_id and request_id:
        text += f", ID - {request_id}"
    return text


def smtp_reject_line(code: ErrorCode, request_id: str | None) -> str:
    """`smtp.reject_invalid = true`: the DATA answer that makes a relaying MTA bounce."""
    return f"550 5.7.1 {error_text(code, request_id)}"


def wants_reply(test: int, failed: bool) -> bool:
    """SPEC §6: test 1/2 → always; test 0/absent → only on error."""
    return failed or test >= 1


def is_auto_mail(auto_submitted: str, precedence: str) -> bool:
    """RFC 3834 §2: never answer automatic mail (loop and backscatter guard)."""
    auto = auto_submitted.strip().lower()
    if auto and auto != "no" and not auto.startswith("no;"):
        return True
    return precedence.strip().lower() in {"bulk", "junk", "list"}


def reply_address(mail_from: str, reply_to: str, from_header: str) -> str | None:
    """Where the reply goes: the envelope sender; Reply-To, then From, when it has no domain.

    The null sender `<>` gets nothing (RFC 5321 §4.5.5: it marks notifications; answering one
    is how mail loops start).
    """
    if not mail_from or mail_from == "<>":
        return None
    if "@" in mail_from:
        return mail_from
    for header in (reply_to, from_header):
        addr = email.utils.parseaddr(header)[1]
        if "@" in addr:
            return addr
    return None


def render_reply(
    text: str,
    *,
    to: str,
    sender: str,
    request_message_id: str,
    request_references: str,
    message_id: str,
    now: float,
) -> bytes:
    """The reply mail: UTF-8, `Auto-Submitted: auto-replied`, threaded to the request."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = to
    # The subject is the answer itself, never the request's subject: a sender may have put the
    # command line (with its password) there, and the reply must not echo it (SPEC §6).
    msg["Subject"] = text
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    if request_message_id:
        msg["In-Reply-To"] = request_message_id
        refs = " ".join(x for x in (request_references.strip(), request_message_id) if x)
        msg["References"] = refs
    msg.set_content(text + "\n", charset="utf-8")
    return msg.as_bytes()
