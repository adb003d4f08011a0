"""PURE: SPEC §5 protections — the stateless rules, and what the spool needs for the stateful ones.

Stateless (checked right after the field rules, before anything is stored):

- prohibited text (6): a message matching one of `limits.deny_patterns` (case-insensitive
  regular expressions, searched anywhere in the text; compiled once per config in `Policy`);
  the other half of 6, a sender not registered for the account, is `fields.check_sender`;
- cannot deliver (8): a phone number outside the account's `allowed_prefixes` (E.164 prefixes,
  empty = anywhere) or on `limits.stop_list`.

Stateful (flood 8, duplicates 9, balance 3, IP block 4) need the spool's memory: this module only
describes a request for them (`admission`, `fingerprint`, `counts_as_ip_failure`); the spool
runs the checks atomically with the store (`relay.spool.base.Spool.store`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relay.config import AccountConfig, LimitsConfig
from relay.errors import ErrorCode, RejectError
from relay.spool.model import Admission

_DIGITS = re.compile(r"\+?[0-9][0-9 ()\-]*")


@dataclass(frozen=True, slots=True)
class Policy:
    """The stateless rules of one config, prepared once (built again on SIGHUP)."""

    deny: tuple[re.Pattern[str], ...] = ()
    stop: frozenset[str] = frozenset()
    block_exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> Policy:
        return cls(
            deny=tuple(re.compile(p, re.IGNORECASE) for p in limits.deny_patterns),
            stop=frozenset(normalize_destination(d) for d in limits.stop_list),
            block_exempt=tuple(
                ipaddress.ip_network(n.strip(), strict=False) for n in limits.ip_block_exempt
            ),
        )

    def ip_exempt(self, client_ip: str) -> bool:
        """SPEC §5 (4) does not apply to `limits.ip_block_exempt` (e.g. the MTA in front)."""
        if not self.block_exempt:
            return False
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(addr in net for net in self.block_exempt)


def normalize_destination(value: str) -> str:
    """A stop-list or prefix entry as the pipeline writes numbers: `+` and digits only.

    "7 (999) 123-45-67", "+79991234567" → "+79991234567". Anything else (an e-mail address
    of format 8) is compared case-insensitively.
    """
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return "+" + "".join(c for c in value if c.isdigit())
    return value.lower()


def check_text(texts: Iterable[str], policy: Policy) -> None:
    """SPEC §5 (6): any text matching a deny pattern prohibits the whole request."""
    for text in texts:
        for pattern in policy.deny:
            if pattern.search(text):
                raise RejectError(ErrorCode.PROHIBITED, f"text matches {pattern.pattern!r}")


def check_destinations(destinations: Iterable[str], account: AccountConfig, policy: Policy) -> None:
    """SPEC §5 (8): every destination inside the account's prefixes and off the stop list."""
    prefixes = tuple(normalize_destination(p) for p in account.allowed_prefixes if p.strip())
    for dest in destinations:
        key = normalize_destination(dest)
        if key in policy.stop:
            raise RejectError(ErrorCode.UNDELIVERABLE, f"{dest} is on the stop list")
        # Prefixes restrict phone numbers; format 8 e-mail destinations have none.
        if prefixes and key.startswith("+") and not key.startswith(prefixes):
            raise RejectError(
                ErrorCode.UNDELIVERABLE, f"{dest} outside allowed_prefixes of {account.login}"
            )


def fingerprint(
    login: str,
    messages: Sequence[tuple[Sequence[str], str]],
    *,
    sender: str,
    fmt: int,
    channel: str,
    time: str,
) -> str:
    """SPEC §5 (9): what makes two requests identical — login, phones, message, sender, format,
    time — as a sha256 hex digest.

    Phones are compared as a set per message and list entries in any order; `time` is the time
    as written (with its tz) or "" for "now", so "+5" twice within the window is a duplicate
    although each resolves to a different instant.
    """
    entries = sorted([sorted(set(phones)), text] for phones, text in messages)
    canonical = _CANONICAL.encode([login.lower(), entries, sender, fmt, channel, time])
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# One encoder for every request (`json.dumps` with options builds one per call); the text is
# the same as `json.dumps(…, ensure_ascii=False, separators=(",", ":"))`: stored fingerprints
# stay comparable across versions.
_CANONICAL = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def admission(
    messages: Sequence[tuple[Sequence[str], str]],
    *,
    fingerprint: str,
    parts: int,
    balance: int | None,
) -> Admission:
    """The spool-side checks of an accepted request: one flood count per message and phone."""
    return Admission(
        fingerprint=fingerprint,
        destinations=tuple(phone for phones, _ in messages for phone in phones),
        parts=parts,
        balance=balance,
    )


def counts_as_ip_failure(
    code: ErrorCode, client_ip: str, limits: LimitsConfig, policy: Policy
) -> bool:
    """SPEC §5 (4): which refusals count towards blocking the client IP (`ip_fail_codes`)."""
    if code == ErrorCode.IP_BLOCKED or int(code) not in limits.ip_fail_codes:
        return False
    return bool(client_ip) and not policy.ip_exempt(client_ip)
