"""SMTP AUTH (RFC 4954, PLAIN and LOGIN) against the accounts' credentials.

The user name is an account's login (case-insensitive); the password is its password or its API
key, compared by `PasswordChecker` (constant time; unknown logins cost a verification too, so
their existence does not leak by timing). Secrets are never logged: aiosmtpd's per-command log
is silenced by `relay.logs`, and the failures logged here name only the login.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay.config import AccountConfig
from relay.passwords import PasswordChecker

log = logging.getLogger("relay.smtp")

# Go's net/smtp (Alertmanager, Grafana) answers AUTH LOGIN only to these exact prompts
# ("Username:" / "Password:", base64 VXNlcm5hbWU6 / UGFzc3dvcmQ6); aiosmtpd's own are different.
LOGIN_USERNAME_PROMPT = "Username:"
LOGIN_PASSWORD_PROMPT = "Password:"  # noqa: S105 - a prompt, not a secret
# The longest user name / password looked at (an argon2 check of megabytes is a DoS).
MAX_SECRET = 512


class AccountAuthenticator:
    """aiosmtpd `authenticator`: LoginPassword → AuthResult with the account's login."""

    def __init__(
        self,
        accounts: Callable[[], Mapping[str, AccountConfig]],
        checker: PasswordChecker,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._accounts = accounts  # read at each AUTH: SIGHUP replaces the accounts
        self._checker = checker
        self._on_failure = on_failure

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = _text(data.login)
        password = _text(data.password)
        account = self._accounts().get(login.lower()) if login else None
        if account is None:
            self._checker.verify("", password)  # same effort as a real check
            ok = False
        else:
            ok = self._checker.verify(account.password, password)
            if not ok and account.api_key:
                ok = self._checker.verify(account.api_key, password)
        if not ok:
            peer = session.peer[0] if isinstance(session.peer, tuple) else session.peer
            log.info("AUTH %s failed for login=%r ip=%s", mechanism, login[:64], peer)
            if self._on_failure is not None:
                self._on_failure()
            return AuthResult(success=False, handled=False)
        assert account is not None
        return AuthResult(success=True, auth_data=account.login)


def _text(value: bytes) -> str:
    return value[:MAX_SECRET].decode("utf-8", errors="replace")
