"""The `<time>,<tz>` rule (SPEC §4): the sender's schedule text → a UTC instant, or None for now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from relay.errors import ErrorCode, RejectError

# SPEC §4: tz is in hours relative to Moscow time, which is UTC+3 (no DST since 2014).
MOSCOW_UTC_OFFSET = 3
# Real zones span UTC-12 … UTC+14, i.e. Moscow-15 … Moscow+11.
TZ_MIN, TZ_MAX = -15, 11
# `+<minutes>`: at most a year ahead; longer is surely a mistake (and keeps datetime in range).
MAX_DELAY_MINUTES = 366 * 24 * 60

_COMPACT = re.compile(r"(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})")  # DDMMYYhhmm
_DOTTED = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{2}|\d{4})[ \t]+(\d{1,2})[.:](\d{2})")
_WINDOW = re.compile(r"(\d{1,2})[ \t]*-[ \t]*(\d{1,2})")
_UNIX = re.compile(r"0(\d{1,12})")
_RELATIVE = re.compile(r"\+[ \t]*(\d{1,9})")
_TZ = re.compile(r"[+-]?\d{1,3}")


def _bad(detail: str) -> RejectError:
    return RejectError(ErrorCode.DATE_FORMAT, detail)


def parse_tz(tz_raw: str, account_tz: int) -> timezone:
    """SPEC §4 `tz`: hours relative to Moscow (may be negative); empty → the account's `tz`."""
    raw = tz_raw.strip()
    if not raw:
        hours = account_tz
    elif _TZ.fullmatch(raw):
        hours = int(raw)
    else:
        raise _bad(f"tz {tz_raw!r}")
    if not TZ_MIN <= hours <= TZ_MAX:
        raise _bad(f"tz {hours} out of range")
    return timezone(timedelta(hours=MOSCOW_UTC_OFFSET + hours))


def parse_when(time_raw: str, tz_raw: str, account_tz: int, now: datetime) -> datetime | None:
    """SPEC §4 `time`: the UTC instant to send at, or None for "now" (also for any past time).

    `account_tz` is the account's `tz` (hours relative to Moscow, like the `tz` field).
    `now` must be aware; a naive `now` is taken as UTC.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.astimezone(UTC)
    zone = parse_tz(tz_raw, account_tz)
    raw = time_raw.strip()
    if raw in ("", "0"):
        return None
    at = _instant(raw, zone, now)
    return at if at > now else None


def _instant(raw: str, zone: timezone, now: datetime) -> datetime:
    if m := _COMPACT.fullmatch(raw):
        day, month, year, hour, minute = (int(g) for g in m.groups())
        return _local(2000 + year, month, day, hour, minute, zone)
    if m := _UNIX.fullmatch(raw):
        try:
            return datetime.fromtimestamp(int(m.group(1)), UTC)
        except (OverflowError, OSError, ValueError):
            raise _bad(f"timestamp {raw!r}") from None
    if m := _DOTTED.fullmatch(raw):
        day, month, year, hour, minute = (int(g) for g in m.groups())
        return _local(year if year >= 100 else 2000 + year, month, day, hour, minute, zone)
    if m := _RELATIVE.fullmatch(raw):
        minutes = int(m.group(1))
        if minutes > MAX_DELAY_MINUTES:
            raise _bad(f"delay {raw!r} over a year")
        return now + timedelta(minutes=minutes)
    if m := _WINDOW.fullmatch(raw):
        return _window(int(m.group(1)), int(m.group(2)), zone, now)
    raise _bad(f"time {raw!r}")


def _local(year: int, month: int, day: int, hour: int, minute: int, zone: timezone) -> datetime:
    try:
        return datetime(year, month, day, hour, minute, tzinfo=zone).astimezone(UTC)
    except ValueError:
        raise _bad("no such date") from None


def _window(h1: int, h2: int, zone: timezone, now: datetime) -> datetime:
    """`h1-h2`: before h1 → h1 today; within → now; after h2 → h1 the next day (local to `zone`).

    A window over midnight (`22-6`) is understood as such; `h1` = `h2` is an empty window.
    """
    if not (0 <= h1 <= 24 and 0 <= h2 <= 24):
        raise _bad(f"hour window {h1}-{h2}")
    h1 %= 24
    local = now.astimezone(zone)
    hour = local.hour
    within = h1 <= hour < h2 if h1 <= h2 else (hour >= h1 or hour < h2)
    if within:
        return now
    start = local.replace(hour=h1, minute=0, second=0, microsecond=0)
    if start <= local:
        start += timedelta(days=1)
    return start.astimezone(UTC)
