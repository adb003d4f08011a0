"""relay.mo: MO SMS decoding per data_coding, concatenation reassembly, loop guards (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay import mo
from relay.sms import gsm7


def test_codings() -> None:
    assert mo.decode_text(gsm7.encode("a{b}@€"), 0x00) == "a{b}@€"
    assert mo.decode_text("Привет 😀".encode("utf-16-be"), 0x08) == "Привет 😀"
    assert mo.decode_text("café".encode("latin-1"), 0x03) == "café"
    assert mo.decode_text(b"hi", 0x01) == "hi"
    assert mo.decode_text("Ж".encode("utf-16-be"), 0x18) == "Ж"  # class 0 flash, UCS-2
    assert mo.decode_text(b"\x01\x02", 0x04) == "0102"  # 8-bit data: hex


def test_udh_and_sar_concatenation() -> None:
    a = mo.split_body(0x40, 8, b"\x05\x00\x03\x07\x02\x02" + "b".encode("utf-16-be"), {})
    b = mo.split_body(0x40, 8, b"\x06\x08\x04\x01\x07\x02\x01" + "a".encode("utf-16-be"), {})
    assert a.concat == mo.Concat(7, 2, 2) and b.concat == mo.Concat(0x107, 2, 1)
    assert not mo.same_message(a, b)
    c = mo.split_body(0x40, 8, b"\x05\x00\x03\x07\x02\x01" + "a".encode("utf-16-be"), {})
    assert mo.reassemble([a]) is None  # part 1 missing
    assert mo.reassemble([a, c]) == "ab"
    sar = {"sar_msg_ref_num": 9, "sar_total_segments": 2, "sar_segment_seqnum": 2}
    s2 = mo.split_body(0, 0, b"def", sar)
    s1 = mo.split_body(0, 0, b"abc", {**sar, "sar_segment_seqnum": 1})
    assert mo.reassemble([s2, s1]) == "abcdef"
    payload = mo.split_body(0, 8, b"", {"message_payload": "Ж".encode("utf-16-be").hex()})
    assert mo.reassemble([payload]) == "Ж"


@given(st.text(min_size=1, max_size=300), st.integers(1, 5), st.randoms())
def test_ucs2_parts_reassemble_in_any_order(text: str, cut: int, rnd: object) -> None:
    raw = text.encode("utf-16-be")
    size = max(2, len(raw) // cut)  # cuts may fall inside a surrogate pair: joined as octets
    chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
    if len(chunks) > 255:
        return
    n = len(chunks)
    parts = [
        mo.split_body(0x40, 8, bytes((5, 0, 3, 1, n, i + 1)) + c, {}) for i, c in enumerate(chunks)
    ]
    rnd.shuffle(parts)  # type: ignore[attr-defined]
    assert mo.reassemble(parts) == text


def test_loop_guard() -> None:
    kw = {"own_domains": ["sms.test"], "sender": "relay@sms.test"}
    assert mo.may_mail("ops@example.org", **kw)  # type: ignore[arg-type]
    assert not mo.may_mail("", **kw)  # type: ignore[arg-type]
    assert not mo.may_mail("<>", **kw)  # type: ignore[arg-type]
    assert not mo.may_mail("send@SMS.test", **kw)  # type: ignore[arg-type]
    assert not mo.may_mail("alex@sms.test", **kw)  # type: ignore[arg-type]


def test_notice_mail_headers() -> None:
    data = mo.render_notice(
        "hi", subject="s", to="a@b.c", sender="r@x.y", message_id="<1@x>", now=0
    )
    assert b"Auto-Submitted: auto-generated" in data
    assert b"X-Auto-Response-Suppress: All" in data


def test_sender_candidates_read_national_numbers_by_the_accounts_regions() -> None:
    from relay.mo import likeliest_sender, sender_candidates

    assert sender_candidates("79161234567", ["RU"]) == ("+79161234567",)
    assert sender_candidates("+79161234567", ["RU"]) == ("+79161234567",)
    national = sender_candidates("89161234567", ["RU"])
    assert national == ("+89161234567", "+79161234567")
    assert likeliest_sender(national) == "+79161234567"
    assert sender_candidates("9161234567", ["RU"])[-1] == "+79161234567"
    assert sender_candidates("0501234567", ["UA"])[-1] == "+380501234567"
    assert sender_candidates("380501234567", ["RU", "UA"]) == ("+380501234567",)
    assert sender_candidates("Bank", ["RU"]) == ("Bank",)  # alphanumeric: as it came
    assert likeliest_sender(("+12",)) == "+12"  # nothing valid: the first


def test_partial_marks_each_missing_part_and_joins_runs_as_octets() -> None:
    def part(seq: int, body: bytes, total: int = 4) -> mo.SmsBody:
        return mo.split_body(0x40, 8, bytes((5, 0, 3, 9, total, seq)) + body, {})

    raw = "😀b".encode("utf-16-be")  # a surrogate pair cut between parts 1 and 2
    got = mo.reassemble_partial(
        [part(4, "d".encode("utf-16-be")), part(2, raw[2:]), part(1, raw[:2])]
    )
    assert got == mo.Partial("😀b[part 3 of 4 missing]d", (3,), 4)
    # A gap inside a pair: the orphan half decodes as U+FFFD, never raises.
    lone = mo.reassemble_partial([part(2, raw[2:], 2)])
    assert lone is not None and lone.text == "[part 1 of 2 missing]\ufffdb" and lone.missing == (1,)
    # Another message's part (other reference) is not mixed in; an unconcatenated SMS: None.
    other = mo.split_body(0x40, 8, bytes((5, 0, 3, 8, 4, 3)) + b"\x00x", {})
    assert mo.reassemble_partial([part(1, b"\x00a"), other]) == mo.Partial(
        "a[part 2 of 4 missing][part 3 of 4 missing][part 4 of 4 missing]", (2, 3, 4), 4
    )
    assert mo.reassemble_partial([mo.split_body(0, 0, b"hi", {})]) is None
