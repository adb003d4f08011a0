"""The log pipeline (relay.logs): records made on the caller's thread, redacted, formatted and
written in batches by the writer thread; nothing lost, no secret shown."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from relay.logs import JsonFormatter, LineWriter, PlainFormatter, QueuedHandler, Redactor


@pytest.fixture
def logger() -> logging.Logger:
    log = logging.getLogger("test.relay.logs")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    return log


def _attach(log: logging.Logger, fmt: logging.Formatter) -> tuple[io.StringIO, QueuedHandler]:
    out = io.StringIO()
    handler = QueuedHandler(LineWriter(out, fmt, Redactor(["s3cret-pass"])))
    log.handlers[:] = [handler]
    return out, handler


def test_every_line_from_several_threads_is_written_once_in_order_per_thread(
    logger: logging.Logger,
) -> None:
    out, handler = _attach(logger, PlainFormatter())

    def emit(t: int) -> None:
        for i in range(2000):
            logger.info("submitted t=%d n=%d", t, i, extra={"job": i})

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    handler.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6000
    for t in range(3):
        mine = [int(x.rsplit("n=", 1)[1]) for x in lines if f" t={t} " in x]
        assert mine == list(range(2000))
    assert all(" INFO test.relay.logs: submitted t=" in x for x in lines)
    handler.close()


def test_the_message_is_made_at_the_call_not_when_written(logger: logging.Logger) -> None:
    out, handler = _attach(logger, PlainFormatter())
    changing = ["before"]
    logger.info("value %s", changing)
    changing[0] = "after"
    handler.flush()
    assert out.getvalue().rstrip().endswith("value ['before']")
    handler.close()


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secrets_are_masked_and_exceptions_kept(logger: logging.Logger, fmt: str) -> None:
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else PlainFormatter()
    out, handler = _attach(logger, formatter)
    try:
        raise ValueError("bad s3cret-pass")
    except ValueError:
        logger.exception("failed for %s", "s3cret-pass", extra={"login": "x s3cret-pass"})
    handler.close()  # writes what is left
    text = out.getvalue()
    assert "s3cret-pass" not in text
    assert "ValueError: bad ***" in text
    if fmt == "json":
        [record] = [json.loads(x) for x in text.splitlines()]
        assert record["msg"] == "failed for ***" and record["login"] == "x ***"
        assert "Traceback" in record["exc"]


def test_plain_time_is_loggings_default_format(logger: logging.Logger) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert PlainFormatter().formatTime(record) == logging.Formatter().formatTime(record)


def test_plain_lines_are_what_logging_makes_of_the_format(logger: logging.Logger) -> None:
    std = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    ours = PlainFormatter()
    try:
        raise KeyError("k")
    except KeyError:
        import sys

        exc = sys.exc_info()
    for args in ((None, None), (None, exc)):
        record = logging.LogRecord("relay.x", logging.WARNING, __file__, 1, "a %s b", ("1",), None)
        record.exc_info = args[1]
        assert ours.format(record) == std.format(record)


def test_flush_after_close_returns_at_once(logger: logging.Logger) -> None:
    # At exit our atexit close() runs before logging.shutdown() flushes every handler.
    import time

    out, handler = _attach(logger, PlainFormatter())
    logger.info("last words")
    handler.writer.close()
    started = time.monotonic()
    handler.flush()
    assert time.monotonic() - started < 0.5
    assert out.getvalue().rstrip().endswith("last words")


def test_a_trickle_of_lines_is_written_in_batches() -> None:
    """Issue 9 (ingest): one line per accepted mail must not cost a wake-up and a write each;
    after a batch that did not fill up the writer waits `_LINGER` and takes what came meanwhile."""
    import time

    class Stream(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []
            self.first = threading.Event()

        def write(self, s: str) -> int:
            self.writes.append(s)
            self.first.set()
            return len(s)

    class Writer(LineWriter):
        _LINGER = 0.5  # long, so that the test does not depend on the machine's speed

    out = Stream()
    writer = Writer(out, PlainFormatter(), Redactor())
    log = logging.getLogger("test.trickle")

    def record(i: int) -> logging.LogRecord:
        return log.makeRecord(log.name, logging.INFO, __file__, 1, "line %d", (i,), None)

    try:
        writer.put(record(0))
        assert out.first.wait(5)
        for i in range(1, 6):  # a trickle: each line alone in the queue for 10 ms
            writer.put(record(i))
            time.sleep(0.01)
        writer.flush()
    finally:
        writer.close()
    lines = "".join(out.writes).splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(6)]
    assert len(out.writes) == 2  # the first line, then the other five together
