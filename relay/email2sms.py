"""PURE: an ordinary mail to `<login>@` or `<phone>@` → its SMS text and request (SPEC §2.5).

The text is the decoded Subject and body (HTML-only mail already turned to text by
`relay.mail`), put together by the account's template, then cleaned for an SMS:

1. the signature is cut at the first `-- ` line (RFC 3676 §4.3), and at the first line that
   holds one of the account's `cut_markers`;
2. quoted replies go: the first `-----Original Message-----` / `-----Исходное сообщение-----`
   separator ends the text (Outlook quotes without `>`); `>` lines are dropped, together with
   the attribution line just before them (`On … wrote:`, `… писал(а):`, any line ending in `:`
   that names an address or says "wrote");
3. spaces and tabs collapse to one space, lines are trimmed, blank lines are dropped;
4. the result is cut to `max_parts` SMS parts, ending in an ellipsis when cut.

Why not a library: measured on alert mail (tests/unit/test_email2sms.py), mail-parser-reply
cut real alert lines that look like headers (`From: db1 monitoring`, `Date: …`) and kept the
`-- ` signature; quotequail only marks quotes; the stdlib HTML reader in `relay.mail` gave the
cleanest text of the Alertmanager mail (html2text writes Markdown tables, inscriptis pads
table cells, html-text repeats the <title>), and is the fastest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from relay.config import AccountConfig
from relay.errors import ErrorCode, RejectError
from relay.fields import check_sender, normalize_number, normalize_phones
from relay.mail import ParsedMail, parse_mail
from relay.pipeline import (
    Envelope,
    IntakeRules,
    Outcome,
    _Headers,
    _headers_of,
    _jobs,
    _peek_headers,
    _rejected,
    accepted_outcome,
)
from relay.protections import check_destinations, check_text
from relay.routing import AccountRoute, Client, PhoneRoute, sender_allowed
from relay.sms import count_parts
from relay.sms.alphabet import Alphabet, choose
from relay.sms.model import SmsProfile
from relay.validate import Message, ValidRequest

SIGNATURE = "-- "
# What ends a cut text: U+2026 when the text is UCS-2 anyway; "..." when it is GSM 7-bit or
# Latin-1, where "…" does not exist and would turn the whole SMS into UCS-2 (70 instead of 160
# characters a part, SPEC §7).
ELLIPSIS = "…"
ELLIPSIS_GSM = "..."
# SPEC §4: `mes` is at most 1000 characters; an e-mail text is cut to that as well.
MAX_TEXT_CHARS = 1000

_SEPARATOR = re.compile(
    r"^\s*-{2,}\s*(original message|исходное сообщение|пересылаемое сообщение"
    r"|forwarded message)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_ATTRIBUTION = re.compile(r"(wrote|писал|писала|пишет|написал|написала)[^:]{0,40}:\s*$", re.I)
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")


def sms_text(
    mail: ParsedMail,
    *,
    template: str,
    cut_markers: Sequence[str],
    max_parts: int,
    profile: SmsProfile,
) -> str:
    """SPEC §2.5: the SMS text of an e-mail; "" when nothing is left to send."""
    body = strip_body(mail.body, cut_markers)
    subject = _SPACES.sub(" ", mail.subject).strip()
    filled = _fill(template, subject=subject, body=body, sender=mail.from_addr)
    return cut_to_parts(collapse(filled), max_parts, profile)


def _fill(template: str, *, subject: str, body: str, sender: str) -> str:
    # Plain replacement, not str.format: an operator's template must not reach attributes
    # (`{subject.__class__}`) or fail on a stray brace.
    values = {"{subject}": subject, "{body}": body, "{from}": sender}
    out: list[str] = []
    i = 0
    while i < len(template):
        for key, value in values.items():
            if template.startswith(key, i):
                out.append(value)
                i += len(key)
                break
        else:
            out.append(template[i])
            i += 1
    return "".join(out).replace("\\n", "\n")


def strip_body(body: str, cut_markers: Sequence[str] = ()) -> str:
    """Rules 1 and 2 of the module docstring: signature, cut markers, quoted replies."""
    markers = [m for m in cut_markers if m]
    kept: list[str] = []
    for line in body.split("\n"):
        if line == SIGNATURE or line.rstrip("\r") == SIGNATURE:
            break
        if any(m in line for m in markers):
            break
        if _SEPARATOR.match(line):
            break
        if line.lstrip().startswith(">"):
            _drop_attribution(kept)
            continue
        kept.append(line)
    return "\n".join(kept)


def _drop_attribution(kept: list[str]) -> None:
    """Drop the `On … wrote:` line (and the blank lines after it) before a quote block."""
    j = len(kept) - 1
    while j >= 0 and not kept[j].strip():
        j -= 1
    if j < 0:
        return
    line = kept[j].strip()
    if _ATTRIBUTION.search(line) or (line.endswith(":") and "@" in line):
        del kept[j:]


def collapse(text: str) -> str:
    """Rule 3: one space for runs of spaces, trimmed lines, no blank lines."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def cut_to_parts(text: str, max_parts: int, profile: SmsProfile) -> str:
    """Rule 4: the longest prefix (plus an ellipsis) that fits in `max_parts` SMS parts."""
    if len(text) <= MAX_TEXT_CHARS and count_parts(text, profile=profile) <= max_parts:
        return text
    ellipsis = ELLIPSIS_GSM if _fits_narrow(text[:MAX_TEXT_CHARS], profile) else ELLIPSIS
    limit = MAX_TEXT_CHARS - len(ellipsis)
    lo, hi = 0, min(len(text), limit)
    # Parts grow monotonically with the prefix length: binary search the longest fit.
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = text[:mid].rstrip() + ellipsis
        if count_parts(candidate, profile=profile) <= max_parts:
            lo = mid
        else:
            hi = mid - 1
    prefix = text[:lo]
    if prefix and lo < len(text) and not text[lo].isspace():
        # Cut at a word boundary when one is near (within 20 characters).
        space = max(prefix.rfind(" "), prefix.rfind("\n"))
        if space >= len(prefix) - 20 and space > 0:
            prefix = prefix[:space]
    return prefix.rstrip() + ellipsis


