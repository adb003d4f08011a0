"""`python -m bench --smoke --only peers` keeps working where Kannel is installed.

Kannel is installed by `bench/setup`, not by CI: without it this test skips and says why. As
with the other benchmarks, the figures are not judged (a shared machine says nothing about
speed), only that Kannel and the relay run against the same sink, each ratio is printed, and
bearerbox and smsbox are gone afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.kannel import kannel_installed

ROOT = Path(__file__).resolve().parents[1]


def running_with(conf: Path) -> list[str]:
    """Command lines of the processes that were started with this kannel.conf."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(conf).encode() in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


@pytest.mark.skipif(not kannel_installed(), reason="Kannel not installed (run bench/setup)")
def test_bench_peers_smoke_runs_kannel_and_stops_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "peers", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "ERROR" not in done.stdout, out
    assert re.search(r"^INFO peers\.kannel: [0-9]+ submit_sm/s", done.stdout, re.M), out
    for name in ("drain", "e2e"):
        pattern = (
            rf"^RESULT peers\.{name}: [0-9.e+]+ .* \| baseline kannel-http-to-smpp .* \| ratio "
        )
        assert re.search(pattern, done.stdout, re.MULTILINE), f"no ratio line for {name}:\n{out}"
    conf = tmp_path / "peers" / "kannel.conf"
    assert conf.exists(), out
    assert running_with(conf) == []
