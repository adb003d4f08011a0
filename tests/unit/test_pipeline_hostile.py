"""Hostile input: the pipeline returns jobs or a coded rejection, never another exception."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import AccountConfig
from relay.errors import ErrorCode
from relay.passwords import PasswordChecker
from relay.pipeline import Envelope, IntakeRules, Outcome, process_command_mail
from relay.sms.model import SmsProfile

RULES = IntakeRules(
    accounts={
        "alex": AccountConfig(
            login="alex", password="psw", senders=["Alex"], groups={"1": ["+79161234567"]}
        )
    },
    profile=SmsProfile(),
    registered_delivery=True,
    validity=86400,
    reply_sender="relay@sms.test",
    hostname="sms.test",
)
CHECKER = PasswordChecker()
ENV = Envelope("k", "ops@example.org", "send@sms.test", "192.0.2.1")


def run(raw: bytes) -> Outcome:
    return process_command_mail(
        raw, ENV, RULES, CHECKER, now=1_790_000_000.0, new_id=lambda: "1", next_ref=lambda p: 1
    )


def check(o: Outcome) -> None:
    if o.accepted:
        assert o.request.jobs and o.parts == len(o.request.jobs)
    else:
        assert isinstance(o.code, ErrorCode) and o.request.jobs == ()


@settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(run(raw))


field = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
flags = st.lists(
    st.one_of(st.just(""), st.sampled_from(["0", "1", "2", "9", "-1", "x", "12"])), max_size=5
)


@settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    psw=st.sampled_from(["psw", "bad", ""]),
    id_=field,
    time_=st.sampled_from(
        ["", "0", "+5", "1-23", "0123456789", "31.12.29 23.59", "garbage", "01.01.99 99.99"]
    ),
    tz=st.sampled_from(["", "0", "-5", "+2", "99", "x"]),
    flags=flags,
    phones=st.lists(
        st.sampled_from(["79161234567", "+44 20 7946 0000", "8916", "G1", "G9", "abc", ""]),
        max_size=4,
    ),
    mes=st.text(max_size=1200),
    charset=st.sampled_from(["utf-8", "koi8-r", "windows-1251", "x-unknown", "utf-7", ""]),
)
def test_well_formed_but_odd_commands(
    psw: str,
    id_: str,
    time_: str,
    tz: str,
    flags: list[str],
    phones: list[str],
    mes: str,
    charset: str,
) -> None:
    body = f"alex:{psw}:{id_}:{time_},{tz}:{','.join(flags)}:{','.join(phones)}:{mes}"
    declared = f"; charset={charset}" if charset else ""
    raw = f"Content-Type: text/plain{declared}\r\n\r\n".encode() + body.encode(
        "utf-8", "surrogatepass"
    )
    check(run(raw))


def test_nul_bytes_long_lines_nested_multipart_broken_boundary() -> None:
    cases = [
        b"\r\n\x00alex:psw::::79161234567:\x00hi",
        b"\r\nalex:psw::::79161234567:" + b"y" * 5000,
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain\r\n\r\nx",
        b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nalex:psw::::79161234567:hi",
    ]
    nested = b"alex:psw::::79161234567:deep"
    for depth in range(200):
        nested = (
            f"Content-Type: multipart/mixed; boundary=b{depth}\r\n\r\n--b{depth}\r\n".encode()
            + nested
            + f"\r\n--b{depth}--\r\n".encode()
        )
    cases.append(nested)
    for raw in cases:
        check(run(raw))


def test_ten_thousand_recipient_list_is_linear_and_whole() -> None:
    lines = "\n".join(f"+7916{i:07d}:msg {i}" for i in range(10_000))
    started = time.perf_counter()
    o = run(f"\r\nalex:psw:::,,,1::\n{lines}".encode())
    elapsed = time.perf_counter() - started
    assert o.accepted, o.detail
    assert len(o.request.jobs) == 10_000 and o.answer == "OK - 10000 SMS, ID - 1"
    assert len({j.phone for j in o.request.jobs}) == 10_000
    assert elapsed < 10, elapsed  # measured ~0.3 s; a quadratic parser would take minutes
