"""PURE: one RCPT address → its route (SPEC §1), and who may use an e-mail-to-SMS route (§2.5).

Decided at RCPT time, so a relaying MTA learns at once what is refused (never an open relay):

- `send@<domain>` → `CommandRoute` (command mail, §3);
- `<login>@<domain>` of an account with `email2sms` phones → `AccountRoute`;
- `<phone>@<domain>` (digits, optional leading `+`) → `PhoneRoute` when the session is
  authenticated or an account allows the client (`allowed_senders` / `allowed_ips`), else
  `Refused` with 530 5.7.0;
- anything else → `Refused` with 550 5.1.1.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from relay.config import AccountConfig
from relay.validate import ip_allowed

COMMAND_LOCALPART = "send"
# A direct recipient as RFC 5321 carries it: digits with an optional '+', 5..15 digits (E.164).
_PHONE_LOCALPART = re.compile(r"\+?[0-9]{5,15}")

UNKNOWN_RECIPIENT = "550 5.1.1 No such recipient here"
AUTH_REQUIRED = "530 5.7.0 Authentication required"


@dataclass(frozen=True, slots=True)
class CommandRoute:
    """`send@`: the body holds the command grammar."""


@dataclass(frozen=True, slots=True)
class AccountRoute:
    """`<login>@`: the mail's text to the account's `email2sms` phones."""

    login: str


@dataclass(frozen=True, slots=True)
class PhoneRoute:
    """`<phone>@`: the mail's text to that number, paid by `login`'s account."""

    number: str  # as written in the address (digits, optional '+')
    login: str


@dataclass(frozen=True, slots=True)
class Refused:
    status: str  # the RCPT answer


Route = CommandRoute | AccountRoute | PhoneRoute | Refused


@dataclass(frozen=True, slots=True)
class Client:
    """Who is sending, as far as the SMTP session knows it."""

    mail_from: str
    client_ip: str
    auth_login: str = ""  # the account an SMTP AUTH succeeded for; "" when none


def route_recipient(
    address: str,
    *,
    domains: frozenset[str] | set[str],
    accounts: Mapping[str, AccountConfig],
    client: Client,
) -> Route:
    """SPEC §1: the route of one recipient (`accounts` keyed by lower-cased login)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.lower() not in domains or not local:
        return Refused(UNKNOWN_RECIPIENT)
    folded = local.lower()
    if folded == COMMAND_LOCALPART:
        return CommandRoute()
    if _PHONE_LOCALPART.fullmatch(local):
        account = direct_account(accounts, client)
        if account is None:
            return Refused(AUTH_REQUIRED)
        return PhoneRoute(local, account.login)
    account = accounts.get(folded)
    if account is None or not account.email2sms:
        return Refused(UNKNOWN_RECIPIENT)
    return AccountRoute(account.login)


def sender_allowed(account: AccountConfig, client: Client) -> bool:
    """SPEC §2.5: an account's own authenticated session, or a client its restrictions allow.

    An account without `allowed_senders` and `allowed_ips` takes mail from anyone; with both set,
    the client must match both (each narrows who may spend the account's balance).
    """
    if client.auth_login and client.auth_login.lower() == account.login.lower():
        return True
    senders_ok = not account.allowed_senders or sender_matches(
        client.mail_from, account.allowed_senders
    )
    ips_ok = not account.allowed_ips or ip_allowed(client.client_ip, account.allowed_ips)
    return senders_ok and ips_ok


def direct_account(accounts: Mapping[str, AccountConfig], client: Client) -> AccountConfig | None:
    """The account that pays for `<phone>@` mail: the authenticated one, else the first account
    (in config order) whose `allowed_senders`/`allowed_ips` admit the client. An account with
    neither restriction never pays for direct mail from strangers (that would be an open relay).
    """
    if client.auth_login:
        return accounts.get(client.auth_login.lower())
    for account in accounts.values():
        if (account.allowed_senders or account.allowed_ips) and sender_allowed(account, client):
            return account
    return None


def sender_matches(mail_from: str, patterns: list[str]) -> bool:
    """`allowed_senders` patterns: `user@host` exactly, `@host` or `*@host`, shell wildcards;
    case-insensitive. The null sender `<>` matches nothing."""
    addr = mail_from.strip().strip("<>").lower()
    if not addr or "@" not in addr:
        return False
    for raw in patterns:
        pattern = raw.strip().lower()
        if not pattern:
            continue
        if pattern.startswith("@"):
            pattern = "*" + pattern
        if fnmatch.fnmatchcase(addr, pattern):
            return True
    return False
