"""The fast path of `parse_mail` (simple text/plain mail) gives exactly what the full path gives.

The full path is the stdlib `email` parser; the fast path splits the header block itself and
must either return the same `ParsedMail` (or raise the same rejection) or step aside (None).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.errors import RejectError
from relay.mail import ParsedMail, _parse_full, _parse_simple, parse_mail

SAMPLES = Path(__file__).parent.parent / "samples"

Result = ParsedMail | tuple[str, int, str]


def _full(raw: bytes) -> Result:
    try:
        return _parse_full(raw)
    except RejectError as exc:
        return ("reject", int(exc.code), exc.detail)


def _fast(raw: bytes) -> Result | None:
    try:
        return _parse_simple(raw)
    except RejectError as exc:
        return ("reject", int(exc.code), exc.detail)


# -- generated mails -------------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        "Subject",
        "subject",
        "SUBJECT",
        "From",
        "Reply-To",
        "Message-ID",
        "References",
        "Auto-Submitted",
        "Precedence",
        "Content-Type",
        "content-type",
        "Content-Transfer-Encoding",
        "MIME-Version",
        "X-Pad",
        "To",
        "From ",  # a unix-from look-alike
        "Bad Name",  # a space in the name: not a header line
        "",  # ":value" (a header without a name)
        "X-\u0416",  # non-ASCII name
    ]
)
_CONTENT_TYPES = st.sampled_from(
    [
        "text/plain",
        "text/plain; charset=utf-8",
        'text/plain; charset="koi8-r"',
        "TEXT/PLAIN; CHARSET=windows-1251; format=flowed; delsp=yes",
        "text/plain; format=Flowed",
        "text/plain; charset=<utf-8>",
        "text/plain; charset*=utf-8''%d0%b0",
        "text/plain; charset=x-unknown",
        "text/plain;charset=us-ascii;",
        'text/plain; charset="utf-8; x"',
        "text/plain; charset=utf-16",
        "text/plain; charset=\u0436",
        "text/html; charset=utf-8",
        "text/plain\r\n ; charset=utf-8",
        "multipart/alternative; boundary=b",
        'multipart/mixed; boundary="b"',
        "message/rfc822",
        "garbage",
        "text/plain/extra",
        "application/octet-stream",
        "",
    ]
)
_CTES = st.sampled_from(
    ["7bit", "8bit", "8BIT", "binary", " 8bit", "quoted-printable", "base64", "Base64", "x-uue", ""]
)
_VALUE_CHARS = st.sampled_from(
    [
        *"ab z:;=\"'<>@.,()\t-_?",
        "=?utf-8?B?0J/RgNC40LLQtdGC?=",
        "=?koi8-r?Q?=F0=D2=C9?=",
        "\u0436",
        "\udcc6",
        "ops@example.org",
    ]
)
_VALUES = st.lists(_VALUE_CHARS, max_size=12).map("".join)
_BODY_CHUNKS = st.sampled_from(
    [
        b"alex:psw:::,,,1:79991234567:Hello",
        b"bench:bench-pass:::,0,Bench,0:89161234567:Disk full on db1",
        b"\r\n",
        b"\n",
        b"\r",
        b" ",
        b"\t",
        b".",
        b"--b\r\n",
        b"--b--\r\n",
        b"Content-Type: text/plain\r\n\r\n",
        "Привет".encode(),
        "Привет".encode("koi8-r"),
        "Привет".encode("cp1251"),
        b"\x00",
        b"\x1b",
        b"\xef\xbb\xbf",
        b"=D0=BF",
        base64.b64encode("тест".encode()),
        b"[text]a:b:::,,,1:7999:x[/text]",
        b"line with trailing space \r\n",
    ]
)


_PLAIN_NAMES = st.sampled_from(
    ["Subject", "From", "Reply-To", "Message-ID", "References", "Auto-Submitted", "X-Pad"]
)
_PLAIN_TYPES = st.sampled_from(
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "text/plain; charset=koi8-r; format=flowed",
        'text/plain; charset="windows-1251"; format=flowed; delsp=yes',
        "text/plain; charset=us-ascii",
        "garbage",
    ]
)


@st.composite
def _mails(draw: st.DrawFn) -> bytes:
    """Half plausible simple mails (the fast path's domain), half anything nearby."""
    if draw(st.booleans()):
        return draw(_simple_mails())
    eol = draw(st.sampled_from(["\r\n", "\n", "\r\n", "\r", "mixed"]))

    def end() -> str:
        return draw(st.sampled_from(["\r\n", "\n", "\r"])) if eol == "mixed" else eol

    lines: list[str] = []
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            name, value = "Content-Type", draw(_CONTENT_TYPES)
        elif kind == 1:
            name, value = "Content-Transfer-Encoding", draw(_CTES)
        else:
            name, value = draw(_NAMES), draw(_VALUES)
        sep = draw(st.sampled_from([": ", ":", ":\t", ":  "]))
        lines.append(f"{name}{sep}{value}{end()}")
        for _ in range(draw(st.integers(0, 2))):
            lead = draw(st.sampled_from([" ", "\t", "  "]))
            lines.append(f"{lead}{draw(_VALUES)}{end()}")
    if draw(st.booleans()):
        lead = draw(st.sampled_from([" ", "\t"]))
        lines.insert(0, f"{lead}{draw(_VALUES)}{end()}")
    head = "".join(lines).encode("utf-8", "surrogateescape")
    blank = end().encode() if draw(st.integers(0, 9)) else b""
    body = b"".join(draw(st.lists(_BODY_CHUNKS, max_size=10)))
    return head + blank + body


@st.composite
def _simple_mails(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            name, value = "Content-Type", draw(_PLAIN_TYPES)
        elif kind == 1:
            name, value = "Content-Transfer-Encoding", draw(_CTES)
        else:
            name, value = draw(_PLAIN_NAMES), draw(_VALUES)
        lines.append(f"{name}:{draw(st.sampled_from([' ', '', '  ']))}{value}{eol}")
        if draw(st.integers(0, 4)) == 0:
            lines.append(f" {draw(_VALUES)}{eol}")
    body = b"".join(draw(st.lists(_BODY_CHUNKS, max_size=10)))
    return "".join(lines).encode("utf-8", "surrogateescape") + eol.encode() + body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mails())
@example(b"Subject: sms\r\n\r\nalex:psw:::,,,1:79991234567:Hello\r\n")
@example(b"Subject: a\r\n \r\n\r\nx")
@example(b"X:\r\n b\r\n\r\n")
@example(b"Content-Type: text/plain; charset=utf-8\nSubject: x\n\n\xd0\xb6\n")
@example(b"Content-Type: text/plain\r\nContent-Type: text/html\r\n\r\n<b>x</b>")
@example(b"Content-Transfer-Encoding: base64\r\n\r\n0LY=\r\n")
@example(b"From: =?utf-8?B?0JjQstCw0L0=?= <ivan@example.ru>\r\n\r\nx")
@example(b"Subject: \xd0\x9f\xd1\x80\xd0\xb8\r\n\r\nbody")
def test_fast_path_equals_full_path(raw: bytes) -> None:
    fast = _fast(raw)
    if fast is not None:
        assert fast == _full(raw)


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.eml")))
def test_samples_equal_on_both_paths(name: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    fast = _fast(raw)
    if fast is not None:
        assert fast == _full(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # what monitoring tools, mailx and the bench send: the fast path must take them
        b"From: ops@example.org\r\nTo: send@sms.test\r\nSubject: sms\r\n"
        b"Message-ID: <1@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"bench:pw:::,0,Bench,0:89161234567:Disk full\r\n",
        b"Subject: x\n\nalex:psw::::79999999999:Hi\n",
        b"Subject: x\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n"
        + "Привет".encode("koi8-r"),
        b"Subject: =?utf-8?B?0J/RgNC40LLQtdGC?=\r\n folded\r\n\r\nbody",
    ],
)
def test_simple_mail_takes_the_fast_path(raw: bytes) -> None:
    fast = _parse_simple(raw)
    assert fast is not None
    assert fast == _parse_full(raw) == parse_mail(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n",
        b"Content-Type: text/html\r\n\r\n<p>x</p>",
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=D0=B6",
        b"From nobody Mon Jan 1 00:00:00 2024\r\nSubject: x\r\n\r\nbody",
        b"Subject: x\r\nno colon here\r\n\r\nbody",
        b"Subject: x\rY: z\r\n\r\nbody",
        b"Subject: x\r\n",
    ],
)
def test_other_mail_takes_the_full_path(raw: bytes) -> None:
    assert _parse_simple(raw) is None


def _clean_reference(text: str) -> bool:
    """The former character loop of `relay.mail._clean`, kept as its specification."""
    for ch in text:
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            if ch not in "\t\n\r\f\v":
                return False
        elif ch == "\ufffd":
            return False
    return True


@settings(max_examples=500)
@given(st.text(st.characters(max_codepoint=0x110), max_size=20) | st.text(max_size=20))
def test_clean_matches_its_specification(text: str) -> None:
    from relay.mail import _clean

    assert _clean(text) == _clean_reference(text)


@settings(max_examples=1000)
@given(
    st.text(st.characters(max_codepoint=0x7F), max_size=40)
    | st.sampled_from(["sms", "<a@b.c>", "Re: =?utf-8?B?0JY=?=", "a\r\n b", "=?x", "a\x7fb"]),
    st.sampled_from(["", "us-ascii", "ascii", "utf-8", "utf8"]),
)
def test_header_shortcut_equals_full_decoding(value: str, charset: str) -> None:
    """The shortcut for plain printable ASCII header values (most headers) gives what the
    full decoding (unfold, charset, RFC 2047 words) gives, for every charset it is taken in."""
    from relay.mail import _decode_header, _decode_header_fully

    assert _decode_header(value, charset) == _decode_header_fully(value, charset)
