"""The PostgreSQL spool as several nodes see it (issue 10): leases, SKIP LOCKED claims, receipts
on another node, cluster-wide SPEC §5 checks, LISTEN/NOTIFY, versioned migrations.

Each "node" is a PostgresSpool object with its own name and pool on one database, as two relay
processes would be; the subprocess tests are in tests/integration/test_cluster.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from relay.config import LimitsConfig
from relay.errors import SpoolError
from relay.smpp.model import SubmitSm
from relay.spool.migrations import LATEST, MIGRATIONS, migrate, schema_version
from relay.spool.model import (
    Admission,
    Callback,
    JobState,
    MoMessage,
    NewCallback,
    NewJob,
    NewMail,
    NewRequest,
    NoticeOutcome,
    StoreResult,
    Submitted,
)
from relay.spool.postgres import PostgresSpool, migrate_url
from tests.postgres import pg_reset, pg_rows

T0 = 1_790_000_000.0
_keys = iter(range(10**9))


def request(n: int = 1, *, at: float = T0, balance: int | None = None, fp: str = "") -> NewRequest:
    sm = SubmitSm("Alex", 5, 0, "79161234567", b"hi", 0)
    jobs = tuple(
        NewJob(f"+7916{i:07d}", 0, 1, 1, sm, not_before=at, expires_at=at + 86400) for i in range(n)
    )
    k = f"k{next(_keys)}"
    mail = NewMail("relay@x", "ops@x", b"Subject: OK\r\n\r\nOK\r\n", at + 86400)
    return NewRequest(
        k,
        f"id-{k}",
        "alex",
        "ops@x",
        "192.0.2.1",
        at,
        jobs,
        (mail,),
        admission=Admission(fp, tuple(j.phone for j in jobs), n, balance),
        limits=LimitsConfig(flood_count=10**6),
    )


@pytest.fixture
async def nodes(pg_url: str) -> AsyncIterator[tuple[PostgresSpool, PostgresSpool]]:
    pg_reset(pg_url)
    a = PostgresSpool(pg_url, node="a", lease=2.0)
    b = PostgresSpool(pg_url, node="b", lease=2.0)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_concurrent_claims_split_the_jobs(nodes: tuple[PostgresSpool, PostgresSpool]) -> None:
    a, b = nodes
    await a.store(request(200))
    claimed = await asyncio.gather(*(n.claim(7, T0) for _ in range(20) for n in (a, b)))
    ids = [j.id for batch in claimed for j in batch]
    assert len(ids) == 200 and len(set(ids)) == 200  # each job to exactly one claim
    assert await a.claim(10, T0) == [] and await b.claim(10, T0) == []


async def test_a_dead_nodes_lease_runs_out_and_another_node_takes_its_jobs(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    await a.store(request(3))
    held = await a.claim(10, T0)
    assert len(held) == 3
    assert await b.recover() == 0  # b's recover() leaves a's jobs alone: a may be alive
    assert await b.claim(10, T0 + 1.9) == []  # a's lease (2 s) holds
    taken = await b.claim(10, T0 + 2.1)  # a said nothing for longer than its lease
    assert sorted(j.id for j in taken) == sorted(j.id for j in held)
    assert all(j.attempts == 2 for j in taken)
    assert pg_rows(a._url, "SELECT DISTINCT node FROM jobs") == [("b",)]


async def test_a_live_node_renews_its_leases(nodes: tuple[PostgresSpool, PostgresSpool]) -> None:
    a, b = nodes
    await a.store(request(1))
    loop_now = time.time()
    [job] = await a.claim(1, loop_now)
    await asyncio.sleep(2.5)  # longer than the lease: a's background task renewed it
    assert await b.claim(10, time.time()) == []
    [(until,)] = pg_rows(a._url, f"SELECT lease_until FROM jobs WHERE id = {job.id}")
    assert isinstance(until, float) and until > loop_now + 2.0


async def test_recover_requeues_only_this_nodes_jobs(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    await a.store(request(2))
    await a.claim(1, T0)
    await b.claim(1, T0)
    assert await a.recover() == 1
    assert (await a.counts())["sending"] == 1  # b's job stays with b


async def test_receipt_on_another_node_matches(nodes: tuple[PostgresSpool, PostgresSpool]) -> None:
    a, b = nodes
    await a.store(request(2))
    first, second = await a.claim(2, T0)
    assert await a.mark_submitted(first.id, "1A", ("1a", "26"), T0) is JobState.SUBMITTED
    assert await b.apply_receipt(("26",), JobState.DELIVERED, {"stat": "DELIVRD"}, T0 + 1) == 1
    # a receipt that reaches b before a has processed the submit_sm_resp is kept, then applied
    assert await b.apply_receipt(("2b",), JobState.UNDELIVERABLE, {"stat": "UNDELIV"}, T0) == 0
    assert await a.mark_submitted(second.id, "2B", ("2b", "43"), T0 + 2) is JobState.UNDELIVERABLE
    states = {v.id: v.state for v in await b.request_status(first.request_id)}
    assert states == {first.id: "delivered", second.id: "undeliverable"}


async def test_receipt_racing_its_submit_resp_across_nodes_is_never_lost(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    await a.store(request(100))
    jobs = await a.claim(100, T0)
    await asyncio.gather(
        *(a.mark_submitted(j.id, f"M{j.id}", (f"m{j.id}",), T0) for j in jobs),
        *(b.apply_receipt((f"m{j.id}",), JobState.DELIVERED, {}, T0) for j in jobs),
    )
    assert (await a.counts())["delivered"] == 100
    assert pg_rows(a._url, "SELECT COUNT(*) FROM early_receipts") == [(0,)]


async def test_two_nodes_race_for_the_last_balance_part(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    assert await a.store(request(1, balance=3)) == StoreResult(True)
    assert await b.store(request(1, balance=3)) == StoreResult(True)
    results = await asyncio.gather(*(n.store(request(1, balance=3)) for n in (a, b) * 10))
    assert results.count(StoreResult(True)) == 1  # exactly one of 20 gets the last part
    assert results.count(StoreResult(False, 3)) == 19
    assert await a.balance("alex") == 0 and await b.balance("alex") == 0


async def test_duplicates_across_nodes(nodes: tuple[PostgresSpool, PostgresSpool]) -> None:
    a, b = nodes
    results = await asyncio.gather(*(n.store(request(1, fp="same")) for n in (a, b) * 10))
    assert results.count(StoreResult(True)) == 1 and results.count(StoreResult(False, 9)) == 19


async def test_the_same_key_on_two_nodes_is_stored_once(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    r = request(1)
    results = await asyncio.gather(a.store(r), b.store(r))
    assert sorted(x.stored for x in results) == [False, True]
    assert (await a.counts())["queued"] == 1


async def test_a_store_on_one_node_wakes_the_other(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    woke = asyncio.Event()
    b.on_change(woke.set)
    await asyncio.wait_for(b.listening.wait(), 5)
    await a.store(request(1))
    await asyncio.wait_for(woke.wait(), 2)


async def test_mails_are_claimed_once_and_leased(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    for _ in range(10):
        await a.store(request(1))
    got = await asyncio.gather(a.claim_mails(10, T0), b.claim_mails(10, T0))
    assert sorted(m.id for batch in got for m in batch) == list(range(1, 11))
    assert await b.claim_mails(10, T0 + 1) == []  # all held, under lease
    assert len(await b.claim_mails(10, T0 + 3)) == 10  # the leases ran out: b takes them all


async def test_migrations_are_versioned_and_run_once(pg_url: str) -> None:
    admin_url = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = pg_url.rsplit("/", 1)[1] + "_mig"
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    url = pg_url.rsplit("/", 1)[0] + "/" + name
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await schema_version(conn) == 0
            assert [m.version for m in await migrate(conn, target=1)] == [1]
            assert await schema_version(conn) == 1
        # several nodes starting at once: each migration is applied by exactly one
        results = await asyncio.gather(*(migrate_url(url) for _ in range(4)))
        assert sorted(len(applied) for applied, _ in results) == [0, 0, 0, len(MIGRATIONS) - 1]
        assert {version for _, version in results} == {LATEST}
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
        with pytest.raises(SpoolError, match="newer"):
            await PostgresSpool(url).open()
    finally:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_unreachable_database_is_a_spool_error() -> None:
    spool = PostgresSpool("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1")
    with pytest.raises(SpoolError, match="cannot open spool"):
        await asyncio.wait_for(spool.open(), 30)


# -- issue 8 across nodes: one notice per message, callbacks of a stream in order -------------


def message(n: int = 20) -> NewRequest:
    """`n` two-part messages, one per phone."""
    sm = SubmitSm("Alex", 5, 0, "79161234567", b"hi", 0)
    jobs = tuple(
        NewJob(f"+7916{i:07d}", 0, part, 2, sm, not_before=T0, expires_at=T0 + 86400)
        for i in range(n)
        for part in (1, 2)
    )
    k = f"k{next(_keys)}"
    return NewRequest(k, f"id-{k}", "alex", "ops@x", "192.0.2.1", T0, jobs)


async def test_final_receipts_for_two_parts_on_two_nodes_write_one_notice(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    await a.store(message(100))
    jobs = await a.claim(300, T0)
    for j in jobs:
        await a.mark_submitted(j.id, f"U{j.id}", (f"u{j.id}",), T0)
    parts = {(j.phone, j.part): j.id for j in jobs}
    phones = sorted({j.phone for j in jobs})
    delivered = {"stat": "DELIVRD", "err": "000"}
    # Part 1 on a and part 2 on b at once; part 2's receipt repeated on a (an SMSC resends).
    await asyncio.gather(
        *(
            call
            for p in phones
            for call in (
                a.apply_receipt((f"u{parts[p, 1]}",), JobState.DELIVERED, delivered, T0 + 1),
                b.apply_receipt((f"u{parts[p, 2]}",), JobState.DELIVERED, delivered, T0 + 1),
                a.apply_receipt((f"u{parts[p, 2]}",), JobState.DELIVERED, delivered, T0 + 2),
            )
        )
    )
    assert (await a.counts())["delivered"] == 200
    notices = pg_rows(a._url, "SELECT phone, COUNT(*) FROM notices GROUP BY phone ORDER BY phone")
    assert notices == [(p, 1) for p in phones]  # every message: exactly one notice
    got = await asyncio.gather(a.claim_notices(60), b.claim_notices(60))
    ids = [n.id for batch in got for n in batch]
    assert len(ids) == 100 and len(set(ids)) == 100  # each notice to one node
    assert {(n.phone, n.state, n.parts) for batch in got for n in batch} == {
        (p, "delivered", 2) for p in phones
    }


async def test_a_notice_settled_by_two_nodes_queues_its_work_once(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    await a.store_mo(MoMessage("79160000001", "7900", 0, 0, b"ok"), T0)
    [n] = await a.claim_notices(10)
    assert await b.claim_notices(10) == []  # a holds it under its lease
    call = NewCallback("mo/+79160000001", "http://h/", b"x", "text/plain", T0 + 600)
    mail = NewMail("relay@x", "ops@x", b"data", T0 + 600)
    outcome = NoticeOutcome(n.id, (call,), (mail,))
    await asyncio.gather(a.settle_notices([outcome], T0), b.settle_notices([outcome], T0))
    assert pg_rows(a._url, "SELECT COUNT(*) FROM callbacks") == [(1,)]
    assert pg_rows(a._url, "SELECT COUNT(*) FROM mails") == [(1,)]
    assert await a.claim_notices(10) == [] and await b.claim_notices(10) == []


async def test_two_nodes_send_the_callbacks_of_a_stream_in_order(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    streams = [f"status/s{i}" for i in range(4)]
    for s in streams:
        await a.store_mo(MoMessage(s, "7900", 0, 0, b"x"), T0)
    notices = await a.claim_notices(10)
    outcomes = [
        NoticeOutcome(
            n.id, tuple(NewCallback(s, f"http://h/{s}/{k}", b"", "t", 1e12) for k in range(8))
        )
        for n, s in zip(notices, streams, strict=True)
    ]
    await a.settle_notices(outcomes, T0)
    sent: dict[str, list[int]] = {s: [] for s in streams}
    in_flight: set[str] = set()
    overlaps: list[str] = []
    tries: dict[int, int] = {}

    async def sender(node: PostgresSpool) -> None:
        idle = 0
        while idle < 20:
            calls = await node.claim_callbacks(3, time.time())
            if not calls:
                idle += 1
                await asyncio.sleep(0.01)
                continue
            idle = 0

            async def send(c: Callback) -> None:
                if c.stream in in_flight:
                    overlaps.append(c.stream)
                in_flight.add(c.stream)
                await asyncio.sleep(0.005)
                in_flight.discard(c.stream)
                tries[c.id] = tries.get(c.id, 0) + 1
                if c.id % 3 == 0 and tries[c.id] == 1:  # one in three fails once: retried
                    await node.mark_callback_retry(c.id, time.time(), "HTTP 500")
                    return
                sent[c.stream].append(int(c.url.rsplit("/", 1)[1]))
                await node.mark_callback_sent(c.id, time.time())

            await asyncio.gather(*(send(c) for c in calls))

    await asyncio.gather(sender(a), sender(b))
    assert overlaps == []  # never two callbacks of one stream out at once
    assert sent == {s: list(range(8)) for s in streams}  # each once, in order
    assert {n for (n,) in pg_rows(a._url, "SELECT DISTINCT node FROM callbacks")} == {"a", "b"}
    counts = await b.counts()
    assert counts["callback_sent"] == 32 and counts.get("callback_queued", 0) == 0


async def test_a_dead_nodes_callback_lease_runs_out_and_its_stream_moves_on(
    nodes: tuple[PostgresSpool, PostgresSpool],
) -> None:
    a, b = nodes
    await a.store_mo(MoMessage("1", "2", 0, 0, b"x"), T0)
    [n] = await a.claim_notices(10)
    calls = tuple(NewCallback("mo/+1", f"http://h/{k}", b"", "t", 1e12) for k in range(2))
    await a.settle_notices([NoticeOutcome(n.id, calls)], T0)
    [head] = await a.claim_callbacks(10, T0)
    await a.close()  # a dies holding the head: no renewal, no recover()
    assert await b.recover() == 0  # not b's
    assert await b.claim_callbacks(10, T0 + 1.9) == []  # the head is sending on a: wait
    [again] = await b.claim_callbacks(10, T0 + 2.1)  # a's lease ran out
    assert again.id == head.id and again.attempts == 2
    await b.mark_callback_sent(again.id, T0 + 3)
    [nxt] = await b.claim_callbacks(10, T0 + 3)
    assert nxt.url == "http://h/1"


async def test_nodes_prune_one_at_a_time_and_each_row_once(
    nodes: tuple[PostgresSpool, PostgresSpool], pg_url: str
) -> None:
    """Retention on a shared spool: while one node holds the pruning lock the other skips its
    round at once (no waiting, nothing deleted); two rounds at once delete every row once."""
    from relay.config import MoConfig
    from relay.pruner import Pruner, PruneRules
    from relay.spool.pg_prune import PRUNE_LOCK
    from relay.spool.prune_model import start
    from relay.spool.retention import cutoffs

    a, b = nodes
    now = T0 + 40 * 86400
    for _ in range(30):
        r = request(at=T0)
        await a.store(NewRequest(r.key, r.request_id, "alex", "ops@x", "192.0.2.1", T0, error=2))
    cut = cutoffs(30, MoConfig(), LimitsConfig(), now)
    with psycopg.connect(pg_url, autocommit=True) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (PRUNE_LOCK,))
        t0 = time.monotonic()
        step = await b.prune(cut, 100, start())
        assert step.busy and step.deleted == {} and time.monotonic() - t0 < 1.0
        assert pg_rows(pg_url, "SELECT COUNT(*) FROM requests") == [(30,)]
    rules = PruneRules(30, MoConfig(), LimitsConfig())
    rounds = await asyncio.gather(
        *(Pruner(n, rules, batch=2, pause=0.0, clock=lambda: now).round() for n in (a, b))
    )
    assert sum(r.get("requests", 0) for r in rounds) == 30
    assert pg_rows(pg_url, "SELECT COUNT(*) FROM requests") == [(0,)]


async def _synchronous_commit(cur: psycopg.AsyncCursor[tuple[object, ...]]) -> str:
    await cur.execute("SHOW synchronous_commit")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def test_progress_commits_do_not_wait_for_the_wal_flush(pg_url: str) -> None:
    """Issue 9: claim and mark_submitted_many commit with synchronous_commit = off (their loss
    in a server crash only re-sends), every other transaction waits for the flush."""
    pg_reset(pg_url)
    deferred = PostgresSpool(pg_url, node="a")
    strict = PostgresSpool(pg_url, node="b", progress_fsync=0)
    await deferred.open()
    await strict.open()
    try:
        assert await deferred._tx(_synchronous_commit, durable=False) == "off"
        assert await deferred._tx(_synchronous_commit) == "on"
        assert await strict._tx(_synchronous_commit, durable=False) == "on"
        # SET LOCAL: the pooled connection is back to the server's setting afterwards.
        assert await deferred._tx(_synchronous_commit) == "on"
        await deferred.store(request(2))
        jobs = await deferred.claim(10, T0)
        states = await deferred.mark_submitted_many(
            [Submitted(j.id, f"m{j.id}", (f"m{j.id}",)) for j in jobs], T0
        )
        assert states == [JobState.SUBMITTED] * 2
    finally:
        await deferred.close()
        await strict.close()
