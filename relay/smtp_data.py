"""PURE  the DATA bytes of one mail, checked as aiosmtpd 1.4 checks them line by line.

aiosmtpd reads DATA with one `readuntil(b"\\r\\n")` per line and checks every line as it comes;
the session (`relay.smtp_session`) reads it in a few large chunks instead, and this module gives
the same verdict on the same bytes (RFC 5321 §4.5.2 transparency, §4.5.3.1.6 line length):

- a line whose text (before its CRLF) is longer than the reader's limit makes the mail
  `TOO_LONG` (aiosmtpd's reader overruns on it);
- the octets of the lines, CRLFs and stuffed dots included, are counted line by line: when the
  count passes the size limit the mail is `TOO_MUCH`;
- then a line longer than the limit *with* its CRLF is `TOO_LONG` (aiosmtpd's defensive check,
  made after the count);
- the first of these to happen wins; after it the bytes are only drained, not kept.

`DataBody` holds the chunks unchecked while they are small (the common mail: no check at all
beyond two comparisons), and checks the complete lines whenever it holds more than
`CHECK_EVERY` octets, so a client streaming an endless mail costs bounded memory, as in aiosmtpd.
"""

from __future__ import annotations

import enum

CRLF = b"\r\n"

# Complete lines are checked (and dropped once the verdict is not NOMINAL) whenever this many
# octets are held: bounds the memory of an oversized or endless DATA.
CHECK_EVERY = 1 << 20


class DataState(enum.Enum):
    """aiosmtpd's `_DataState`: the verdict on a DATA transfer."""

    NOMINAL = enum.auto()
    TOO_LONG = enum.auto()  # "500 Line too long (see RFC5321 4.5.3.1.6)"
    TOO_MUCH = enum.auto()  # "552 Error: Too much mail data"


class DataBody:
    """The octets between `354` and the terminating `.` line, without the terminator."""

    def __init__(
        self, size_limit: int | None, line_limit: int, *, check_every: int = CHECK_EVERY
    ) -> None:
        self._size_limit = size_limit or 0
        self._line_limit = line_limit
        self._check_every = check_every
        self._checked: list[bytes] = []  # complete lines, checked: NOMINAL so far
        self._pending: list[bytes] = []  # unchecked, starting at a line start
        self._pending_len = 0
        self._counted = 0  # octets of the checked lines (aiosmtpd's num_bytes)
        self.state = DataState.NOMINAL

    def feed(self, chunk: bytes) -> None:
        """The next octets of the stream (any boundaries; never the terminator)."""
        if self.state is not DataState.NOMINAL or not chunk:
            return  # aiosmtpd discards the data once the verdict is out; only draining is left
        self._pending.append(chunk)
        self._pending_len += len(chunk)
        if self._pending_len > self._check_every:
            self._check(final=False)

    def finish(self) -> bytes | None:
        """The raw mail (dots still stuffed) when NOMINAL, else None (see `state`).

        The stream before the terminator ends with a CRLF (or is empty), so every line held is
        complete here."""
        if self.state is DataState.NOMINAL:
            held = self._pending_len
            # The fast path: no pending line is longer than all of them together, and the count
            # cannot pass the size limit.
            if held > self._line_limit or (
                self._size_limit and self._counted + held > self._size_limit
            ):
                self._check(final=True)
        if self.state is not DataState.NOMINAL:
            return None
        data = b"".join(self._checked + self._pending)
        self._checked = self._pending = []
        return data

    def _check(self, *, final: bool) -> None:
        data = b"".join(self._pending)
        if final:
            end = len(data)
        else:  # up to the last CRLF: the line after it may still grow
            last = data.rfind(CRLF)
            end = last + 2 if last >= 0 else 0
        state, self._counted = check_lines(
            data, end, self._counted, self._size_limit, self._line_limit
        )
        rest = data[end:]
        if state is DataState.NOMINAL and len(rest) > self._line_limit + 1:
            # A line already longer than the reader's limit without its CRLF, however it ends:
            # aiosmtpd's reader overruns on it.
            state = DataState.TOO_LONG
        self.state = state
        if state is DataState.NOMINAL:
            if end:
                self._checked.append(data[:end])
            self._pending = [rest] if rest else []
            self._pending_len = len(rest)
        else:
            self._checked = self._pending = []
            self._pending_len = 0


def check_lines(
    data: bytes, end: int, counted: int, size_limit: int, line_limit: int
) -> tuple[DataState, int]:
    """aiosmtpd's per-line checks over the complete lines `data[:end]`, after `counted` octets
    of earlier lines: the verdict and the new count."""
    state = DataState.NOMINAL
    start = 0
    while start < end:
        stop = data.index(CRLF, start, end) + 2
        length = stop - start
        if length - 2 > line_limit:  # the reader overruns: TOO_LONG before the line is counted
            return DataState.TOO_LONG, counted + length
        counted += length
        if size_limit and counted > size_limit:
            return DataState.TOO_MUCH, counted
        if length > line_limit:
            return DataState.TOO_LONG, counted
        start = stop
    return state, counted


def unstuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2: the first `.` of every line that starts with one is removed."""
    if data[:1] == b".":
        data = data[1:]
    if b"\r\n." in data:
        data = data.replace(b"\r\n.", CRLF)
    return data
