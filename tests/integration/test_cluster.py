"""Several relay nodes on one PostgreSQL spool (issue 10), each `python -m relay serve` in its
own process, one SMPP simulator, one reply sink: every SMS sent once, receipts matched on the
node that did not submit, the last balance part to exactly one node, and a SIGKILLed node's
leased jobs sent by the other after the lease. Skips only when no PostgreSQL answers.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.smpp.simulator import SimFaults, SmscSimulator
from relay.worker import CLAIM_EXTRA
from tests.integration.harness import (
    RelayProcess,
    ReplySink,
    command_mail,
    free_port,
    send_mail,
    write_config,
)
from tests.postgres import pg_reset, pg_rows

PASSWORD = "s3cret-pass"
LEASE = 2.0
WINDOW = 5


def phone(n: int) -> str:
    return f"7916{n:07d}"


def all_delivered(jobs: list[dict[str, Any]]) -> bool:
    return all(j["state"] == "delivered" for j in jobs)


@dataclass
class Node:
    name: str
    relay: RelayProcess
    smtp_port: int


@dataclass
class Cluster:
    url: str
    smsc: SmscSimulator
    sink: ReplySink
    nodes: list[Node]

    async def send(self, node: int, entries: list[tuple[str, str]]) -> None:
        # test = 1: a reply for every request (SPEC §4), so replies can be counted
        body = f"alex:{PASSWORD}:::,,,1::\n" + "".join(f"{p}:{t}\n" for p, t in entries)
        port = self.nodes[node].smtp_port
        await asyncio.to_thread(
            send_mail, port, "ops@example.org", ["send@sms.test"], command_mail(body)
        )

    async def wait_bound(self, timeout: float = 15) -> None:
        """Until every node's bind is up: a node still connecting claims nothing, and the
        others (claiming ahead) would then take all of its mails' jobs."""
        deadline = time.monotonic() + timeout
        while sum(b.status == 0 for b in self.smsc.binds) < len(self.nodes):
            assert time.monotonic() < deadline, f"binds: {self.smsc.binds}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the bind_resp reaches the node and its link is marked up

    def jobs(self) -> list[dict[str, Any]]:
        rows = pg_rows(self.url, "SELECT id, state, node, attempts FROM jobs ORDER BY id")
        return [dict(zip(("id", "state", "node", "attempts"), r, strict=True)) for r in rows]

    async def wait_jobs(self, done: Any, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if done(jobs):
                return jobs
            await asyncio.sleep(0.1)
        logs = "\n".join(n.relay.log()[-3000:] for n in self.nodes)
        states = collections.Counter((j["state"], j["node"]) for j in jobs)
        raise AssertionError(f"jobs {states}\n{logs}")


@pytest.fixture
async def cluster_factory(pg_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    pg_reset(pg_url)
    made: list[Cluster] = []

    async def make(
        n: int = 2,
        *,
        faults: SimFaults | None = None,
        balance: int | None = None,
        smpp: dict[str, Any] | None = None,
        spool: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
    ) -> Cluster:
        smsc = SmscSimulator(host="127.0.0.1", port=free_port(), receipt_delay=0.05, faults=faults)
        await smsc.start()
        sink = ReplySink()
        await sink.start()
        cluster = Cluster(pg_url, smsc, sink, [])
        made.append(cluster)
        for i in range(n):
            name = "abc"[i]
            port = free_port()
            account: dict[str, Any] = {
                "login": "alex",
                "password": PASSWORD,
                "senders": ["Alex"],
                "default_region": "RU",
            }
            if balance is not None:
                account["balance"] = balance
            cfg = write_config(
                tmp_path / f"{name}.toml",
                {
                    "smtp": {"host": "127.0.0.1", "port": port, "domains": ["sms.test"]},
                    "smpp": {
                        "host": "127.0.0.1",
                        "port": smsc.port,
                        "system_id": f"node-{name}",
                        "password": "secret",
                        "window": WINDOW,
                        # Only the last node receives: the simulator sends every receipt there,
                        # so the other nodes' receipts are matched through the shared spool.
                        "bind": "transceiver" if i == n - 1 else "transmitter",
                        "reconnect_min": 0.1,
                        "reconnect_max": 0.5,
                        **(smpp or {}),
                    },
                    "spool": {
                        "url": pg_url,
                        "node": name,
                        "lease": LEASE,
                        "retry_min": 0.2,
                        "retry_max": 1,
                        **(spool or {}),
                    },
                    "replies": {"smarthost": f"127.0.0.1:{sink.port}", "sender": "relay@sms.test"},
                    "metrics": {"enabled": False},
                    "limits": {"flood_count": 1_000_000, "duplicate_window": 0, **(limits or {})},
                },
                [account],
            )
            relay = RelayProcess(cfg, tmp_path / f"{name}.log")
            await asyncio.to_thread(relay.start, port)
            cluster.nodes.append(Node(name, relay, port))
        return cluster

    try:
        yield make
    finally:
        for c in made:
            for node in c.nodes:
                await asyncio.to_thread(node.relay.stop)
            await c.smsc.stop()
            await c.sink.stop()


async def test_two_nodes_send_every_sms_once_and_match_receipts_across_nodes(
    cluster_factory: Any,
) -> None:
    c: Cluster = await cluster_factory(2)
    await c.wait_bound()
    texts: list[str] = []
    mails = 0
    by_node: collections.Counter[str] = collections.Counter()
    # Mails to both nodes, alternately. Any node may claim any job of the shared spool (no
    # fairness is promised), so should one node have claimed them all, a few more rounds go
    # (bounded): both must take part eventually.
    for rounds in (10, 2, 2, 2, 2):
        for m in range(mails, mails + rounds):
            entries = [(phone(m * 20 + i), f"sms {m * 20 + i}") for i in range(20)]
            await c.send(m % 2, entries)
            texts += [t for _, t in entries]
        mails += rounds
        want = len(texts)
        jobs = await c.wait_jobs(
            lambda js, want=want: len(js) == want and all(j["state"] == "delivered" for j in js)
        )
        by_node = collections.Counter(j["node"] for j in jobs)
        if by_node["a"] > 0 and by_node["b"] > 0:
            break
    sent = [sms.text for sms in c.smsc.received]
    assert sorted(sent) == sorted(texts)  # every SMS, exactly once
    # both nodes submitted, and node a (a transmitter) got its receipts through node b's bind
    assert by_node["a"] > 0 and by_node["b"] > 0, by_node
    assert {r.command for r in c.smsc.binds} == {"bind_transmitter", "bind_transceiver"}
    replies = await c.sink.wait_for(mails)
    await asyncio.sleep(1.0)
    assert len(c.sink.mails) == mails  # each reply once, by one node
    assert all(m.text.startswith("OK - 20 SMS") for m in replies)


async def test_two_nodes_racing_for_the_last_balance_part_exactly_one_wins(
    cluster_factory: Any,
) -> None:
    c: Cluster = await cluster_factory(2, balance=3)
    await c.send(0, [(phone(1), "one")])
    await c.send(1, [(phone(2), "two")])
    for rnd in range(3):  # one part left, then none: each round both nodes at once
        await asyncio.gather(
            c.send(0, [(phone(10 + rnd), f"race a {rnd}")]),
            c.send(1, [(phone(20 + rnd), f"race b {rnd}")]),
        )
    replies = [m.text for m in await c.sink.wait_for(8)]
    await asyncio.sleep(0.5)
    assert len(c.sink.mails) == 8
    assert sum(r.startswith("OK - 1 SMS") for r in replies) == 3  # 2 + exactly one racer
    assert sum(r.startswith("ERROR = 3") for r in replies) == 5
    await c.wait_jobs(lambda js: len(js) == 3 and all(j["state"] == "delivered" for j in js))
    assert pg_rows(c.url, "SELECT remaining FROM balances WHERE login = 'alex'") == [(0,)]


async def test_a_sigkilled_node_loses_nothing_its_leased_jobs_go_out_from_another(
    cluster_factory: Any,
) -> None:
    # Slow answers keep each node's window full: the killed node holds jobs in flight.
    c: Cluster = await cluster_factory(2, faults=SimFaults(response_delay=0.2))
    await c.wait_bound()
    texts: list[str] = []
    for m in range(6):
        entries = [(phone(m * 50 + i), f"load {m * 50 + i}") for i in range(50)]
        await c.send(0, entries)
        texts += [t for _, t in entries]
    await c.wait_jobs(lambda js: sum(j["state"] == "delivered" for j in js) >= 40)
    victim = c.nodes[0]
    victim.relay.signal(signal.SIGKILL)
    assert await asyncio.to_thread(victim.relay.wait, 10) == -signal.SIGKILL
    orphans = [j["id"] for j in c.jobs() if j["state"] == "sending" and j["node"] == "a"]
    # What a held: its window in flight, plus the jobs it had claimed ahead and not yet sent
    # (relay.worker's buffer); the unsent ones cannot be duplicated.
    assert 0 < len(orphans) <= WINDOW + 2 * WINDOW + CLAIM_EXTRA
    jobs = await c.wait_jobs(
        lambda js: len(js) == 300 and all(j["state"] == "delivered" for j in js), timeout=60
    )
    taken = {j["id"]: j for j in jobs if j["id"] in orphans}
    assert all(j["node"] == "b" and j["attempts"] >= 2 for j in taken.values()), taken
    sent = collections.Counter(sms.text for sms in c.smsc.received)
    assert set(sent) == set(texts)  # nothing lost
    duplicates = sum(n - 1 for n in sent.values())
    assert duplicates <= min(WINDOW, len(orphans))  # only the jobs in flight at the kill
    print(f"killed node held {len(orphans)} claimed job(s); {duplicates} sent twice")


async def test_three_nodes_drain_one_spool(cluster_factory: Any) -> None:
    c: Cluster = await cluster_factory(3)
    await c.wait_bound()
    texts: list[str] = []
    for m in range(9):
        entries = [(phone(m * 20 + i), f"three {m * 20 + i}") for i in range(20)]
        await c.send(m % 3, entries)
        texts += [t for _, t in entries]
    jobs = await c.wait_jobs(
        lambda js: len(js) == 180 and all(j["state"] == "delivered" for j in js)
    )
    assert sorted(sms.text for sms in c.smsc.received) == sorted(texts)
    assert len({j["node"] for j in jobs}) >= 2


async def test_an_account_rate_holds_across_nodes(cluster_factory: Any) -> None:
    c: Cluster = await cluster_factory(2, limits={"account_rate_per_minute": 3})
    for rnd in range(4):  # 8 requests within the minute, both nodes at once
        await asyncio.gather(
            c.send(0, [(phone(10 + rnd), f"rate a {rnd}")]),
            c.send(1, [(phone(20 + rnd), f"rate b {rnd}")]),
        )
    replies = [m.text for m in await c.sink.wait_for(8)]
    await asyncio.sleep(0.5)
    assert len(c.sink.mails) == 8
    assert sum(r.startswith("OK - 1 SMS") for r in replies) == 3  # 3 for the gateway, not per node
    assert sum(r.startswith("ERROR = 8") for r in replies) == 5
    await c.wait_jobs(lambda js: len(js) == 3 and all_delivered(js))


async def test_two_nodes_share_the_throughput_total(cluster_factory: Any) -> None:
    """`smpp.throughput_total = 40` on two nodes: 20/s each, 40/s together (within 5 %)."""
    total, heartbeat = 40.0, 0.5
    c: Cluster = await cluster_factory(
        2, smpp={"throughput_total": total, "window": 10}, spool={"heartbeat": heartbeat}
    )
    deadline = time.monotonic() + 10
    while pg_rows(c.url, "SELECT COUNT(*) FROM nodes") != [(2,)]:
        assert time.monotonic() < deadline, "the nodes wrote no heartbeats"
        await asyncio.sleep(0.1)
    await asyncio.sleep(heartbeat * 1.5)  # each node's next beat has seen the other
    texts: list[str] = []
    for m in range(6):  # a backlog of 240 SMS, stored through both nodes
        entries = [(phone(m * 40 + i), f"paced {m * 40 + i}") for i in range(40)]
        await c.send(m % 2, entries)
        texts += [t for _, t in entries]
    await c.smsc.wait_for(240, timeout=20)
    assert sorted(s.text for s in c.smsc.received) == sorted(texts)
    sent = sorted(zip(c.smsc.received_at, (s.system_id for s in c.smsc.received), strict=True))
    first, last = 40, 200  # the middle of the run: no start-up, no tail
    span = sent[last][0] - sent[first][0]
    combined = (last - first) / span
    per_node = collections.Counter(node for _, node in sent[first:last])
    rates = {node: n / span for node, n in per_node.items()}
    print(f"combined {combined:.2f}/s over {span:.2f} s; per node {rates}")
    assert abs(combined - total) <= 0.05 * total, combined
    assert set(rates) == {"node-a", "node-b"}
    assert all(r <= total / 2 * 1.05 for r in rates.values()), rates
