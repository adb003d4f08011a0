"""Issue 6 rate guards, spool tier (issue 10): checked and counted in the store's transaction,
so they hold across nodes and restarts; `tempfail` keeps a whole mail out. Time is `created`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from relay.config import LimitsConfig
from relay.rates import Exceeded, Limits, RateCheck
from relay.spool.base import Spool
from relay.spool.model import NewRequest, StoreResult
from tests.postgres import SpoolStore, pg_reset
from tests.unit.test_spool_protections import T0, request

LIMITS = LimitsConfig(flood_count=10**6)
OK = StoreResult(stored=True)


def rated(
    *checks: RateCheck, at: float = T0, parts: int = 1, tempfail: bool = False, phone: str = ""
) -> NewRequest:
    r = request(at=at, parts=parts, limits=LIMITS, phones=(phone or "+79990000001",))
    assert r.admission is not None
    adm = replace(r.admission, rates=checks, rate_tempfail=tempfail)
    return replace(r, admission=adm)


def account(per_minute: int = 0, parts_per_day: int = 0, key: str = "alex") -> RateCheck:
    return RateCheck("account", key, Limits(per_minute, parts_per_day))


def sender(per_minute: int = 0, parts_per_day: int = 0, key: str = "cron@x") -> RateCheck:
    return RateCheck("sender", key, Limits(per_minute, parts_per_day))


def over(scope: str, what: str, key: str) -> StoreResult:
    return StoreResult(False, 8, Exceeded(scope, key, what))


@pytest.fixture
async def spool(spool_store: SpoolStore) -> AsyncIterator[Spool]:
    s = spool_store.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_concurrent_stores_over_the_limit_accept_exactly_the_limit(spool: Spool) -> None:
    # distinct phones: only the rate guard's own lock serialises these stores
    results = await asyncio.gather(
        *(spool.store(rated(account(per_minute=5), phone=f"+7999{i:07d}")) for i in range(30))
    )
    assert results.count(OK) == 5
    assert results.count(over("account", "rate", "alex")) == 25
    counts = await spool.counts()  # a refused request writes nothing (the caller stores it)
    assert counts["queued"] == 5 and counts["mail_queued"] == 5


async def test_minute_window_and_parts_per_day(spool: Spool) -> None:
    lim = account(per_minute=2, parts_per_day=5)
    assert await spool.store(rated(lim, at=T0)) == OK
    assert await spool.store(rated(lim, at=T0 + 1)) == OK
    assert await spool.store(rated(lim, at=T0 + 2)) == over("account", "rate", "alex")
    assert await spool.store(rated(lim, at=T0 + 61, parts=3)) == OK  # the first left the minute
    assert await spool.store(rated(lim, at=T0 + 200)) == over("account", "parts", "alex")
    assert await spool.store(rated(account(per_minute=2, key="bob"), at=T0 + 200)) == OK
    day = (int(T0 // 86400) + 1) * 86400
    assert await spool.store(rated(lim, at=day + 10, parts=5)) == OK  # a new UTC day


async def test_account_then_sender_first_over_refuses(spool: Spool) -> None:
    checks = (account(per_minute=3), sender(per_minute=1))
    assert await spool.store(rated(*checks)) == OK
    assert await spool.store(rated(*checks)) == over("sender", "rate", "cron@x")
    # the refused request counted on neither key: the account has two more
    other = sender(per_minute=0, parts_per_day=10, key="other@x")
    assert await spool.store(rated(account(per_minute=3), other)) == OK
    assert await spool.store(rated(account(per_minute=3), other)) == OK
    assert await spool.store(rated(account(per_minute=3), other)) == over("account", "rate", "alex")


async def test_a_mail_counts_its_recipients_in_order(spool: Spool) -> None:
    lim = account(per_minute=2)
    batch = [rated(lim, phone=f"+7999000000{i}") for i in range(3)]
    results = await spool.store_all(batch)
    assert results == [OK, OK, over("account", "rate", "alex")]


async def test_tempfail_keeps_the_whole_mail_out_and_counts_nothing(spool: Spool) -> None:
    lim = account(per_minute=2)
    assert await spool.store(rated(lim, tempfail=True)) == OK
    batch = [rated(lim, tempfail=True, phone=f"+7999000000{i}") for i in range(2)]
    results = await spool.store_all(batch)
    # the first would fit, the second not: nothing of the mail is stored, nothing counted
    assert results == [
        StoreResult(False),
        StoreResult(False, 0, Exceeded("account", "alex", "rate")),
    ]
    assert (await spool.counts())["queued"] == 1
    assert await spool.store(rated(lim, tempfail=True)) == OK  # the one left is still free
    assert await spool.store(rated(lim, tempfail=True)) == StoreResult(
        False, 0, Exceeded("account", "alex", "rate")
    )


async def test_the_count_survives_a_restart(spool_store: SpoolStore) -> None:
    lim = account(per_minute=3, parts_per_day=4)
    s = spool_store.make()
    await s.open()
    try:
        assert await s.store(rated(lim, parts=2)) == OK
        assert await s.store(rated(lim)) == OK
    finally:
        await s.close()
    s = spool_store.make()
    await s.open()
    try:
        assert await s.store(rated(lim, at=T0 + 1, parts=2)) == over("account", "parts", "alex")
        assert await s.store(rated(lim, at=T0 + 1)) == OK
        assert await s.store(rated(lim, at=T0 + 2)) == over("account", "rate", "alex")
    finally:
        await s.close()


async def test_two_postgres_nodes_share_the_count(pg_url: str) -> None:
    from relay.spool.postgres import PostgresSpool

    pg_reset(pg_url)
    a = PostgresSpool(pg_url, node="a", lease=3600.0)
    b = PostgresSpool(pg_url, node="b", lease=3600.0)
    await a.open()
    await b.open()
    try:
        lim = sender(per_minute=7)
        results = await asyncio.gather(
            *(n.store(rated(lim, phone=f"+7999{i:07d}")) for i, n in enumerate((a, b) * 10))
        )
        assert results.count(OK) == 7  # not 7 per node
        assert results.count(over("sender", "rate", "cron@x")) == 13
    finally:
        await a.close()
        await b.close()
