"""LeanSMTP answers exactly as stock aiosmtpd `SMTP`: the same dialogues on real sockets.

Each pair of servers (stock, ours) runs with the same options on one event loop in a thread;
the client sends the same bytes to both, cut into the same TCP writes, and reads every reply
until the server closes. Reply bytes and the envelopes handed to the handler must be equal.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.smtp_session import LeanSMTP, SessionTables


class Recorder:
    """Records what each DATA hands the handler; answers with a digest of it, so a difference
    in content shows in the reply too."""

    def __init__(self) -> None:
        self.mails: list[tuple[Any, ...]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        content = envelope.content
        self.mails.append(
            (envelope.mail_from, list(envelope.rcpt_tos), type(content).__name__, content, raw)
        )
        return f"250 OK {len(raw)} {hashlib.sha256(raw).hexdigest()[:12]}"


class SmallStock(SMTP):
    line_length_limit = 60


class SmallLean(LeanSMTP):
    line_length_limit = 60


# (stock class, our class, constructor options)
CONFIGS: list[tuple[type[SMTP], type[LeanSMTP], dict[str, Any]]] = [
    (SmallStock, SmallLean, {"data_size_limit": 300}),
    (SmallStock, SmallLean, {"data_size_limit": 300, "decode_data": True}),
    (SmallStock, SmallLean, {"data_size_limit": 300, "decode_data": True, "enable_SMTPUTF8": True}),
    (SmallStock, SmallLean, {"data_size_limit": None, "enable_SMTPUTF8": True}),
    (SMTP, LeanSMTP, {"data_size_limit": 2000}),
]


@dataclass
class Pair:
    stock_port: int
    lean_port: int
    stock: Recorder = field(default_factory=Recorder)
    lean: Recorder = field(default_factory=Recorder)


@dataclass
class Servers:
    loop: asyncio.AbstractEventLoop
    pairs: list[Pair]


async def _start(
    loop: asyncio.AbstractEventLoop,
    stock_cls: type[SMTP],
    lean_cls: type[LeanSMTP],
    options: dict[str, Any],
    timeout: float = 30,
) -> tuple[Pair, list[asyncio.AbstractServer]]:
    stock_rec, lean_rec = Recorder(), Recorder()
    common = {"hostname": "h.test", "loop": loop, "timeout": timeout, **options}
    tables = SessionTables.of(lean_cls, lean_rec)
    stock = await loop.create_server(lambda: stock_cls(stock_rec, **common), "127.0.0.1", 0)
    lean = await loop.create_server(
        lambda: lean_cls(lean_rec, tables=tables, **common), "127.0.0.1", 0
    )
    pair = Pair(
        stock.sockets[0].getsockname()[1], lean.sockets[0].getsockname()[1], stock_rec, lean_rec
    )
    return pair, [stock, lean]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start_all() -> tuple[list[Pair], list[asyncio.AbstractServer]]:
        pairs, all_servers = [], []
        for stock_cls, lean_cls, options in CONFIGS:
            pair, started = await _start(loop, stock_cls, lean_cls, options)
            pairs.append(pair)
            all_servers += started
        return pairs, all_servers

    pairs, started = asyncio.run_coroutine_threadsafe(start_all(), loop).result(10)
    yield Servers(loop, pairs)
    for server in started:
        loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def talk(port: int, writes: list[bytes], *, pause: float = 0.003) -> bytes:
    """Send the writes (each its own TCP write, a pause between), then read every reply octet
    until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in writes:
            if chunk:
                s.sendall(chunk)
            time.sleep(pause)
        replies = b""
        while True:
            got = s.recv(65536)
            if not got:
                return replies
            replies += got


def both(pair: Pair, writes: list[bytes], pause: float = 0.003) -> tuple[bytes, list[Any]]:
    """The same dialogue against both servers: equal replies and equal envelopes, returned."""
    before_stock, before_lean = len(pair.stock.mails), len(pair.lean.mails)
    stock = talk(pair.stock_port, writes, pause=pause)
    lean = talk(pair.lean_port, writes, pause=pause)
    assert lean == stock
    time.sleep(0.01)  # (the handler ran before its reply was sent: nothing is late)
    assert pair.lean.mails[before_lean:] == pair.stock.mails[before_stock:]
    return stock, pair.stock.mails[before_stock:]


# -- generated dialogues -----------------------------------------------------------------------

