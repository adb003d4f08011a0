"""The SMTP protocol layer alone: stock aiosmtpd `SMTP` against our `LeanSMTP`, same bare handler.

`python -m bench.protocol [--mails N] [--rounds R]` starts, per round and per class, a bare sink
(`bench.smtp_sink.BareSink`, which answers `250` and does nothing) in its own process, drives it
with smtp-source (20 sessions, 500-byte mails, reused sessions then a new connection per mail)
and prints mails/s and the sink's CPU (user + system) per mail, the steadier figure on a shared
machine. `python -m bench.protocol serve stock|lean PORT` is one such sink.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from aiosmtpd.smtp import SMTP

from bench import load
from bench.procs import Procs
from bench.smtp_sink import BareSink, serve_until_stopped
from relay.smtp_front import RelaySMTP
from relay.smtp_session import LeanSMTP, SessionTables
from tests.integration.harness import free_port


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


CLASSES: dict[str, type[SMTP]] = {"stock": SMTP, "lean": LeanSMTP, "relay": RelaySMTP}


async def serve(kind: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = BareSink()
    cls = CLASSES[kind]
    # Ours get their tables built once, as relay.smtp_front.smtp_factory does.
    extra = {"tables": SessionTables.of(cls, handler)} if issubclass(cls, LeanSMTP) else {}
    await serve_until_stopped(
        lambda: cls(handler, hostname="sink.bench", decode_data=False, loop=loop, **extra), port
    )


def measure(
    procs: Procs, kind: str, mails: int, mail_file: Path, exe: str, modes: list[str]
) -> list[str]:
    port = free_port()
    proc = procs.start(f"sink-{kind}", ["-m", "bench.protocol", "serve", kind, str(port)], port)
    out = []
    for mode in modes:
        user, system = cpu_seconds(proc.pid)
        elapsed = load.run_smtp_source(
            exe,
            port,
            sessions=20,
            count=mails,
            reuse=mode == "reuse",
            mail_file=mail_file,
            timeout=120,
        )
        user_after, system_after = cpu_seconds(proc.pid)
        user, system = (user_after - user) / mails * 1e6, (system_after - system) / mails * 1e6
        out.append(
            f"{kind:5} {mode:5} {mails / elapsed:7.0f} mails/s  CPU {user + system:5.0f} µs/mail "
            f"(user {user:.0f}, system {system:.0f})"
        )
    procs.stop(proc)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.protocol", description=__doc__)
    ap.add_argument("--mails", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", nargs="+", choices=sorted(CLASSES), default=["stock", "relay"])
    ap.add_argument("--modes", nargs="+", choices=("reuse", "new"), default=["reuse", "new"])
    args = ap.parse_args(argv)
    exe = load.smtp_source_path()
    if exe is None:
        print("smtp-source not found (run bench/setup)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-protocol-") as tmp:
        workdir = Path(tmp)
        mail_file = workdir / "mail.eml"
        mail_file.write_bytes(load.command_mail("Disk full on db1").replace(b"\r\n", b"\n"))
        with Procs(workdir) as procs:
            for _ in range(args.rounds):
                for kind in args.only:
                    for line in measure(procs, kind, args.mails, mail_file, exe, args.modes):
                        print(line, flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(sys.argv[2], int(sys.argv[3])))
    else:
        try:
            sys.exit(main())
        except subprocess.TimeoutExpired:
            sys.exit(1)
