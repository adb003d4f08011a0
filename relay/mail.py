"""Mail decoding (SPEC §2): raw message bytes → headers and the text of the chosen part.

Pure: no I/O. Everything a hostile mail can trigger in the stdlib `email` package (deep nesting,
broken boundaries, bad base64, unknown or bytes-to-bytes charsets, NUL bytes) ends as
`RejectError(ErrorCode.PARAMETERS)`; nothing else escapes `parse_mail`.

Charset rule (SPEC §2.3), for a part's body and for raw 8-bit header values alike:

1. the declared `charset`, when Python knows it as a text codec and it decodes cleanly;
2. otherwise pure ASCII → ascii, valid UTF-8 → utf-8;
3. otherwise chardet, restricted to the Cyrillic single-byte charsets, with a plausibility check
   (a Russian/Ukrainian text has letters, not pseudo-graphics, and no capital letter right after
   a small one inside a word — the signature of koi8-r ↔ windows-1251 confusion); when chardet
   is not confident, koi8-r wins unless its reading is implausible and another one is not;
4. no clean reading at all (control characters, mostly symbols) → RejectError(PARAMETERS).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.message
import email.policy
import email.utils
import functools
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser

import chardet

from relay.errors import ErrorCode, RejectError

# Limits against hostile structure (the SMTP front caps the size at 100 KiB already, SPEC §2.1).
MAX_MAIL_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 16
MAX_PARTS = 256

# SPEC §2.3: the Cyrillic single-byte candidates, in the order used to break ties.
DEFAULT_CHARSET = "koi8-r"
CYRILLIC_CHARSETS = ("koi8-r", "windows-1251", "cp866", "iso-8859-5", "mac-cyrillic")
_CHARDET_NAMES = {
    "koi8-r": "koi8-r",
    "windows-1251": "windows-1251",
    "ibm866": "cp866",
    "cp866": "cp866",
    "iso-8859-5": "iso-8859-5",
    "maccyrillic": "mac-cyrillic",
    "mac-cyrillic": "mac-cyrillic",
}
# Chardet's confidence on 20–200 character Russian texts is 0.13–0.55 when right; below this it
# is guessing (2-letter words score ~0.003).
MIN_CONFIDENCE = 0.05
# Chardet looks at this much of a text: plenty for a language guess, and bounds the cost.
DETECT_BYTES = 16384
# Candidates scoring within this factor of the best are told apart by plausibility.
NEAR_TIE = 0.8
# At most this share of the non-ASCII characters may be implausible in a clean reading.
MAX_ODD_SHARE = 0.25

# Charset labels seen in mail that Python does not know under that name.
_ALIASES = {
    "x-mac-cyrillic": "mac-cyrillic",
    "x-mac-ukrainian": "mac-cyrillic",
    "win-1251": "windows-1251",
    "x-cp1251": "windows-1251",
    "cp-1251": "windows-1251",
    "windows1251": "windows-1251",
    "koi8r": "koi8-r",
    "x-koi8-r": "koi8-r",
    "koi8": "koi8-r",
    "x-ibm866": "cp866",
    "unicode-1-1-utf-8": "utf-8",
    "utf8mb4": "utf-8",
}
# Text codecs that must never run on input: they interpret escapes or are not charsets.
_FORBIDDEN_CODECS = frozenset(
    {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined", "mbcs", "oem"}
)

# Non-ASCII characters a Cyrillic text plausibly holds besides letters.
_PLAUSIBLE_SYMBOLS = frozenset("«»„“”‘’‚–—…№•·°±§©®™€\u00a0\u00ad")


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """The parts of a received mail the relay uses; header values decoded, "" when absent."""

    subject: str
    from_addr: str
    reply_to: str
    message_id: str
    references: str
    auto_submitted: str  # as written, stripped (compare case-insensitively)
    precedence: str
    body: str  # the chosen part's text (SPEC §2.4), LF line ends, flowed text unwrapped
    content_type: str = ""  # of the chosen part, e.g. "text/plain"; "" when no text part
    charset: str = ""  # the charset the body was read with


def parse_mail(raw: bytes) -> ParsedMail:
    """SPEC §2: decode a raw mail; RejectError(PARAMETERS) when it cannot be read."""
    if len(raw) > MAX_MAIL_BYTES:
        raise RejectError(ErrorCode.PARAMETERS, "mail too large")
    try:
        return _parse(raw)
    except RejectError:
        raise
    except Exception as exc:  # hostile input: any failure of the email package is ERROR 1
        raise RejectError(ErrorCode.PARAMETERS, f"undecodable mail: {type(exc).__name__}") from None


def command_text(mail: ParsedMail) -> str:
    """The command text of a send@ mail: the `[text]…[/text]` span (§2.5), stripped (§2.7)."""
    return extract_text_tags(mail.body).strip().lstrip("\ufeff").strip()


def extract_text_tags(text: str) -> str:
    """SPEC §2.5: what stands between the first `[text]` and the next `[/text]` (tags in any case).

    No `[text]`: the text unchanged. An unclosed `[text]`: everything after it.
    """
    folded = text.lower()
    start = folded.find("[text]")
    if start < 0:
        return text
    start += len("[text]")
    end = folded.find("[/text]", start)
    return text[start:] if end < 0 else text[start:end]


# ---- structure -----------------------------------------------------------------------------


def _parse(raw: bytes) -> ParsedMail:
    simple = _parse_simple(raw)
    return simple if simple is not None else _parse_full(raw)


def _parse_full(raw: bytes) -> ParsedMail:
    """Any mail, through the stdlib `email` parser (compat32: raw header values kept)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    headers = {name.lower(): value for name, value in reversed(list(msg.raw_items()))}
    part = _choose_part(msg)
    if part is None:
        return _finish(headers, msg.get_content_charset() or "", None)
    payload = part.get_payload(decode=True)
    return _finish(
        headers,
        msg.get_content_charset() or "",
        _Body(
            part.get_content_type(),
            payload if isinstance(payload, bytes) else b"",
            part.get_content_charset() or "",
            str(part.get_param("format") or "").lower(),
            str(part.get_param("delsp") or "").lower(),
        ),
    )


