"""LeanSMTP's constructor leaves a session in the state aiosmtpd's own constructor does.

LeanSMTP re-states aiosmtpd 1.4.6's `SMTP.__init__` with its introspection done once
(`SessionTables`); this compares every attribute with the stock constructor's for the option
sets that matter, so an aiosmtpd upgrade that changes the constructor fails here first.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session, auth_mechanism

from relay.smtp_front import CommandMailHandler, RelaySMTP
from relay.smtp_session import LeanSMTP, SessionTables


class PlainHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


class RichHandler:
    """Hooks of every kind aiosmtpd looks for, and AUTH mechanisms of its own."""

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        return responses

    async def handle_RCPT(self, *args: Any) -> str:
        return "250 OK"

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)

    @auth_mechanism("X-TOKEN")
    async def auth_token(self, server: SMTP, args: list[str]) -> AuthResult:
        return AuthResult(success=False)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:  # overrides built-in
        return AuthResult(success=False)


class OldEhloHandler:
    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, h: str) -> str:
        return "250 HELP"


class Stock(SMTP):
    pass


class Lean(LeanSMTP):
    pass


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _state(server: SMTP) -> dict[str, Any]:
    """Comparable attributes: bound methods by function name, futures and readers by type."""
    return {name: _value(value, server) for name, value in vars(server).items()}


def _value(value: Any, server: SMTP) -> Any:
    if hasattr(value, "__func__"):
        owner = "session" if value.__self__ is server else type(value.__self__)
        return ("method", value.__func__.__qualname__.split(".")[-1], owner)
    if isinstance(value, dict):
        return {k: _value(v, server) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_value(v, server) for v in value)
    if isinstance(value, asyncio.StreamReader):
        return ("reader", value._limit)  # type: ignore[attr-defined]
    if isinstance(value, asyncio.Future | asyncio.AbstractEventLoop):
        return type(value)
    if callable(value) and hasattr(value, "__self__"):
        return ("callable", type(value.__self__))
    if type(value).__name__ == "weakref" or type(value).__name__ == "ReferenceType":
        return ("weakref", type(value()))
    return value


def _tls() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    return ctx


OPTIONS: list[dict[str, Any]] = [
    {},
    {"data_size_limit": None, "enable_SMTPUTF8": True, "decode_data": True, "ident": "x"},
    {"auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN"], "timeout": 7},
    {"command_call_limit": 3, "proxy_protocol_timeout": 5.0, "require_starttls": True},
    {"command_call_limit": {"MAIL": 2, "*": 9}, "auth_callback": lambda *a: True},
    {"tls_context": _tls(), "require_starttls": True, "authenticator": lambda *a: None},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("handler_cls", [PlainHandler, RichHandler, OldEhloHandler])
def test_attributes_equal_the_stock_constructor(
    loop: asyncio.AbstractEventLoop, options: dict[str, Any], handler_cls: type
) -> None:
    handler = handler_cls()
    with pytest.warns() if handler_cls is OldEhloHandler else _nothing():
        stock = Stock(handler, hostname="h", loop=loop, **options)
    with pytest.warns() if handler_cls is OldEhloHandler else _nothing():
        lean = Lean(
            handler, hostname="h", loop=loop, tables=SessionTables.of(Lean, handler), **options
        )
    assert _state(lean) == _state(stock)
    assert sorted(lean._auth_methods) == sorted(stock._auth_methods)
    for name, attr in stock._auth_methods.items():
        assert lean._auth_methods[name].is_builtin == attr.is_builtin


def test_tables_for_another_handler_are_not_used(loop: asyncio.AbstractEventLoop) -> None:
    tables = SessionTables.of(Lean, PlainHandler())
    rich = RichHandler()
    lean = Lean(rich, hostname="h", loop=loop, tables=tables)
    stock = Stock(rich, hostname="h", loop=loop)
    assert _state(lean) == _state(stock)


def test_relay_session_equals_one_built_by_aiosmtpd_introspection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    handler = CommandMailHandler.__new__(CommandMailHandler)  # the hooks are what matters here
    kwargs: dict[str, Any] = {"hostname": "h", "loop": loop, "enable_SMTPUTF8": True}
    cached = RelaySMTP(handler, tables=SessionTables.of(RelaySMTP, handler), **kwargs)
    fresh = RelaySMTP(handler, **kwargs)  # no tables: introspected for this connection
    assert _state(cached) == _state(fresh)
    assert set(cached._smtp_methods) >= {"EHLO", "MAIL", "RCPT", "DATA", "AUTH", "STARTTLS"}


def test_unsupported_ehlo_hook_is_refused_like_aiosmtpd(loop: asyncio.AbstractEventLoop) -> None:
    class Bad:
        async def handle_EHLO(self, a: Any, b: Any) -> str:
            return "250 x"

    with pytest.raises(RuntimeError, match="Unsupported EHLO Hook"):
        SMTP(Bad(), hostname="h", loop=loop)
    with pytest.raises(RuntimeError, match="Unsupported EHLO Hook"):
        LeanSMTP(Bad(), hostname="h", loop=loop, tables=SessionTables.of(LeanSMTP, Bad()))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