def _fits_narrow(text: str, profile: SmsProfile) -> bool:
    """Is the text sent in GSM 7-bit or Latin-1 (not UCS-2)? SPEC §7's choice."""
    return choose(text, latin1=profile.latin1) is not Alphabet.UCS2


def process_email2sms(
    raw: bytes,
    env: Envelope,
    rules: IntakeRules,
    route: AccountRoute | PhoneRoute,
    client: Client,
    *,
    now: float,
    new_id: Callable[[], str],
    next_ref: Callable[[str], int],
) -> Outcome:
    """SPEC §2.5 for one `<login>@` / `<phone>@` recipient: the same Outcome as command mail.

    Checks, in SPEC §5's order: decode (1) → account and who may send (2) → phones (7) → text (1).
    The reply rules (only on error, never to automatic mail) are command mail's (SPEC §6).
    """
    request_id = new_id()
    login = route.login
    headers = _Headers()
    try:
        mail = parse_mail(raw)
        headers = _headers_of(mail)
        account = rules.accounts.get(login.lower())
        if account is None:  # removed by a SIGHUP between RCPT and DATA
            raise RejectError(ErrorCode.AUTH, f"no account {login}")
        if not sender_allowed(account, client) and not _direct_payer(route, client):
            raise RejectError(
                ErrorCode.AUTH, f"{client.mail_from or '<>'} from {client.client_ip} not allowed"
            )
        phones = _phones(route, account)
        profile = _profile_for(account, rules.profile)
        text = sms_text(
            mail,
            template=account.template,
            cut_markers=account.cut_markers,
            max_parts=account.max_parts,
            profile=profile,
        )
        if not text:
            raise RejectError(ErrorCode.PARAMETERS, "empty text")
        valid = ValidRequest(
            account=account,
            request_id=None,
            when=datetime.fromtimestamp(now, UTC),
            translit=0,
            fmt=0,
            sender=check_sender("", account),
            test=0,
            messages=(Message(phones=phones, text=text, comment=""),),
        )
        # SPEC §5 applies to alert mail as to command mail: deny patterns (6), prefixes and the
        # stop list (8) here; flood (8), duplicates (9) and the balance (3) in the spool.
        check_text([text], rules.policy)
        check_destinations(phones, account, rules.policy)
        jobs = _jobs(valid, rules, now=now, next_ref=next_ref)
    except RejectError as exc:
        if headers == _Headers():
            headers = _peek_headers(raw)
        return _rejected(exc, env, rules, headers, now=now, request_id=request_id, login=login)
    return accepted_outcome(
        valid, jobs, env, rules, headers, now=now, request_id=request_id, test=0
    )


def _direct_payer(route: AccountRoute | PhoneRoute, client: Client) -> bool:
    """`<phone>@` mail from an authenticated session is paid by that session's account."""
    return isinstance(route, PhoneRoute) and client.auth_login.lower() == route.login.lower()


def _phones(route: AccountRoute | PhoneRoute, account: AccountConfig) -> tuple[str, ...]:
    if isinstance(route, PhoneRoute):
        return (normalize_number(route.number, account.default_region),)
    return normalize_phones(
        list(account.email2sms), region=account.default_region, groups=account.groups
    )


def _profile_for(account: AccountConfig, profile: SmsProfile) -> SmsProfile:
    if not account.latin1 or profile.latin1:
        return profile
    return SmsProfile(
        latin1=True,
        data_coding_gsm=profile.data_coding_gsm,
        data_coding_latin1=profile.data_coding_latin1,
        data_coding_ucs2=profile.data_coding_ucs2,
        long_sms=profile.long_sms,
        udh_ref16=profile.udh_ref16,
        dialect=profile.dialect,
    )
