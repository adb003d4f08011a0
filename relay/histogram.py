"""Fixed-bucket histograms: the hot paths observe into them, the metrics collector reads them.

Bounded memory whatever the traffic and whether or not anyone scrapes /metrics: the worker
used to append every sample to a list that only a scrape emptied, so with metrics off (or
scraped rarely) the daemon grew by ≈90 bytes per SMS part sent (issue #9, goal 4: RSS).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# submit_sm → submit_sm_resp, seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Accept → submit_sm_resp includes queueing, retries and outages: seconds up to hours.
END_TO_END_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass
class Histogram:
    """Prometheus-style: `le` upper bounds; `counts[i]` holds the samples of bucket i alone."""

    buckets: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        i = bisect_left(self.buckets, value)  # the first bound >= value
        if i < len(self.counts):
            self.counts[i] += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(`le`, samples <= le) for each bound, then ("+Inf", all samples)."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            running += count
            out.append((str(bound), running))
        out.append(("+Inf", self.n))
        return out
