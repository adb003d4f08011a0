"""relay.notify: the exact sd_notify datagrams, on a real AF_UNIX socket standing in for systemd."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from relay import notify


class FakeSystemd:
    """A bound AF_UNIX datagram socket, as PID 1 holds for `$NOTIFY_SOCKET`."""

    def __init__(self, env_value: str, bind_address: str) -> None:
        self.env = {"NOTIFY_SOCKET": env_value}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_address)
        self.sock.settimeout(2.0)

    def received(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def path_systemd() -> Iterator[FakeSystemd]:
    # A short directory: sun_path holds at most 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sd-") as d:
        path = os.path.join(d, "notify")
        fake = FakeSystemd(path, path)
        yield fake
        fake.sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = "sms-relay-test-" + secrets.token_hex(8)
    fake = FakeSystemd("@" + name, "\0" + name)
    yield fake
    fake.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(
    request: pytest.FixtureRequest, path_systemd: FakeSystemd, abstract_systemd: FakeSystemd
) -> FakeSystemd:
    return path_systemd if request.param == "path" else abstract_systemd


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (notify.ready, b"READY=1"),
        (notify.stopping, b"STOPPING=1"),
        (notify.watchdog, b"WATCHDOG=1"),
    ],
    ids=["ready", "stopping", "watchdog"],
)
def test_helpers_send_the_exact_datagram(
    systemd: FakeSystemd, send: Callable[..., bool], expected: bytes
) -> None:
    assert send(environ=systemd.env) is True
    assert systemd.received() == expected
    assert systemd.nothing_pending()


def test_reloading_carries_the_given_monotonic_time(systemd: FakeSystemd) -> None:
    assert notify.reloading(monotonic_usec=123456789, environ=systemd.env) is True
    assert systemd.received() == b"RELOADING=1\nMONOTONIC_USEC=123456789"


def test_reloading_defaults_to_clock_monotonic_in_microseconds(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading(environ=systemd.env) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.received().split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_notify_sends_text_as_utf8_unchanged(systemd: FakeSystemd) -> None:
    assert notify.notify("STATUS=Доставка\nERRNO=0", environ=systemd.env) is True
    assert systemd.received() == "STATUS=Доставка\nERRNO=0".encode()


def test_status_is_kept_on_one_line(systemd: FakeSystemd) -> None:
    assert notify.status("3 binds up\nspool ok", environ=systemd.env) is True
    assert systemd.received() == b"STATUS=3 binds up spool ok"


def test_reads_notify_socket_from_the_process_environment(
    path_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_systemd.env["NOTIFY_SOCKET"])
    assert notify.ready() is True
    assert path_systemd.received() == b"READY=1"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_without_systemd_every_helper_is_a_no_op(env: dict[str, str]) -> None:
    assert notify.notify("READY=1", environ=env) is False
    assert notify.ready(environ=env) is False
    assert notify.stopping(environ=env) is False
    assert notify.reloading(environ=env) is False
    assert notify.watchdog(environ=env) is False


def test_unset_in_the_process_environment_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False


@pytest.mark.parametrize(
    "value",
    ["relative/socket", "@", "vsock:2:1234", "/nonexistent-dir-for-sms-relay/notify"],
    ids=["relative", "bare-at", "vsock", "missing-path"],
)
def test_a_bad_or_dead_socket_returns_false_and_never_raises(value: str) -> None:
    assert notify.ready(environ={"NOTIFY_SOCKET": value}) is False


def test_a_socket_nobody_listens_on_returns_false() -> None:
    with tempfile.TemporaryDirectory(prefix="sd-") as d:
        path = os.path.join(d, "gone")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.close()  # the file stays, nothing receives: ECONNREFUSED
        assert notify.ready(environ={"NOTIFY_SOCKET": path}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert notify.watchdog_interval(environ=env) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 20.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert notify.watchdog_interval() is None
