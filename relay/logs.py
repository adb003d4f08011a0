"""Logging setup: one line per event, plain or JSON (SPEC §10 `log.format`), never a password.

Event lines carry their ids as `extra=` fields (`request_id`, `job`, `message_id`, `login`,
`code`, `stat`): the JSON formatter writes them as keys, the plain format has them in the text.
A redaction filter on the handler replaces every configured secret (SMPP password, account
passwords and API keys) with `***` in whatever reaches the output, as a second line of defence
behind the rule that no code logs a secret or a command mail's `psw` field.

The event loop only makes the record (and its message): redaction, formatting and the write
happen on a writer thread, a batch of lines per write (issue 9: at thousands of submits a
second, formatting and one write syscall per line were ≈25 % of the event loop's time).
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from relay.config import LogConfig, RelayConfig

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_STANDARD |= {"message", "asctime", "taskName"}
MASK = "***"
# Secrets shorter than this are not masked: masking "1" would shred every line with a digit.
MIN_SECRET_LENGTH = 4


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the `extra=` ids (+ exception)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = vars(record)
        for key in fields.keys() - _STANDARD:
            if not key.startswith("_"):
                value = fields[key]
                out[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """`time level logger: message`; the time as logging's default, formatted once a second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        """What logging.Formatter.format makes of this format, without its generic machinery
        (it runs once per submitted part)."""
        text = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
        return f"{self._stamp},{int(record.msecs):03d}"


class Redactor(logging.Filter):
    """Masks known secrets in a record's message, `extra=` fields and exception text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        """Replace the set of secrets (SIGHUP may bring new passwords)."""
        usable = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        self.secrets = tuple(sorted(usable, key=len, reverse=True))  # longest first

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if masked != message:
            record.msg, record.args = masked, ()
        fields = vars(record)
        for key in fields.keys() - _STANDARD:
            value = fields[key]
            if isinstance(value, str):
                fields[key] = self.mask(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


def secrets_of(cfg: RelayConfig) -> list[str]:
    """Every secret the config holds, to be masked in logs."""
    out = [cfg.smpp.password]
    for account in cfg.accounts:
        out += [account.password, account.api_key]
    return [s for s in out if s]


class LineWriter:
    """Redacts, formats and writes log records on a thread of its own, a batch per write.

    Hand-written rather than logging.handlers.QueueListener, which calls the target handler
    once per record (a write and a flush per line); this one drains what is queued and writes
    it at once. `close()` (also at exit) writes what is left.
    """

    # Lines per write. Small enough that formatting a batch holds the GIL briefly: the event
    # loop and the spool thread must not wait behind the log (they would, up to the 5 ms
    # switch interval, for a long batch).
    _BATCH = 64
    # After a batch that did not fill up, wait this long (seconds) before taking the next: under
    # a steady trickle (a line per mail at ingest) each line would otherwise cost a thread
    # wake-up, a GIL hand-off and a write of its own (bench ingest: 25 µs of CPU per mail).
    # Lines reach the stream at most this much later; a full batch goes on at once.
    _LINGER = 0.005

    def __init__(self, stream: TextIO, formatter: logging.Formatter, redactor: Redactor) -> None:
        self.stream = stream
        self.formatter = formatter
        self.redactor = redactor
        self._queue: queue.SimpleQueue[logging.LogRecord | threading.Event | None]
        self._queue = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def put(self, record: logging.LogRecord) -> None:
        self._queue.put(record)

    def flush(self, timeout: float = 5.0) -> None:
        """Return once every record queued before this call is written."""
        if self._closed or not self._thread.is_alive():
            return  # close() wrote everything (at exit it runs before logging.shutdown)
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self._BATCH:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines: list[str] = []
            done: list[threading.Event] = []
            stop = False
            for item in items:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    done.append(item)
                else:
                    lines.append(self._line(item))
            if lines:
                try:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):  # stderr gone (closed pipe): nothing to do
                    pass
            for event in done:
                event.set()
            if stop:
                return
            if len(items) < self._BATCH:
                time.sleep(self._LINGER)

    def _line(self, record: logging.LogRecord) -> str:
        try:
            if isinstance(self.formatter, PlainFormatter):
                # The plain line shows no `extra=` field apart from the text: mask the line.
                return self.redactor.mask(self.formatter.format(record))
            self.redactor.filter(record)
            return self.formatter.format(record)
        except Exception as exc:  # a bad record must not stop the log
            return f"(unformattable log record from {record.name}: {exc!r})"


class QueuedHandler(logging.Handler):
    """The event loop's side of `LineWriter`: the message is made here (its arguments may
    change later), everything else happens on the writer thread."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: put is atomic
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # the text is kept; tracebacks stay on this thread
            self.writer.put(record)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        super().close()


def setup_logging(cfg: LogConfig, secrets: Iterable[str] = ()) -> Redactor:
    """Configure the root logger on stderr (via the writer thread); return the redaction
    filter (updated on SIGHUP)."""
    formatter: logging.Formatter = JsonFormatter() if cfg.format == "json" else PlainFormatter()
    redactor = Redactor(secrets)
    handler = QueuedHandler(LineWriter(sys.stderr, formatter, redactor))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, QueuedHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level.upper())
    # The logging HOWTO's "Optimization": no format here uses the caller's file/line, thread or
    # process, so the record does not collect them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiosmtpd logs every command line at INFO on "mail.log", AUTH payloads (base64
    # credentials) included: only its warnings and errors reach our log.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    return redactor
