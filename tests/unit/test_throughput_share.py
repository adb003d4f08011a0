"""Issue 10: `smpp.throughput_total` shared by the live nodes of a PostgreSQL spool — the share
arithmetic, a share that follows nodes coming and going, and the spool's node heartbeats."""

from __future__ import annotations

from relay.errors import SpoolError
from relay.throughput import LIVE_BEATS, ThroughputShare, bind_rate
from tests.postgres import pg_reset

T0 = 1_790_000_000.0


def test_bind_rate_splits_the_total_over_nodes_and_binds() -> None:
    assert bind_rate(40, 1, 1) == 40
    assert bind_rate(40, 2, 1) == 20
    assert bind_rate(40, 2, 4) == 5
    assert bind_rate(40, 0, 0) == 40  # never divides by zero: this node is alive


class Bind:
    def __init__(self) -> None:
        self.rate = 0.0

    def set_throughput(self, per_second: float) -> None:
        self.rate = per_second


class Nodes:
    """A shared spool's heartbeat, as a fake: the live count the test sets, or a failure."""

    def __init__(self) -> None:
        self.live = 1
        self.fail = False
        self.calls: list[tuple[float, float]] = []

    def on_change(self, callback: object) -> None: ...

    async def heartbeat(self, now: float, live_within: float) -> int:
        self.calls.append((now, live_within))
        if self.fail:
            raise SpoolError("database gone")
        return self.live


async def test_the_share_follows_the_live_nodes() -> None:
    nodes, binds = Nodes(), [Bind(), Bind()]
    share = ThroughputShare(nodes, binds, total=60, interval=2, clock=lambda: T0)
    await share.beat()
    assert [b.rate for b in binds] == [30, 30]  # alone: the whole total over two binds
    nodes.live = 3
    await share.beat()
    assert [b.rate for b in binds] == [10, 10]
    nodes.fail = True  # the spool is unreachable: keep the last share, not the whole total
    await share.beat()
    assert [b.rate for b in binds] == [10, 10]
    assert nodes.calls[0] == (T0, LIVE_BEATS * 2)


async def test_postgres_heartbeats_count_live_nodes(pg_url: str) -> None:
    from relay.spool.postgres import PostgresSpool

    pg_reset(pg_url)
    a = PostgresSpool(pg_url, node="a", lease=3600.0)
    b = PostgresSpool(pg_url, node="b", lease=3600.0)
    await a.open()
    await b.open()
    try:
        assert await a.heartbeat(T0, 6) == 1
        assert await b.heartbeat(T0 + 1, 6) == 2
        assert await a.heartbeat(T0 + 2, 6) == 2
        assert await a.heartbeat(T0 + 8, 6) == 1  # b not seen for more than 6 s: not live
        assert await b.heartbeat(T0 + 9, 6) == 2  # b is back
    finally:
        await b.close()  # a graceful stop leaves at once
    try:
        assert await a.heartbeat(T0 + 10, 6) == 1
    finally:
        await a.close()
