"""PURE: a parsed command + the account → a validated request, in SPEC §5's order of checks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from relay.config import AccountConfig
from relay.errors import ErrorCode, RejectError
from relay.fields import (
    check_message,
    check_sender,
    normalize_phones,
    parse_format,
    parse_id,
    parse_test,
    parse_translit,
    parse_when,
)
from relay.grammar import Command
from relay.passwords import Verifier
from relay.protections import Policy, check_destinations, check_text


@dataclass(frozen=True, slots=True)
class Message:
    """One text to one or more recipients (list mode yields several)."""

    phones: tuple[str, ...]  # E.164 with '+'
    text: str
    comment: str


@dataclass(frozen=True, slots=True)
class ValidRequest:
    account: AccountConfig
    request_id: str | None  # None: the relay assigns one
    when: datetime | None  # None: now
    translit: int
    fmt: int
    sender: str
    test: int
    messages: tuple[Message, ...]
    channel: str = ""
    subj: str = ""
    voice: str = ""


def authenticate(
    cmd: Command,
    accounts: dict[str, AccountConfig],
    checker: Verifier,
    client_ip: str,
) -> AccountConfig:
    """SPEC §4 login/psw (the password or the API key) and §5 allowed IPs → else ERROR 2."""
    account = accounts.get(cmd.login.lower())
    if account is None:
        # Spend the same effort as a real check so a login's existence does not leak by timing.
        checker.verify("", cmd.psw)
        raise RejectError(ErrorCode.AUTH, "unknown login")
    ok = checker.verify(account.password, cmd.psw)
    if not ok and account.api_key:
        ok = checker.verify(account.api_key, cmd.psw)
    if not ok:
        raise RejectError(ErrorCode.AUTH, f"bad password for {account.login}")
    if account.allowed_ips and not ip_allowed(client_ip, account.allowed_ips):
        raise RejectError(ErrorCode.AUTH, f"{client_ip} not in allowed_ips of {account.login}")
    return account


def ip_allowed(client_ip: str, networks: list[str]) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    for net in networks:
        try:
            if addr in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


def validate(
    cmd: Command, account: AccountConfig, now: datetime, policy: Policy | None = None
) -> ValidRequest:
    """SPEC §4 field rules: id/format/translit/test (1), time (5), phones (7), mes (1), sender;
    then, with a `policy`, SPEC §5's stateless policy: deny patterns (6), prefixes/stop list (8).
    """
    request_id = parse_id(cmd.id)
    fmt = parse_format(cmd.fmt)
    translit = parse_translit(cmd.translit)
    test = parse_test(cmd.test)
    when = parse_when(cmd.time, cmd.tz, account.tz, now)
    messages: list[Message] = []
    for entry in cmd.entries:
        phones = normalize_phones(
            entry.phones, region=account.default_region, groups=account.groups
        )
        check_message(entry.text, fmt)
        messages.append(Message(phones=phones, text=entry.text, comment=entry.comment))
    sender = check_sender(cmd.sender, account)
    if policy is not None:
        check_text([*(m.text for m in messages), cmd.subj], policy)
        check_destinations((p for m in messages for p in m.phones), account, policy)
    return ValidRequest(
        account=account,
        request_id=request_id,
        when=when,
        translit=translit,
        fmt=fmt,
        sender=sender,
        test=test,
        messages=tuple(messages),
        channel=cmd.channel,
        subj=cmd.subj,
        voice=cmd.voice,
    )