_PIECES = st.one_of(
    st.sampled_from(
        [b".", b"..", b"a", b" ", b"\r", b"\n", b"\r\n", b"\xc3\xa9", b"\xff", b"\t", b"Subject: x"]
    ),
    st.integers(0, 70).map(lambda n: b"x" * n),
    st.integers(55, 64).map(lambda n: b"y" * n),  # around the line limit of the small configs
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """The octets after `354`, up to and including the CRLF before the terminator."""
    lines = draw(st.lists(st.lists(_PIECES, max_size=5).map(b"".join), max_size=10))
    if draw(st.booleans()):  # a size around the 300-octet limit of the small configs
        lines += [b"z" * 58] * draw(st.integers(3, 6))
    return b"".join(line + b"\r\n" for line in lines)


@st.composite
def dialogues(draw: st.DrawFn) -> list[bytes]:
    stream = b"EHLO c.test\r\n"
    for _ in range(draw(st.integers(1, 3))):
        stream += b"MAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nDATA\r\n"
        stream += draw(bodies()) + b".\r\n"
        if draw(st.booleans()):
            stream += b"RSET\r\n"
    stream += b"QUIT\r\n"
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=5))))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(dialogues(), st.integers(0, len(CONFIGS) - 1))
def test_generated_dialogues_get_the_same_replies_and_envelopes(
    servers: Servers, writes: list[bytes], config: int
) -> None:
    both(servers.pairs[config], writes)


# -- named cases (each also a regression test for one rule) -------------------------------------


def _mail(body: bytes) -> bytes:
    return b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<d@e.test>\r\nDATA\r\n" + body


@pytest.mark.parametrize(
    "writes",
    [
        pytest.param([_mail(b".\r\nQUIT\r\n")], id="empty-body"),
        pytest.param([_mail(b"..\r\n..x\r\n.\r\nQUIT\r\n")], id="dot-stuffing"),
        pytest.param([_mail(b"a\r\n"), b".", b"\r", b"\nQUIT\r\n"], id="terminator-split-3-ways"),
        pytest.param([_mail(b"a\r"), b"\n.\r\nQUIT\r\n"], id="crlf-split-before-dot"),
        pytest.param([_mail(b"end.\r\n.x.\r\n.\r\nQUIT\r\n")], id="lines-ending-in-dot"),
        pytest.param([_mail(b"bare\nlf\n.\nstill data\r\n.\r\nQUIT\r\n")], id="bare-lf"),
        pytest.param([_mail(b"bare\rcr\r.\r\r\n.\r\nQUIT\r\n")], id="bare-cr"),
        pytest.param([_mail(b"y" * 60 + b"\r\n.\r\nQUIT\r\n")], id="line-at-limit"),
        pytest.param([_mail(b"y" * 61 + b"\r\n.\r\nQUIT\r\n")], id="line-over-limit"),
        pytest.param([_mail(b"y" * 59 + b"\r\n.\r\nQUIT\r\n")], id="line-limit-minus-1"),
        pytest.param([_mail(b"y" * 5000 + b"\r\n.\r\nQUIT\r\n")], id="endless-line"),
        pytest.param([_mail(b"z" * 50 + b"\r\n") * 7 + b".\r\nQUIT\r\n"], id="over-size"),
        pytest.param(
            [_mail(b"z" * 50 + b"\r\n") * 7 + b"y" * 80 + b"\r\n.\r\nQUIT\r\n"], id="size-first"
        ),
        pytest.param(
            [_mail(b"y" * 80 + b"\r\n" + b"z" * 50 + b"\r\n") * 7 + b".\r\nQUIT\r\n"],
            id="line-first",
        ),
        pytest.param(
            [
                _mail(b"a\r\n.\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<p@q.test>\r\nDATA\r\n")
                + b"b\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
            ],
            id="pipelined-two-mails",
        ),
        pytest.param([_mail(b"\xc3\xa9\xff\r\n.\r\nQUIT\r\n")], id="8bit"),
    ],
)
@pytest.mark.parametrize("config", range(len(CONFIGS)))
def test_named_dialogues(servers: Servers, writes: list[bytes], config: int) -> None:
    replies, _ = both(servers.pairs[config], writes)
    assert replies.startswith(b"220 h.test")
    assert replies.endswith(b"221 Bye\r\n")


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"\r\nNOOP\r\n", id="empty-line"),
        pytest.param(b"\xff\xfe x\r\n", id="non-ascii-command"),
        pytest.param(b"EHLO c\r\nMAIL FROM:<\xc3\xa9@x.test>\r\n", id="non-ascii-argument"),
        pytest.param(b"NOOP " + b"x" * 600 + b"\r\n", id="command-over-512"),
        pytest.param(b"X" * 3000 + b"\r\nNOOP\r\n", id="command-over-reader-limit"),
        pytest.param(b"A\r\nB\r\nC\r\nD\r\nE\r\nNOOP\r\n", id="bogus-commands-close"),
        pytest.param(b"HELO c\r\nMAIL FROM:<a@b.test> SIZE=10\r\n", id="helo-params"),
        pytest.param(
            b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=999999 BODY=8BITMIME\r\n", id="size-over"
        ),
        pytest.param(
            b"EHLO c\r\nMAIL FROM:<a@b.test> SMTPUTF8 BODY=8BITMIME\r\nMAIL FROM:<c@d.test>\r\n",
            id="smtputf8-nested-mail",
        ),
        pytest.param(b"EHLO c\r\nDATA\r\nRCPT TO:<x@y.test>\r\n", id="out-of-order"),
        pytest.param(
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA x\r\nRSET x\r\n",
            id="arguments-refused",
        ),
        pytest.param(
            b"HELP\r\nHELP MAIL\r\nEHLO c\r\nHELP RCPT\r\nHELP NOPE\r\nVRFY <a@b.test>\r\n"
            b"VRFY\r\nEXPN x\r\nNOOP hi\r\nAUTH PLAIN\r\nSTARTTLS\r\nQUIT x\r\n",
            id="other-commands",
        ),
        pytest.param(b"EHLO\r\nHELO\r\nMAIL FROM:<a@b.test>\r\n", id="no-hostname"),
    ],
)
@pytest.mark.parametrize("config", [0, 2])
def test_command_dialogues(servers: Servers, stream: bytes, config: int) -> None:
    replies, _ = both(servers.pairs[config], [stream + b"QUIT\r\n"])
    assert replies.startswith(b"220 h.test")


