"""Issue 6 / SPEC §1, §2.5: routing, the e-mail-to-SMS text, who may send, the rate guards."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.auth import AccountAuthenticator
from relay.config import AccountConfig
from relay.email2sms import collapse, cut_to_parts, process_email2sms, sms_text, strip_body
from relay.errors import ErrorCode
from relay.mail import parse_mail
from relay.passwords import PasswordChecker
from relay.pipeline import Envelope, IntakeRules
from relay.rates import Limits, RateGuard
from relay.routing import (
    AUTH_REQUIRED,
    UNKNOWN_RECIPIENT,
    AccountRoute,
    Client,
    CommandRoute,
    PhoneRoute,
    Refused,
    route_recipient,
    sender_matches,
)
from relay.sms import build_parts, count_parts
from relay.sms.alphabet import Alphabet, decode
from relay.sms.model import SmsProfile

SAMPLES = Path(__file__).parent.parent / "samples" / "email2sms"
PROFILE = SmsProfile()

# sample → the exact SMS text with the default template and max_parts = 3 (cut marker for cron).
EXPECTED = {
    "alertmanager_html_only.eml": (
        "[FIRING:1] (DiskFull db1:9100 critical)\n1 alert for\nView in Alertmanager\n[1] Firing\n"
        "Labels\nalertname = DiskFull\ninstance = db1:9100\nseverity = critical\nAnnotations\n"
        "description = Only 1.2 GiB left on /var.\nsummary = Disk /var is 97% full on db1\n"
        "Source\nSent by Alertmanager"
    ),
    # Debian cron 3.0pl1 in the C locale: UTF-8 output labelled ANSI_X3.4-1968 (= ASCII).
    "cron_debian_c_locale_utf8.eml": (
        "Cron <root@backup1> /usr/local/bin/backup.sh\nОшибка: резервная копия db1 не создана\n"
        "rsync: connection unexpectedly closed (0 bytes received so far) [Receiver]\n"
        "rsync error: error in rsync protocol data…"
    ),
    "cron_mailx_cut_marker.eml": (
        "Cron <root@backup1> /usr/local/bin/backup.sh\nbackup.sh: rsync failed with code 23\n"
        "(partial transfer)"
    ),
    "grafana_alternative_qp.eml": (
        "[FIRING:1] HighLatency Prod (api – checkout)\n1 firing alert instance\nGROUPED BY\n"
        "alertname=HighLatency\n1 firing instances\nFiring HighLatency\n"
        "View alert [https://grafana.example.org/alerting/grafana/c1d…"
    ),
    "mutt_reply_signature.eml": (
        "Re: UPS on battery\nGenerator started, load moved.\nBack on mains in 20 min."
    ),
    # bsd-mailx run by Nagios' stock notify-host-by-email with no locale: same mislabel as cron.
    "nagios_bsd_mailx_c_locale_host.eml": (
        "** PROBLEM Host Alert: db1 is DOWN **\n***** Nagios *****\nNotification Type: PROBLEM\n"
        "Host: db1 (Сервер БД, стойка 4)\nState: DOWN\nAddress: 10.0.0.5\n"
        "Info: PING CRITICAL - Packet loss = 100%\nDate/Time:…"
    ),
    "zabbix_base64_utf8_ru.eml": (
        "Проблема: Загрузка CPU на db1 выше 90%\nПроблема началась в 10:12:03 2025.03.03\n"
        "Имя проблемы: Загрузка CPU на db1 выше 90%\nУзел сети: db1\nВажность: Высокая\n"
        "Оперативные данные: 97.3 %\nИсходный ID…"
    ),
    # Zabbix "HTML" media type: text/html in base64, the subject in four RFC 2047 words.
    "zabbix_html_base64_long_subject.eml": (
        "Проблема: Свободное место на /var сервера db1.prod.example.org меньше 5% "
        "(осталось 1.2 ГБ)\nПроблема началась в 10:12:03 2025.03.03\n"
        "Имя проблемы: Свободное место на /var сервера db1.prod.example.org…"
    ),
}


def test_sample_corpus_is_complete() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_text_exactly(name: str) -> None:
    mail = parse_mail((SAMPLES / name).read_bytes())
    text = sms_text(
        mail,
        template="{subject}\n{body}",
        cut_markers=["===== LOG"],
        max_parts=3,
        profile=PROFILE,
    )
    assert text == EXPECTED[name]
    assert count_parts(text) <= 3


def test_alertmanager_sample_is_html_only_multipart_alternative() -> None:
    msg = email.message_from_bytes(
        (SAMPLES / "alertmanager_html_only.eml").read_bytes(), policy=email.policy.default
    )
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/html"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "markers", "expected"),
    [
        ("text\n-- \nsig", (), "text"),
        ("text\n--\nnot a signature", (), "text\n--\nnot a signature"),  # RFC 3676: "-- " only
        ("a\nSent from my iPhone\nb", ("Sent from my",), "a"),
        ("ok\n-----Original Message-----\nFrom: x\nold", (), "ok"),
        ("ok\n\n-------- Пересылаемое сообщение --------\nold", (), "ok\n"),
        ("new\nOn Mon, Ivan wrote:\n> old\n> older\nafter", (), "new\nafter"),
        ("Принято\n3 марта Иван писал(а):\n>старое", (), "Принято"),
        ("ok\nпн, 3 мар. 2025 г. в 09:12, Z <z@example.org>:\n> q", (), "ok"),
        ("threshold:\n> 90%", (), "threshold:"),  # no address, no "wrote": kept
        # Lines that merely look like mail headers are alert content, not a quoted reply.
        ("From: db1 monitoring\nSent: 5 events\nDate: today", (), None),
    ],
)
def test_strip_body(body: str, markers: tuple[str, ...], expected: str | None) -> None:
    assert strip_body(body, markers) == (body if expected is None else expected)


def test_collapse_spaces_and_blank_lines() -> None:
    assert collapse("  a \t b  \n\n\n\u00a0\n c  ") == "a b\nc"


def _mail(subject: str, body: str, ctype: str = "text/plain") -> bytes:
    return (
        f"From: z@example.org\r\nTo: alex@sms.test\r\nSubject: {subject}\r\n"
        f"Content-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}"
    ).encode()


def test_template_is_plain_substitution_not_format() -> None:
    mail = parse_mail(_mail("Disk", "full"))
    text = sms_text(
        mail,
        template="[{subject}] {body} {subject.__class__} {x} from {from}",
        cut_markers=(),
        max_parts=3,
        profile=PROFILE,
    )
    assert text == "[Disk] full {subject.__class__} {x} from z@example.org"


def test_cut_gsm_text_ends_in_three_dots_and_fills_three_parts() -> None:
    text = cut_to_parts("word " * 200, 3, PROFILE)
    assert text.endswith("word...")
    assert count_parts(text) == 3
    assert len(text) == 457  # 3 × 153 = 459 septets; 454 (91 words) + "..."


def test_cut_ucs2_text_ends_in_ellipsis() -> None:
    text = cut_to_parts("слово " * 100, 2, PROFILE)
    assert text.endswith("слово…")
    assert count_parts(text) == 2
    assert len(text) == 132  # 2 × 67 = 134 units; 131 (22 words) + "…"


def test_cut_to_one_part_gsm() -> None:
    assert cut_to_parts("x" * 200, 1, PROFILE) == "x" * 157 + "..."


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=1500), st.integers(1, 4))
def test_cut_always_fits_and_is_a_prefix(text: str, parts: int) -> None:
    out = cut_to_parts(text, parts, PROFILE)
    assert count_parts(out) <= parts
    assert len(out) <= 1000
    if out != text:
        stem = out.removesuffix("…").removesuffix("...")
        assert text.startswith(stem)


# ---- routing ---------------------------------------------------------------------------

ACCOUNTS = {
    "alex": AccountConfig(login="alex", password="pw", email2sms=["+79990000001"]),
    "nophones": AccountConfig(login="nophones", password="pw"),
    "mon": AccountConfig(
        login="mon",
        password="pw",
        email2sms=["+79990000002"],
        allowed_senders=["*@monitoring.example.org"],
        allowed_ips=["10.1.0.0/16"],
    ),
}
DOMAINS = frozenset({"sms.test"})


def route(addr: str, mail_from: str = "x@example.org", ip: str = "192.0.2.1", auth: str = ""):  # type: ignore[no-untyped-def]
    return route_recipient(
        addr, domains=DOMAINS, accounts=ACCOUNTS, client=Client(mail_from, ip, auth)
    )


def test_routing_table() -> None:
    assert route("send@sms.test") == CommandRoute()
    assert route("SEND@SMS.TEST") == CommandRoute()
    assert route("alex@sms.test") == AccountRoute("alex")
    assert route("Alex@sms.test") == AccountRoute("alex")
    assert route("nophones@sms.test") == Refused(UNKNOWN_RECIPIENT)
    assert route("bob@sms.test") == Refused(UNKNOWN_RECIPIENT)
    assert route("alex@other.test") == Refused(UNKNOWN_RECIPIENT)
    assert route("alex") == Refused(UNKNOWN_RECIPIENT)
    # <phone>@: only for an authenticated session or a client an account allows.
    assert route("+79991234567@sms.test") == Refused(AUTH_REQUIRED)
    assert route("79991234567@sms.test", auth="alex") == PhoneRoute("79991234567", "alex")
    assert route(
        "79991234567@sms.test", mail_from="z@monitoring.example.org", ip="10.1.2.3"
    ) == PhoneRoute("79991234567", "mon")
    # Both restrictions must hold.
    assert route("79991234567@sms.test", mail_from="z@monitoring.example.org") == Refused(
        AUTH_REQUIRED
    )
    assert route("79991234567@sms.test", ip="10.1.2.3") == Refused(AUTH_REQUIRED)
    assert route("123@sms.test") == Refused(UNKNOWN_RECIPIENT)  # too short for a number


def test_sender_patterns() -> None:
    assert sender_matches("Zabbix@Monitoring.Example.org", ["*@monitoring.example.org"])
    assert sender_matches("a@b.org", ["@b.org"])
    assert sender_matches("a@b.org", ["a@b.org"])
    assert not sender_matches("a@evil-b.org", ["@b.org"])
    assert not sender_matches("", ["*"])
    assert not sender_matches("<>", ["*"])


# ---- the request -----------------------------------------------------------------------


def rules() -> IntakeRules:
    return IntakeRules(
        accounts=ACCOUNTS,
        profile=PROFILE,
        registered_delivery=True,
        validity=3600,
        reply_sender="relay@sms.test",
        hostname="sms.test",
    )


def run(route_: AccountRoute | PhoneRoute, client: Client, raw: bytes):  # type: ignore[no-untyped-def]
    env = Envelope(key="k", mail_from=client.mail_from, rcpt="r", client_ip=client.client_ip)
    return process_email2sms(
        raw, env, rules(), route_, client, now=1000.0, new_id=lambda: "77", next_ref=lambda _: 1
    )


def test_account_route_builds_jobs_and_no_reply_on_success() -> None:
    o = run(AccountRoute("alex"), Client("z@example.org", "192.0.2.1"), _mail("Disk", "full"))
    assert o.accepted and o.parts == 1 and o.answer == "OK - 1 SMS, ID - 77"
    (job,) = o.request.jobs
    assert job.phone == "+79990000001"
    assert job.submit.destination_addr == "79990000001"
    assert decode(job.submit.short_message, Alphabet.GSM7) == "Disk\nfull"
    assert o.request.mails == ()


def test_restricted_account_refuses_others_with_error_2_reply() -> None:
    o = run(AccountRoute("mon"), Client("z@example.org", "10.1.2.3"), _mail("Disk", "full"))
    assert o.code == ErrorCode.AUTH
    assert o.answer == "ERROR = 2 (invalid login or password)"
    (reply,) = o.request.mails
    assert reply.rcpt == "z@example.org"
    assert b"ERROR = 2 (invalid login or password)" in reply.data


def test_restricted_account_accepts_its_own_authenticated_session() -> None:
    o = run(AccountRoute("mon"), Client("z@example.org", "192.0.2.9", "mon"), _mail("a", "b"))
    assert o.accepted


def test_phone_route_normalizes_the_number_for_the_payer() -> None:
    o = run(PhoneRoute("89991234567", "alex"), Client("", "127.0.0.1", "alex"), _mail("a", "b"))
    assert o.accepted and o.request.jobs[0].phone == "+79991234567"
    bad = run(PhoneRoute("12345", "alex"), Client("a@b.c", "127.0.0.1", "alex"), _mail("a", "b"))
    assert bad.code == ErrorCode.PHONE_FORMAT


def test_empty_text_is_error_1() -> None:
    o = run(AccountRoute("alex"), Client("z@example.org", "1.2.3.4"), _mail("", "-- \nsig"))
    assert o.code == ErrorCode.PARAMETERS


def test_sms_of_a_long_alert_is_three_parts() -> None:
    raw = _mail("Alert", "line of text " * 100)
    o = run(AccountRoute("alex"), Client("z@example.org", "1.2.3.4"), raw)
    assert o.parts == 3
    parts = build_parts(
        "Alert\n" + ("line of text " * 100).strip(), profile=PROFILE
    )  # uncut, for comparison
    assert len(parts) > 3


# ---- AUTH and rates --------------------------------------------------------------------


class _Session:
    peer = ("127.0.0.1", 5)


def test_authenticator_accepts_password_and_api_key_case_insensitive_login() -> None:
    from aiosmtpd.smtp import LoginPassword

    accounts = {"alex": AccountConfig(login="alex", password="pw", api_key="key")}
    failures: list[int] = []
    auth = AccountAuthenticator(lambda: accounts, PasswordChecker(), lambda: failures.append(1))

    def check(login: bytes, pw: bytes) -> object:
        return auth(None, _Session(), None, "PLAIN", LoginPassword(login, pw))  # type: ignore[arg-type]

    ok = check(b"ALEX", b"pw")
    assert ok.success and ok.auth_data == "alex"  # type: ignore[attr-defined]
    assert check(b"alex", b"key").success  # type: ignore[attr-defined]
    assert not check(b"alex", b"nope").success  # type: ignore[attr-defined]
    assert not check(b"bob", b"pw").success  # type: ignore[attr-defined]
    assert failures == [1, 1]


def test_rate_guard_per_minute_and_parts_per_day() -> None:
    guard = RateGuard()
    lim = Limits(per_minute=2, parts_per_day=5)
    for t in (0.0, 1.0):
        assert guard.check("account", "a", lim, 1, t) is None
        guard.commit("account", "a", lim, 1, t)
    over = guard.check("account", "a", lim, 1, 2.0)
    assert over is not None and over.what == "rate"
    assert guard.check("account", "a", lim, 1, 61.0) is None  # the first left the minute
    assert guard.check("account", "b", lim, 1, 2.0) is None  # another key
    guard.commit("account", "a", lim, 3, 61.0)
    over = guard.check("account", "a", lim, 1, 200.0)
    assert over is not None and over.what == "parts"  # 1 + 1 + 3 = 5 parts today
    assert guard.check("account", "a", lim, 1, 86400.0 + 10) is None  # a new UTC day
    guard.undo("account", "a", 3, 61.0)
    assert guard.check("account", "a", lim, 3, 200.0) is None


def test_alert_mail_goes_through_spec_5_like_command_mail(tmp_path: Path) -> None:
    """Balance (3), duplicates (9) and the deny patterns (6) apply to login@ mail too."""
    import asyncio

    from relay.config import LimitsConfig
    from relay.spool.sqlite import SqliteSpool

    poor = AccountConfig(login="poor", password="pw", email2sms=["+79990000009"], balance=1)
    strict = IntakeRules(
        accounts={"poor": poor},
        profile=PROFILE,
        registered_delivery=True,
        validity=3600,
        reply_sender="relay@sms.test",
        hostname="sms.test",
        limits=LimitsConfig(deny_patterns=["casino"]),
    )
    client = Client("z@example.org", "192.0.2.1")

    def outcome(key: str, body: str):  # type: ignore[no-untyped-def]
        env = Envelope(key=key, mail_from=client.mail_from, rcpt="r", client_ip="192.0.2.1")
        return process_email2sms(
            _mail("Disk", body), env, strict, AccountRoute("poor"), client,
            now=1000.0, new_id=lambda: key, next_ref=lambda _: 1,
        )  # fmt: skip

    denied = outcome("d", "casino bonus")
    assert denied.code == ErrorCode.PROHIBITED
    first, again, other = outcome("a", "full"), outcome("b", "full"), outcome("c", "other")
    assert first.request.admission is not None and first.request.limits is not None

    async def store() -> list[int]:
        spool = SqliteSpool(tmp_path / "s.db")
        await spool.open()
        try:
            results = [await spool.store(o.request) for o in (first, again, other)]
        finally:
            await spool.close()
        return [r.refused for r in results]

    # accepted; the same alert again within 60 s: 9; a new alert with the balance spent: 3
    assert asyncio.run(store()) == [0, 9, 3]
