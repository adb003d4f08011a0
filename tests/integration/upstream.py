"""Test stack for the upstream (SPEC §8, §9): the real daemon as a subprocess, the simulator in the
test's loop, list-mode command mails, and read-only looks at the spool and the CLI.

Everything listens on 127.0.0.1 with ports the OS picks; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.smpp.simulator import SimFaults, SmscSimulator
from tests.integration.harness import (
    ROOT,
    RelayProcess,
    ReplySink,
    command_mail,
    free_port,
    send_mail,
    write_config,
)

PASSWORD = "s3cret-pass"
FINAL = frozenset({"delivered", "undeliverable", "expired", "rejected", "cancelled"})


def phone(n: int) -> str:
    """A possible Russian mobile number, distinct for each n."""
    return f"7916{n:07d}"


@dataclass
class Upstream:
    tmp: Path
    smsc: SmscSimulator
    sink: ReplySink
    relay: RelayProcess
    smtp_port: int
    config: Path
    spool_path: Path
    sent: int = 0
    stamps: list[float] = field(default_factory=list)

    async def send_list(
        self, entries: list[tuple[str, str]], *, request_id: str = "", when: str = ""
    ) -> None:
        """One list-mode command mail (SPEC §3): one request, one job per entry (per part)."""
        lines = "\n".join(f"{p}:{text}" for p, text in entries)
        body = f"alex:{PASSWORD}:{request_id}:{when}:::\n{lines}\n"
        await asyncio.to_thread(
            send_mail, self.smtp_port, "ops@example.org", ["send@sms.test"], command_mail(body)
        )

    async def send_many(self, n: int, *, per_mail: int = 50, tag: str = "m") -> list[str]:
        """n distinct SMS in mails of `per_mail` entries; returns their texts."""
        texts: list[str] = []
        for start in range(0, n, per_mail):
            batch = [
                (phone(self.sent + i), f"{tag} {self.sent + i}")
                for i in range(min(per_mail, n - start))
            ]
            await self.send_list(batch)
            texts += [t for _, t in batch]
            self.sent += len(batch)
        return texts

    def jobs(self) -> list[dict[str, Any]]:
        """Every job row, read-only (the daemon may be writing: WAL lets us read)."""
        conn = sqlite3.connect(f"file:{self.spool_path}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT j.*, r.request_id FROM jobs j JOIN requests r ON r.pk = j.request_pk"
                " ORDER BY j.id"
            ).fetchall()
            return [dict(r) for r in rows]
        finally:
            conn.close()

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for j in self.jobs():
            out[j["state"]] = out.get(j["state"], 0) + 1
        return out

    async def wait_states(
        self, expected: dict[str, int] | Callable[[dict[str, int]], bool], timeout: float = 15
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        states: dict[str, int] = {}
        while time.monotonic() < deadline:
            if self.spool_path.exists():
                states = self.states()
                ok = expected(states) if callable(expected) else states == expected
                if ok:
                    return states
            await asyncio.sleep(0.05)
        raise AssertionError(f"spool states {states}, expected {expected}\n{self.relay.log()}")

    async def cli(self, *args: str) -> tuple[int, str]:
        """`python -m relay ARGS -c CONFIG` as a subprocess, as an operator would run it."""
        path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": path}
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "relay", *args, "-c", str(self.config)],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
        return proc.returncode, proc.stdout.decode()

    async def status(self, request_id: str) -> dict[str, Any]:
        code, out = await self.cli("status", request_id, "--json")
        assert code == 0, out
        result: dict[str, Any] = json.loads(out)
        return result

    async def restart(self) -> None:
        await asyncio.to_thread(self.relay.start, self.smtp_port)


def make_config(tmp: Path, *, smtp_port: int, smpp_port: int, sink_port: int, **over: Any) -> Path:
    smpp = {
        "host": "127.0.0.1",
        "port": smpp_port,
        "system_id": "relay",
        "password": "secret",
        "enquire_link_interval": 5,
        "reconnect_min": 0.1,
        "reconnect_max": 0.5,
        "response_timeout": 5,
    }
    spool = {"url": f"sqlite:///{tmp / 'spool.db'}", "retry_min": 0.2, "retry_max": 1}
    smpp.update({k[5:]: v for k, v in over.items() if k.startswith("smpp_")})
    spool.update({k[6:]: v for k, v in over.items() if k.startswith("spool_")})
    return write_config(
        tmp / "relay.toml",
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "domains": ["sms.test"]},
            "smpp": smpp,
            "spool": spool,
            "replies": {"smarthost": f"127.0.0.1:{sink_port}", "sender": "relay@sms.test"},
            "metrics": {"enabled": False},
            # Many mails from one sender in a few seconds: not what these tests are about.
            "limits": {"flood_count": 1_000_000, "duplicate_window": 0},
        },
        [
            {
                "login": "alex",
                "password": PASSWORD,
                "senders": ["Alex"],
                "default_region": "RU",
            }
        ],
    )


class upstream_stack:
    """Simulator (with faults) + reply sink + the daemon; `start_smsc=False` leaves the SMSC
    port closed until `stack.smsc.start()` (jobs pile up in the spool first)."""

    def __init__(
        self,
        tmp: Path,
        faults: SimFaults | None = None,
        *,
        start_smsc: bool = True,
        receipt_stat: str = "DELIVRD",
        **over: Any,
    ) -> None:
        self.tmp = tmp
        self.faults = faults
        self.start_smsc = start_smsc
        self.receipt_stat = receipt_stat
        self.over = over
        self.stack: Upstream | None = None

    async def __aenter__(self) -> Upstream:
        stamps: list[float] = []
        smsc = SmscSimulator(
            host="127.0.0.1",
            port=free_port(),
            receipt_delay=0.05,
            receipt_stat=self.receipt_stat,
            faults=self.faults,
            on_sms=lambda _sms: stamps.append(time.time()),
        )
        if self.start_smsc:
            await smsc.start()
        sink = ReplySink()
        await sink.start()
        smtp_port = free_port()
        cfg = make_config(
            self.tmp, smtp_port=smtp_port, smpp_port=smsc.port, sink_port=sink.port, **self.over
        )
        relay = RelayProcess(cfg, self.tmp / "relay.log")
        self.stack = Upstream(
            self.tmp, smsc, sink, relay, smtp_port, cfg, self.tmp / "spool.db", stamps=stamps
        )
        await asyncio.to_thread(relay.start, smtp_port)
        return self.stack

    async def __aexit__(self, *exc: object) -> None:
        assert self.stack is not None
        await asyncio.to_thread(self.stack.relay.stop)
        await self.stack.smsc.stop()
        await self.stack.sink.stop()


def submits_for(accepted: int, every: int) -> int:
    """submit_sm count when every `every`-th submit is refused and re-sent: the smallest S with
    S - S // every == accepted whose last submit is accepted."""
    s = accepted
    while s - s // every != accepted or s % every == 0:
        s += 1
    return s
