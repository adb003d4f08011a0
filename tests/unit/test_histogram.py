"""The fixed-bucket histogram gives Prometheus' cumulative counts, in bounded memory."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.histogram import END_TO_END_BUCKETS, LATENCY_BUCKETS, Histogram

_VALUES = st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), max_size=200)


@given(_VALUES, st.sampled_from([LATENCY_BUCKETS, END_TO_END_BUCKETS]))
def test_cumulative_counts_are_samples_at_or_below_each_bound(
    values: list[float], buckets: tuple[float, ...]
) -> None:
    hist = Histogram(buckets)
    for v in values:
        hist.observe(v)
    want = [(str(b), sum(1 for v in values if v <= b)) for b in buckets]
    assert hist.cumulative() == [*want, ("+Inf", len(values))]
    assert hist.total == sum(values) and hist.n == len(values)


def test_memory_does_not_grow_with_samples() -> None:
    hist = Histogram(LATENCY_BUCKETS)
    for i in range(100_000):
        hist.observe(i / 1000)
    assert len(hist.counts) == len(LATENCY_BUCKETS) and hist.n == 100_000