@dataclass(frozen=True, slots=True)
class _Body:
    """The chosen part as `_finish` needs it: type, decoded payload, charset and flowed params."""

    content_type: str
    data: bytes
    charset: str  # as declared ("" when absent)
    format: str  # the `format` parameter, lower-cased
    delsp: str


def _finish(headers: dict[str, str], top_declared: str, part: _Body | None) -> ParsedMail:
    """The common tail of both parse paths: header values and the chosen part's text."""
    top_charset = _known_codec(top_declared)

    def header(name: str) -> str:
        value = headers.get(name)
        return _decode_header(value, top_charset) if value is not None else ""

    body = content_type = charset = ""
    if part is not None:
        content_type = part.content_type
        body, charset = decode_bytes(part.data, part.charset)
        body = body.replace("\r\n", "\n").replace("\r", "\n")
        if content_type == "text/html":
            body = html_to_text(body)
        elif part.format == "flowed":
            body = unflow(body, delsp=part.delsp == "yes")
    return ParsedMail(
        subject=header("subject").strip(),
        from_addr=_address(header("from")),
        reply_to=_address(header("reply-to")),
        message_id=header("message-id").strip(),
        references=" ".join(header("references").split()),
        auto_submitted=header("auto-submitted").strip(),
        precedence=header("precedence").strip(),
        body=body,
        content_type=content_type,
        charset=charset,
    )


def _address(value: str) -> str:
    """`email.utils.parseaddr`'s address; remembered for short values (the same few senders
    recur on every mail; long hostile ones are not kept)."""
    return (
        _cached_address(value) if len(value) <= _CACHED_VALUE else email.utils.parseaddr(value)[1]
    )


# Header values up to this long are remembered by the caches below (bounds their memory).
_CACHED_VALUE = 256


@functools.lru_cache(maxsize=1024)
def _cached_address(value: str) -> str:
    return email.utils.parseaddr(value)[1]


# ---- the fast path -------------------------------------------------------------------------
#
# Most command mail is one text/plain part (or no Content-Type) in 7bit/8bit: monitoring tools,
# mailx, devices. For those the stdlib `email` feed parser (≈100 µs, half the pipeline per mail)
# is replaced by a split of the header block; anything the split does not cover exactly as
# `email.message_from_bytes(policy=compat32)` does returns None and takes the full path. The
# property test in tests/unit/test_mail_fast.py checks both paths give the same ParsedMail.

# A header field's name: what `email.feedparser.headerRE` accepts before the colon (non-empty).
_FIELD_NAME = re.compile(r"[\041-\071\073-\176]+")
# Transfer encodings `Message.get_payload(decode=True)` decodes; any other returns the raw body.
_DECODED_CTES = frozenset({"quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"})


