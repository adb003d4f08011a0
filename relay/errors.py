"""The service's error codes (SPEC §5) and the exceptions that carry them.

Exception tree::

    RelayError                 base of everything the relay raises on purpose
    ├── RejectError            a request refused with a service error code 1–9 (SPEC §5);
    │                          turned into a reply mail or a `550 5.7.1` at one boundary
    ├── ConfigError            a configuration that cannot run (check-config prints it)
    └── SpoolError             the spool could not store or load (SMTP answers `451 4.3.0`)
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """SPEC §5: the code, its reply description, and whether the reply names the id."""

    PARAMETERS = 1
    AUTH = 2
    FUNDS = 3
    IP_BLOCKED = 4
    DATE_FORMAT = 5
    PROHIBITED = 6
    PHONE_FORMAT = 7
    UNDELIVERABLE = 8
    DUPLICATE = 9

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]

    @property
    def carries_id(self) -> bool:
        """SPEC §5 table: codes 3, 6, 7, 8 add `, ID - <id>` to the reply."""
        return self in _CARRIES_ID


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.PARAMETERS: "parameters error",
    ErrorCode.AUTH: "invalid login or password",
    ErrorCode.FUNDS: "insufficient funds",
    ErrorCode.IP_BLOCKED: "IP address temporarily blocked",
    ErrorCode.DATE_FORMAT: "invalid date format",
    ErrorCode.PROHIBITED: "message is prohibited",
    ErrorCode.PHONE_FORMAT: "invalid phone number format",
    ErrorCode.UNDELIVERABLE: "message cannot be delivered to the number",
    ErrorCode.DUPLICATE: "duplicate request",
}

_CARRIES_ID = frozenset(
    {ErrorCode.FUNDS, ErrorCode.PROHIBITED, ErrorCode.PHONE_FORMAT, ErrorCode.UNDELIVERABLE}
)


class RelayError(Exception):
    """Base of the relay's own exceptions."""


class RejectError(RelayError):
    """A request refused with a service error code; `detail` is for logs, never for the reply."""

    def __init__(self, code: ErrorCode, detail: str = "", *, request_id: str | None = None) -> None:
        super().__init__(f"ERROR = {int(code)} ({code.description}): {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id


class ConfigError(RelayError):
    """The configuration is invalid; the message is meant for a human."""


class SpoolError(RelayError):
    """The spool failed to store or load; the SMTP front answers a temporary failure."""
