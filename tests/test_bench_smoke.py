"""`python -m bench --smoke` keeps working: every benchmark runs and prints its ratio line.

Not a timed test: the figures are not judged here (a shared CI machine says nothing about
speed), only that each benchmark starts its processes, measures, compares with its baseline and
stops everything. Without smtp-source the bench uses its own load generator (and says so).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bench.__main__ import SMOKE_DEFAULT

ROOT = Path(__file__).resolve().parents[1]
SMOKE_LIMIT = 60  # seconds for all of them; each is ≈5 s


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` from the checkout, bounded by SMOKE_LIMIT."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=SMOKE_LIMIT,
        check=False,
    )


def test_bench_smoke_prints_a_ratio_per_benchmark() -> None:
    done = _bench("bench", "--smoke")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "ERROR" not in done.stdout, out
    for name in SMOKE_DEFAULT:
        pattern = rf"^RESULT {name}\.\S+: [0-9.e+]+ .* \| ratio [0-9.]+ \| goal "
        assert re.search(pattern, done.stdout, re.MULTILINE), f"no ratio line for {name}:\n{out}"


def test_bench_ab_alternates_two_variants_and_prints_their_medians() -> None:
    # The Python load generator: what a machine without bench/setup (CI) has.
    args = ["--tree", f"a={ROOT}", "--set", "b:spool.commit_delay=0", "--rounds", "2"]
    done = _bench("bench.ab", *args, "--count", "200", "--python-load")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    runs = re.findall(r"^(\d) (sink|a|b) +(\d+) mails/s", done.stdout, re.MULTILINE)
    assert sorted((r, n) for r, n, _ in runs) == sorted(
        (str(i), n) for i in range(2) for n in ("sink", "a", "b")
    ), out
    assert all(int(rate) > 0 for _, _, rate in runs)
    assert re.search(
        r"^  b +\d+ mails/s  ratio to sink [0-9.]+ .* in \d of 2 rounds$", done.stdout, re.M
    ), out
