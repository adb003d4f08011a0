"""Child processes of a benchmark (relay, sinks), their ports and RSS; all stopped on exit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from relay.passwords import hash_password
from tests.integration.harness import free_port, write_config

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "bench-pass"
START_TIMEOUT = 20.0


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not listen on {port} within {timeout} s")


def rss_mb(pid: int) -> float:
    """Resident set size from /proc (Linux), in MiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) per thread id of a process (Linux /proc); {} when gone.

    Python 3.11 does not name its threads for the kernel: the event loop is the thread whose id
    is the pid; the others appear in the order they were started."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (the relay's SMTP workers), from /proc; [] when none."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its direct children (the relay with its SMTP workers), in MiB."""
    return rss_mb(pid) + sum(rss_mb(k) for k in child_pids(pid))


@dataclass
class RssSampler:
    """Samples the RSS of a process and its children every `interval` s in a thread; `peak` is
    the largest seen."""

    pid: int
    interval: float = 0.1
    peak: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            self._stop.wait(self.interval)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL when it has not exited within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Procs:
    """Starts child processes in a work directory and stops every one of them on exit."""

    def __init__(self, workdir: Path, profile: Path | None = None) -> None:
        self.workdir = workdir
        self.profile = profile  # attach py-spy to every relay; raw stacks land here
        self.children: list[subprocess.Popen[bytes]] = []
        self.profilers: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self, name: str, args: list[str], port: int, *, root: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        """`python args…` with the package from `root` (a checkout) first on its path."""
        env = {
            **os.environ,
            "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, *args], stdout=out, stderr=out, env=env, cwd=self.workdir
            )
        self.children.append(proc)
        wait_port(port, proc, log, START_TIMEOUT)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        terminate(proc)
        if proc in self.children:
            self.children.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.children):
            self.stop(proc)
        for spy in self.profilers:  # py-spy exits (and writes) when its target does
            try:
                spy.wait(15)
            except subprocess.TimeoutExpired:
                spy.send_signal(signal.SIGINT)
                spy.wait(5)
        self.profilers.clear()

    def attach_profiler(self, name: str, pid: int) -> None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if spy is None or self.profile is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"{name}.txt"
        args = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
        args += ["--threads", "--subprocesses", "--output", str(out)]
        with (self.profile / f"{name}.py-spy.log").open("ab") as log:
            self.profilers.append(subprocess.Popen(args, stdout=log, stderr=log))
        time.sleep(0.5)  # let py-spy attach before the load starts

    # -- the pieces ------------------------------------------------------------------------

    def smtp_sink(self) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        return self.start("smtp-sink", ["-m", "bench.smtp_sink", str(port)], port), port

    def smpp_sink(self, *, record: bool = False) -> SmppSink:
        port, control = free_port(), free_port()
        args = ["-m", "bench.smpp_sink", str(port), str(control)] + (["--record"] if record else [])
        proc = self.start("smpp-sink", args, control)
        wait_port(port, proc, self.workdir / "smpp-sink.log", START_TIMEOUT)
        return SmppSink(proc, port, control)

    def relay(
        self,
        name: str,
        *,
        spool: Path,
        smpp_port: int,
        smtp: dict[str, Any] | None = None,
        spool_cfg: dict[str, Any] | None = None,
        root: Path = ROOT,
        **smpp: Any,
    ) -> tuple[subprocess.Popen[bytes], int]:
        """`python -m relay serve` with replies and metrics off (only SMTP → spool → SMPP);
        `root`: the checkout whose `relay` runs (bench.ab compares two)."""
        smtp_port = free_port()
        cfg = write_config(
            self.workdir / f"{name}.toml",
            {
                "smtp": {
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "domains": ["sms.test"],
                    **(smtp or {}),
                },
                "smpp": {
                    "host": "127.0.0.1",
                    "port": smpp_port,
                    "enquire_link_interval": 30,
                    "reconnect_min": 0.1,
                    "reconnect_max": 30,
                    **smpp,
                },
                "spool": {"url": f"sqlite:///{spool}", **(spool_cfg or {})},
                "replies": {"enabled": False, "smarthost": "127.0.0.1:9"},
                "metrics": {"enabled": False},
                "limits": BENCH_LIMITS,
            },
            [bench_account()],
        )
        proc = self.start(name, ["-m", "relay", "serve", "-c", str(cfg)], smtp_port, root=root)
        if self.profile is not None:
            self.attach_profiler(name, proc.pid)
        return proc, smtp_port


# The SPEC §5 checks still run on every mail (their cost is part of what ingest measures), but
# the bench sends the same text to the same few numbers over and over: limits high enough that
# the duplicate (9) and flood (8) rules never refuse bench traffic.
BENCH_LIMITS: dict[str, Any] = {
    "duplicate_allowed": 1_000_000_000,
    "flood_count": 1_000_000_000,
    "ip_fail_count": 1_000_000_000,
}

_HASHED: list[str] = []


def bench_account() -> dict[str, Any]:
    """One account with an argon2 hash, as in production (verified once, then cached)."""
    if not _HASHED:
        _HASHED.append(hash_password(PASSWORD))
    return {"login": "bench", "password": _HASHED[0], "senders": ["Bench"], "default_region": "RU"}


@dataclass
class SmppSink:
    proc: subprocess.Popen[bytes]
    port: int
    control: int

    def ask(self, what: str) -> Any:
        with socket.create_connection(("127.0.0.1", self.control), 5) as s:
            s.sendall(what.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf)

    def stats(self) -> dict[str, float]:
        return dict(self.ask("stats"))

    def wait_count(self, n: int, timeout: float) -> dict[str, float]:
        """Poll until the sink has `n` submits or `timeout` passes; the last stats either way."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if st["count"] >= n or time.monotonic() > deadline:
                return st
            time.sleep(0.02)
