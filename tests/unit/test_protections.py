"""SPEC §5 protections, pure tier: policy rules (6, 8), fingerprints, what counts for the IP block,
and the pipeline's part (order of checks, the admission it hands the spool)."""

from __future__ import annotations

import email
import email.policy

import pytest
from pydantic import ValidationError

from relay.config import AccountConfig, LimitsConfig
from relay.errors import ErrorCode, RejectError
from relay.passwords import PasswordChecker
from relay.pipeline import Envelope, IntakeRules, Outcome, blocked_outcome, process_command_mail
from relay.protections import (
    Policy,
    check_destinations,
    check_text,
    counts_as_ip_failure,
    fingerprint,
    normalize_destination,
)
from relay.sms.model import SmsProfile

NOW = 1_790_000_000.0


def account(**kw: object) -> AccountConfig:
    return AccountConfig(login="alex", password="psw", senders=["Alex"], **kw)  # type: ignore[arg-type]


def policy(**kw: object) -> Policy:
    return Policy.from_limits(LimitsConfig(**kw))  # type: ignore[arg-type]


def code_of(fn: object, *args: object) -> ErrorCode | None:
    try:
        fn(*args)  # type: ignore[operator]
    except RejectError as exc:
        return exc.code
    return None


# -- stateless policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+79991234567", "+79991234567"),
        ("79991234567", "+79991234567"),
        (" 7 (999) 123-45-67 ", "+79991234567"),
        ("+7", "+7"),
        ("Ops@Example.ORG", "ops@example.org"),
    ],
)
def test_normalize_destination(raw: str, expected: str) -> None:
    assert normalize_destination(raw) == expected


@pytest.mark.parametrize(
    ("texts", "patterns", "code"),
    [
        (["buy cheap viagra now"], [r"viagra"], ErrorCode.PROHIBITED),
        (["BUY CHEAP VIAGRA"], [r"viagra"], ErrorCode.PROHIBITED),  # case-insensitive
        (["Казино Вулкан"], [r"казино"], ErrorCode.PROHIBITED),  # Unicode case folding
        (["ok", "second entry: casino"], [r"\bcasino\b"], ErrorCode.PROHIBITED),  # any entry
        (["casinos"], [r"\bcasino\b"], None),
        (["server down"], [r"viagra", r"casino"], None),
        (["anything"], [], None),
    ],
)
def test_deny_patterns(texts: list[str], patterns: list[str], code: ErrorCode | None) -> None:
    assert code_of(check_text, texts, policy(deny_patterns=patterns)) == code


@pytest.mark.parametrize(
    ("dests", "prefixes", "stop", "code"),
    [
        (["+79991234567"], [], [], None),
        (["+79991234567"], ["+7"], [], None),
        (["+79991234567"], ["7"], [], None),  # a prefix written without '+'
        (["+380501234567"], ["+7"], [], ErrorCode.UNDELIVERABLE),
        (["+79991234567", "+380501234567"], ["+7", "+375"], [], ErrorCode.UNDELIVERABLE),
        (["+380501234567"], ["+7", "+380"], [], None),
        (["+79991234567"], [], ["7 999 123-45-67"], ErrorCode.UNDELIVERABLE),
        (["+79991234568"], [], ["+79991234567"], None),
        (["ops@example.org"], ["+7"], [], None),  # format 8: prefixes are for numbers
        (["Ops@Example.org"], [], ["ops@example.org"], ErrorCode.UNDELIVERABLE),
    ],
)
def test_prefixes_and_stop_list(
    dests: list[str], prefixes: list[str], stop: list[str], code: ErrorCode | None
) -> None:
    acc = account(allowed_prefixes=prefixes)
    assert code_of(check_destinations, dests, acc, policy(stop_list=stop)) == code


def test_config_refuses_broken_patterns_codes_and_networks() -> None:
    with pytest.raises(ValidationError, match="deny pattern"):
        LimitsConfig(deny_patterns=["(unclosed"])
    with pytest.raises(ValidationError, match="except 4"):
        LimitsConfig(ip_fail_codes=[2, 4])
    with pytest.raises(ValidationError, match="not an IP"):
        LimitsConfig(ip_block_exempt=["localhost"])


# -- fingerprints ------------------------------------------------------------------------------


def fp(
    login: str = "alex",
    messages: list[tuple[list[str], str]] | None = None,
    *,
    sender: str = "Alex",
    fmt: int = 0,
    channel: str = "",
    time: str = "",
) -> str:
    msgs = messages if messages is not None else [(["+79991234567", "+79990000001"], "disk full")]
    return fingerprint(login, msgs, sender=sender, fmt=fmt, channel=channel, time=time)


def test_fingerprint_identity() -> None:
    base = fp()
    assert base == fp("ALEX")  # logins are case-insensitive
    assert base == fp(messages=[(["+79990000001", "+79991234567"], "disk full")])  # phone order
    a, b = (["+79991234567"], "one"), (["+79990000001"], "two")
    assert fp(messages=[a, b]) == fp(messages=[b, a])  # list entries in any order
    different = {
        fp("bob"),
        fp(messages=[(["+79991234567"], "disk full")]),
        fp(messages=[(["+79991234567", "+79990000001"], "disk full!")]),
        fp(sender="Other"),
        fp(fmt=1),
        fp(channel="VIBER"),
        fp(time="+5,"),
    }
    assert base not in different and len(different) == 7


