"""The shape of one pruning batch, shared by both backends and the daemon's pruner task."""

from __future__ import annotations

from dataclasses import dataclass, field

# The tables pruning walks; each batch takes one bounded step through every one not done yet.
HISTORY_TABLES = ("requests", "upstream_keys", "early_receipts", "mails", "callbacks", "mo")
WINDOW_TABLES = ("fingerprints", "flood", "ip_failures", "rate_events", "rate_days", "ip_blocks")
PRUNED_TABLES = (*HISTORY_TABLES, *WINDOW_TABLES, "nodes")


def start() -> dict[str, int]:
    """The resume point of a new pruning round: every table, from its first row."""
    return dict.fromkeys(PRUNED_TABLES, 0)


@dataclass(frozen=True, slots=True)
class PruneStep:
    """What one batch deleted (rows per table, `jobs` included) and where the next one resumes
    (`resume`: table → the last id looked at; a table missing from it is done for this round).
    `busy`: another node is pruning the shared spool right now; this node skips its round."""

    deleted: dict[str, int] = field(default_factory=dict)
    resume: dict[str, int] = field(default_factory=dict)
    busy: bool = False
