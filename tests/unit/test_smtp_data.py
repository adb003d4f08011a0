"""relay.smtp_data gives aiosmtpd's DATA verdicts, whatever the chunk boundaries.

The reference below is aiosmtpd 1.4.6's `smtp_DATA` loop restated over the lines its reader
would return (one `readuntil(b"\\r\\n")` per line, an overrun for a line longer than the limit).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.smtp_data import DataBody, DataState, unstuff


def reference(stream: bytes, size_limit: int | None, line_limit: int) -> tuple[DataState, bytes]:
    """aiosmtpd's verdict and content for the bytes before the `.` line (which end in CRLF)."""
    state = DataState.NOMINAL
    num = 0
    data: list[bytes] = []
    for piece in stream.split(b"\r\n")[:-1]:
        line = piece + b"\r\n"
        if len(piece) > line_limit:  # the StreamReader overruns
            if state is DataState.NOMINAL:
                state = DataState.TOO_LONG
            data = []
            num += len(line)
            continue
        num += len(line)
        if state is DataState.NOMINAL and size_limit and num > size_limit:
            state = DataState.TOO_MUCH
            data = []
        if state is DataState.NOMINAL:
            if len(line) > line_limit:
                state = DataState.TOO_LONG
                data = []
            else:
                data.append(line)
    content = b"".join(x[1:] if x.startswith(b".") else x for x in data)
    return state, content if state is DataState.NOMINAL else b""


def ours(
    chunks: list[bytes], size_limit: int | None, line_limit: int, check_every: int
) -> tuple[DataState, bytes]:
    body = DataBody(size_limit, line_limit, check_every=check_every)
    for chunk in chunks:
        body.feed(chunk)
    raw = body.finish()
    return body.state, unstuff(raw) if raw is not None else b""


_PIECES = st.one_of(
    st.sampled_from([b".", b"..", b"a", b" ", b"\r", b"\n", b"\xc3\xa9", b"\xff", b"\r\n"]),
    st.integers(0, 70).map(lambda n: b"x" * n),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    lines = draw(st.lists(st.lists(_PIECES, max_size=6).map(b"".join), max_size=12))
    stream = b"".join(line + b"\r\n" for line in lines)
    # The stream before the terminator holds no `.` line (that would have ended the DATA).
    stream = stream.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    if stream.startswith(b".\r\n"):
        stream = b"." + stream
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, chunks


@settings(max_examples=1500)
@given(
    streams(),
    st.sampled_from([None, 0, 1, 40, 100, 150, 300]),
    st.sampled_from([1, 10, 30, 60, 1001]),
    st.sampled_from([1, 7, 50, 1 << 20]),
)
def test_verdict_and_content_equal_aiosmtpd_line_by_line(
    sample: tuple[bytes, list[bytes]], size_limit: int | None, line_limit: int, check_every: int
) -> None:
    stream, chunks = sample
    assert ours(chunks, size_limit, line_limit, check_every) == reference(
        stream, size_limit, line_limit
    )


@st.composite
def near_limits(draw: st.DrawFn) -> tuple[bytes, list[bytes], int | None, int, int]:
    """Lines around the line limit, a size limit around where the count crosses it, cuts
    anywhere (a CR and its LF in two chunks included)."""
    line_limit = draw(st.integers(1, 12))
    sizes = st.integers(max(0, line_limit - 3), line_limit + 3)
    lines = draw(st.lists(sizes.map(lambda n: b"x" * n), min_size=1, max_size=6))
    stream = b"".join(line + b"\r\n" for line in lines)
    size_limit = draw(st.one_of(st.none(), st.integers(0, len(stream) + 2)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return stream, chunks, size_limit, line_limit, draw(st.sampled_from([1, 3, 1 << 20]))


@settings(max_examples=1500)
@given(near_limits())
def test_verdict_near_the_limits_equals_aiosmtpd(
    sample: tuple[bytes, list[bytes], int | None, int, int],
) -> None:
    stream, chunks, size_limit, line_limit, check_every = sample
    assert ours(chunks, size_limit, line_limit, check_every) == reference(
        stream, size_limit, line_limit
    )


def test_the_first_verdict_wins() -> None:
    long_line, big = b"x" * 20 + b"\r\n", b"y\r\n" * 30
    assert ours([long_line + big], 50, 10, 1 << 20)[0] is DataState.TOO_LONG
    assert ours([big + long_line], 50, 10, 1 << 20)[0] is DataState.TOO_MUCH
    # A line of limit + 1 or + 2 octets with its CRLF passes the reader but not aiosmtpd's
    # later check, which comes after the count: size first.
    assert ours([b"x" * 9 + b"\r\n"], 5, 10, 1 << 20)[0] is DataState.TOO_MUCH
    assert ours([b"x" * 9 + b"\r\n"], 50, 10, 1 << 20)[0] is DataState.TOO_LONG
    assert ours([b"x" * 8 + b"\r\n"], 50, 10, 1 << 20) == (DataState.NOMINAL, b"x" * 8 + b"\r\n")
    assert ours([b"x" * 10 + b"\r\n"], 5, 10, 1 << 20)[0] is DataState.TOO_MUCH
    assert ours([b"x" * 10 + b"\r", b"\n"], 5, 10, 1)[0] is DataState.TOO_MUCH
    assert ours([b"x" * 11 + b"\r\n"], 5, 10, 1 << 20)[0] is DataState.TOO_LONG


def test_an_endless_line_is_dropped_not_held() -> None:
    body = DataBody(None, 100, check_every=1000)
    for _ in range(100):
        body.feed(b"z" * 999)
    assert body.state is DataState.TOO_LONG
    assert body._pending_len == 0  # nothing kept once the verdict is out
    assert body.finish() is None


def test_unstuff_removes_one_dot_per_line_start() -> None:
    assert unstuff(b"..a\r\n.\r\nb.\r\n...\r\n") == b".a\r\n\r\nb.\r\n..\r\n"
    assert unstuff(b"a\n.b\r\n") == b"a\n.b\r\n"  # a bare LF does not start a line
