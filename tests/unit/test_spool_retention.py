"""Retention (`spool.keep_days`) on both backends: history stored through the spool's own API,
aged by the clock it is given, pruned in small batches; exactly what may go is gone."""

from __future__ import annotations

import asyncio
import time

from relay.config import LimitsConfig, MoConfig
from relay.pruner import Pruner, PruneRules
from relay.smpp.model import SubmitSm
from relay.spool.base import Spool
from relay.spool.model import (
    Admission,
    JobState,
    MoMessage,
    NewCallback,
    NewJob,
    NewMail,
    NewRequest,
    NoticeOutcome,
)
from relay.spool.prune_model import start
from relay.spool.retention import cutoffs
from tests.postgres import SpoolStore

DAY = 86400.0
T = 1_790_000_000.0  # "long ago"
NOW = T + 20 * DAY
KEEP = 10.0  # days
MO = MoConfig(reply_window=DAY, concat_window=3600, concat_timeout=600)
LIMITS = LimitsConfig()
DELIVERED = {"stat": "DELIVRD", "err": "000"}


def _request(
    key: str,
    at: float,
    parts: int = 1,
    *,
    not_before: float | None = None,
    validity: float = 1e12,
    error: int = 0,
    fp: str = "",
    mail: bool = False,
) -> NewRequest:
    phone = "+79160000000"
    sm = SubmitSm("Alex", 5, 0, phone[1:], b"hi", 0)
    due = at if not_before is None else not_before
    jobs = (
        ()
        if error
        else tuple(NewJob(phone, 0, i + 1, parts, sm, due, at + validity) for i in range(parts))
    )
    mails = (NewMail("relay@x", "ops@x", b"Subject: OK\r\n\r\nOK\r\n", at + DAY),) if mail else ()
    return NewRequest(
        key,
        f"id-{key}",
        "alex",
        "ops@x",
        "192.0.2.1",
        at,
        jobs,
        mails,
        error=error,
        admission=Admission(fp, (phone,), parts, None) if fp else None,
        limits=LIMITS if fp else None,
    )


async def _send(spool: Spool, at: float, ids: list[str], final: JobState | None) -> None:
    """Claim every due job, submit them with upstream ids `ids`, and apply final receipts."""
    jobs = await spool.claim(100, at)
    assert len(jobs) == len(ids)
    for job, uid in zip(jobs, ids, strict=True):
        await spool.mark_submitted(job.id, uid, (uid,), at)
        if final is not None:
            await spool.apply_receipt((uid,), final, DELIVERED, at)


async def _prune(spool: Spool, keep: float = KEEP, batch: int = 2) -> dict[str, int]:
    rules = PruneRules(keep, MO, LIMITS)
    return await Pruner(spool, rules, batch=batch, pause=0.0, clock=lambda: NOW).round()


def _keys(store: SpoolStore, table: str = "requests") -> set[object]:
    return {r[0] for r in store.rows(f"SELECT key FROM {table}")}


