"""Retention in the running daemon: its pruning task deletes old history from the spool while it
serves mail, and counts it in /metrics. The spool is filled through the spool's own API first."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.request
from pathlib import Path

from relay.smpp.model import SubmitSm
from relay.spool.model import JobState, NewJob, NewRequest
from relay.spool.sqlite import SqliteSpool
from tests.integration.harness import (
    RelayProcess,
    command_mail,
    free_port,
    send_mail,
    write_config,
)

DAY = 86400.0


async def _fill(db: Path, old: float) -> None:
    sm = SubmitSm("Alex", 5, 0, "79160000000", b"old", 0)
    spool = SqliteSpool(db)
    await spool.open()
    try:
        await spool.store_all(
            [
                NewRequest(
                    f"old{i}",
                    f"id-old{i}",
                    "alex",
                    "ops@x",
                    "127.0.0.1",
                    old,
                    (NewJob("+79160000000", 0, 1, 1, sm, old, old + DAY),),
                )
                for i in range(300)
            ]
        )
        for job in await spool.claim(1000, old):
            await spool.mark_submitted(job.id, f"u{job.id}", (f"u{job.id}",), old)
            await spool.apply_receipt((f"u{job.id}",), JobState.DELIVERED, {}, old)
    finally:
        await spool.close()


async def test_the_daemon_prunes_old_history_and_counts_it(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    await _fill(db, time.time() - 40 * DAY)
    smtp_port, metrics_port = free_port(), free_port()
    cfg = write_config(
        tmp_path / "relay.toml",
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "domains": ["sms.test"]},
            "spool": {"url": f"sqlite:///{db}", "keep_days": 30, "prune_interval": 0.5},
            "replies": {"enabled": False},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
        },
        [{"login": "alex", "password": "pw-123456", "senders": ["Alex"]}],
    )
    relay = RelayProcess(cfg, tmp_path / "relay.log")
    await asyncio.to_thread(relay.start, smtp_port)
    try:
        body = "alex:pw-123456:::,,Alex:+79161234567:fresh"
        await asyncio.to_thread(
            send_mail, smtp_port, "ops@x", ["send@sms.test"], command_mail(body)
        )

        def rows(sql: str) -> list[tuple[object, ...]]:
            with sqlite3.connect(db) as conn:
                return conn.execute(sql).fetchall()

        deadline = time.monotonic() + 20
        # the old messages' status notices are settled by the notifier first, then pruned
        # (their upstream keys are swept after the requests' walk, in the same round)
        while rows("SELECT COUNT(*) FROM upstream_keys WHERE key LIKE 'u%'") != [(0,)]:
            assert time.monotonic() < deadline, relay.log()
            await asyncio.sleep(0.2)
        assert rows("SELECT COUNT(*) FROM requests WHERE key LIKE 'old%'") == [(0,)]
        assert rows("SELECT COUNT(*) FROM jobs") == [(1,)]  # the fresh request's part
        metrics = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        assert 'sms_relay_spool_pruned_rows_total{table="requests"} 300.0' in metrics
        assert 'sms_relay_spool_pruned_rows_total{table="jobs"} 300.0' in metrics
    finally:
        await asyncio.to_thread(relay.stop)
