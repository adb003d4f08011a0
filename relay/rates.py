"""Rate and cost guards: messages per minute and SMS parts per day, per account and per sender.

A looping alert (a monitoring system mailing on every evaluation) must not spend an account's
balance. A guard keeps, per key, the acceptance times of the last minute and the parts of the
current UTC day. The relay keeps that state in the spool (issue 10: it holds across nodes and
restarts, checked and counted in the transaction that stores the request); this module has the
rules: `RateCheck`s ride on a request's admission, `first_exceeded` decides from the `Usage` the
spool read, and `RateGuard` is the same rules over an in-memory state (the reference model).
No I/O; time comes in as `now`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MINUTE = 60.0
DAY = 86400.0
# Keys kept at most (a flood of distinct forged senders must not grow memory without bound).
MAX_KEYS = 50_000


@dataclass(frozen=True, slots=True)
class Limits:
    per_minute: int  # messages (accepted requests); 0 = no limit
    parts_per_day: int  # SMS parts; 0 = no limit


NO_LIMIT = Limits(0, 0)


@dataclass(frozen=True, slots=True)
class RateRules:
    """The guards' configuration (the `[limits]` rate keys; accounts may override theirs)."""

    account: Limits = NO_LIMIT
    sender: Limits = NO_LIMIT
    tempfail: bool = False  # over a limit: 451 for the mail instead of an ERROR 8 reply


@dataclass(frozen=True, slots=True)
class Exceeded:
    scope: str  # "account" or "sender"
    key: str
    what: str  # "rate" or "parts"


@dataclass(frozen=True, slots=True)
class RateCheck:
    """One guard a request must pass: its scope ("account" or "sender"), key and limits."""

    scope: str
    key: str
    limits: Limits

    @property
    def name(self) -> str:
        """The spool's key for this guard's state."""
        return f"{self.scope}:{self.key}"


@dataclass(frozen=True, slots=True)
class Usage:
    """What a guard's key has used: accepted requests in the last minute, parts this UTC day."""

    last_minute: int = 0
    parts_today: int = 0

    def plus(self, parts: int) -> Usage:
        return Usage(self.last_minute + 1, self.parts_today + parts)


def active(checks: tuple[RateCheck, ...]) -> tuple[RateCheck, ...]:
    """The checks that limit anything (a key with no limits keeps no state)."""
    return tuple(c for c in checks if c.limits.per_minute or c.limits.parts_per_day)


def utc_day(now: float) -> int:
    return int(now // DAY)


def first_exceeded(
    checks: tuple[RateCheck, ...], usage: dict[str, Usage], parts: int
) -> Exceeded | None:
    """The first of `checks`, in order, that one more request of `parts` parts would exceed."""
    for check in checks:
        used = usage.get(check.name, Usage())
        limits = check.limits
        if limits.per_minute and used.last_minute + 1 > limits.per_minute:
            return Exceeded(check.scope, check.key, "rate")
        if limits.parts_per_day and used.parts_today + parts > limits.parts_per_day:
            return Exceeded(check.scope, check.key, "parts")
    return None


class _Window:
    __slots__ = ("day", "day_parts", "times")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.day = -1
        self.day_parts = 0

    def sent_last_minute(self, now: float) -> int:
        while self.times and self.times[0] <= now - MINUTE:
            self.times.popleft()
        return len(self.times)

    def parts_today(self, now: float) -> int:
        return self.day_parts if self.day == int(now // DAY) else 0

    def add(self, now: float, parts: int) -> None:
        self.times.append(now)
        today = int(now // DAY)
        if self.day != today:
            self.day, self.day_parts = today, 0
        self.day_parts += parts


class RateGuard:
    """The limits' state; one per process, shared by all SMTP sessions (one event loop)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def check(
        self, scope: str, key: str, limits: Limits, parts: int, now: float
    ) -> Exceeded | None:
        """Would one more request of `parts` parts exceed the limits? (Counts nothing.)"""
        if not limits.per_minute and not limits.parts_per_day:
            return None
        window = self._windows.get((scope, key))
        if window is None:
            window = _Window()
        if limits.per_minute and window.sent_last_minute(now) + 1 > limits.per_minute:
            return Exceeded(scope, key, "rate")
        if limits.parts_per_day and window.parts_today(now) + parts > limits.parts_per_day:
            return Exceeded(scope, key, "parts")
        return None

    def commit(self, scope: str, key: str, limits: Limits, parts: int, now: float) -> None:
        """Count one accepted request."""
        if not limits.per_minute and not limits.parts_per_day:
            return
        window = self._windows.get((scope, key))
        if window is None:
            if len(self._windows) >= MAX_KEYS:
                self._evict(now)
            window = self._windows[(scope, key)] = _Window()
        window.add(now, parts)

    def undo(self, scope: str, key: str, parts: int, now: float) -> None:
        """Take back the last `commit` of this key (its mail was answered 451, not accepted)."""
        window = self._windows.get((scope, key))
        if window is None:
            return
        if window.times:
            window.times.pop()
        if window.day == int(now // DAY):
            window.day_parts = max(0, window.day_parts - parts)

    def _evict(self, now: float) -> None:
        idle = [
            k
            for k, w in self._windows.items()
            if not w.sent_last_minute(now) and w.parts_today(now) == 0
        ]
        for k in idle or list(self._windows)[: MAX_KEYS // 10]:
            del self._windows[k]
