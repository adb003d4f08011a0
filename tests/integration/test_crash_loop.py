"""SPEC §8 durability under SIGKILL: a bounded kill loop under load, loopback only.

1 000 SMS are accepted over SMTP while the daemon submits them to a simulator that answers
after a short delay (so submits are always in flight); the daemon is SIGKILLed 12 times at
random moments and restarted each time. Afterwards every accepted SMS must have reached the
SMSC (zero lost), and the duplicates — re-sends of submits whose answer the killed process
never recorded — are counted, printed, and bounded by kills x window (the at-least-once window).
Both with the progress commits fsynced one by one and without (`spool.progress_fsync`, issue 9:
a process crash must not lose a commit that was not fsynced).
"""

from __future__ import annotations

import asyncio
import random
import signal
import smtplib
from collections import Counter
from pathlib import Path

import pytest

from relay.smpp.simulator import SimFaults
from tests.integration.upstream import upstream_stack

MESSAGES = 1000
PER_MAIL = 50
KILLS = 12
WINDOW = 10


@pytest.mark.parametrize("progress_fsync", [5.0, 0.0], ids=["deferred", "fsync"])
async def test_sigkill_loop_loses_nothing_and_duplicates_only_in_flight(
    tmp_path: Path, progress_fsync: float
) -> None:
    rng = random.Random(5)  # reproducible kill moments
    faults = SimFaults(response_delay=0.02)
    async with upstream_stack(
        tmp_path,
        faults,
        smpp_window=WINDOW,
        smpp_throughput=400,
        smpp_reconnect_min=0.05,
        spool_progress_fsync=progress_fsync,
    ) as st:
        accepted: list[str] = []
        attempted: set[str] = set()
        next_n = 0

        async def feed() -> None:
            """Send mails until MESSAGES are accepted; a mail cut by a kill is retried."""
            nonlocal next_n
            while len(accepted) < MESSAGES:
                batch = [(f"7916{n:07d}", f"k {n}") for n in range(next_n, next_n + PER_MAIL)]
                attempted.update(t for _, t in batch)
                try:
                    await st.send_list(batch)
                except (OSError, smtplib.SMTPException):
                    await asyncio.sleep(0.05)  # the daemon is down; these may or may not be in
                    next_n += PER_MAIL
                    continue
                accepted.extend(t for _, t in batch)
                next_n += PER_MAIL

        feeder = asyncio.create_task(feed())
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            st.relay.signal(signal.SIGKILL)
            await asyncio.to_thread(st.relay.wait, 5)
            await st.restart()
        await asyncio.wait_for(feeder, 60)
        await st.wait_states(lambda s: set(s) <= {"delivered"}, timeout=20)
        await asyncio.sleep(0.3)

        got = Counter(s.text for s in st.smsc.received)
        lost = [t for t in accepted if t not in got]
        duplicates = sum(n - 1 for n in got.values())
        print(
            f"kill loop: {KILLS} kills, {len(accepted)} accepted, {len(got)} distinct at the "
            f"SMSC, {len(lost)} lost, {duplicates} duplicates"
        )
        assert len(accepted) == MESSAGES
        assert lost == []
        assert set(got) <= attempted  # nothing invented
        assert duplicates <= KILLS * WINDOW
        # Every job in the spool ended delivered exactly once in its own record.
        assert len(st.jobs()) == len(got)
