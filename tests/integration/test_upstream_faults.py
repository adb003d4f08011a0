"""SPEC §8/§9 through the real daemon: each simulator fault, with exact submit_sm counts.

Every test drives `sms-relay serve` (a subprocess) with real SMTP mails against the project's
SMSC simulator on 127.0.0.1, then asserts how many submit_sm the SMSC saw, the final state of
every job in the spool, and that every accepted SMS arrived (nothing lost).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from relay.smpp import codec
from relay.smpp.simulator import FIRST_MESSAGE_ID, SimFaults
from tests.integration.upstream import phone, submits_for, upstream_stack


def texts_of(stack_received: list[object]) -> Counter[str]:
    return Counter(getattr(s, "text", "") for s in stack_received)


@pytest.mark.parametrize(
    "faults",
    [
        SimFaults(throttle_every=4),
        SimFaults(error_every=4, error_status=codec.ESME_RMSGQFUL),
    ],
    ids=["throttled-0x58", "queue-full-0x14"],
)
async def test_throttled_job_is_resent_first_and_nothing_else_repeats(
    tmp_path: Path, faults: SimFaults
) -> None:
    async with upstream_stack(tmp_path, faults, start_smsc=False, smpp_window=1) as st:
        texts = await st.send_many(10)
        await st.smsc.start()
        await st.wait_states({"delivered": 10})
        log = st.smsc.submit_log
        assert st.smsc.submits == submits_for(10, 4) == 13
        refused = [i for i, (_, status) in enumerate(log) if status != 0]
        assert refused == [3, 7, 11]
        # The refused submit_sm is the very next one sent again (it kept its place).
        for i in refused:
            assert log[i + 1] == (log[i][0], 0)
        assert texts_of(st.smsc.received) == Counter(texts)  # each exactly once
        # It stayed claimed while the bind paused: one claim, one attempt per job.
        assert [j["attempts"] for j in st.jobs()] == [1] * 10


@pytest.mark.parametrize("status", [0x08, 0x64, 0xFF])
async def test_transient_status_retried_with_backoff(tmp_path: Path, status: int) -> None:
    faults = SimFaults(error_every=3, error_status=status)
    async with upstream_stack(tmp_path, faults, start_smsc=False, smpp_window=1) as st:
        texts = await st.send_many(6)
        await st.smsc.start()
        await st.wait_states({"delivered": 6})
        assert st.smsc.submits == submits_for(6, 3) == 8
        assert sum(j["attempts"] for j in st.jobs()) == 8
        assert texts_of(st.smsc.received) == Counter(texts)


async def test_permanent_status_rejects_and_keeps_the_code(tmp_path: Path) -> None:
    faults = SimFaults(error_every=2, error_status=0x0B)  # ESME_RINVDSTADR
    async with upstream_stack(tmp_path, faults, start_smsc=False, smpp_window=1) as st:
        await st.send_list([(phone(i), f"p {i}") for i in range(6)], request_id="61")
        await st.smsc.start()
        await st.wait_states({"delivered": 3, "rejected": 3})
        assert st.smsc.submits == 6  # a permanent error is never retried
        jobs = st.jobs()
        assert [j["state"] for j in jobs] == ["delivered", "rejected"] * 3
        assert {j["error"] for j in jobs if j["state"] == "rejected"} == {
            "command_status 0x0000000B"
        }
        status = await st.status("61")
        assert status["state"] == "rejected"
        assert [m["state"] for m in status["messages"]] == ["delivered", "rejected"] * 3


async def test_delayed_responses_use_the_window_and_send_once(tmp_path: Path) -> None:
    faults = SimFaults(response_delay=0.3)
    async with upstream_stack(tmp_path, faults, start_smsc=False, smpp_window=5) as st:
        texts = await st.send_many(10)
        await st.smsc.start()
        await st.wait_states({"delivered": 10})
        assert st.smsc.submits == 10
        assert st.smsc.max_outstanding == 5  # the window, not more, not less
        assert texts_of(st.smsc.received) == Counter(texts)


async def test_response_timeout_is_an_unknown_outcome_resent_until_expiry(
    tmp_path: Path,
) -> None:
    # Every response comes after the timeout: each attempt's outcome is unknown, so each is
    # re-sent (the documented at-least-once window) until the validity (3 s) ends → expired.
    faults = SimFaults(response_delay=2.0)
    async with upstream_stack(
        tmp_path, faults, smpp_response_timeout=0.4, spool_validity=3, smpp_window=2
    ) as st:
        await st.send_many(2)
        await st.wait_states({"expired": 2}, timeout=15)
        attempts = sum(j["attempts"] for j in st.jobs())
        assert attempts >= 4  # retried, not given up at the first timeout
        assert st.smsc.submits == attempts  # every submit_sm is an attempt the spool counted
        assert all(j["upstream_id"] == "" for j in st.jobs())


async def test_dropped_connection_resends_only_the_unanswered_submit(tmp_path: Path) -> None:
    faults = SimFaults(drop_after=4)
    async with upstream_stack(tmp_path, faults, start_smsc=False, smpp_window=1) as st:
        texts = await st.send_many(8)
        await st.smsc.start()
        await st.wait_states({"delivered": 8})
        assert st.smsc.submits == 9
        dropped = [i for i, (_, status) in enumerate(st.smsc.submit_log) if status == -1]
        assert dropped == [3]
        lost_one = st.smsc.submit_log[3][0]
        assert [s for m, s in st.smsc.submit_log if m == lost_one] == [-1, 0]  # re-sent once
        assert texts_of(st.smsc.received) == Counter(texts)
        assert st.smsc.bind_count == 2


@pytest.mark.parametrize(
    ("status", "max_binds", "min_binds"),
    [
        (codec.ESME_RINVPASWD, 4, 2),  # bad credentials: retried every reconnect_max (1 s)
        (codec.ESME_RINVSYSID, 4, 2),
        (codec.ESME_RBINDFAIL, 4, 2),
        (codec.ESME_RALYBND, 100, 5),  # already bound: the normal (fast) backoff
    ],
    ids=["0x0E", "0x0F", "0x0D", "0x05"],
)
async def test_refused_bind_keeps_jobs_queued_then_sends(
    tmp_path: Path, status: int, max_binds: int, min_binds: int
) -> None:
    faults = SimFaults(refuse_bind=status)
    async with upstream_stack(
        tmp_path, faults, smpp_reconnect_min=0.05, smpp_reconnect_max=1.0
    ) as st:
        texts = await st.send_many(3)
        await asyncio.sleep(2.2)
        assert st.smsc.submits == 0
        assert st.states() == {"queued": 3}  # no "not bound: requeuing" churn
        assert min_binds <= st.smsc.bind_count <= max_binds
        assert all(b.status == status for b in st.smsc.binds)
        st.smsc.faults.refuse_bind = 0
        await st.wait_states({"delivered": 3})
        assert st.smsc.submits == 3
        assert texts_of(st.smsc.received) == Counter(texts)


@pytest.mark.parametrize(
    "faults",
    [
        SimFaults(receipts_before_resp=True),
        SimFaults(hex_ids_in_resp=True),
        SimFaults(unknown_tlvs=True),
        SimFaults(receipts_before_resp=True, hex_ids_in_resp=True, unknown_tlvs=True),
    ],
    ids=["receipt-first", "hex-resp-dec-receipt", "unknown-tlvs", "all-three"],
)
async def test_receipts_matched_per_part(tmp_path: Path, faults: SimFaults) -> None:
    long_text = "Длинное сообщение о сбое питания на узле связи номер семь. " * 3  # 3 parts
    async with upstream_stack(tmp_path, faults, start_smsc=False, smpp_window=1) as st:
        await st.send_list(
            [(phone(1), "short one"), (phone(2), long_text.strip())], request_id="71"
        )
        await st.smsc.start()
        await st.wait_states({"delivered": 4})
        assert st.smsc.submits == 4
        jobs = st.jobs()
        ids = [FIRST_MESSAGE_ID + i for i in range(4)]
        want = [format(i, "x") if faults.hex_ids_in_resp else str(i) for i in ids]
        assert [j["upstream_id"] for j in jobs] == want
        status = await st.status("71")
        assert status["state"] == "delivered"
        [short, long] = status["messages"]
        assert (short["state"], len(short["parts"])) == ("delivered", 1)
        assert (long["state"], len(long["parts"])) == ("delivered", 3)
        for part, number in zip(short["parts"] + long["parts"], ids, strict=True):
            assert part["receipt"]["stat"] == "DELIVRD"
            assert part["receipt"]["message_id"] == str(number)  # decimal in the receipt


async def test_undelivered_part_makes_the_message_undeliverable(tmp_path: Path) -> None:
    async with upstream_stack(tmp_path, receipt_stat="UNDELIV") as st:
        await st.send_list([(phone(1), "x " * 100)], request_id="72")  # 2 GSM parts
        await st.wait_states({"undeliverable": 2})
        status = await st.status("72")
        assert status["state"] == "undeliverable"
        assert [p["receipt"]["stat"] for p in status["messages"][0]["parts"]] == ["UNDELIV"] * 2
        assert st.smsc.submits == 2


async def test_unanswered_enquire_link_is_a_dead_link(tmp_path: Path) -> None:
    faults = SimFaults(ignore_enquire_link=True)
    async with upstream_stack(
        tmp_path,
        faults,
        smpp_enquire_link_interval=0.3,
        smpp_response_timeout=0.4,
        smpp_reconnect_min=0.05,
        smpp_reconnect_max=0.1,
    ) as st:
        await st.smsc.wait_until(lambda: st.smsc.bind_count >= 3, timeout=10)
        assert st.smsc.enquire_links >= 2
        st.smsc.faults.ignore_enquire_link = False
        texts = await st.send_many(3)
        await st.wait_states({"delivered": 3})
        assert st.smsc.submits == 3
        assert texts_of(st.smsc.received) == Counter(texts)


async def test_smsc_unbind_is_answered_and_the_link_comes_back(tmp_path: Path) -> None:
    async with upstream_stack(tmp_path, smpp_reconnect_min=0.05) as st:
        await st.smsc.wait_until(lambda: st.smsc.bound_peers == 1, timeout=10)
        await st.smsc.send_unbind()
        await st.smsc.wait_until(lambda: st.smsc.unbind_resps == 1, timeout=5)
        await st.smsc.wait_until(lambda: st.smsc.bind_count == 2, timeout=5)
        texts = await st.send_many(3)
        await st.wait_states({"delivered": 3})
        assert st.smsc.submits == 3
        assert texts_of(st.smsc.received) == Counter(texts)


async def test_several_binds_all_bound_and_used(tmp_path: Path) -> None:
    faults = SimFaults(response_delay=0.2)
    async with upstream_stack(
        tmp_path, faults, start_smsc=False, smpp_binds=3, smpp_window=2
    ) as st:
        texts = await st.send_many(30)
        await st.smsc.start()
        await st.wait_states({"delivered": 30})
        assert st.smsc.bind_count == 3 and st.smsc.connections == 3
        assert st.smsc.submits == 30
        assert st.smsc.max_outstanding == 6  # 3 binds x window 2, in parallel
        assert texts_of(st.smsc.received) == Counter(texts)


async def test_mo_sms_is_stored_and_hlr_result_kept_with_its_job(tmp_path: Path) -> None:
    async with upstream_stack(tmp_path) as st:
        await st.send_list([(phone(5), "hlr me")], request_id="81")
        await st.wait_states({"delivered": 1})
        [job] = st.jobs()
        await st.smsc.send_mo("79161230000", "Alex", "Привет".encode("utf-16-be"), 0x08)
        hlr = (
            f"id:{job['upstream_id']} stat:DELIVRD err:0 imsi:250991234567890 "
            "msc:79037000000 mcc:250 mnc:99 cn:Russia net:Beeline%20RU rcn: rnet:"
        )
        await st.smsc.send_mo("hlr", "Alex", hlr.encode(), esm_class=0x04)
        await st.smsc.wait_until(lambda: len(st.smsc.deliver_resps) >= 3, timeout=5)
        assert [s for _, s in st.smsc.deliver_resps] == [0, 0, 0]
        import sqlite3

        conn = sqlite3.connect(f"file:{st.spool_path}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT source_addr, destination_addr, data_coding, short_message FROM mo"
            ).fetchall()
        finally:
            conn.close()
        assert rows == [("79161230000", "Alex", 8, "Привет".encode("utf-16-be"))]
        status = await st.status("81")
        receipt = status["messages"][0]["parts"][0]["receipt"]
        assert receipt["extra"]["imsi"] == "250991234567890"
        assert receipt["extra"]["net"] == "Beeline RU"
        assert receipt["extra"]["mcc"] == "250" and receipt["extra"]["mnc"] == "99"


async def test_sigterm_drains_in_flight_submits_then_unbinds(tmp_path: Path) -> None:
    faults = SimFaults(response_delay=1.0)
    async with upstream_stack(tmp_path, faults, smpp_window=5) as st:
        await st.send_many(3)
        await st.smsc.wait_until(lambda: st.smsc.outstanding == 3, timeout=10)
        st.relay.signal(signal.SIGTERM)
        assert await asyncio.to_thread(st.relay.wait, 10) == 0
        assert st.smsc.unbinds == 1
        assert st.states().get("submitted", 0) + st.states().get("delivered", 0) == 3
        await st.restart()
        await st.wait_states({"delivered": 3})  # receipts come on the next bind
        await asyncio.sleep(0.5)
        assert st.smsc.submits == 3  # nothing re-sent: the answers were recorded
