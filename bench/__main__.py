"""`python -m bench [--smoke] [--only NAME ...]`: run the benchmarks, print one RESULT line each."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import cases, load
from bench.procs import Procs

NAMES = ("ingest", "drain", "latency", "throttled", "parser", "scale", "peers")
SMOKE_DEFAULT = ("ingest", "drain", "latency", "throttled", "parser")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    source = load.smtp_source_path() or "absent (Python load generator used)"
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}; smtp-source: {source}. Load generator, relay and "
        "sinks share these cores."
    )


def filesystem(path: Path) -> str:
    done = subprocess.run(
        ["df", "-T", str(path)], capture_output=True, text=True, timeout=5, check=False
    )
    rows = done.stdout.splitlines()
    return rows[-1].split()[1] if len(rows) > 1 else "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="≈5 s per benchmark, keeps them working")
    ap.add_argument("--only", nargs="+", choices=NAMES, help="run only these benchmarks")
    ap.add_argument("--python-load", action="store_true", help="never use smtp-source")
    ap.add_argument("--workdir", type=Path, help="where spools and logs go (default: a temp dir)")
    ap.add_argument(
        "--profile", type=Path, help="attach py-spy to each relay; raw stacks go to this dir"
    )
    args = ap.parse_args(argv)
    names = args.only or (SMOKE_DEFAULT if args.smoke else NAMES)

    def say(text: str) -> None:
        print(text, flush=True)

    failures = 0
    with tempfile.TemporaryDirectory(prefix="sms-relay-bench-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        say(f"MACHINE {machine()}")
        say(f"MODE {'smoke' if args.smoke else 'full'}; spool on {filesystem(root)} at {root}")
        empty: dict[str, tuple[float, float]] = {}  # empty-spool (rate, ratio to baseline)
        for name in names:
            workdir = root / name
            workdir.mkdir(exist_ok=True)
            s = cases.Settings(args.smoke, workdir, say, args.python_load)
            started = time.monotonic()
            try:
                with Procs(workdir, args.profile) as procs:
                    if name == "ingest":
                        got = cases.ingest(s, procs)
                        empty["ingest"] = (got["reuse"], got["reuse_ratio"])
                        # the same with the SMTP front in worker processes (smtp.workers): one
                        # (SMTP on one core, the spool on another) and one per core
                        for n in sorted({1, os.cpu_count() or 1}):
                            cases.ingest(s, procs, label=f"ingest.workers{n}", workers=n)
                    elif name == "drain":
                        empty["drain"] = cases.drain(s, procs)[10]
                    elif name == "latency":
                        cases.latency(s, procs)
                    elif name == "throttled":
                        cases.throttled(s, procs)
                    elif name == "parser":
                        cases.parser(s)
                    elif name == "scale":
                        if "ingest" not in empty or "drain" not in empty:
                            raise RuntimeError("scale needs ingest and drain run first")
                        cases.scale(s, procs, empty["ingest"], empty["drain"])
                    elif name == "peers":
                        cases.peers(s, procs)
            except Exception:
                failures += 1
                say(f"ERROR {name}: benchmark could not run:\n{traceback.format_exc()}")
            say(f"TIME {name}: {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
