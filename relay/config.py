"""The relay's configuration: a TOML file plus `SMS_RELAY_<SECTION>__<KEY>` overrides (SPEC §10).

Built once at start (and again on SIGHUP), validated by pydantic, then passed down explicitly.
The section and key names are an operator contract: never rename one.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from relay.callbacks import parse_callback_url
from relay.errors import ConfigError

ENV_PREFIX = "SMS_RELAY_"
DEFAULT_SPOOL_URL = "sqlite:///spool.db"


class _Section(BaseModel):
    """A config section: unknown keys are an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(2525, ge=0, le=65535)
    domains: list[str] = Field(default_factory=lambda: ["sms.example.com"])
    hostname: str = ""  # the name in the banner/EHLO; empty: the first domain
    max_message_size: int = Field(102400, gt=0)
    reject_invalid: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    # Seconds an SMTP session may sit idle before it is closed (RFC 5321 §4.5.3.2 suggests 5 min).
    timeout: float = Field(300.0, gt=0)
    max_recipients: int = Field(100, gt=0)
    # SMTP AUTH is offered only inside TLS; true also offers it in clear on loopback connections.
    auth_plain_loopback: bool = False
    # Implicit-TLS port (RFC 8314, "smtps"); 0: none. Needs tls_cert/tls_key.
    tls_port: int = Field(0, ge=0, le=65535)
    # RFC 5321 §4.5.1: mail to postmaster@<domain> (and bare <postmaster>) is accepted and
    # forwarded to this address through replies.smarthost; "postmaster" alone is the
    # smarthost's own postmaster. Empty: refused with 550.
    postmaster: str = "postmaster"
    # SMTP worker processes: 0 = the SMTP sessions run in the daemon's own process; N >= 1 = N
    # processes accept on the SMTP port (SO_REUSEPORT) and hand what they accept to the daemon's
    # spool, which then does no SMTP itself (ingest and the rest on separate cores;
    # relay.smtp_workers).
    workers: int = Field(0, ge=0, le=64)

    @field_validator("domains")
    @classmethod
    def _lower_domains(cls, v: list[str]) -> list[str]:
        return [d.strip().lower() for d in v if d.strip()]


class SmppConfig(_Section):
    host: str = ""
    port: int = Field(2775, ge=0, le=65535)
    system_id: str = "relay"
    password: str = "secret"  # noqa: S105 - the SPEC §10 default for the virtual SMSC
    system_type: str = ""
    bind: Literal["transceiver", "transmitter"] = "transceiver"
    binds: int = Field(1, ge=1, le=64)
    window: int = Field(10, ge=1, le=1000)
    throughput: float = Field(0, ge=0)
    # Issue 10: submits per second for the whole gateway, shared by the nodes of a PostgreSQL
    # spool (each gets total / live nodes, split over its binds); 0 = off (`throughput` holds).
    throughput_total: float = Field(0, ge=0)
    enquire_link_interval: float = Field(30, gt=0)
    dialect: Literal["generic", "smsc"] = "generic"
    long_sms: Literal["udh", "sar", "payload"] = "udh"
    udh_ref16: bool = False
    latin1: bool = False
    registered_delivery: bool = True
    data_coding_gsm: int = Field(0x00, ge=0, le=255)
    data_coding_latin1: int = Field(0x03, ge=0, le=255)
    data_coding_ucs2: int = Field(0x08, ge=0, le=255)
    receipt_id_format: Literal["auto", "same", "hex2dec", "dec2hex"] = "auto"
    bind_timeout: float = Field(10, gt=0)
    response_timeout: float = Field(30, gt=0)
    reconnect_min: float = Field(1, gt=0)
    reconnect_max: float = Field(60, gt=0)


