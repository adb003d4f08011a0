"""The send@ command grammar (SPEC §3): command text → `Command`, raw strings kept as written.

    <login>:<psw>:<id>:<time>,<tz>:<translit>,<format>,<sender>,<test>:<phones>:<mes>
    <login>:<psw>:<id>:<time>,<tz>:<translit>,<format>,<sender>,<test>::<list>

This module only splits; the field rules (SPEC §4) live in `relay.fields`. It raises nothing but
`RejectError(ErrorCode.PARAMETERS)`, and every step is a linear scan (no backtracking regex), so a
hostile 100 KiB command with thousands of list lines parses in milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.errors import ErrorCode, RejectError

# SPEC §3: the comment separator (line break, three tildes, line break).
COMMENT_SEPARATOR = "\n~~~\n"

# SPEC §3 prefixes at the start of <mes>: the channel name → whether text follows.
_TEXT_PREFIXES = ("CALL", "VIBER", "SOC", "MAIL", "BOT", "MMS")
_BARE_PREFIXES = ("PING", "HLR")

# Formats whose trailing `subj:` / `voice:` lines are parameters in single mode (SPEC §3, §4).
_SUBJ_FORMATS = frozenset({"7", "8"})
_SUBJ_CHANNELS = frozenset({"MAIL", "MMS"})
_VOICE_FORMATS = frozenset({"9"})
_VOICE_CHANNELS = frozenset({"CALL"})

# A list line's head "phones" (before the first ':' or ';'): numbers, groups or e-mail addresses
# separated by commas. Only used to tell an entry from a continuation line when test = 2.
_PHONE_TOKEN = re.compile(r"\+?[0-9][0-9 ()\-.]*|[Gg][0-9]+|[^\s@,:;]+@[^\s@,:;]+")
_PARAM_LINE = re.compile(r"(subj|voice)[ \t]*:", re.IGNORECASE)

# Items of the compound fields (SPEC §3): anything beyond is a grammar error.
_FLAG_ITEMS = 4


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a command: raw phone tokens (as written), the text to send, the comment."""

    phones: tuple[str, ...]
    text: str
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed send@ command; every field is the raw string the sender wrote ("" when absent)."""

    login: str
    psw: str
    id: str
    time: str
    tz: str
    translit: str
    fmt: str
    sender: str
    test: str
    entries: tuple[Entry, ...]
    list_mode: bool = False
    subj: str = ""
    voice: str = ""
    channel: str = ""  # "", "CALL", "VIBER", "SOC", "MAIL", "BOT", "MMS", "PING" or "HLR"


def _reject(detail: str) -> RejectError:
    return RejectError(ErrorCode.PARAMETERS, detail)


def parse_command(text: str) -> Command:
    """Split a command (SPEC §3); raise RejectError(PARAMETERS) when its shape is wrong."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    parts = text.split(":", 6)
    if len(parts) < 7:
        raise _reject(f"{len(parts)} of 7 ':'-separated fields")
    login, psw, id_, when, flags, phones, mes = parts
    login, psw, id_, when, flags, phones = (
        f.strip() for f in (login, psw, id_, when, flags, phones)
    )
    if not login or not psw:
        raise _reject("login and psw are required")
    for name, value in (("login", login), ("psw", psw), ("id", id_), ("time", when)):
        if "\n" in value:
            raise _reject(f"line break in {name}")
    if "\n" in flags or "\n" in phones:
        raise _reject("line break in the fixed fields")

    time, _, tz = when.partition(",")
    items = flags.split(",")
    if len(items) > _FLAG_ITEMS:
        raise _reject("more than 4 items in <translit>,<format>,<sender>,<test>")
    items += [""] * (_FLAG_ITEMS - len(items))
    translit, fmt, sender, test = (i.strip() for i in items)

    if phones:
        return _single(
            login, psw, id_, time.strip(), tz.strip(), translit, fmt, sender, test, phones, mes
        )
    return _listed(login, psw, id_, time.strip(), tz.strip(), translit, fmt, sender, test, mes)


def _single(
    login: str,
    psw: str,
    id_: str,
    time: str,
    tz: str,
    translit: str,
    fmt: str,
    sender: str,
    test: str,
    phones: str,
    mes: str,
) -> Command:
    tokens = _split_phones(phones)
    if not tokens:
        raise _reject("no phones")
    body, comment = split_comment(mes)
    channel, body = _channel(body)
    # Trailing parameter lines are taken only where they mean something (mail/mms subject, call
    # voice): a plain SMS that happens to end in "voice: …" is sent as written.
    wanted: set[str] = set()
    if fmt in _SUBJ_FORMATS or channel in _SUBJ_CHANNELS:
        wanted.add("subj")
    if fmt in _VOICE_FORMATS or channel in _VOICE_CHANNELS:
        wanted.add("voice")
    body, params = _trailing_params(body, wanted)
    subj = params.get("subj", "")
    voice = params.get("voice", "")
    return Command(
        login=login,
        psw=psw,
        id=id_,
        time=time,
        tz=tz,
        translit=translit,
        fmt=fmt,
        sender=sender,
        test=test,
        entries=(Entry(phones=tokens, text=body.strip(), comment=comment),),
        list_mode=False,
        subj=subj,
        voice=voice,
        channel=channel,
    )


