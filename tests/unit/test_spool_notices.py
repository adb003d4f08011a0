"""The spool's issue-8 outbox on both backends: notices on final states and MO, callbacks in
order."""

from __future__ import annotations

from relay.smpp.model import SubmitSm
from relay.spool.model import (
    JobState,
    MoMessage,
    NewCallback,
    NewJob,
    NewMail,
    NewRequest,
    NoticeOutcome,
)
from tests.postgres import SpoolStore


def _request(key: str, n: int = 2, phone: str = "+79161234567") -> NewRequest:
    sm = SubmitSm("Alex", 5, 0, phone[1:], b"hi", 0)
    jobs = tuple(NewJob(phone, 0, i + 1, n, sm, 100.0, 1e12) for i in range(n))
    return NewRequest(key, f"id-{key}", "alex", "ops@example.org", "127.0.0.1", 100.0, jobs)


async def test_a_message_gets_one_status_notice_when_its_last_part_is_final(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("k"))
        j1, j2 = await spool.claim(10, 200.0)
        await spool.mark_submitted(j1.id, "A", ("A",), 201.0)
        await spool.mark_submitted(j2.id, "B", ("B",), 201.0)
        receipt = {"err": "000", "stat": "DELIVRD"}
        assert await spool.apply_receipt(("A",), JobState.DELIVERED, receipt, 202.0) == 1
        assert await spool.claim_notices(10) == []  # part 2 still submitted
        bad = {"err": "0x0B", "stat": "UNDELIV"}  # hex err from some SMSCs
        await spool.apply_receipt(("B",), JobState.UNDELIVERABLE, {**bad, "err": "11"}, 203.0)
        await spool.apply_receipt(("B",), JobState.UNDELIVERABLE, bad, 204.0)  # repeated
        [n] = await spool.claim_notices(10)
        assert (n.kind, n.request_id, n.phone, n.state, n.err, n.parts) == (
            "status",
            "id-k",
            "+79161234567",
            "undeliverable",
            11,
            2,
        )
        assert n.mail_from == "ops@example.org" and n.at == 203.0
        await spool.settle_notices([NoticeOutcome(n.id)], 205.0)
        assert await spool.claim_notices(10) == []
    finally:
        await spool.close()


async def test_mo_notice_and_last_sent_to(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("k", 1))
        [job] = await spool.claim(10, 200.0)
        assert await spool.last_sent_to("+79161234567", 0.0) is None  # not submitted yet
        await spool.mark_submitted(job.id, "A", ("A",), 201.0)
        sent = await spool.last_sent_to("+79161234567", 0.0)
        assert sent is not None and sent.mail_from == "ops@example.org"
        assert sent.request_id == "id-k" and sent.submits[0].short_message == b"hi"
        assert await spool.last_sent_to("+79161234567", 101.0) is None  # outside the window
        mo_id = await spool.store_mo(MoMessage("79161234567", "7900", 0, 0, b"ok"), 300.0)
        [n] = await spool.claim_notices(10)
        assert (
            n.kind == "mo" and n.mo_id == mo_id and n.mo is not None and n.mo.short_message == b"ok"
        )
        assert [i for i, _, _ in await spool.mo_from("79161234567", 0.0)] == [mo_id]
    finally:
        await spool.close()


async def test_callbacks_of_one_stream_go_one_at_a_time_in_order(spool_store: SpoolStore) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store_mo(MoMessage("1", "2", 0, 0, b"x"), 1.0)
        [n] = await spool.claim_notices(10)
        calls = tuple(NewCallback(s, f"http://h/{i}", b"b", "t", 1e9) for i, s in
                      enumerate(["m1", "m1", "m2"]))  # fmt: skip
        mail = NewMail("r@x", "o@y", b"data", 1e9)
        await spool.settle_notices([NoticeOutcome(n.id, calls, (mail,))], 10.0)
        first = await spool.claim_callbacks(10, 10.0)
        assert sorted(c.url for c in first) == ["http://h/0", "http://h/2"]
        assert await spool.claim_callbacks(10, 10.0) == []  # h/1 waits for h/0
        h0 = next(c for c in first if c.url.endswith("/0"))
        await spool.mark_callback_retry(h0.id, 50.0, "HTTP 500")
        assert await spool.claim_callbacks(10, 20.0) == []  # still the head of m1
        assert await spool.next_callback_due() == 50.0
        [again] = await spool.claim_callbacks(10, 50.0)
        assert again.url.endswith("/0") and again.attempts == 2
        await spool.mark_callback_sent(again.id, 51.0)
        [nxt] = await spool.claim_callbacks(10, 51.0)
        assert nxt.url.endswith("/1")
        assert await spool.recover() == 2  # h/1 and h/2 were left sending
        counts = await spool.counts()
        assert counts["callback_queued"] == 2 and counts["callback_sent"] == 1
        assert counts["mail_queued"] == 1
    finally:
        await spool.close()


async def test_mark_final_cancel_and_early_receipts_write_notices(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store(_request("k"))
        [j1] = await spool.claim(1, 200.0)  # part 2 stays queued
        j1_error = "command_status 0x00000045"
        await spool.mark_final(j1.id, JobState.REJECTED, j1_error, 201.0)
        assert await spool.claim_notices(10) == []  # part 2 still queued
        assert await spool.cancel("id-k", 202.0) == 1
        await spool.mark_final(j1.id, JobState.REJECTED, j1_error, 203.0)  # final already
        [n] = await spool.claim_notices(10)
        assert (n.request_id, n.state, n.err, n.parts, n.at) == ("id-k", "rejected", 0x45, 2, 202.0)
        await spool.settle_notices([NoticeOutcome(n.id)], 204.0)
        await spool.store(_request("e", 1, phone="+79160000000"))
        [job] = await spool.claim(10, 300.0)
        receipt = {"err": "000", "stat": "DELIVRD"}
        assert await spool.apply_receipt(("E",), JobState.DELIVERED, receipt, 301.0) == 0
        assert await spool.claim_notices(10) == []  # an early receipt: no job final yet
        assert await spool.mark_submitted(job.id, "E", ("E",), 302.0) is JobState.DELIVERED
        [n] = await spool.claim_notices(10)
        assert (n.request_id, n.phone, n.state, n.err, n.parts) == (
            "id-e",
            "+79160000000",
            "delivered",
            0,
            1,
        )
    finally:
        await spool.close()


async def test_a_deferred_notice_comes_back_when_due_and_survives_a_restart(
    spool_store: SpoolStore,
) -> None:
    spool = spool_store.make()
    await spool.open()
    try:
        await spool.store_mo(
            MoMessage("79161234567", "7900", 0x40, 0, b"\x05\x00\x03\x01\x02\x01a"), 300.0
        )
        [n] = await spool.claim_notices(10, 300.0)
        await spool.settle_notices([NoticeOutcome(n.id, defer_until=900.0)], 300.0)
        assert await spool.claim_notices(10, 899.0) == []
    finally:
        await spool.close()
    spool = spool_store.make()
    await spool.open()
    try:
        [again] = await spool.claim_notices(10, 900.0)
        assert (again.id, again.kind, again.at) == (n.id, "mo", 300.0)
        await spool.settle_notices([NoticeOutcome(again.id)], 901.0)
        assert await spool.claim_notices(10, 2000.0) == []
    finally:
        await spool.close()