class SpoolConfig(_Section):
    url: str = DEFAULT_SPOOL_URL
    validity: int = Field(86400, gt=0)
    retry_min: float = Field(5, gt=0)
    retry_max: float = Field(600, gt=0)
    # Several nodes on one PostgreSQL spool (issue 10): this node's name (unique per spool;
    # default "<hostname>:<smtp.port>") and how long its claim on a job holds without renewal.
    node: str = ""
    lease: float = Field(30, gt=0)
    # Seconds between a node's heartbeats in a shared spool; live = seen within 3 of them.
    heartbeat: float = Field(2, gt=0)
    # Retention: days final history (requests, their jobs and receipts, sent mails and
    # callbacks, MO SMS) is kept before the daemon prunes it; 0 = keep forever. What a check
    # still needs (mo.reply_window, the SPEC §5 windows, undelivered work) is never pruned.
    keep_days: float = Field(30, ge=0)
    # Seconds between pruning rounds (the first one comes after min(60, this)).
    prune_interval: float = Field(600, gt=0)
    # Issue 9: progress commits (a claim, a round of submits recorded), whose loss can only
    # cause a re-send, are not fsynced each; on SQLite the WAL is fsynced at least this many
    # seconds after the first one. 0: every commit fsyncs. `store()` (the 250) always does.
    progress_fsync: float = Field(0.1, ge=0, le=10)
    # Issue 9 (SQLite): under concurrent store load (the last commit held at least 4 stores), a
    # commit of stores waits until this many seconds after the previous one began, for more
    # stores to join it (like PostgreSQL's commit_delay with commit_siblings): fewer, larger
    # transactions for the same fsyncs. A lone client never waits, and nobody waits once the
    # daemon's event loop has nothing else to run (relay.idle_loop). 0: never wait.
    commit_delay: float = Field(0.008, ge=0, le=0.1)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v


class RepliesConfig(_Section):
    smarthost: str = "127.0.0.1:25"
    sender: str = "sms-relay@sms.example.com"
    enabled: bool = True
    timeout: float = Field(30, gt=0)

    @property
    def smarthost_address(self) -> tuple[str, int]:
        host, _, port = self.smarthost.rpartition(":")
        if not host:
            return self.smarthost, 25
        return host.strip("[]"), int(port)

    @field_validator("smarthost")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if sep and (not host or not port.isdigit()):
            raise ValueError("must be host or host:port")
        return v


class MetricsConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    enabled: bool = True


class MoConfig(_Section):
    """Issue 8: incoming SMS (deliver_sm that is not a receipt)."""

    # An MO SMS from a phone the relay sent to within this many seconds is mailed to the
    # envelope sender of that last message; otherwise to the account's `mo_email`.
    reply_window: float = Field(604800, gt=0)
    # How long the parts of a concatenated MO SMS are looked for (seconds back from the last).
    concat_window: float = Field(3600, gt=0)
    # Seconds after the last part of an incomplete concatenated MO SMS arrived until it is
    # forwarded with what arrived, missing parts marked (Kannel: sms-combine-concatenated-mo-
    # timeout, 1800 s, then passes the parts on as they are). At most concat_window.
    concat_timeout: float = Field(600, gt=0)

    @model_validator(mode="after")
    def _timeout_within_window(self) -> MoConfig:
        if self.concat_timeout > self.concat_window:
            raise ValueError(
                "concat_timeout must not exceed concat_window (the parts are looked for "
                "within concat_window)"
            )
        return self


class CallbacksConfig(_Section):
    """Issue 8 / SPEC §11: delivery of status and MO callbacks to accounts' `callback_url`."""

    enabled: bool = True
    validity: float = Field(86400, gt=0)  # retried for this long, then dropped as failed
    timeout: float = Field(10, gt=0)  # one HTTP request, connect to last byte
    retry_min: float = Field(5, gt=0)
    retry_max: float = Field(600, gt=0)
    concurrency: int = Field(10, ge=1, le=1000)  # callbacks in flight at once


class LogConfig(_Section):
    format: Literal["plain", "json"] = "plain"
    level: Literal["debug", "info", "warning", "error"] = "info"
    content: bool = False  # message text only at debug level when true


class LimitsConfig(_Section):
    """SPEC §5 protections; the defaults are the spec's."""

    duplicate_window: float = Field(60, ge=0)
    duplicate_allowed: int = Field(1, ge=1)
    flood_count: int = Field(50, ge=1)
    flood_interval: float = Field(120, gt=0)
    ip_fail_count: int = Field(10, ge=1)
    ip_fail_window: float = Field(600, gt=0)
    ip_block_time: float = Field(900, gt=0)
    deny_patterns: list[str] = Field(default_factory=list)
    stop_list: list[str] = Field(default_factory=list)
    # Refusal codes that count as a failed request for the IP block. 4 never counts (a blocked
    # client would stay blocked for ever); 9 does not by default: duplicates are mostly honest
    # retries (an MTA redelivering after a lost `250`, a monitor repeating an alert), and
    # counting them would let one flapping alert block a whole monitoring server.
    ip_fail_codes: list[int] = Field(default_factory=lambda: [1, 2, 3, 5, 6, 7, 8])
    # Client networks never blocked nor counted: put the MTA that relays to us here (when all
    # mail comes from one smarthost, blocking its IP would block every user at once).
    ip_block_exempt: list[str] = Field(default_factory=list)

    @field_validator("deny_patterns")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"deny pattern {pattern!r}: {exc}") from None
        return v

    @field_validator("ip_block_exempt")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP address or network") from None
        return v

    @field_validator("ip_fail_codes")
    @classmethod
    def _known_codes(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 1 <= c <= 9 or c == 4]
        if bad:
            raise ValueError(f"codes must be 1..9 except 4, not {bad}")
        return v

    # Rate and cost guards (issue 6); 0 = no limit. Per account and per envelope sender.
    account_rate_per_minute: int = Field(0, ge=0)
    account_parts_per_day: int = Field(0, ge=0)
    sender_rate_per_minute: int = Field(0, ge=0)
    sender_parts_per_day: int = Field(0, ge=0)
    rate_action: Literal["reply", "tempfail"] = "reply"


