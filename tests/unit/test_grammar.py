"""SPEC §3: the send@ command grammar."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.errors import ErrorCode, RejectError
from relay.grammar import Command, Entry, parse_command


def _flags(cmd: Command) -> tuple[str, str, str, str]:
    return cmd.translit, cmd.fmt, cmd.sender, cmd.test


# The six seed examples of seed 001 / SPEC §3, each with the items the positional rule implies.
SEED_EXAMPLES = [
    ("alex:123::::79999999999:text", "123", ("", "", "", "")),
    ("alex:psw:::1,1,Alex:79999999999:text", "psw", ("1", "1", "Alex", "")),
    ("alex:psw:::1:79999999999:text", "psw", ("1", "", "", "")),
    ("alex:psw:::,1:79999999999:text", "psw", ("", "1", "", "")),
    ("alex:psw:::,1,Alex:79999999999:text", "psw", ("", "1", "Alex", "")),
    ("alex:psw:::,1,,1:79999999999:text", "psw", ("", "1", "", "1")),
]


@pytest.mark.parametrize(("line", "psw", "flags"), SEED_EXAMPLES)
def test_seed_examples(line: str, psw: str, flags: tuple[str, str, str, str]) -> None:
    cmd = parse_command(line)
    assert (cmd.login, cmd.psw, cmd.id, cmd.time, cmd.tz) == ("alex", psw, "", "", "")
    assert _flags(cmd) == flags
    assert cmd.entries == (Entry(phones=("79999999999",), text="text", comment=""),)
    assert not cmd.list_mode
    assert (cmd.subj, cmd.voice, cmd.channel) == ("", "", "")


def test_all_fields() -> None:
    cmd = parse_command("bob:s3cret:42:0101301200,-1:2,0,Bob,1:+79991112233;89990001122,G1:Hi")
    assert (cmd.id, cmd.time, cmd.tz) == ("42", "0101301200", "-1")
    assert _flags(cmd) == ("2", "0", "Bob", "1")
    assert cmd.entries[0].phones == ("+79991112233", "89990001122", "G1")


def test_time_with_space_and_tz() -> None:
    cmd = parse_command("a:p::01.02.30 12.00,2:::7999:x")
    assert (cmd.time, cmd.tz) == ("01.02.30 12.00", "2")


def test_mes_keeps_colons_and_lines() -> None:
    cmd = parse_command("a:p::::79999999999:Alarm: disk 95%\nhost: db1\r\nsecond: line")
    assert cmd.entries[0].text == "Alarm: disk 95%\nhost: db1\nsecond: line"


def test_surrounding_whitespace_and_field_spaces() -> None:
    cmd = parse_command("\n  alex : psw :::: 79999999999 , 79990000000 :  hello  \n\n")
    assert (cmd.login, cmd.psw) == ("alex", "psw")
    assert cmd.entries[0].phones == ("79999999999", "79990000000")
    assert cmd.entries[0].text == "hello"


def test_empty_mes_is_grammatical() -> None:
    # HLR (format 3) and ping (6) need no text; the §4 length rule is relay.fields.check_message.
    cmd = parse_command("a:p:::,3:79999999999:")
    assert cmd.entries[0].text == ""


@pytest.mark.parametrize(
    "line",
    [
        "",
        "just some text",
        "a:p::::79999999999",  # no <mes> field
        ":p::::79999999999:x",  # no login
        "a:::::79999999999:x",  # no psw
        "a:p::::,;:x",  # phones only separators
        "a:p:::1,1,A,1,9:79999999999:x",  # five flag items
        "a:p:::::",  # list mode, empty list
        "a:p:::::\n\n",
        "a:p:::::hello world",  # list line without phones
        "a\nb:p::::79999999999:x",
    ],
)
def test_malformed(line: str) -> None:
    with pytest.raises(RejectError) as err:
        parse_command(line)
    assert err.value.code is ErrorCode.PARAMETERS


def test_comment() -> None:
    cmd = parse_command("a:p::::79999999999:text to send\nline 2\n~~~\nfor the history\nmore")
    assert cmd.entries[0] == Entry(
        phones=("79999999999",), text="text to send\nline 2", comment="for the history\nmore"
    )


def test_comment_separator_at_end() -> None:
    cmd = parse_command("a:p::::79999999999:text\n~~~\n")
    assert (cmd.entries[0].text, cmd.entries[0].comment) == ("text", "")


def test_tildes_inside_a_line_are_text() -> None:
    cmd = parse_command("a:p::::79999999999:a ~~~ b\n~~~x")
    assert (cmd.entries[0].text, cmd.entries[0].comment) == ("a ~~~ b\n~~~x", "")


@pytest.mark.parametrize(
    ("mes", "channel", "text"),
    [
        ("__CALL__: hello", "CALL", "hello"),
        ("__VIBER__: hi there", "VIBER", "hi there"),
        ("__SOC__:x", "SOC", "x"),
        ("__MAIL__: body", "MAIL", "body"),
        ("__BOT__: b", "BOT", "b"),
        ("__MMS__: m", "MMS", "m"),
        ("__PING__", "PING", ""),
        ("__HLR__", "HLR", ""),
        ("__HLR__ ", "HLR", ""),
        ("__CALLER__: x", "", "__CALLER__: x"),
        ("__FOO__: x", "", "__FOO__: x"),
        ("text __CALL__: x", "", "text __CALL__: x"),
    ],
)
def test_channel_prefix(mes: str, channel: str, text: str) -> None:
    cmd = parse_command(f"a:p::::79999999999:{mes}")
    assert (cmd.channel, cmd.entries[0].text) == (channel, text)


def test_voice_and_param_for_calls() -> None:
    cmd = parse_command("a:p:::,9:79999999999:Your code is 1234\nvoice: w2\n~~~\nparam=1,2")
    assert (cmd.voice, cmd.entries[0].text, cmd.entries[0].comment) == (
        "w2",
        "Your code is 1234",
        "param=1,2",
    )


def test_subject_for_mail_format() -> None:
    cmd = parse_command("a:p:::,8:user@example.com:Body line\nsubj: Тема письма")
    assert (cmd.subj, cmd.entries[0].text) == ("Тема письма", "Body line")
    assert cmd.entries[0].phones == ("user@example.com",)


def test_subject_for_mail_channel() -> None:
    cmd = parse_command("a:p::::79999999999:__MAIL__: Body\nSubj:Hello")
    assert (cmd.channel, cmd.subj, cmd.entries[0].text) == ("MAIL", "Hello", "Body")


def test_param_lines_stay_text_for_plain_sms() -> None:
    cmd = parse_command("a:p::::79999999999:Call me\nvoice: m\nsubj: x")
    assert (cmd.subj, cmd.voice) == ("", "")
    assert cmd.entries[0].text == "Call me\nvoice: m\nsubj: x"


def test_unwanted_param_line_stops_the_scan() -> None:
    cmd = parse_command("a:p:::,9:79999999999:Hello\nsubj: s\nvoice: w")
    assert (cmd.voice, cmd.subj, cmd.entries[0].text) == ("w", "", "Hello\nsubj: s")


# ---- list mode -----------------------------------------------------------------------------


def test_list_mode() -> None:
    cmd = parse_command(
        "alex:psw:7::,,,1::\n79999999999:first\\nsecond\n79990000001,79990000002;second msg\n\n"
    )
    assert cmd.list_mode
    assert cmd.id == "7"
    assert cmd.entries == (
        Entry(phones=("79999999999",), text="first\nsecond"),
        Entry(phones=("79990000001", "79990000002"), text="second msg"),
    )


def test_list_on_the_header_line() -> None:
    cmd = parse_command("alex:psw:::::79999999999:a: b")
    assert cmd.list_mode
    assert cmd.entries == (Entry(phones=("79999999999",), text="a: b"),)


def test_list_trailing_params() -> None:
    cmd = parse_command("a:p:::,8::\nx@example.com:hi\ny@example.com:ho\nsubj: Hello\nvoice:w\n")
    assert (cmd.subj, cmd.voice) == ("Hello", "w")
    assert [e.phones for e in cmd.entries] == [("x@example.com",), ("y@example.com",)]


def test_list_without_test2_refuses_continuation() -> None:
    with pytest.raises(RejectError):
        parse_command("a:p:::::\n79999999999:first\ncontinued\n")


def test_list_multiline_with_test2() -> None:
    cmd = parse_command(
        "a:p:::,,,2::\n79999999999:first\ncontinued: here\n+79990000001;second\n~~~\nnote\nG1:third"
    )
    assert cmd.entries == (
        Entry(phones=("79999999999",), text="first\ncontinued: here"),
        Entry(phones=("+79990000001",), text="second", comment="note"),
        Entry(phones=("G1",), text="third"),
    )


def test_list_comment_by_escape() -> None:
    cmd = parse_command("a:p:::::\n79999999999:hello\\n~~~\\nhistory")
    assert cmd.entries == (Entry(phones=("79999999999",), text="hello", comment="history"),)


def test_list_channel() -> None:
    cmd = parse_command("a:p:::::\n79999999999:__VIBER__: a\n79990000001:__VIBER__: b")
    assert cmd.channel == "VIBER"
    assert [e.text for e in cmd.entries] == ["a", "b"]
    with pytest.raises(RejectError):
        parse_command("a:p:::::\n79999999999:__VIBER__: a\n79990000001:b")


def test_list_phone_garbage_goes_to_field_rules() -> None:
    # "12-34" is phone-shaped; whether it is a number is relay.fields' business (code 7).
    cmd = parse_command("a:p:::::\n12-34:x")
    assert cmd.entries[0].phones == ("12-34",)


def test_hostile_list_is_linear() -> None:
    lines = "\n".join(f"7999{i:07d}:message number {i}" for i in range(10_000))
    start = time.perf_counter()
    cmd = parse_command(f"a:p:::,,,2::\n{lines}\nsubj: s")
    elapsed = time.perf_counter() - start
    assert len(cmd.entries) == 10_000
    assert elapsed < 1.0


def test_hostile_long_line_is_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(RejectError):
        parse_command("a:p:::,,,2::\n" + "1" * 200_000 + " x")
    parse_command("a:p::::79999999999:" + "~\n" * 50_000)
    assert time.perf_counter() - start < 1.0


# ---- properties ----------------------------------------------------------------------------

_field = st.text(alphabet=st.sampled_from("aZ09 ,;:+-G\n\\~_"), max_size=8)
_odd_command = st.builds(
    lambda parts, tail: ":".join(parts) + tail,
    st.lists(_field, min_size=0, max_size=9),
    st.text(max_size=60),
)


@settings(
    derandomize=True, max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.one_of(st.text(max_size=200), _odd_command))
def test_never_raises_anything_but_reject(text: str) -> None:
    try:
        cmd = parse_command(text)
    except RejectError as err:
        assert err.code is ErrorCode.PARAMETERS
        return
    assert cmd.login and cmd.psw and cmd.entries
    assert all(entry.phones for entry in cmd.entries)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    login=st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
    psw=st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True),
    phones=st.lists(st.from_regex(r"\+?[0-9]{5,12}", fullmatch=True), min_size=1, max_size=4),
    mes=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=80),
)
def test_round_trip_single(login: str, psw: str, phones: list[str], mes: str) -> None:
    mes = mes.replace("\r", " ").replace("~", "-").strip()
    if not mes or mes.startswith("__"):
        return
    cmd = parse_command(f"{login}:{psw}::::{','.join(phones)}:{mes}")
    assert (cmd.login, cmd.psw) == (login, psw)
    assert cmd.entries == (Entry(phones=tuple(phones), text=mes),)
