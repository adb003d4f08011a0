"""SPEC §5 protections, spool tier: flood (8) → duplicates (9) → balance (3) atomic with the store,
the IP block (4), concurrency, and state that survives a restart. Time is the `created` given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from relay.config import LimitsConfig
from relay.smpp.model import SubmitSm
from relay.spool.base import Spool
from relay.spool.model import Admission, NewJob, NewMail, NewRequest, StoreResult
from tests.postgres import SpoolStore

T0 = 1_790_000_000.0
IP = "192.0.2.1"
_keys = iter(range(10**9))


def request(
    *,
    at: float = T0,
    phones: tuple[str, ...] = ("+79990000001",),
    parts: int = 1,
    fp: str = "",
    balance: int | None = None,
    limits: LimitsConfig | None = None,
    login: str = "alex",
    key: str = "",
) -> NewRequest:
    sm = SubmitSm("Alex", 5, 0, "79990000001", b"hi", 0)
    jobs = tuple(
        NewJob(phone, 0, p + 1, parts, sm, not_before=at, expires_at=at + 86400)
        for phone in phones
        for p in range(parts)
    )
    k = key or f"k{next(_keys)}"
    return NewRequest(
        k,
        f"id-{k}",
        login,
        "ops@x",
        IP,
        at,
        jobs,
        (NewMail("relay@x", "ops@x", b"Subject: OK\r\n\r\nOK\r\n", at + 86400),),
        admission=Admission(fp, phones, parts * len(phones), balance),
        limits=limits or LimitsConfig(),
    )


def rejection(
    code: int, *, at: float = T0, ip: str = IP, failure: bool = True, limits: LimitsConfig
) -> NewRequest:
    mail = NewMail("relay@x", "ops@x", f"Subject: ERROR = {code}\r\n\r\n".encode(), at + 86400)
    return NewRequest(
        f"k{next(_keys)}",
        "id",
        "",
        "ops@x",
        ip,
        at,
        mails=(mail,),
        error=code,
        limits=limits,
        ip_failure=failure,
    )


@pytest.fixture
async def spool(spool_store: SpoolStore) -> AsyncIterator[Spool]:
    s = spool_store.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def reopen(s: Spool, store: SpoolStore) -> Spool:
    await s.close()
    again = store.make()
    await again.open()
    return again


OK = StoreResult(stored=True)
DUP, FLOOD, FUNDS = StoreResult(False, 9), StoreResult(False, 8), StoreResult(False, 3)


# -- duplicates (9) ----------------------------------------------------------------------------


async def test_concurrent_identical_requests_one_passes(spool: Spool) -> None:
    results = await asyncio.gather(*(spool.store(request(fp="same")) for _ in range(20)))
    assert results.count(OK) == 1 and results.count(DUP) == 19
    # a refused request writes nothing: one request's job and reply mail only
    counts = await spool.counts()
    assert counts["queued"] == 1 and counts["mail_queued"] == 1


async def test_duplicate_window_and_allowance(spool: Spool) -> None:
    limits = LimitsConfig(duplicate_window=60, duplicate_allowed=2)
    assert await spool.store(request(fp="a", limits=limits)) == OK
    assert await spool.store(request(fp="a", limits=limits, at=T0 + 10)) == OK
    assert await spool.store(request(fp="a", limits=limits, at=T0 + 20)) == DUP
    assert await spool.store(request(fp="b", limits=limits, at=T0 + 20)) == OK  # not identical
    assert await spool.store(request(fp="a", limits=limits, at=T0 + 59.9)) == DUP
    assert await spool.store(request(fp="a", limits=limits, at=T0 + 60)) == OK  # first expired
    assert await spool.store(request(fp="a", limits=limits, at=T0 + 61)) == DUP


async def test_refused_request_is_stored_as_a_rejection_under_its_key(spool: Spool) -> None:
    limits = LimitsConfig()
    assert await spool.store(request(fp="x", limits=limits)) == OK
    second = request(fp="x", limits=limits)
    assert await spool.store(second) == DUP
    # the front then stores the rejection under the same key: it is not "known" yet
    refusal = NewRequest(second.key, second.request_id, "alex", "ops@x", IP, T0, error=9)
    assert await spool.store(refusal) == OK
    assert await spool.store(refusal) == StoreResult(stored=False)


async def test_duplicate_window_survives_restart(spool: Spool, spool_store: SpoolStore) -> None:
    assert await spool.store(request(fp="r")) == OK
    again = await reopen(spool, spool_store)
    try:
        assert await again.store(request(fp="r", at=T0 + 30)) == DUP
        assert await again.store(request(fp="r", at=T0 + 61)) == OK
    finally:
        await again.close()


# -- balance (3) -------------------------------------------------------------------------------


async def test_concurrent_debits_never_overdraw(spool: Spool, spool_store: SpoolStore) -> None:
    results = await asyncio.gather(*(spool.store(request(balance=5)) for _ in range(10)))
    assert results.count(OK) == 5 and results.count(FUNDS) == 5
    assert await spool.balance("alex") == 0
    assert (await spool.counts())["queued"] == 5
    again = await reopen(spool, spool_store)
    try:
        assert await again.balance("ALEX") == 0  # kept across the restart
        assert await again.store(request(balance=5)) == FUNDS
    finally:
        await again.close()


async def test_balance_counts_parts_times_recipients(spool: Spool) -> None:
    two_by_two = {"phones": ("+79990000001", "+79990000002"), "parts": 2}
    assert await spool.store(request(balance=6, **two_by_two)) == OK  # type: ignore[arg-type]
    assert await spool.balance("alex") == 2
    assert await spool.store(request(balance=6, **two_by_two)) == FUNDS  # type: ignore[arg-type]
    assert await spool.balance("alex") == 2  # a refusal debits nothing
    assert await spool.store(request(balance=6, parts=2)) == OK  # what is left still serves
    assert await spool.balance("alex") == 0


async def test_balance_rebases_when_the_config_changes(spool: Spool) -> None:
    assert await spool.store(request(balance=3, parts=3)) == OK
    assert await spool.store(request(balance=3)) == FUNDS
    assert await spool.store(request(balance=5)) == OK  # operator granted 2 more
    assert await spool.balance("alex") == 1
    assert await spool.store(request(balance=2)) == FUNDS  # lowered below what was spent
    assert await spool.balance("alex") == -2
    assert await spool.store(request(balance=None)) == OK  # unlimited: no check, no debit
    assert await spool.balance("alex") == -2
    assert await spool.balance("nobody") is None


async def test_balances_are_per_account(spool: Spool) -> None:
    assert await spool.store(request(balance=1)) == OK
    assert await spool.store(request(balance=1, login="bob")) == OK
    assert await spool.store(request(balance=1)) == FUNDS


# -- flood (8) -------------------------------------------------------------------------------


async def test_flood_streak(spool: Spool, spool_store: SpoolStore) -> None:
    limits = LimitsConfig(flood_count=3, flood_interval=120)
    for t in (0, 100, 200):  # each within 2 min of the previous one
        assert await spool.store(request(limits=limits, at=T0 + t)) == OK
    assert await spool.store(request(limits=limits, at=T0 + 300)) == FLOOD  # the 4th
    other = request(limits=limits, at=T0 + 300, phones=("+79990000002",))
    assert await spool.store(other) == OK  # another subscriber
    again = await reopen(spool, spool_store)
    try:
        assert await again.store(request(limits=limits, at=T0 + 310)) == FLOOD  # kept
        # the streak breaks 2 min after the last message *sent* (refusals were never sent)
        assert await again.store(request(limits=limits, at=T0 + 319.9)) == FLOOD
        assert await again.store(request(limits=limits, at=T0 + 320)) == OK
        assert await again.store(request(limits=limits, at=T0 + 321)) == OK
    finally:
        await again.close()


async def test_flood_refuses_the_whole_request(spool: Spool, spool_store: SpoolStore) -> None:
    limits = LimitsConfig(flood_count=2)
    for _ in range(2):
        assert await spool.store(request(limits=limits)) == OK
    both = ("+79990000002", "+79990000001")
    assert await spool.store(request(limits=limits, phones=both)) == FLOOD
    # the innocent subscriber's streak was not extended by the refused request
    assert spool_store.rows("SELECT streak FROM flood WHERE dest = '+79990000002'") == []
    # one request with two messages to one subscriber counts two
    twice = ("+79990000003", "+79990000003")
    assert await spool.store(request(limits=limits, phones=twice)) == OK
    assert await spool.store(request(limits=limits, phones=("+79990000003",))) == FLOOD


async def test_concurrent_flood_exactly_count_pass(spool: Spool) -> None:
    limits = LimitsConfig(flood_count=50)
    results = await asyncio.gather(
        *(spool.store(request(limits=limits, at=T0 + i * 0.01)) for i in range(60))
    )
    assert results.count(OK) == 50 and results.count(FLOOD) == 10


# -- order: flood (8) → duplicates (9) → balance (3) -------------------------------------------


async def test_checks_run_in_spec_order(spool: Spool) -> None:
    limits = LimitsConfig(flood_count=1)
    assert await spool.store(request(fp="o", balance=1, limits=limits)) == OK
    # flooded, duplicate and out of funds at once → 8
    assert await spool.store(request(fp="o", balance=1, limits=limits)) == FLOOD
    other = ("+79990000009",)
    # duplicate and out of funds → 9
    assert await spool.store(request(fp="o", balance=1, limits=limits, phones=other)) == DUP
    # only out of funds → 3
    assert await spool.store(request(fp="p", balance=1, limits=limits, phones=other)) == FUNDS


async def test_without_limits_nothing_is_checked(spool: Spool) -> None:
    assert await spool.store(replace(request(fp="n", balance=0), limits=None)) == OK


# -- IP block (4) ----------------------------------------------------------------------------


async def test_ip_block_after_too_many_failures(spool: Spool, spool_store: SpoolStore) -> None:
    limits = LimitsConfig(ip_fail_count=3, ip_fail_window=600, ip_block_time=900)
    for t in range(3):
        assert await spool.store(rejection(2, at=T0 + t, limits=limits)) == OK
    assert not await spool.ip_blocked(IP, T0 + 3)  # 3 failures: not *more* than 3
    await spool.store(rejection(7, at=T0 + 4, limits=limits, failure=False))  # not counted
    assert not await spool.ip_blocked(IP, T0 + 5)
    await spool.store(rejection(1, at=T0 + 5, limits=limits))  # the 4th counted failure
    assert await spool.ip_blocked(IP, T0 + 5)
    assert not await spool.ip_blocked("192.0.2.2", T0 + 5)
    again = await reopen(spool, spool_store)
    try:
        assert await again.ip_blocked(IP, T0 + 5 + 899)  # survives the restart
        assert not await again.ip_blocked(IP, T0 + 5 + 900)
        # the count started afresh with the block: one failure after it does not re-block
        await again.store(rejection(2, at=T0 + 1000, limits=limits))
        assert not await again.ip_blocked(IP, T0 + 1000)
    finally:
        await again.close()


async def test_count_starts_afresh_after_a_block(spool: Spool) -> None:
    # a window longer than the block: the failures that caused it must not re-block at once
    limits = LimitsConfig(ip_fail_count=2, ip_fail_window=3600, ip_block_time=60)
    for t in range(3):
        await spool.store(rejection(2, at=T0 + t, limits=limits))
    assert await spool.ip_blocked(IP, T0 + 3)
    await spool.store(rejection(2, at=T0 + 100, limits=limits))
    assert not await spool.ip_blocked(IP, T0 + 100)


async def test_failures_outside_the_window_do_not_add_up(spool: Spool) -> None:
    limits = LimitsConfig(ip_fail_count=2, ip_fail_window=60)
    for t in (0, 30, 61, 95):  # never more than 2 within 60 s
        await spool.store(rejection(2, at=T0 + t, limits=limits))
        assert not await spool.ip_blocked(IP, T0 + t)
    await spool.store(rejection(2, at=T0 + 100, limits=limits))  # 61, 95, 100
    assert await spool.ip_blocked(IP, T0 + 100)


async def test_one_error_4_reply_per_block(spool: Spool) -> None:
    limits = LimitsConfig(ip_fail_count=1, ip_block_time=900)
    for t in (0, 1):
        await spool.store(rejection(2, at=T0 + t, limits=limits))
    assert await spool.ip_blocked(IP, T0 + 2)
    before = (await spool.counts())["mail_queued"]
    for t in (2, 3, 4):
        assert await spool.store(rejection(4, at=T0 + t, limits=limits, failure=False)) == OK
    assert (await spool.counts())["mail_queued"] == before + 1  # one reply, three records
    # a new block period gets its reply again
    for t in (1000, 1001):
        await spool.store(rejection(2, at=T0 + t, limits=limits))
    await spool.store(rejection(4, at=T0 + 1002, limits=limits, failure=False))
    assert (await spool.counts())["mail_queued"] == before + 4