class AccountConfig(_Section):
    login: str
    password: str
    api_key: str = ""
    senders: list[str] = Field(default_factory=list)
    default_region: str = "RU"
    tz: int = 0
    email2sms: list[str] = Field(default_factory=list)
    latin1: bool = False
    allowed_senders: list[str] = Field(default_factory=list)
    allowed_ips: list[str] = Field(default_factory=list)
    template: str = "{subject}\n{body}"
    max_parts: int = Field(3, ge=1, le=255)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    # SMS parts granted to the account; None = unlimited. The spool keeps what is left and
    # re-bases it when this value changes: remaining += new - old (so to grant N more parts,
    # add N here; lowering it below what was spent refuses everything until raised again).
    balance: int | None = None
    allowed_prefixes: list[str] = Field(default_factory=list)
    callback_url: str = ""
    mo_email: str = ""
    status_mail: Literal["none", "failed", "all"] = "none"
    cut_markers: list[str] = Field(default_factory=list)
    rate_per_minute: int | None = Field(None, ge=0)  # None: limits.account_rate_per_minute
    parts_per_day: int | None = Field(None, ge=0)  # None: limits.account_parts_per_day

    @field_validator("login")
    @classmethod
    def _login_shape(cls, v: str) -> str:
        if not v or ":" in v or "@" in v or any(c.isspace() for c in v):
            raise ValueError("login must be non-empty, without ':', '@' or spaces")
        return v

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, v: str) -> str:
        if v.strip():
            try:
                parse_callback_url(v)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return v.strip()

    @field_validator("password")
    @classmethod
    def _password_present(cls, v: str) -> str:
        if not v:
            raise ValueError("an account needs a password")
        return v

    def __repr__(self) -> str:  # never print a password, even in a traceback
        return f"AccountConfig(login={self.login!r})"

    __str__ = __repr__


class _TomlFile(PydanticBaseSettingsSource):
    """Reads the config file given to `load_config`; environment variables override it."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class RelayConfig(BaseSettings):
    """The whole configuration; build it with `load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    smpp: SmppConfig = Field(default_factory=SmppConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    replies: RepliesConfig = Field(default_factory=RepliesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    mo: MoConfig = Field(default_factory=MoConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)
    accounts: list[AccountConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _tls_port_needs_a_certificate(self) -> RelayConfig:
        if self.smtp.tls_port and not (self.smtp.tls_cert and self.smtp.tls_key):
            raise ValueError("smtp.tls_port needs smtp.tls_cert and smtp.tls_key")
        return self

    @model_validator(mode="after")
    def _unique_logins(self) -> RelayConfig:
        seen: set[str] = set()
        for acc in self.accounts:
            if acc.login.lower() in seen:
                raise ValueError(f"account login {acc.login!r} appears twice")
            seen.add(acc.login.lower())
        return self

    @property
    def virtual_smsc(self) -> bool:
        """SPEC §10: an empty `smpp.host` runs the built-in simulator in-process."""
        return not self.smpp.host

    def account(self, login: str) -> AccountConfig | None:
        for acc in self.accounts:
            if acc.login.lower() == login.lower():
                return acc
        return None


def load_config(path: str | Path | None) -> RelayConfig:
    """Read the TOML file (if any) and the environment; raise ConfigError with a readable text."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        return _from_file(data)()
    except ValidationError as exc:
        raise ConfigError(_readable(exc, path)) from None


def _from_file(data: dict[str, Any]) -> type[RelayConfig]:
    """A RelayConfig whose sources are, by priority: the environment, then this file's data."""

    class _Loaded(RelayConfig):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _TomlFile(settings_cls, data))

    return _Loaded


def _readable(exc: ValidationError, path: str | Path | None) -> str:
    where = str(path) if path is not None else "configuration"
    lines = [f"{where}: {exc.error_count()} problem(s):"]
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