def _listed(
    login: str,
    psw: str,
    id_: str,
    time: str,
    tz: str,
    translit: str,
    fmt: str,
    sender: str,
    test: str,
    listing: str,
) -> Command:
    lines = listing.split("\n")
    # Trailing `subj:` / `voice:` lines at the end of the list are parameters (SPEC §3).
    params: dict[str, str] = {}
    while lines and (not lines[-1].strip() or _PARAM_LINE.match(lines[-1].lstrip())):
        line = lines.pop().strip()
        if line:
            key, _, value = line.partition(":")
            params.setdefault(key.strip().lower(), value.strip())
    multiline = test == "2"
    raw: list[tuple[tuple[str, ...], list[str]]] = []
    for line in lines:
        head, body = _list_line(line)
        if head is None:
            if multiline and raw:
                raw[-1][1].append(line)
                continue
            if not line.strip():
                continue
            raise _reject("a list line without 'phones:' or 'phones;'")
        tokens = _split_phones(head, separators=",")
        if not tokens:
            raise _reject("a list line without phones")
        raw.append((tokens, [body]))
    if not raw:
        raise _reject("empty list")

    entries: list[Entry] = []
    channels: set[str] = set()
    for tokens, chunks in raw:
        mes = "\n".join(chunks).replace("\\n", "\n")
        body, comment = split_comment(mes)
        channel, body = _channel(body)
        channels.add(channel)
        entries.append(Entry(phones=tokens, text=body.strip(), comment=comment))
    if len(channels) > 1:
        raise _reject("list entries name different channels")
    return Command(
        login=login,
        psw=psw,
        id=id_,
        time=time,
        tz=tz,
        translit=translit,
        fmt=fmt,
        sender=sender,
        test=test,
        entries=tuple(entries),
        list_mode=True,
        subj=params.get("subj", ""),
        voice=params.get("voice", ""),
        channel=channels.pop(),
    )


def _list_line(line: str) -> tuple[str | None, str]:
    """`phones:mes` or `phones;mes` → (phones, mes); (None, line) when the head is no phone list."""
    cut = -1
    for i, ch in enumerate(line):
        if ch in ":;":
            cut = i
            break
    if cut < 0:
        return None, line
    head = line[:cut]
    tokens = [t.strip() for t in head.split(",")]
    if not tokens or not all(_PHONE_TOKEN.fullmatch(t) for t in tokens):
        return None, line
    return head, line[cut + 1 :]


def _split_phones(field: str, separators: str = ",;") -> tuple[str, ...]:
    """Raw phone tokens: split on the separators, edges stripped, empty tokens dropped."""
    for sep in separators[1:]:
        field = field.replace(sep, separators[0])
    return tuple(t for t in (p.strip() for p in field.split(separators[0])) if t)


def split_comment(mes: str) -> tuple[str, str]:
    """SPEC §3: `\\n~~~\\n` ends the text; the rest is the comment (for format 9, the `param`).

    A final `\\n~~~` with nothing after it counts too: §2.7 strips the mail's trailing line break.
    """
    text, sep, comment = mes.partition(COMMENT_SEPARATOR)
    if sep:
        return text, comment
    if mes.endswith(COMMENT_SEPARATOR[:-1]):
        return mes[: -len(COMMENT_SEPARATOR) + 1], ""
    return mes, ""


def _channel(text: str) -> tuple[str, str]:
    """SPEC §3 prefixes: `__CALL__: text` … → ("CALL", "text"); `__PING__` → ("PING", "")."""
    stripped = text.lstrip()
    if not stripped.startswith("__"):
        return "", text
    for name in _TEXT_PREFIXES + _BARE_PREFIXES:
        tag = f"__{name}__"
        if stripped.startswith(tag):
            rest = stripped[len(tag) :]
            if rest.startswith(":"):
                rest = rest[1:]
            elif rest and not rest[0].isspace():
                continue  # `__CALLER__…` is text, not a prefix
            return name, rest.lstrip(" \t")
    return "", text


def _trailing_params(body: str, wanted: set[str]) -> tuple[str, dict[str, str]]:
    """Pop wanted `subj:…` / `voice:…` lines from the end of a message (SPEC §3).

    The message keeps at least its first line; the last line of a kind wins over earlier ones.
    """
    if not wanted:
        return body, {}
    lines = body.rstrip().split("\n")
    params: dict[str, str] = {}
    while len(lines) > 1:
        match = _PARAM_LINE.match(lines[-1].lstrip())
        if not match or match.group(1).lower() not in wanted:
            break
        key, _, value = lines.pop().strip().partition(":")
        params.setdefault(key.strip().lower(), value.strip())
    return "\n".join(lines), params
