"""PURE: a callback URL and an event → the HTTP request that reports it (SPEC §11, seed 003).

The seed service's rules, as its page states them:

- `charset` in the URL chooses the encoding of the parameters (default windows-1251); with
  `fmt=2` (XML) or `fmt=3` (JSON) the parameters go in the request body and the charset is not
  applied (those bodies are UTF-8).
- Everything is sent by POST. URL parameters written between `!` and `?`
  (`https://h/!a&b?c&d`) go by GET, in the query string; the parameters after `?` go by POST,
  together with the event's own parameters.
- `md5=<secret>`, `sha1=<secret>` or `crc32=<secret>` in the URL: that parameter is sent with the
  secret replaced by the hash of `id:phone:status:<secret>` (a status) or of the MO field string
  (an incoming SMS). The secret is latin letters, digits, `-` and `_`.

The seed text names the status fields but its parameter tables and the MO hash string were lost
from the copy we have; the names below (`MO_HASH_FIELDS`, the MO parameters) follow the seed
service's published API as far as we know it and are kept in one place so they can be corrected.
md5/sha1 are lower-case hex (PHP's `md5()`/`sha1()`, what the seed service's examples compare
with); crc32 is the unsigned decimal value (PHP's `crc32()` on 64-bit).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit
from xml.sax.saxutils import escape

from relay.errors import ConfigError

DEFAULT_CHARSET = "windows-1251"
HASH_PARAMS = ("md5", "sha1", "crc32")
STATUS_HASH_FIELDS = ("id", "phone", "status")
MO_HASH_FIELDS = ("id", "phone", "mes", "to")
FORM, XML, JSON = 1, 2, 3
_SECRET = re.compile(r"[A-Za-z0-9_-]+")
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# The seed service's status codes for the final states a relay message can reach.
STATUS_CODES: Mapping[str, int] = {
    "delivered": 1,
    "expired": 3,
    "undeliverable": 20,
    "rejected": 20,
    "cancelled": 20,
}


@dataclass(frozen=True, slots=True)
class CallbackUrl:
    """A parsed `callback_url`: where to send, what goes by GET and by POST, how to encode."""

    base: str  # scheme://host/path, without the `!…` and `?…` parts
    get: tuple[tuple[str, str], ...]  # `!a&b` parameters (sent in the query string)
    post: tuple[tuple[str, str], ...]  # `?c&d` parameters (sent in the body)
    fmt: int  # FORM, XML or JSON
    charset: str  # Python codec name for FORM bodies

    def hash_params(self) -> list[tuple[str, str]]:
        """(algorithm, secret) of every hash parameter, GET ones first."""
        return [(k, v) for k, v in (*self.get, *self.post) if k in HASH_PARAMS]


def parse_callback_url(url: str) -> CallbackUrl:
    """Split a callback URL per seed 003; raise ConfigError when it is unusable."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"callback_url {url!r}: must be an http:// or https:// URL")
    if parts.fragment:
        raise ConfigError(f"callback_url {url!r}: must not have a #fragment")
    head, _, query = url.partition("?")
    scheme_end = head.index("//") + 2
    bang = head.find("!", scheme_end)
    base, get_text = (head, "") if bang < 0 else (head[:bang], head[bang + 1 :])
    get = tuple(parse_qsl(get_text, keep_blank_values=True))
    post = tuple(parse_qsl(query, keep_blank_values=True))
    params = dict((*get, *post))
    fmt_text = params.get("fmt", "")
    fmt = int(fmt_text) if fmt_text in ("2", "3") else FORM
    charset = params.get("charset", "") or DEFAULT_CHARSET
    try:
        "".encode(charset)
    except LookupError:
        raise ConfigError(f"callback_url {url!r}: unknown charset {charset!r}") from None
    for name, secret in (*get, *post):
        if name in HASH_PARAMS and not _SECRET.fullmatch(secret):
            raise ConfigError(
                f"callback_url {url!r}: the {name} secret may hold only latin letters, digits,"
                " '-' and '_'"
            )
    return CallbackUrl(base, get, post, fmt, charset)


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One rendered callback: POST `url` with `body` of `content_type`."""

    url: str
    body: bytes
    content_type: str


def status_fields(
    *,
    message_id: str,
    phone: str,
    state: str,
    err: int,
    at: float,
    parts: int,
) -> list[tuple[str, str]]:
    """A message's final state as the seed service reports it (phone without '+')."""
    return [
        ("id", message_id),
        ("phone", phone.lstrip("+")),
        ("status", str(STATUS_CODES.get(state, 20))),
        ("status_name", state),
        ("err", str(err)),
        ("time", str(int(at))),
        ("cnt", str(parts)),
    ]


def mo_fields(
    *,
    mo_id: int,
    phone: str,
    text: str,
    to: str,
    at: float,
    sms_id: str,
) -> list[tuple[str, str]]:
    """An incoming SMS: sender `phone`, `mes` text, `to` the number it was sent to; `sms_id` is
    the relay message it answers (empty when none)."""
    return [
        ("id", str(mo_id)),
        ("sms_id", sms_id),
        ("phone", phone.lstrip("+")),
        ("mes", text),
        ("to", to.lstrip("+")),
        ("sent", str(int(at))),
        ("time", str(int(at))),
    ]


def hash_value(algorithm: str, text: bytes) -> str:
    """The seed's control value of `text` for `md5`, `sha1` or `crc32`."""
    if algorithm == "md5":
        return hashlib.md5(text, usedforsecurity=False).hexdigest()
    if algorithm == "sha1":
        return hashlib.sha1(text, usedforsecurity=False).hexdigest()
    if algorithm == "crc32":
        return str(zlib.crc32(text) & 0xFFFFFFFF)
    raise ValueError(f"unknown hash {algorithm!r}")


def hash_input(fields: Sequence[tuple[str, str]], names: Sequence[str], secret: str) -> str:
    """`v1:v2:…:<secret>` of the named fields (seed 003's `id:phone:status:<secret>`)."""
    values = dict(fields)
    return ":".join([*(values.get(n, "") for n in names), secret])


def render(cb: CallbackUrl, fields: Sequence[tuple[str, str]], *, mo: bool) -> HttpCall:
    """The HTTP request for one event: fields, then the URL's POST parameters, hashes applied."""
    names = MO_HASH_FIELDS if mo else STATUS_HASH_FIELDS
    body_charset = cb.charset if cb.fmt == FORM else "utf-8"

    def hashed(params: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        out = []
        for k, v in params:
            if k in HASH_PARAMS:
                text = hash_input(fields, names, v).encode(body_charset, "replace")
                v = hash_value(k, text)
            out.append((k, v))
        return out

    get = hashed(cb.get)
    post = [*fields, *hashed(cb.post)]
    url = cb.base
    if get:
        url += "?" + urlencode(get, encoding=cb.charset, errors="replace", quote_via=quote_plus)
    if cb.fmt == JSON:
        body = json.dumps(dict(post), ensure_ascii=False, separators=(",", ":")).encode()
        return HttpCall(url, body, "application/json; charset=utf-8")
    if cb.fmt == XML:
        items = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in post if _XML_NAME.fullmatch(k))
        body = f'<?xml version="1.0" encoding="utf-8"?>\n<data>{items}</data>\n'.encode()
        return HttpCall(url, body, "application/xml; charset=utf-8")
    body = urlencode(post, encoding=cb.charset, errors="replace").encode("ascii")
    return HttpCall(url, body, f"application/x-www-form-urlencoded; charset={cb.charset}")
