"""aiosmtpd's SMTP session with the same answers for less CPU per connection, command and mail.

`LeanSMTP` is an `aiosmtpd.smtp.SMTP` (handler hooks, AUTH, STARTTLS, EHLO extensions, PROXY,
all inherited) that replaces five costs measured with py-spy on the bare protocol
(`python -m bench.protocol`), each without changing a byte of what a client sees:

- **the session tables**: aiosmtpd builds its command, AUTH-mechanism and hook tables for every
  connection with `inspect.getmembers`/`dir` over the session and the handler (≈40 % of the
  protocol's CPU with a new connection per mail). `SessionTables.of(cls, handler)` builds them
  once; each connection binds its own methods from them.
- **DATA**: aiosmtpd reads DATA with one `readuntil(b"\\r\\n")` per line; here a mail is read in a
  few large chunks (`readuntil(b".\\r\\n")`: only lines ending in `.` stop it) and checked by
  `relay.smtp_data` with aiosmtpd's own verdicts (size, line length, dot-unstuffing).
- **the idle timer**: aiosmtpd cancels and re-creates a timer handle for every command; here a
  deadline moves and the one timer, when it fires early, is re-armed for the deadline.
- **the EHLO answer**: its lines go out in one write instead of one `send()` each.
- **the command loop**: aiosmtpd sanitizes every command line (two regex matches) for its log
  before the logger drops it; here only when "mail.log" would take the line.

The constructor, `_handle_client` and `smtp_DATA` re-state aiosmtpd 1.4.6's code (pinned by
tests: an aiosmtpd upgrade must re-check them); everything else is aiosmtpd's, called as is.
`tests/integration/test_smtp_session.py` holds the same dialogues against both classes on real
sockets, `tests/unit/test_smtp_session_init.py` compares the constructed state.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import socket
import ssl
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, AnyStr
from warnings import warn

from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import MISSING, SMTP, syntax

from relay.smtp_data import DataBody, DataState, unstuff

# aiosmtpd's own logger: the lines it logs stay the same lines.
log = logging.getLogger("mail.log")

_TERMINATOR_TAIL = b".\r\n"


@dataclass(frozen=True)
class SessionTables:
    """What aiosmtpd's `SMTP.__init__` finds by introspection, found once per class and handler.

    Names of the session's own methods (bound per connection) and the handler's bound methods,
    in aiosmtpd's order."""

    cls: type[SMTP]
    handler: Any
    commands: tuple[tuple[str, str], ...]  # ("MAIL", "smtp_MAIL"), ...
    own_auth: tuple[tuple[str, str], ...]  # ("PLAIN", "auth_PLAIN"), ...
    handler_auth: tuple[tuple[str, Any], ...]  # ("XYZ", handler.auth_XYZ), ...
    hooks: tuple[tuple[str, Any], ...]  # ("DATA", handler.handle_DATA), ...
    ehlo_hook_ver: str | None

    @classmethod
    def of(cls, session_cls: type[SMTP], handler: Any) -> SessionTables:
        def auth_name(mname: str, mfunc: Any) -> str:
            default = mname.replace("auth_", "").replace("__", "-")
            return str(getattr(mfunc, "__auth_mechanism_name__", default))

        own_auth = tuple(
            (auth_name(mname, mfunc), mname)
            for mname, mfunc in inspect.getmembers(session_cls)
            if mname.startswith("auth_")
        )
        handler_auth = tuple(
            (auth_name(mname, mfunc), mfunc)
            for mname, mfunc in inspect.getmembers(handler)
            if mname.startswith("auth_")
        )
        hooks = tuple(
            (m.replace("handle_", ""), getattr(handler, m))
            for m in dir(handler)
            if m.startswith("handle_")
        )
        ehlo_hook = dict(hooks).get("EHLO")
        ehlo_hook_ver: str | None = None
        if ehlo_hook is not None:
            params = len(inspect.signature(ehlo_hook).parameters)
            # aiosmtpd warns about (4) or refuses (other) these at every connection; so do we.
            ehlo_hook_ver = {4: "old", 5: "new"}.get(params, "unsupported")
        commands = tuple(
            (m.replace("smtp_", ""), m) for m in dir(session_cls) if m.startswith("smtp_")
        )
        return cls(session_cls, handler, commands, own_auth, handler_auth, hooks, ehlo_hook_ver)


