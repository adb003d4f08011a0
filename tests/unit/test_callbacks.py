"""relay.callbacks: seed 003's URL rules, body formats, charsets and hashes (pure)."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
import zlib
from urllib.parse import parse_qsl

import pytest

from relay.callbacks import (
    FORM,
    JSON,
    XML,
    mo_fields,
    parse_callback_url,
    render,
    status_fields,
)
from relay.errors import ConfigError

FIELDS = status_fields(
    message_id="42", phone="+79161234567", state="undeliverable", err=1, at=1700000000.5, parts=2
)


def test_bang_splits_get_and_post_parameters() -> None:
    cb = parse_callback_url("https://h.example/cb.php!a=1&b=2?c=3&d")
    assert cb.base == "https://h.example/cb.php"
    assert cb.get == (("a", "1"), ("b", "2"))
    assert cb.post == (("c", "3"), ("d", ""))
    assert (cb.fmt, cb.charset) == (FORM, "windows-1251")
    call = render(cb, FIELDS, mo=False)
    assert call.url == "https://h.example/cb.php?a=1&b=2"
    post = parse_qsl(call.body.decode("ascii"), keep_blank_values=True)
    assert post[:7] == [
        ("id", "42"),
        ("phone", "79161234567"),
        ("status", "20"),
        ("status_name", "undeliverable"),
        ("err", "1"),
        ("time", "1700000000"),
        ("cnt", "2"),
    ]
    assert post[7:] == [("c", "3"), ("d", "")]


def test_no_bang_means_everything_by_post() -> None:
    cb = parse_callback_url("http://h/x?fmt=3&p=1")
    assert cb.get == () and cb.fmt == JSON
    call = render(cb, FIELDS, mo=False)
    assert call.url == "http://h/x"
    data = json.loads(call.body)
    assert data["p"] == "1" and data["fmt"] == "3" and data["id"] == "42"


@pytest.mark.parametrize(
    ("algo", "expected"),
    [
        ("md5", hashlib.md5(b"42:79161234567:20:sec_1-x").hexdigest()),
        ("sha1", hashlib.sha1(b"42:79161234567:20:sec_1-x").hexdigest()),
        ("crc32", str(zlib.crc32(b"42:79161234567:20:sec_1-x") & 0xFFFFFFFF)),
    ],
)
@pytest.mark.parametrize("where", ["get", "post"])
def test_hash_replaces_the_secret(algo: str, expected: str, where: str) -> None:
    url = f"http://h/x!{algo}=sec_1-x" if where == "get" else f"http://h/x?{algo}=sec_1-x"
    call = render(parse_callback_url(url), FIELDS, mo=False)
    if where == "get":
        assert dict(parse_qsl(call.url.split("?", 1)[1]))[algo] == expected
    else:
        assert dict(parse_qsl(call.body.decode()))[algo] == expected
    assert b"sec_1-x" not in call.body and "sec_1-x" not in call.url


def test_mo_hash_and_charset() -> None:
    fields = mo_fields(
        mo_id=7, phone="79160000001", text="Да, ок", to="79005550001", at=1.0, sms_id="42"
    )
    call = render(parse_callback_url("http://h/x?md5=s"), fields, mo=True)
    assert "charset=windows-1251" in call.content_type
    post = dict(parse_qsl(call.body.decode("ascii"), encoding="windows-1251"))
    assert post["mes"] == "Да, ок" and post["sms_id"] == "42"
    want = hashlib.md5("7:79160000001:Да, ок:79005550001:s".encode("cp1251")).hexdigest()
    assert post["md5"] == want
    utf = render(parse_callback_url("http://h/x?charset=utf-8"), fields, mo=True)
    assert dict(parse_qsl(utf.body.decode("ascii")))["mes"] == "Да, ок"


def test_xml_body_is_utf8_whatever_the_charset() -> None:
    fields = mo_fields(mo_id=1, phone="7916", text="<Привет & пока>", to="1", at=1.0, sms_id="")
    call = render(parse_callback_url("http://h/x?fmt=2&charset=koi8-r"), fields, mo=True)
    assert parse_callback_url("http://h/x?fmt=2").fmt == XML
    root = ET.fromstring(call.body)
    assert root.findtext("mes") == "<Привет & пока>"
    assert "utf-8" in call.content_type


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h/x",
        "h/x",
        "http://h/x?md5=bad secret",
        "http://h/x?md5=a.b",
        "http://h/x?charset=nope",
    ],
)
def test_bad_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_callback_url(url)
