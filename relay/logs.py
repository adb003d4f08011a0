"""Logging setup: one line per event, plain or JSON (SPEC §10 `log.format`), never a password.

Event lines carry their ids as `extra=` fields (`request_id`, `job`, `message_id`, `login`,
`code`, `stat`): the JSON formatter writes them as keys, the plain format has them in the text.
A redaction filter on the handler replaces every configured secret (SMPP password, account
passwords and API keys) with `***` in whatever reaches the output, as a second line of defence
behind the rule that no code logs a secret or a command mail's `psw` field.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from relay.config import LogConfig, RelayConfig

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_STANDARD |= {"message", "asctime", "taskName"}
MASK = "***"
# Secrets shorter than this are not masked: masking "1" would shred every line with a digit.
MIN_SECRET_LENGTH = 4


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the `extra=` ids (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class Redactor(logging.Filter):
    """Masks known secrets in a record's message, `extra=` fields and exception text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the set of secrets (SIGHUP may bring new passwords)."""
        usable = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self.secrets = tuple(sorted(usable, key=len, reverse=True))  # longest first

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.mask(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


def secrets_of(cfg: RelayConfig) -> list[str]:
    """Every secret the config holds, to be masked in logs."""
    out = [cfg.smpp.password]
    for account in cfg.accounts:
        out += [account.password, account.api_key]
    return [s for s in out if s]


def setup_logging(cfg: LogConfig, secrets: Iterable[str] = ()) -> Redactor:
    """Configure the root logger on stderr; return the redaction filter (updated on SIGHUP)."""
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    redactor = Redactor(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # aiosmtpd logs every command line at INFO on "mail.log", AUTH payloads (base64
    # credentials) included: only its warnings and errors reach our log.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    return redactor
