"""RelaySMTP's cached MAIL/RCPT address parsing answers exactly as aiosmtpd's own `_getaddr`."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp_front import RelaySMTP


class _Handler:
    pass


@pytest.fixture(scope="module")
def servers() -> tuple[SMTP, RelaySMTP]:
    loop = asyncio.new_event_loop()
    try:
        plain = SMTP(_Handler(), hostname="h", loop=loop)
        ours = RelaySMTP(_Handler(), hostname="h", loop=loop)
        return plain, ours
    finally:
        loop.close()


def _answer(server: SMTP, arg: str) -> object:
    try:
        return server._getaddr(arg)
    except Exception as exc:  # the same failure (type) counts as the same answer
        return type(exc)


_PIECES = st.sampled_from(
    [
        *'<>@." ()\\,:;[]=',
        *("ops", "example.org", "send", "sms.test", " SIZE=500", " BODY=8BITMIME"),
        *("\u0436", "\t", "a", "<>", "@a,@b:", "(comment)", '"quoted local"'),
    ]
)


@settings(max_examples=2000, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_getaddr_equals_aiosmtpd(servers: tuple[SMTP, RelaySMTP], arg: str) -> None:
    plain, ours = servers
    assert _answer(ours, arg) == _answer(plain, arg)
    assert _answer(ours, arg) == _answer(plain, arg)  # and again, from the cache


@pytest.mark.parametrize(
    "arg",
    [
        "<ops@example.org>",
        "<ops@example.org> SIZE=500",
        "ops@example.org",
        "<>",
        "",
        "<bad",
        " <a@b>",
    ],
)
def test_getaddr_examples(servers: tuple[SMTP, RelaySMTP], arg: str) -> None:
    plain, ours = servers
    assert _answer(ours, arg) == _answer(plain, arg)


def test_local_part_limit_still_applies(servers: tuple[SMTP, RelaySMTP]) -> None:
    plain, ours = servers
    try:
        plain.local_part_limit = ours.local_part_limit = 3
        for arg in ("<abcd@example.org>", "<abc@example.org>"):
            assert _answer(ours, arg) == _answer(plain, arg)
        assert ours._getaddr("<abcd@example.org>") == (None, None)
    finally:
        del plain.local_part_limit, ours.local_part_limit
