"""The pure pipeline: mail bytes → the request to spool, or a coded rejection (SPEC §2–§6)."""

from __future__ import annotations

import email
import email.policy

import pytest

from relay.config import AccountConfig
from relay.errors import ErrorCode
from relay.passwords import PasswordChecker, hash_password
from relay.pipeline import Envelope, IntakeRules, Outcome, process_command_mail
from relay.sms.model import SmsProfile

NOW = 1_790_000_000.0
HASHED = hash_password("hashed-pw")


def rules(**account: object) -> IntakeRules:
    acc = AccountConfig(
        login="alex",
        password="psw",
        senders=["Alex"],
        api_key="key-123",
        **account,  # type: ignore[arg-type]
    )
    hashed = AccountConfig(login="bob", password=HASHED, senders=["Bob"])
    return IntakeRules(
        accounts={"alex": acc, "bob": hashed},
        profile=SmsProfile(),
        registered_delivery=True,
        validity=86400,
        reply_sender="relay@sms.test",
        hostname="sms.test",
    )


def run(
    body: str, *, mail_from: str = "ops@example.org", headers: str = "", **acc: object
) -> Outcome:
    raw = (
        f"From: Ops <ops@example.org>\r\nMessage-ID: <m1@example.org>\r\n{headers}"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()
    ids = iter(str(n) for n in range(1000, 2000))
    return process_command_mail(
        raw,
        Envelope("k", mail_from, "send@sms.test", "192.0.2.1"),
        rules(**acc),
        PasswordChecker(),
        now=NOW,
        new_id=lambda: next(ids),
        next_ref=lambda phone: 7,
    )


def reply_text(o: Outcome) -> str | None:
    if not o.request.mails:
        return None
    msg = email.message_from_bytes(o.request.mails[0].data, policy=email.policy.default)
    return str(msg.get_body(("plain",)).get_content()).strip()  # type: ignore[union-attr]


def test_accepted_single_builds_jobs_and_ok_reply_when_test_1() -> None:
    o = run("alex:psw:77::,,Alex,1:+79161234567,89161234568:hello")
    assert o.accepted and o.parts == 2
    assert [j.phone for j in o.request.jobs] == ["+79161234567", "+79161234568"]
    job = o.request.jobs[0]
    assert job.submit.destination_addr == "79161234567"
    assert job.submit.short_message == b"hello" and job.submit.data_coding == 0
    assert (job.submit.source_addr, job.submit.source_addr_ton) == ("Alex", 5)
    assert job.not_before == NOW and job.expires_at == NOW + 86400
    assert reply_text(o) == "OK - 2 SMS, ID - 77"


def test_no_reply_on_success_when_test_0() -> None:
    o = run("alex:psw::::79161234567:hello")
    assert o.accepted and o.request.mails == ()
    assert o.request_id == "1000"


def test_long_text_counts_parts_times_recipients() -> None:
    o = run("alex:psw:::,,,1:79161234567,79161234568:" + "x" * 161)
    assert o.parts == 4 and reply_text(o) == "OK - 4 SMS, ID - 1000"


def test_api_key_and_hashed_password_accepted() -> None:
    assert run("alex:key-123::::79161234567:hi").accepted
    assert run("bob:hashed-pw::::79161234567:hi").accepted
    assert run("bob:wrong::::79161234567:hi").code is ErrorCode.AUTH


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        ("alex:nope::::79161234567:hi", ErrorCode.AUTH, "ERROR = 2 (invalid login or password)"),
        ("nobody:psw::::79161234567:hi", ErrorCode.AUTH, "ERROR = 2 (invalid login or password)"),
        ("alex:psw::::79161234567:", ErrorCode.PARAMETERS, "ERROR = 1 (parameters error)"),
        (
            "alex:psw::::79161234567:" + "y" * 1001,
            ErrorCode.PARAMETERS,
            "ERROR = 1 (parameters error)",
        ),
        ("alex:psw:::,99:79161234567:hi", ErrorCode.PARAMETERS, "ERROR = 1 (parameters error)"),
        (
            "alex:psw::99999999999::79161234567:hi",
            ErrorCode.DATE_FORMAT,
            "ERROR = 5 (invalid date format)",
        ),
        (
            "alex:psw::::12:hi",
            ErrorCode.PHONE_FORMAT,
            "ERROR = 7 (invalid phone number format), ID - 1000",
        ),
        (
            "alex:psw:::,,Other:79161234567:hi",
            ErrorCode.PROHIBITED,
            "ERROR = 6 (message is prohibited), ID - 1000",
        ),
        ("not a command", ErrorCode.PARAMETERS, "ERROR = 1 (parameters error)"),
    ],
)
def test_rejections_carry_code_and_reply(body: str, code: ErrorCode, text: str) -> None:
    o = run(body)
    assert o.code is code
    assert o.request.jobs == () and o.request.error == int(code)
    assert reply_text(o) == text
    assert "psw" not in o.request.mails[0].data.decode()


def test_no_reply_to_null_sender_or_auto_submitted() -> None:
    assert run("alex:nope::::79161234567:hi", mail_from="").request.mails == ()
    auto = run("alex:nope::::79161234567:hi", headers="Auto-Submitted: auto-generated\r\n")
    assert auto.request.mails == ()
    bulk = run("alex:nope::::79161234567:hi", headers="Precedence: bulk\r\n")
    assert bulk.request.mails == ()


def test_reply_threads_to_request() -> None:
    o = run("alex:nope::::79161234567:hi")
    msg = email.message_from_bytes(o.request.mails[0].data, policy=email.policy.default)
    assert msg["In-Reply-To"] == "<m1@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"] == "ops@example.org"
    assert msg["Message-ID"].endswith("@sms.test>")


def test_scheduled_time_sets_not_before() -> None:
    # `+30` minutes from now (SPEC §4 time form `+<minutes>`).
    o = run("alex:psw::+30::79161234567:later")
    assert o.request.jobs[0].not_before == NOW + 30 * 60


def test_formats_generic_upstream_cannot_carry_mms() -> None:
    o = run("alex:psw:::,7:79161234567:__MMS__: pic")
    assert o.code is ErrorCode.UNDELIVERABLE