def _parse_simple(raw: bytes) -> ParsedMail | None:
    """A single-part text/plain mail with one line-end style in its header, else None."""
    crlf = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    if crlf > 0 and (lf < 0 or crlf < lf):
        head, body, eol = raw[:crlf], raw[crlf + 4 :], "\r\n"
    elif lf > 0 and b"\r" not in raw[:lf]:
        head, body, eol = raw[:lf], raw[lf + 2 :], "\n"
    else:
        return None
    if eol == "\r\n":
        bare = head.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare:
            return None  # a stray CR or LF: the feed parser splits lines there too
    lines = head.decode("ascii", "surrogateescape").split(eol)
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if not fields:
                return None  # a first line that is a continuation: a defect, full path
            name, value = fields[-1]
            fields[-1] = (name, value + eol + line)
            continue
        colon = line.find(":")
        if colon <= 0 or not _FIELD_NAME.fullmatch(line, 0, colon):  # also a unix "From " line
            return None
        fields.append((line[:colon], line[colon + 1 :].lstrip(" \t")))
    headers: dict[str, str] = {}
    for name, value in fields:
        headers.setdefault(name.lower(), value.rstrip("\r\n"))
    declared = headers.get("content-type")
    if declared is not None and len(declared) > _CACHED_VALUE:
        return None  # not worth remembering: the full path reads it
    ctype = _content_type(declared)
    if ctype is None:
        return None
    if headers.get("content-transfer-encoding", "").lower() in _DECODED_CTES:
        return None
    charset, fmt, delsp = ctype
    return _finish(headers, charset, _Body("text/plain", body, charset, fmt, delsp))


@functools.lru_cache(maxsize=256)
def _content_type(value: str | None) -> tuple[str, str, str] | None:
    """(charset, format, delsp) as the stdlib reads them from a text/plain Content-Type value;
    None for any other type. Computed by `email.message.Message` itself, once per distinct value
    (mail from one source repeats the same header), so the fast path cannot read it differently.
    """
    msg = email.message.Message()
    if value is not None:
        msg.set_raw("Content-Type", value)
    if msg.get_content_type() != "text/plain" or msg.get_content_maintype() != "text":
        return None
    return (
        msg.get_content_charset() or "",
        str(msg.get_param("format") or "").lower(),
        str(msg.get_param("delsp") or "").lower(),
    )


def _choose_part(msg: email.message.Message) -> email.message.Message | None:
    """SPEC §2.4: the first text/plain part, else the first text/html; attachments last."""
    leaves: list[email.message.Message] = []
    stack: list[tuple[email.message.Message, int]] = [(msg, 0)]
    seen = 0
    while stack:
        part, depth = stack.pop()
        seen += 1
        if seen > MAX_PARTS or depth > MAX_DEPTH:
            raise RejectError(ErrorCode.PARAMETERS, "mail structure too deep or too wide")
        if part.is_multipart():
            children = part.get_payload()
            if isinstance(children, list):
                stack.extend(
                    (c, depth + 1)
                    for c in reversed(children)
                    if isinstance(c, email.message.Message)
                )
            continue
        leaves.append(part)
    for wanted in ("text/plain", "text/html"):
        for attachments in (False, True):
            for leaf in leaves:
                is_attachment = (leaf.get_content_disposition() or "") == "attachment"
                if leaf.get_content_type() == wanted and is_attachment == attachments:
                    return leaf
    return None


# ---- charsets ------------------------------------------------------------------------------


def _known_codec(label: str) -> str:
    """A usable Python text codec for a charset label, or ""."""
    name = label.strip().strip("\"'").lower()
    if not name or len(name) > 40:
        return ""
    return _codec_name(name)


@functools.lru_cache(maxsize=256)  # the codec registry does not change; labels recur
def _codec_name(name: str) -> str:
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return ""
    if (
        not getattr(info, "_is_text_encoding", True)
        or info.name.replace("-", "_") in _FORBIDDEN_CODECS
    ):
        return ""
    return name


# C0 and C1 controls other than white space, and U+FFFD (a byte some codec could not read).
_UNCLEAN = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")


def _clean(text: str) -> bool:
    """No control characters besides white space (C0 and C1), no undefined code points."""
    return _UNCLEAN.search(text) is None