class LeanSMTP(SMTP):
    """aiosmtpd's `SMTP` (see the module docstring for what differs: cost, not behaviour)."""

    _deadline = 0.0  # the idle timeout: loop time of the last command + timeout
    _armed_for = 0.0  # when the timer handle fires
    _corked: list[bytes] | None = None  # replies held while one EHLO answer is assembled

    def __init__(
        self,
        handler: Any,
        *,
        data_size_limit: int | None = aiosmtpd_smtp.DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: str | None = None,
        ident: str | None = None,
        tls_context: Any = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: Iterable[str] | None = None,
        auth_callback: Any = None,
        command_call_limit: int | dict[str, int] | None = None,
        authenticator: Any = None,
        proxy_protocol_timeout: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        tables: SessionTables | None = None,
    ) -> None:
        # aiosmtpd 1.4.6's SMTP.__init__, statement for statement, except that the tables come
        # from `tables` (built by introspection here only when none are given or they are for
        # another class or handler). tests/unit/test_smtp_session_init.py compares the
        # attributes with the stock constructor's.
        if tables is None or tables.cls is not type(self) or tables.handler is not handler:
            tables = SessionTables.of(type(self), handler)
        self.__ident__ = ident or aiosmtpd_smtp.__ident__
        self.loop = loop if loop else aiosmtpd_smtp.make_loop()
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        self.event_handler = handler
        assert data_size_limit is None or isinstance(data_size_limit, int)
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        if hostname:
            self.hostname = hostname
        else:
            self.hostname = socket.getfqdn()
        self.tls_context = tls_context
        if tls_context:
            if tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
                log.warning(
                    "tls_context.verify_mode not in {CERT_NONE, "
                    "CERT_OPTIONAL}; this might cause client "
                    "connection problems"
                )
            elif tls_context.check_hostname:
                log.warning(
                    "tls_context.check_hostname == True; "
                    "this might cause client connection problems"
                )
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        if not auth_require_tls and auth_required:
            warn(  # noqa: B028 (aiosmtpd's warnings, as they are)
                "Requiring AUTH while not requiring TLS can lead to security vulnerabilities!"
            )
            log.warning("auth_required == True but auth_require_tls == False")
        self._auth_require_tls = auth_require_tls

        if proxy_protocol_timeout is not None:
            if proxy_protocol_timeout <= 0:
                raise ValueError("proxy_protocol_timeout must be > 0")
            elif proxy_protocol_timeout < 3.0:
                log.warning("proxy_protocol_timeout < 3.0")
        self._proxy_timeout = proxy_protocol_timeout

        if authenticator is not None:
            self._authenticator = authenticator
            self._auth_callback = None
        else:
            self._auth_callback = auth_callback or aiosmtpd_smtp.login_always_fail
            self._authenticator = None

        self._auth_required = auth_required

        auth_methods: dict[str, Any] = {}
        for name, mname in tables.own_auth:
            auth_methods[name] = aiosmtpd_smtp._AuthMechAttr(getattr(self, mname), True)
        for name, mfunc in tables.handler_auth:
            auth_methods[name] = aiosmtpd_smtp._AuthMechAttr(mfunc, handler is self)
        self._auth_methods = auth_methods
        for m in auth_exclude_mechanism or []:
            self._auth_methods.pop(m, None)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "Available AUTH mechanisms: "
                + " ".join(
                    m + "(builtin)" if impl.is_builtin else m
                    for m, impl in sorted(self._auth_methods.items())
                )
            )
        self._handle_hooks = dict(tables.hooks)

        if tables.ehlo_hook_ver is None:
            self._ehlo_hook_ver = None
        elif tables.ehlo_hook_ver == "old":
            self._ehlo_hook_ver = "old"
            warn(  # noqa: B028
                "Use the 5-argument handle_EHLO() hook instead of "
                "the 4-argument handle_EHLO() hook; "
                "support for the 4-argument handle_EHLO() hook will be "
                "removed in version 2.0",
                DeprecationWarning,
            )
        elif tables.ehlo_hook_ver == "new":
            self._ehlo_hook_ver = "new"
        else:
            raise RuntimeError("Unsupported EHLO Hook")

        self._smtp_methods = {name: getattr(self, mname) for name, mname in tables.commands}

        if command_call_limit is None:
            self._enforce_call_limit = False
        else:
            self._enforce_call_limit = True
            if isinstance(command_call_limit, int):
                self._call_limit_base = {}
                self._call_limit_default = command_call_limit
            elif isinstance(command_call_limit, dict):
                if not all(map(aiosmtpd_smtp.is_int, command_call_limit.values())):
                    raise TypeError("All command_call_limit values must be int")
                self._call_limit_base = command_call_limit
                self._call_limit_default = command_call_limit.get(
                    "*", aiosmtpd_smtp.CALL_LIMIT_DEFAULT
                )
            else:
                raise TypeError("command_call_limit must be int or Dict[str, int]")

    # -- the command loop ----------------------------------------------------------------------

    async def _handle_client(self) -> None:
        # aiosmtpd 1.4.6's _handle_client, statement for statement, except that the command
        # line is sanitized for the log (two regex matches per command) only when the log
        # would take it: "mail.log" is at WARNING in the relay (relay.logs).
        assert self.session is not None
        log.info("%r handling connection", self.session.peer)

        if self._proxy_timeout is not None:
            self._reset_timeout(self._proxy_timeout)
            log.debug("%r waiting PROXY handshake", self.session.peer)
            self.session.proxy_data = await get_proxy(self._reader)
            if self.session.proxy_data:
                log.info("%r valid PROXY handshake", self.session.peer)
                status = await self._call_handler_hook("PROXY", self.session.proxy_data)
                log.debug("%r handle_PROXY returned %r", self.session.peer, status)
            else:
                log.warning("%r invalid PROXY handshake", self.session.peer)
                status = False
            if status is MISSING or not status:
                log.info("%r rejected by handle_PROXY", self.session.peer)
                assert self.transport is not None
                self.transport.close()
                return
            self._reset_timeout()

        await self.push(f"220 {self.hostname} {self.__ident__}")
        call_limit: MutableMapping[str, int]
        if self._enforce_call_limit:
            call_limit = collections.defaultdict(
                lambda: self._call_limit_default, self._call_limit_base
            )
        else:
            call_limit = {}
        bogus_budget = aiosmtpd_smtp.BOGUS_LIMIT
        reader = self._reader
        sanitized_log = aiosmtpd_smtp.sanitized_log

        while self.transport is not None:
            try:
                try:
                    line: bytes = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # Line too long. Read until end of line before sending 500.
                    await reader.read(error.consumed)
                    while True:
                        try:
                            await reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as e:
                            await reader.read(e.consumed)
                            continue
                    await self.push("500 Command line too long")
                    continue
                if log.isEnabledFor(logging.DEBUG):
                    sanitized_log(log.debug, "_handle_client readline: %r", line)
                line = line.rstrip(b"\r\n")
                if log.isEnabledFor(logging.INFO):
                    sanitized_log(log.info, "%r >> %r", self.session.peer, line)
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode(encoding="ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                arg: str | None
                if not arg_bytes:
                    arg = None
                else:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:
                        arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
                    else:
                        try:
                            arg = str(arg_bytes, encoding="ascii", errors="strict")
                        except UnicodeDecodeError:
                            await self.push("500 Error: strict ASCII mode")
                            continue
                max_sz = (
                    self.command_size_limits[command]
                    if self.session.extended_smtp
                    else self.command_size_limit
                )
                if len(line) > max_sz:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if (
                    self.require_starttls
                    and not self._tls_protocol
                    and command not in aiosmtpd_smtp.ALLOWED_BEFORE_STARTTLS
                ):
                    await self.push("530 Must issue a STARTTLS command first")
                    continue

                if self._enforce_call_limit:
                    budget = call_limit[command]
                    if budget < 1:
                        log.warning("%r over limit for %s", self.session.peer, command)
                        await self.push(f"421 4.7.0 {command} sent too many times")
                        self.transport.close()
                        continue
                    call_limit[command] = budget - 1

                method = self._smtp_methods.get(command)
                if method is None:
                    log.warning("%r unrecognised: %s", self.session.peer, command)
                    bogus_budget -= 1
                    if bogus_budget < 1:
                        log.warning("%r too many bogus commands", self.session.peer)
                        await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                        self.transport.close()
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue

                # Received a valid command, reset the timer.
                self._reset_timeout()
                await method(arg)
            except asyncio.CancelledError:
                log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except ConnectionResetError:
                log.info("%r Connection lost during _handle_client()", self.session.peer)
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner_error:
                    try:
                        log.exception("%r Exception in handle_exception()", self.session.peer)
                        status = f"500 Error: ({inner_error.__class__.__name__}) {inner_error}"
                    except Exception:
                        status = "500 Error: Cannot describe error"
                finally:
                    if isinstance(error, aiosmtpd_smtp.TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)

    # -- the idle timeout: one timer per connection, re-armed only when it fires early --------

    def _reset_timeout(self, duration: float | None = None) -> None:
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or deadline < self._armed_for:
            if handle is not None:
                handle.cancel()
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        self._armed_for = when
        self._timeout_handle = self.loop.call_at(when, self._timeout_cb)

    def _timeout_cb(self) -> None:
        if self._deadline > self._armed_for:  # a command came since the timer was armed
            self._arm(self._deadline)
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    # -- replies ------------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        if self._corked is None:
            await super().push(status)
            return
        if isinstance(status, str):
            response = bytes(status, "utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        assert isinstance(response, bytes)
        self._corked.append(response + b"\r\n")
        assert self.session is not None
        log.debug("%r << %r", self.session.peer, response)

    @syntax("EHLO hostname")  # HELP lists only commands that carry aiosmtpd's syntax text
    async def smtp_EHLO(self, hostname: str) -> None:
        if self._ehlo_hook_ver == "old":  # that hook may push and wait: no corking around it
            await super().smtp_EHLO(hostname)
            return
        corked: list[bytes] = []
        self._corked = corked
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._corked = None
            if corked:
                self._writer.write(b"".join(corked))
        if corked:
            await self._writer.drain()

    # -- DATA ----------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        # aiosmtpd 1.4.6's smtp_DATA with the line loop replaced by `_read_data`.
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return

        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = DataBody(self.data_size_limit, self.line_length_limit)
        try:
            await self._read_data(body)
        except asyncio.CancelledError:
            # The connection got reset during the DATA command.
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        raw = body.finish()
        if raw is None:
            if body.state is DataState.TOO_LONG:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            else:
                await self.push("552 Error: Too much mail data")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return

        original_content = unstuff(raw)
        content: str | bytes
        if self._decode_data:
            if self.enable_SMTPUTF8:
                content = original_content.decode("utf-8", errors="surrogateescape")
            else:
                try:
                    content = original_content.decode("ascii", errors="strict")
                except UnicodeDecodeError:
                    await self.push("500 Error: strict ASCII mode")
                    return
        else:
            content = original_content
        self.envelope.content = content
        self.envelope.original_content = original_content

        if "DATA" in self._handle_hooks:
            status = await self._call_handler_hook("DATA")
        else:
            status = MISSING
            if hasattr(self.event_handler, "process_message"):
                warn(  # noqa: B028
                    "Use handler.handle_DATA() instead of .process_message()",
                    DeprecationWarning,
                )
                assert self.session is not None
                args = (
                    self.session.peer,
                    self.envelope.mail_from,
                    self.envelope.rcpt_tos,
                    self.envelope.content,
                )
                if asyncio.iscoroutinefunction(self.event_handler.process_message):
                    status = await self.event_handler.process_message(*args)
                else:
                    status = self.event_handler.process_message(*args)
                if status is None:
                    status = MISSING
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, body: DataBody) -> None:
        """Feed `body` everything up to the `.` line; leave what follows in the reader.

        `readuntil(b".\\r\\n")` stops at the end of every line ending in `.`; it is the
        terminator when the two octets before it are a CRLF (or it starts the DATA: the CRLF of
        the DATA command precedes it). When the reader's limit overruns without a match, the
        octets it reports as consumed hold no match and are fed as they are (it keeps the last
        two, which may begin one)."""
        reader = self._reader
        before = b"\r\n"  # the last two octets read so far (the DATA command's CRLF at first)
        while self.transport is not None:
            try:
                chunk = await reader.readuntil(_TERMINATOR_TAIL)
            except asyncio.LimitOverrunError as e:
                chunk = await reader.read(e.consumed)
                body.feed(chunk)
                before = (before + chunk)[-2:] if len(chunk) < 2 else chunk[-2:]
                continue
            n = len(chunk)
            if n >= 5:
                preceded = chunk[n - 5 : n - 3]
            elif n == 4:
                preceded = before[1:] + chunk[:1]
            else:
                preceded = before
            if preceded == b"\r\n":
                body.feed(chunk[: n - 3])
                return
            body.feed(chunk)
            before = chunk[-2:]