# -- the IP block's failure count ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "ip", "counted"),
    [
        (ErrorCode.AUTH, "192.0.2.1", True),
        (ErrorCode.PARAMETERS, "192.0.2.1", True),
        (ErrorCode.PHONE_FORMAT, "192.0.2.1", True),
        (ErrorCode.FUNDS, "192.0.2.1", True),
        (ErrorCode.DUPLICATE, "192.0.2.1", False),  # honest retries must not block a server
        (ErrorCode.IP_BLOCKED, "192.0.2.1", False),  # would never end
        (ErrorCode.AUTH, "10.1.2.3", False),  # exempt network
        (ErrorCode.AUTH, "", False),
    ],
)
def test_what_counts_towards_an_ip_block(code: ErrorCode, ip: str, counted: bool) -> None:
    limits = LimitsConfig(ip_block_exempt=["10.0.0.0/8"])
    assert counts_as_ip_failure(code, ip, limits, Policy.from_limits(limits)) is counted


# -- through the pipeline --------------------------------------------------------------------


def rules(limits: LimitsConfig | None = None, **acc: object) -> IntakeRules:
    return IntakeRules(
        accounts={"alex": account(**acc)},
        profile=SmsProfile(),
        registered_delivery=True,
        validity=86400,
        reply_sender="relay@sms.test",
        hostname="sms.test",
        limits=limits or LimitsConfig(),
    )


def run(body: str, r: IntakeRules, *, ip: str = "192.0.2.1") -> Outcome:
    raw = (
        "From: Ops <ops@example.org>\r\nMessage-ID: <m1@example.org>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
    ids = iter(str(n) for n in range(1000, 2000))
    return process_command_mail(
        raw,
        Envelope("k", "ops@example.org", "send@sms.test", ip),
        r,
        PasswordChecker(),
        now=NOW,
        new_id=lambda: next(ids),
        next_ref=lambda phone: 7,
    )


def reply(o: Outcome) -> str:
    [mail] = o.request.mails
    msg = email.message_from_bytes(mail.data, policy=email.policy.default)
    return str(msg["Subject"])


def test_policy_order_fields_before_policy() -> None:
    r = rules(LimitsConfig(deny_patterns=["casino"], stop_list=["+79991234567"]))
    # a malformed phone (7) is found before the prohibited text (6)
    assert run("alex:psw:::::12:casino", r).code == ErrorCode.PHONE_FORMAT
    # an unregistered sender and a prohibited text are both 6
    assert run("alex:psw:::,,Nobody:79990000001:hello", r).code == ErrorCode.PROHIBITED
    # prohibited text (6) before a stop-listed number (8)
    assert run("alex:psw::::79991234567:casino", r).code == ErrorCode.PROHIBITED
    o = run("alex:psw:42:::79991234567:hello", r)
    assert o.code == ErrorCode.UNDELIVERABLE
    assert reply(o) == "ERROR = 8 (message cannot be delivered to the number), ID - 42"
    assert not o.request.jobs and o.request.admission is None


def test_list_mode_is_refused_as_a_whole() -> None:
    r = rules(allowed_prefixes=["+7"])
    o = run("alex:psw:::::\n79990000001:one\n380501234567:two", r)
    assert o.code == ErrorCode.UNDELIVERABLE and not o.request.jobs
    assert run("alex:psw:::::\n79990000001:one\n79990000002:two", r).accepted


def test_deny_pattern_reply_carries_the_id() -> None:
    o = run(
        "alex:psw:77:::79990000001:Best CASINO in town",
        rules(LimitsConfig(deny_patterns=["casino"])),
    )
    assert o.code == ErrorCode.PROHIBITED
    assert reply(o) == "ERROR = 6 (message is prohibited), ID - 77"


def test_accepted_request_carries_its_admission() -> None:
    r = rules(balance=100)
    o = run("alex:psw:::::\n79990000001,79990000002:one\n79990000001:" + "x" * 200, r)
    assert o.accepted
    adm = o.request.admission
    assert adm is not None and o.request.limits is r.limits
    # one flood count per message and subscriber; 1 + 1 + 2 parts
    assert sorted(adm.destinations) == ["+79990000001", "+79990000001", "+79990000002"]
    assert adm.parts == 4 == o.parts
    assert adm.balance == 100
    assert len(adm.fingerprint) == 64


def test_identical_requests_share_a_fingerprint() -> None:
    r = rules()

    def fp_of(body: str) -> str:
        adm = run(body, r).request.admission
        assert adm is not None
        return adm.fingerprint

    base = fp_of("alex:psw:1:::79990000001,89990000002:disk full")
    assert base == fp_of("alex:psw:2:::89990000002;+79990000001:disk full")  # id is not identity
    assert base == fp_of("alex:psw:3:0::79990000001,79990000002:disk full")  # time 0 is now
    assert base != fp_of("alex:psw:1:::79990000001,79990000002:disk full!")
    assert base != fp_of("alex:psw:1:+5::79990000001,79990000002:disk full")
    assert base != fp_of("alex:psw:1::,1:79990000001,79990000002:disk full")  # format


def test_rejections_say_whether_they_count_for_the_ip_block() -> None:
    r = rules(LimitsConfig(ip_block_exempt=["127.0.0.0/8"]))
    bad_password = run("alex:wrong::::79990000001:hi", r)
    assert bad_password.code == ErrorCode.AUTH and bad_password.request.ip_failure
    assert bad_password.request.limits is r.limits
    assert not run("alex:wrong::::79990000001:hi", r, ip="127.0.0.1").request.ip_failure


def test_blocked_outcome() -> None:
    raw = b"From: x@example.org\r\nMessage-ID: <b@x>\r\n\r\nalex:psw::::79990000001:hi\r\n"
    o = blocked_outcome(
        raw,
        Envelope("k", "x@example.org", "send@sms.test", "192.0.2.7"),
        rules(),
        now=NOW,
        request_id="9",
    )
    assert o.code == ErrorCode.IP_BLOCKED and not o.request.jobs
    assert o.request.error == 4 and not o.request.ip_failure
    assert reply(o) == "ERROR = 4 (IP address temporarily blocked)"