def decode_bytes(data: bytes, declared: str = "") -> tuple[str, str]:
    """SPEC §2.3: bytes → (text, charset used); RejectError(PARAMETERS) when nothing reads them."""
    codec = _known_codec(declared)
    if codec:
        try:
            text = data.decode(codec)
        except (UnicodeDecodeError, LookupError, ValueError):
            pass
        else:
            if _clean(text) and not (
                codecs.lookup(codec).name in _SINGLE_BYTE and _odd_share(text) > MAX_ODD_SHARE
            ):
                return text, codec
    for strict in ("ascii", "utf-8"):
        try:
            text = data.decode(strict)
        except UnicodeDecodeError:
            continue
        if _clean(text):
            return text.lstrip("\ufeff"), strict
        raise RejectError(ErrorCode.PARAMETERS, "control characters in text")
    return _detect(data)


_SINGLE_BYTE = frozenset(codecs.lookup(c).name for c in CYRILLIC_CHARSETS) | {
    codecs.lookup("iso-8859-1").name,
    codecs.lookup("windows-1252").name,
}


def _odd_share(text: str) -> float:
    """Share of the non-ASCII characters that a Cyrillic (or Latin) text would not hold."""
    high = odd = 0
    for ch in text:
        if ord(ch) < 0x80:
            continue
        high += 1
        if ch not in _PLAUSIBLE_SYMBOLS and not unicodedata.category(ch).startswith("L"):
            odd += 1
    return odd / high if high else 0.0


def _implausibility(text: str) -> int:
    """Odd characters plus case breaks (a capital right after a small Cyrillic letter)."""
    score = 0
    prev_lower = False
    for ch in text:
        if ord(ch) < 0x80:
            prev_lower = False
            continue
        if ch not in _PLAUSIBLE_SYMBOLS and not unicodedata.category(ch).startswith("L"):
            score += 1
        is_cyr = "\u0400" <= ch <= "\u04ff"
        if is_cyr and ch.isupper() and prev_lower:
            score += 1
        prev_lower = is_cyr and ch.islower()
    return score


def _detect(data: bytes) -> tuple[str, str]:
    """SPEC §2.3 detection among the Cyrillic single-byte charsets (koi8-r when unsure)."""
    found = chardet.detect_all(
        data,
        ignore_threshold=True,
        include_encodings=list(CYRILLIC_CHARSETS),
        no_match_encoding=DEFAULT_CHARSET,
        max_bytes=DETECT_BYTES,
    )
    confidence: dict[str, float] = {}
    for result in found:
        name = _CHARDET_NAMES.get(str(result.get("encoding") or "").lower())
        if name and name not in confidence:
            confidence[name] = float(result.get("confidence") or 0.0)
    readings: dict[str, tuple[str, int]] = {}
    for name in CYRILLIC_CHARSETS:
        try:
            text = data.decode(name)
        except UnicodeDecodeError:
            continue
        sample = text[:DETECT_BYTES]  # single-byte: one character per byte
        if _clean(text) and _odd_share(sample) <= MAX_ODD_SHARE:
            readings[name] = (text, _implausibility(sample))
    if not readings:
        raise RejectError(ErrorCode.PARAMETERS, "no charset reads the text")
    top = max(confidence.values(), default=0.0)
    order = {name: i for i, name in enumerate(CYRILLIC_CHARSETS)}
    if top >= MIN_CONFIDENCE:
        near = [n for n in readings if confidence.get(n, 0.0) >= top * NEAR_TIE]
        if near:
            best = min(near, key=lambda n: (readings[n][1], -confidence[n], order[n]))
            if readings[best][1] == 0 or not _clean_alternative(readings, best):
                return readings[best][0], best
    if DEFAULT_CHARSET in readings and readings[DEFAULT_CHARSET][1] == 0:
        return readings[DEFAULT_CHARSET][0], DEFAULT_CHARSET
    best = min(readings, key=lambda n: (readings[n][1], n != DEFAULT_CHARSET, order[n]))
    return readings[best][0], best


def _clean_alternative(readings: dict[str, tuple[str, int]], chosen: str) -> bool:
    """Whether some other reading is fully plausible while the chosen one is not."""
    return any(score == 0 for name, (_, score) in readings.items() if name != chosen)


# ---- headers -------------------------------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s*]{1,40})(?:\*[A-Za-z0-9-]{0,20})?\?([BbQq])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n[ \t]+")


# Charsets (as `_known_codec` names them) that read printable ASCII as itself; for a header
# value in them the decoding below is the identity unless it holds an encoded word.
_ASCII_READ_AS_ITSELF = frozenset({"", "us-ascii", "ascii", "utf-8", "utf8"})