async def test_final_history_older_than_keep_days_goes_and_nothing_else(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        # Old, every part delivered: history.
        await spool.store(_request("done", T, parts=2))
        await _send(spool, T, ["A1", "A2"], JobState.DELIVERED)
        # Old, submitted, validity over long ago, receipt never came: history too.
        await spool.store(_request("lost", T, validity=DAY))
        await _send(spool, T, ["L1"], None)
        # Old, one part delivered, one still waiting for its receipt within validity: stays.
        await spool.store(_request("waiting", T, parts=2))
        jobs = await spool.claim(10, T)
        await spool.mark_submitted(jobs[0].id, "W1", ("W1",), T)
        await spool.mark_submitted(jobs[1].id, "W2", ("W2",), T)
        await spool.apply_receipt(("W1",), JobState.DELIVERED, DELIVERED, T)
        # Old, scheduled far ahead, still queued: stays.
        await spool.store(_request("scheduled", T, not_before=NOW + DAY))
        # Old rejection (ERROR 2, no jobs) with its reply mail sent: both go.
        await spool.store(_request("refused", T, error=2, mail=True))
        [m] = await spool.claim_mails(10, T)
        await spool.mark_mail_sent(m.id, T)
        # Old reply mail never sent (smarthost down, still retried): stays.
        await spool.store(_request("unmailed", T, error=2, mail=True))
        # Recent (2 days), delivered: stays (keep_days = 10).
        await spool.store(_request("recent", NOW - 2 * DAY))
        await _send(spool, NOW - 2 * DAY, ["R1"], JobState.DELIVERED)
        # A receipt for an id the relay never sent, long ago: goes.
        assert await spool.apply_receipt(("X9",), JobState.DELIVERED, DELIVERED, T) == 0
        notices = await spool.claim_notices(100, NOW)
        await spool.settle_notices([NoticeOutcome(n.id) for n in notices], T)

        deleted = await _prune(spool)

        assert _keys(spool_store) == {"waiting", "scheduled", "unmailed", "recent"}
        left = spool_store.rows(
            "SELECT r.key, COUNT(*) FROM jobs j"
            " JOIN requests r ON r.pk = j.request_pk GROUP BY r.key"
        )
        assert dict(left) == {"waiting": 2, "scheduled": 1, "recent": 1}  # type: ignore[arg-type]
        assert _keys(spool_store, "upstream_keys") == {"W1", "W2", "R1"}
        assert spool_store.rows("SELECT COUNT(*) FROM early_receipts") == [(0,)]
        assert spool_store.rows("SELECT state FROM mails") == [("queued",)]
        assert deleted["requests"] == 3 and deleted["jobs"] == 3
        assert deleted["upstream_keys"] == 3 and deleted["mails"] == 1
        assert deleted["early_receipts"] == 1
        # What is gone is gone for the operator's tools too; a late receipt is kept, not lost.
        assert await spool.request_status("id-done") == []
        assert await spool.request_error("id-done") is None
        assert await spool.apply_receipt(("A1",), JobState.DELIVERED, DELIVERED, NOW) == 0
        assert [v.state for v in await spool.request_status("id-waiting")] == [
            "delivered",
            "submitted",
        ]
        # A second round finds nothing more.
        assert await _prune(spool) == {}
    finally:
        await spool.close()


async def test_keep_days_zero_keeps_history_and_reply_window_is_never_cut(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("old", T))
        await _send(spool, T, ["O1"], JobState.DELIVERED)
        await spool.store(_request("three-days", NOW - 3 * DAY))
        await _send(spool, NOW - 3 * DAY, ["D1"], JobState.DELIVERED)
        await spool.settle_notices(
            [NoticeOutcome(n.id) for n in await spool.claim_notices(100, NOW)], T
        )
        assert await _prune(spool, keep=0) == {}
        assert _keys(spool_store) == {"old", "three-days"}
        # keep_days 1 < mo.reply_window 7 days: a 3-day-old message still gets its MO answer.
        rules = PruneRules(1.0, MoConfig(reply_window=7 * DAY), LIMITS)
        await Pruner(spool, rules, pause=0.0, clock=lambda: NOW).round()
        assert _keys(spool_store) == {"three-days"}
        sent = await spool.last_sent_to("+79160000000", NOW - 7 * DAY)
        assert sent is not None and sent.request_id == "id-three-days"
    finally:
        await spool.close()


async def test_notices_callbacks_and_mo_wait_until_settled_and_sent(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        # A final message whose notice is not settled yet (notifier behind): it stays.
        await spool.store(_request("unnoticed", T))
        await _send(spool, T, ["U1"], JobState.DELIVERED)
        # Old MO SMS: one settled (goes), one whose notice waits (stays), one recent (stays).
        settled = await spool.store_mo(MoMessage("79160000000", "7900", 0, 0, b"a"), T)
        waiting = await spool.store_mo(MoMessage("79160000000", "7900", 0, 0, b"b"), T + 1)
        recent = await spool.store_mo(MoMessage("79160000000", "7900", 0, 0, b"c"), NOW - 60)
        notices = await spool.claim_notices(100, NOW)
        by_mo = {n.mo_id: n for n in notices if n.kind == "mo"}
        cb = NewCallback("s/1", "http://127.0.0.1:9/cb", b"x=1", "text/plain", T + DAY)
        await spool.settle_notices(
            [
                NoticeOutcome(by_mo[settled].id, (cb, cb)),
                NoticeOutcome(by_mo[recent].id),
            ],
            T,
        )
        (first,) = await spool.claim_callbacks(10, T)
        await spool.mark_callback_sent(first.id, T)  # sent long ago: goes
        # the second callback of the stream is still queued: it stays

        deleted = await _prune(spool, batch=1)

        assert {r[0] for r in spool_store.rows("SELECT id FROM mo")} == {waiting, recent}
        assert _keys(spool_store) == {"unnoticed"}
        assert spool_store.rows("SELECT state FROM callbacks") == [("queued",)]
        assert deleted == {"mo": 1, "callbacks": 1}
    finally:
        await spool.close()


async def test_spec5_state_goes_after_its_window(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        # Duplicate fingerprints and a flood streak, long past their windows; no store came
        # since (a store prunes what it reads on its way, the pruner what is left behind).
        for i in range(5):
            assert (await spool.store(_request(f"fp{i}", T + i, fp=f"fp{i}"))).stored
        deleted = await _prune(spool, keep=0, batch=2)
        assert deleted == {"fingerprints": 5, "flood": 1}
        assert spool_store.rows("SELECT COUNT(*) FROM fingerprints") == [(0,)]
        assert spool_store.rows("SELECT COUNT(*) FROM flood") == [(0,)]
        assert (await spool.store(_request("fresh", NOW - 1, fp="fresh"))).stored
        assert await _prune(spool, keep=0) == {}  # within its window: stays
        # The duplicate check still sees the fresh one (and only it).
        again = await spool.store(_request("fresh2", NOW, fp="fresh"))
        assert again.refused == 9
        assert (await spool.store(_request("fp0-again", NOW, fp="fp0"))).stored
    finally:
        await spool.close()


def test_cutoffs_never_cut_a_window_short() -> None:
    cut = cutoffs(1.0, MoConfig(reply_window=7 * DAY, concat_window=2 * DAY), LIMITS, NOW)
    assert cut.requests == NOW - 7 * DAY
    assert cut.mo == NOW - 2 * DAY
    assert cut.outbound == cut.receipts == NOW - DAY
    forever = cutoffs(0, MO, LIMITS, NOW)
    assert forever.requests is forever.outbound is forever.mo is None
    assert forever.fingerprints == NOW - LIMITS.duplicate_window


async def test_round_resumes_batches_to_the_end(spool_store: SpoolStore) -> None:
    """A batch of 3 rows per table walks 20 requests in several batches; all go."""
    spool = spool_store.make()
    await spool.open()
    try:
        for i in range(20):
            await spool.store(_request(f"r{i}", T + i, error=2))
        cut = cutoffs(KEEP, MO, LIMITS, NOW)
        resume, batches, gone = start(), 0, 0
        while resume:
            step = await spool.prune(cut, 3, resume)
            gone += step.deleted.get("requests", 0)
            resume, batches = step.resume, batches + 1
        assert gone == 20 and batches >= 7
        assert _keys(spool_store) == set()
    finally:
        await spool.close()


async def test_prune_does_not_hold_a_concurrent_store_back_for_long(
    spool_store: SpoolStore,
) -> None:
    """The longest store() while a round prunes 3 000 requests stays short (batched writes)."""
    spool = spool_store.make()
    await spool.open()
    try:
        for chunk in range(30):
            await spool.store_all([_request(f"b{chunk}-{i}", T, error=2) for i in range(100)])
        done = asyncio.Event()
        pauses: list[float] = []

        async def storing() -> None:
            i = 0
            while not done.is_set():
                t0 = time.perf_counter()
                await spool.store(_request(f"live{i}", NOW))
                pauses.append(time.perf_counter() - t0)
                i += 1

        task = asyncio.create_task(storing())
        rules = PruneRules(KEEP, MO, LIMITS)
        deleted = await Pruner(spool, rules, pause=0.02, clock=lambda: NOW).round()
        done.set()
        await task
        assert deleted["requests"] == 3000
        assert pauses and max(pauses) < 0.5, max(pauses)
    finally:
        await spool.close()
