"""Receipt parsing (SPEC §9) and upstream-id matching keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smpp.receipt import id_keys, is_receipt, parse_receipt

FULL = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2401021530 done date:2401021531 "
    "stat:DELIVRD err:000 text:Hello: world id:9"
)


def test_full_text_form() -> None:
    r = parse_receipt(FULL, {})
    assert r is not None
    assert r.message_id == "0123456789"
    assert (r.sub, r.dlvrd, r.err) == ("001", "001", "000")
    assert (r.submit_date, r.done_date) == ("2401021530", "2401021531")
    assert r.stat == "DELIVRD"
    assert r.text == "Hello: world id:9"  # text: takes the rest, keys inside it ignored
    assert r.extra == {}


@pytest.mark.parametrize(
    ("text", "tlvs", "mid", "stat"),
    [
        ("id:abc stat:UNDELIV err:012 Text:x", {}, "abc", "UNDELIV"),
        ("ID:77 STAT:expired ERR:1", {}, "77", "EXPIRED"),
        ("stat:REJECTD id:5", {}, "5", "REJECTD"),  # any order
        ("id:5", {}, "5", "UNKNOWN"),  # stat missing
        ("id:5 stat:DELIVERED", {}, "5", "DELIVRD"),  # long spelling
        ("", {"receipted_message_id": b"1F\x00", "message_state": 2}, "1F", "DELIVRD"),
        ("", {"receipted_message_id": b"9", "message_state": 5}, "9", "UNDELIV"),
        ("", {"receipted_message_id": "9", "message_state": 8}, "9", "REJECTD"),
        ("id:5 stat:ENROUTE", {"message_state": 2}, "5", "ENROUTE"),  # known text stat wins
        ("id:5 stat:WEIRD", {"message_state": 3}, "5", "EXPIRED"),
        ("id:5 stat:WEIRD", {}, "5", "WEIRD"),
        ("id:5 sub:1 dlvrd:0 submit_date:2401021530 stat:ACCEPTD", {}, "5", "ACCEPTD"),
    ],
)
def test_receipt_table(text: str, tlvs: dict[str, object], mid: str, stat: str) -> None:
    r = parse_receipt(text, tlvs)  # type: ignore[arg-type]
    assert r is not None
    assert (r.message_id, r.stat) == (mid, stat)


def test_tlv_id_wins_and_text_id_kept() -> None:
    r = parse_receipt("id:26 stat:DELIVRD err:000", {"receipted_message_id": b"1a"})
    assert r is not None
    assert r.message_id == "1a"
    assert r.extra == {"text_id": "26"}


def test_hlr_result_from_seed() -> None:
    text = (
        "id:855469 stat:DELIVRD err:000 imsi:250023012345678 msc:79232510066 mcc:250 mnc:02 "
        "cn:Russian+Federation net:MegaFON+open+Joint+Stock+Company rcn: rnet:"
    )
    r = parse_receipt(text, {})
    assert r is not None
    assert (r.message_id, r.stat, r.err) == ("855469", "DELIVRD", "000")
    assert r.extra == {
        "imsi": "250023012345678",
        "msc": "79232510066",
        "mcc": "250",
        "mnc": "02",
        "cn": "Russian Federation",
        "net": "MegaFON open Joint Stock Company",
        "rcn": "",
        "rnet": "",
    }


def test_url_encoded_non_ascii_name() -> None:
    r = parse_receipt("id:1 stat:DELIVRD net:%D0%9C%D0%A2%D0%A1", {})
    assert r is not None
    assert r.extra["net"] == "МТС"


def test_no_id_is_none() -> None:
    assert parse_receipt("stat:DELIVRD err:0", {}) is None
    assert parse_receipt("hello world", {}) is None


def test_seed_translated_text_key() -> None:
    r = parse_receipt("id:1 sub:001 dlvrd:001 stat:DELIVRD err:0 Текст: привет", {})
    assert r is not None
    assert r.text == "привет"


def test_is_receipt() -> None:
    assert is_receipt(0x04, {})
    assert is_receipt(0x08, {})
    assert is_receipt(0x20, {})
    assert is_receipt(0x00, {"receipted_message_id": b"1"})
    assert not is_receipt(0x00, {})
    assert not is_receipt(0x40, {})  # UDH indicator: an MO long message


@pytest.mark.parametrize(
    ("mid", "fmt", "keys"),
    [
        ("ABC", "same", ("abc",)),
        ("1a", "hex2dec", ("1a", "26")),
        ("26", "hex2dec", ("26", "38")),
        ("zz-1", "hex2dec", ("zz-1",)),
        ("26", "dec2hex", ("26", "1a")),
        ("1a", "dec2hex", ("1a",)),
        ("1A", "auto", ("1a", "26")),
        ("0026", "auto", ("0026", "38", "1a", "26")),
        ("", "auto", ("",)),
    ],
)
def test_id_keys(mid: str, fmt: str, keys: tuple[str, ...]) -> None:
    assert id_keys(mid, fmt) == keys


@pytest.mark.parametrize(
    ("resp_id", "receipt_id", "fmt"),
    [("1a", "26", "auto"), ("26", "1a", "auto"), ("1a", "26", "hex2dec"), ("26", "1A", "dec2hex")],
)
def test_hex_and_dec_ids_match(resp_id: str, receipt_id: str, fmt: str) -> None:
    assert set(id_keys(resp_id, fmt)) & set(id_keys(receipt_id, fmt))


def test_same_does_not_convert() -> None:
    assert not set(id_keys("1a", "same")) & set(id_keys("26", "same"))


@settings(derandomize=True, max_examples=500)
@given(
    st.text(),
    st.dictionaries(
        st.sampled_from(["receipted_message_id", "message_state", "0x1400"]),
        st.one_of(st.integers(), st.binary(), st.text()),
    ),
)
def test_parse_receipt_never_raises(text: str, tlvs: dict[str, object]) -> None:
    parse_receipt(text, tlvs)  # type: ignore[arg-type]


@settings(derandomize=True, max_examples=300)
@given(st.text(alphabet="id:stat DELIVRD0123456789abcdef%+texrTX", max_size=80))
def test_parse_receipt_never_raises_on_near_misses(text: str) -> None:
    parse_receipt(text, {})


@settings(derandomize=True, max_examples=300)
@given(st.text(max_size=70), st.sampled_from(["auto", "same", "hex2dec", "dec2hex"]))
def test_id_keys_never_raises(mid: str, fmt: str) -> None:
    keys = id_keys(mid, fmt)
    assert keys[0] == mid.strip().lower()
