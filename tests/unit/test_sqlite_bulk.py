"""The SQLite spool's bulk store (`sqlite_bulk`) against its one-request-at-a-time store.

The same requests go into two fresh spools: one request per transaction in one, in batches of
random sizes in the other (as the writer merges consecutive store ops). Every result (stored,
known key, ERROR 8 flood, ERROR 9 duplicate) and the rows left behind must be the same.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import LimitsConfig
from relay.errors import ErrorCode
from relay.rates import Limits, RateCheck
from relay.smpp.model import SubmitSm
from relay.spool import sqlite_bulk
from relay.spool.model import Admission, NewJob, NewMail, NewRequest, StoreResult
from relay.spool.sqlite import SqliteSpool, WriterState, _merge_stores, _StoreOp

T0 = 1_790_000_000.0
PHONES = ("+79990000001", "+79990000002", "+79990000003")


def _request(
    key: str,
    at: float,
    phones: tuple[str, ...],
    fp: str,
    *,
    error: int = 0,
    limits: LimitsConfig | None,
    mails: int = 1,
) -> NewRequest:
    sm = SubmitSm("Alex", 5, 0, phones[0].lstrip("+"), f"text {key}".encode(), 0)
    jobs = () if error else tuple(
        NewJob(p, 0, n + 1, 2, sm, not_before=at, expires_at=at + 86400)
        for p in phones
        for n in range(2)
    )  # fmt: skip
    return NewRequest(
        key,
        f"id-{key}",
        "alex",
        "ops@x",
        "192.0.2.1",
        at,
        jobs,
        tuple(
            NewMail("relay@x", "ops@x", f"Subject: {key}\r\n\r\n".encode(), at + 86400)
            for _ in range(mails)
        ),
        error=error,
        comment=f"c{key}",
        admission=None if error else Admission(fp, phones, 2 * len(phones), None),
        limits=limits,
    )


@st.composite
def requests(draw: st.DrawFn) -> list[NewRequest]:
    limits = LimitsConfig(
        flood_count=draw(st.integers(1, 4)),
        flood_interval=draw(st.sampled_from([0.5, 2.0, 30.0])),
        duplicate_allowed=draw(st.integers(1, 3)),
        duplicate_window=draw(st.sampled_from([0.0, 0.4, 1.5, 60.0])),
    )
    out: list[NewRequest] = []
    at = T0
    for _ in range(draw(st.integers(1, 30))):
        # mostly forward, a few ms apart; sometimes a jump, sometimes a little back in time
        at += draw(st.sampled_from([0.0, 0.001, 0.003, 0.3, 1.1, 2.5, -0.002]))
        out.append(
            _request(
                draw(st.sampled_from([f"k{len(out)}"] * 4 + ["dup-a", "dup-b"])),
                at,
                tuple(draw(st.lists(st.sampled_from(PHONES), min_size=1, max_size=3))),
                draw(st.sampled_from(["", "fp1", "fp2"])),
                error=draw(st.sampled_from([0] * 6 + [int(ErrorCode.PARAMETERS)])),
                limits=draw(st.sampled_from([limits] * 5 + [None])),
                mails=draw(st.integers(0, 2)),
            )
        )
    return out


def _open(path: Path) -> sqlite3.Connection:
    conn = SqliteSpool(path)._connect()
    conn.execute("PRAGMA synchronous=OFF")  # what is compared is the rows, not durability
    return conn


def _rows(conn: sqlite3.Connection) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return sorted(conn.execute(sql).fetchall())

    return {
        "requests": rows("SELECT * FROM requests"),
        "jobs": rows("SELECT * FROM jobs"),
        "mails": rows("SELECT * FROM mails"),
        "flood": rows("SELECT * FROM flood"),
        "fingerprints": rows("SELECT fp, at FROM fingerprints"),
        "counts": rows("SELECT * FROM fingerprint_counts"),
    }


def _in_transaction(conn: sqlite3.Connection, op: Any) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    value = op(conn)
    conn.execute("COMMIT")
    return value


@settings(
    max_examples=int(os.environ.get("BULK_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(reqs=requests(), cuts=st.lists(st.integers(1, 30), max_size=6))
def test_bulk_store_equals_one_at_a_time(
    tmp_path_factory: Any, reqs: list[NewRequest], cuts: list[int]
) -> None:
    d = tmp_path_factory.mktemp("bulk")
    one, bulk = _open(d / "one.db"), _open(d / "bulk.db")
    state_one, state_bulk = WriterState(), WriterState()
    expected: list[StoreResult] = []
    for r in reqs:
        expected += _in_transaction(one, _StoreOp([r], state_one))
    got: list[StoreResult] = []
    bounds = sorted({c for c in cuts if c < len(reqs)} | {0, len(reqs)})
    for lo, hi in itertools.pairwise(bounds):
        part = reqs[lo:hi]
        got += _in_transaction(bulk, lambda c, p=part: sqlite_bulk.store_bulk(c, p, state_bulk.due))
    assert got == expected
    assert _rows(bulk) == _rows(one)
    one.close()
    bulk.close()


def test_bulk_store_refuses_flood_and_duplicates_as_one_at_a_time(tmp_path: Path) -> None:
    """A concrete batch: the 3rd message to one phone in a streak is ERROR 8 (flood_count 2),
    the 2nd of one fingerprint ERROR 9, a retried key is not stored twice."""
    limits = LimitsConfig(flood_count=2, duplicate_allowed=1)
    batch = [
        _request("a", T0, (PHONES[0],), "x", limits=limits),
        _request("b", T0 + 0.001, (PHONES[0],), "y", limits=limits),
        _request("c", T0 + 0.002, (PHONES[0],), "z", limits=limits),  # 3rd in streak: 8
        _request("d", T0 + 0.003, (PHONES[1],), "x", limits=limits),  # fingerprint x again: 9
        _request("a", T0 + 0.004, (PHONES[2],), "w", limits=limits),  # key a again: known
    ]
    conn = _open(tmp_path / "s.db")
    got = _in_transaction(conn, lambda c: sqlite_bulk.store_bulk(c, batch, WriterState().due))
    assert got == [
        StoreResult(stored=True),
        StoreResult(stored=True),
        StoreResult(stored=False, refused=int(ErrorCode.UNDELIVERABLE)),
        StoreResult(stored=False, refused=int(ErrorCode.DUPLICATE)),
        StoreResult(stored=False),
    ]
    assert conn.execute("SELECT key FROM requests ORDER BY pk").fetchall() == [("a",), ("b",)]
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (4,)
    assert conn.execute("SELECT * FROM flood").fetchall() == [(PHONES[0], 2, T0 + 0.001)]
    assert conn.execute("SELECT fp, n FROM fingerprint_counts ORDER BY fp").fetchall() == [
        ("x", 1),
        ("y", 1),
    ]


def test_large_batches_are_split_within_the_bound_parameters(tmp_path: Path) -> None:
    """A list mail of 1000 phones in one batch with more: jobs rows beyond one statement's
    parameters still all land, each under its own request."""
    many = tuple(f"+7999{i:07d}" for i in range(1000))
    batch = [
        _request("big", T0, many, "", limits=None, mails=0),
        _request("small", T0, (PHONES[0],), "", limits=None, mails=0),
    ]
    conn = _open(tmp_path / "s.db")
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    _in_transaction(conn, lambda c: sqlite_bulk.store_bulk(c, batch, WriterState().due))
    assert conn.execute(
        "SELECT r.key, COUNT(*) FROM jobs j JOIN requests r ON r.pk = j.request_pk GROUP BY r.key"
    ).fetchall() == [("big", 2000), ("small", 2)]


def test_only_plain_store_ops_are_merged() -> None:
    """Consecutive plain store ops become one; a request with a balance, a rate guard or an IP
    failure to count keeps its op alone, and so does any other op between them."""
    state = WriterState()
    limits = LimitsConfig()
    plain = [
        _StoreOp([_request(f"p{i}", T0, PHONES[:1], "", limits=limits)], state) for i in range(3)
    ]
    paid = _with_balance(_request("paid", T0, PHONES[:1], "", limits=limits))
    guarded = _with_rates(_request("g", T0, PHONES[:1], "", limits=limits))

    def other(conn: sqlite3.Connection) -> None:
        return None

    ops: list[Any] = [plain[0], plain[1], other, plain[2], _StoreOp([guarded], state)]
    ops.append(_StoreOp([paid], state))
    merged = _merge_stores(ops)
    assert [n for _, n in merged] == [[1, 1], None, None, None, None]
    assert merged[1][0] is other and merged[2][0] is plain[2]
    assert isinstance(merged[0][0], _StoreOp) and len(merged[0][0].requests) == 2
    assert not sqlite_bulk.plain(guarded)
    assert not sqlite_bulk.plain(paid)


def _with_balance(r: NewRequest) -> NewRequest:
    assert r.admission is not None
    return replace(r, admission=replace(r.admission, balance=10))


def _with_rates(r: NewRequest) -> NewRequest:
    assert r.admission is not None
    check = RateCheck("account", "alex", Limits(5, 0))
    return replace(r, admission=replace(r.admission, rates=(check,)))


def test_merged_store_ops_resolve_each_caller_with_its_own_results(tmp_path: Path) -> None:
    """Through the real writer: concurrent store_all calls of plain mails (two requests each)
    get their own results, and the spool holds every request once."""

    async def main() -> list[list[StoreResult]]:
        spool = SqliteSpool(tmp_path / "w.db")
        await spool.open()
        try:
            calls = [
                spool.store_all(
                    [
                        _request(f"m{i}-a", T0, PHONES[:1], "", limits=None),
                        _request(f"m{i}-b", T0, PHONES[1:2], "", limits=None),
                    ]
                )
                for i in range(40)
            ]
            calls.append(spool.store_all([_request("m0-a", T0, PHONES[:1], "", limits=None)]))
            return list(await asyncio.gather(*calls))
        finally:
            await spool.close()

    results = asyncio.run(main())
    assert results[:40] == [[StoreResult(stored=True)] * 2] * 40
    assert results[40] == [StoreResult(stored=False)]  # a retry of a stored key
    conn = sqlite3.connect(tmp_path / "w.db")
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM requests").fetchone() == (80, 80)
    assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone() == (160,)
