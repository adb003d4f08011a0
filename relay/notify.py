"""Tell systemd about the daemon's state (sd_notify): ready, reloading, stopping, watchdog pings.

Why no library: the protocol is one AF_UNIX datagram of `KEY=VALUE` lines sent to the socket named
in `$NOTIFY_SOCKET` (sd_notify(3)); the Python packages for it are either unmaintained
(`sdnotify`) or need libsystemd and a C build (`systemd-python`). The standard library does it in
a dozen lines, and without systemd (no `$NOTIFY_SOCKET`) every call is a cheap no-op.

A failed notification never raises: the relay must keep serving mail even if PID 1 cannot be told.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("relay.notify")

# sd_notify blocks on a full receive queue; systemd's is large, but never hang the event loop on it.
SEND_TIMEOUT = 1.0


def _address(value: str) -> str | None:
    """`$NOTIFY_SOCKET` → a socket address: a filesystem path, or `@name` for the abstract one."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace: a leading NUL byte, no file
    return None  # relative paths are not allowed; `vsock:` (systemd 253+) is not supported here


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (newline-separated `KEY=VALUE` lines) to systemd.

    Returns True when the datagram was sent; False when not running under systemd
    (`$NOTIFY_SOCKET` unset or empty) or when sending failed (logged, never raised).
    """
    env = os.environ if environ is None else environ
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("NOTIFY_SOCKET=%r is not a path or @abstract socket; not notifying", value)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message.encode("utf-8"), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %r: %s", value, exc)
        return False
    return True


def ready(*, environ: Mapping[str, str] | None = None) -> bool:
    """Startup (or a reload) is complete: listening sockets are open, the spool is open."""
    return notify("READY=1", environ=environ)


def stopping(*, environ: Mapping[str, str] | None = None) -> bool:
    """A stop was requested and the daemon is draining (systemd shows `deactivating`)."""
    return notify("STOPPING=1", environ=environ)


def reloading(
    *, monotonic_usec: int | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """A reload (SIGHUP) started; send `ready()` when it is done.

    systemd 253+ (`Type=notify-reload`) wants MONOTONIC_USEC (CLOCK_MONOTONIC in µs) in the same
    datagram so it can tell this reload from an earlier one; older versions ignore the extra line.
    """
    if monotonic_usec is None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}", environ=environ)


def watchdog(*, environ: Mapping[str, str] | None = None) -> bool:
    """Keep-alive ping for `WatchdogSec=`; send it every `watchdog_interval() / 2` seconds."""
    return notify("WATCHDOG=1", environ=environ)


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line status shown by `systemctl status` (one line: newlines would start new keys)."""
    return notify("STATUS=" + " ".join(text.splitlines()), environ=environ)


def watchdog_interval(*, environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds when systemd expects pings from this process, else None.

    Same rules as sd_watchdog_enabled(3): `$WATCHDOG_USEC` must be a positive integer, and when
    `$WATCHDOG_PID` is set it must be this process's pid (the variables may be inherited by a
    child that is not the one being watched).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
