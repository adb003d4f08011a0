"""`python -m bench.ab NAME=TREE … [--set NAME:section.key=value …]`: ingest, A against B.

The full benchmark compares the relay with the bare sink; on a VM whose speed drifts by tens of
per cent within minutes, it cannot tell a 3 % change from noise. This starts one daemon per
variant (each from its own checkout, `git worktree add /tmp/old HEAD~1` say, and/or with config
overrides) and the bare sink once, then alternates them round after round (sink first, then the
variants, their order reversed every other round), so each variant's runs sit seconds from the
others'. Per run: mails/s, the daemon's CPU per mail (its event loop's, and all threads'), and
how busy its loop was (loop CPU ÷ wall time: below ≈0.95 the loop waits, it is not the limit).
At the end the medians and, against the first variant, how many rounds each won.

Bounded: `--rounds` × (1 + variants) runs of `--count` mails; everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.cases import warm_up
from bench.procs import ROOT, Procs, thread_cpu
from tests.integration.harness import free_port


@dataclass
class Variant:
    name: str
    root: Path
    spool: dict[str, Any] = field(default_factory=dict)
    smtp: dict[str, Any] = field(default_factory=dict)
    smpp: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    rate: float  # mails/s
    loop_us: float  # the main thread's CPU per mail
    total_us: float  # all threads' CPU per mail
    loop_busy: float  # main thread CPU seconds per wall second


def _value(text: str) -> Any:
    """A config value as TOML would read it: number, true/false, else the string."""
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variants(trees: list[str], sets: list[str]) -> list[Variant]:
    variants: dict[str, Variant] = {}
    for spec in trees:
        name, _, path = spec.partition("=")
        if not name or not path:
            raise SystemExit(f"--tree wants NAME=PATH, not {spec!r}")
        root = Path(path).resolve()
        if not (root / "relay" / "__init__.py").exists():
            raise SystemExit(f"{root} is not a checkout of sms-relay (no relay/__init__.py)")
        variants[name] = Variant(name, root)
    for spec in sets:
        name, _, assignment = spec.partition(":")
        key, _, raw = assignment.partition("=")
        section, _, option = key.partition(".")
        if name not in variants:
            variants[name] = Variant(name, ROOT)
        target = getattr(variants[name], section, None)
        if not isinstance(target, dict) or not option or not raw:
            raise SystemExit(f"--set wants NAME:spool|smtp|smpp.KEY=VALUE, not {spec!r}")
        target[option] = _value(raw)
    if not variants:
        variants["this"] = Variant("this", ROOT)
    return list(variants.values())


def measure(
    pid: int, port: int, *, reuse: bool, count: int, mail_file: Path, exe: str | None
) -> Run:
    """One load run (smtp-source `exe`, or the Python load generator when None)."""
    before = thread_cpu(pid)
    elapsed, ok, other = load.send(
        exe,
        port,
        sessions=20,
        count=count,
        reuse=reuse,
        mail=load.command_mail("Disk full on db1"),
        mail_file=mail_file,
        timeout=120,
    )
    after = thread_cpu(pid)
    if ok != count:
        raise RuntimeError(f"{ok} of {count} mails accepted ({other})")
    loop = after.get(pid, 0.0) - before.get(pid, 0.0)
    total = sum(after[t] - before.get(t, 0.0) for t in after)
    return Run(count / elapsed, loop / count * 1e6, total / count * 1e6, loop / elapsed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout")
    ap.add_argument(
        "--set", action="append", default=[], help="NAME:section.key=value (spool, smtp, smpp)"
    )
    ap.add_argument("--mode", choices=("reuse", "new"), default="reuse")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--python-load", action="store_true", help="never use smtp-source")
    args = ap.parse_args(argv)
    exe = None if args.python_load else load.smtp_source_path()
    variants = parse_variants(args.tree, args.set)
    reuse = args.mode == "reuse"
    with tempfile.TemporaryDirectory(prefix="sms-relay-ab-") as tmp, Procs(Path(tmp)) as procs:
        work = Path(tmp)
        mail_file = work / "command.eml"
        mail_file.write_bytes(load.command_mail("Disk full on db1").replace(b"\r\n", b"\n"))
        started: list[tuple[str, int, int]] = []  # name, pid, port
        for v in variants:
            proc, port = procs.relay(
                v.name,
                spool=work / f"{v.name}.db",
                smpp_port=free_port(),  # nothing listens: jobs stay queued, only ingest counts
                smtp=v.smtp,
                spool_cfg=v.spool,
                root=v.root,
                **v.smpp,
            )
            warm_up(port, 1)
            started.append((v.name, proc.pid, port))
        sink, sink_port = procs.smtp_sink()
        time.sleep(0.5)
        runs: dict[str, list[Run]] = {"sink": [], **{name: [] for name, _, _ in started}}
        gen = exe or "the Python load generator (it shares the cores with the servers)"
        print(f"{args.mode}: {args.rounds} × {args.count} mails, 20 sessions, {gen}", flush=True)
        for i in range(args.rounds):
            order = started if i % 2 == 0 else started[::-1]
            for name, pid, port in [("sink", sink.pid, sink_port), *order]:
                run = measure(
                    pid, port, reuse=reuse, count=args.count, mail_file=mail_file, exe=exe
                )
                runs[name].append(run)
                print(
                    f"{i} {name:12s} {run.rate:7.0f} mails/s  loop {run.loop_us:4.0f} µs/mail"
                    f"  all threads {run.total_us:4.0f}  loop busy {run.loop_busy:.2f}",
                    flush=True,
                )
        sink_rate = statistics.median(r.rate for r in runs["sink"])
        first = started[0][0]
        print("medians:")
        for name, rs in runs.items():
            rate = statistics.median(r.rate for r in rs)
            wins = ""
            if name not in ("sink", first):
                n = sum(a.rate > b.rate for a, b in zip(rs, runs[first], strict=True))
                wins = f"  faster than {first} in {n} of {len(rs)} rounds"
            print(
                f"  {name:12s} {rate:7.0f} mails/s  ratio to sink {rate / sink_rate:.3f}"
                f"  loop {statistics.median(r.loop_us for r in rs):4.0f} µs/mail"
                f"  busy {statistics.median(r.loop_busy for r in rs):.2f}{wins}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