def test_dot_stuffing_and_empty_body_decoded(servers: Servers) -> None:
    _, mails = both(servers.pairs[0], [_mail(b"..a\r\n.b\r\nc.\r\n.\r\nQUIT\r\n")])
    assert mails[0][4] == b".a\r\nb\r\nc.\r\n"
    _, mails = both(servers.pairs[0], [_mail(b".\r\nQUIT\r\n")])
    assert mails[0][4] == b""


def test_too_long_and_too_big_are_answered_after_the_terminator(servers: Servers) -> None:
    replies, mails = both(servers.pairs[0], [_mail(b"y" * 61 + b"\r\n.\r\nQUIT\r\n")])
    assert b"500 Line too long (see RFC5321 4.5.3.1.6)\r\n221 Bye" in replies and not mails
    replies, mails = both(servers.pairs[0], [_mail(b"z" * 50 + b"\r\n") * 7 + b".\r\nQUIT\r\n"])
    assert b"552 Error: Too much mail data\r\n221 Bye" in replies and not mails


def test_client_gone_mid_data_gets_nothing_and_the_server_goes_on(servers: Servers) -> None:
    pair = servers.pairs[0]
    results = []
    for port in (pair.stock_port, pair.lean_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(_mail(b"partial\r\n"))
            got = b""
            while b"354" not in got:
                got += s.recv(65536)
            s.sendall(b"more\r\n.")  # almost a terminator
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                got += chunk
            results.append(got)
    assert results[0] == results[1]
    assert results[1].endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    before = len(pair.lean.mails)
    both(pair, [_mail(b"after\r\n.\r\nQUIT\r\n")])
    assert len(pair.lean.mails) == before + 1


def test_idle_timeout_closes_at_the_same_time(servers: Servers) -> None:
    """The timeout counts from the last command, as aiosmtpd's per-command timer does."""
    loop = servers.loop
    pair, started = asyncio.run_coroutine_threadsafe(
        _start(loop, SMTP, LeanSMTP, {}, timeout=0.4), loop
    ).result(5)
    try:
        for port in (pair.stock_port, pair.lean_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.recv(1024)
                began = time.monotonic()
                for _ in range(3):  # activity keeps it open past the first 0.4 s
                    time.sleep(0.25)
                    s.sendall(b"NOOP\r\n")
                    assert s.recv(1024) == b"250 OK\r\n"
                last = time.monotonic()
                assert s.recv(1024) == b""  # closed by the server
                closed = time.monotonic()
            assert last - began > 0.7
            assert 0.3 < closed - last < 0.65, (port, closed - last)
    finally:
        for server in started:
            loop.call_soon_threadsafe(server.close)