def _decode_header(value: str, fallback_charset: str) -> str:
    """A raw header value → text: unfolded, raw 8-bit bytes read (bsd-mailx), RFC 2047 decoded."""
    if (
        fallback_charset in _ASCII_READ_AS_ITSELF
        and value.isascii()
        and value.isprintable()  # no CR, LF, tab or other control: nothing to unfold or clean
        and "=?" not in value
    ):
        return value  # what `_decode_header_fully` gives, without its steps (bench profile)
    return _decode_header_fully(value, fallback_charset)


def _decode_header_fully(value: str, fallback_charset: str) -> str:
    value = _FOLD.sub(" ", value).replace("\r", "").replace("\n", "")
    data = value.encode("ascii", "surrogateescape")
    try:
        text, _ = decode_bytes(data, fallback_charset)
    except RejectError:
        text = data.decode("ascii", "replace")
    return _decode_words(text)


def _decode_words(text: str) -> str:
    """RFC 2047: decode encoded words; white space between two adjacent ones is dropped."""
    out: list[str] = []
    pos = 0
    previous_was_word = False
    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        if not (previous_was_word and not gap.strip()):
            out.append(gap)
        charset, kind, payload = match.groups()
        decoded = _decode_word(charset, kind.upper(), payload)
        if decoded is None:
            out.append(match.group(0))
            previous_was_word = False
        else:
            out.append(decoded)
            previous_was_word = True
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _decode_word(charset: str, kind: str, payload: str) -> str | None:
    try:
        if kind == "B":
            raw = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        else:
            raw = binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text, _ = decode_bytes(raw, charset)
    except RejectError:
        return None
    return text


# ---- text shapes ---------------------------------------------------------------------------


def unflow(text: str, *, delsp: bool = False) -> str:
    """RFC 3676 format=flowed → plain lines: soft breaks (a trailing space) joined, stuffing undone.

    With DelSp=yes the trailing space of a soft break is removed too. Lines join only with lines
    of the same quote depth; the signature separator `-- ` is never soft.
    """
    out: list[str] = []
    current: str | None = None
    current_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        if content.startswith(" "):
            content = content[1:]  # space-stuffing (RFC 3676 §4.4)
        if current is not None and depth != current_depth:
            out.append(_quoted(current, current_depth))
            current = None
        soft = content.endswith(" ") and content != "-- "
        if soft and delsp:
            content = content[:-1]
        current = content if current is None else current + content
        current_depth = depth
        if not soft:
            out.append(_quoted(current, depth))
            current = None
    if current is not None:
        out.append(_quoted(current, current_depth))
    return "\n".join(out)


def _quoted(line: str, depth: int) -> str:
    return f"{'>' * depth} {line}" if depth else line


class _HtmlText(HTMLParser):
    """HTML → text for SPEC §2.4: tags dropped, breaks kept, script/style/head skipped."""

    _BLOCKS = frozenset(
        {"p", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6"}
        | {"blockquote", "pre", "section", "article", "header", "footer", "dl", "dt", "dd"}
    )
    _SKIP = frozenset({"script", "style", "head", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skipping = 0
        self.pre = 0
        self.open_line = False  # text written since the last line break

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag == "br":
            self._br()
        elif tag in self._BLOCKS:
            self._block()
            if tag == "pre":
                self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._br()
        elif tag in self._BLOCKS:
            self._block()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self._BLOCKS:
            self._block()
            if tag == "pre":
                self.pre = max(0, self.pre - 1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if not self.pre:
            data = re.sub(r"[ \t\r\n\f]+", " ", data)
        self.chunks.append(data)
        if data.strip(" \t\r\n\f"):  # a lone &nbsp; is content: Outlook's empty line
            self.open_line = not data.endswith("\n")

    def _br(self) -> None:
        self.chunks.append("\n")
        self.open_line = False

    def _block(self) -> None:
        # A block boundary is one line break; boundaries do not stack (Outlook writes every
        # line as a <p>), while explicit <br> always count.
        if self.open_line:
            self.chunks.append("\n")
            self.open_line = False


def html_to_text(html: str) -> str:
    """SPEC §2.4: the text of an HTML part (entities unescaped, `&nbsp;` as a plain space)."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.chunks).replace("\u00a0", " ")
    lines = [line.strip(" ") for line in text.split("\n")]
    return "\n".join(lines).strip("\n")
