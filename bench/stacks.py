"""Summarise py-spy raw (collapsed) stacks: `python -m bench.stacks FILE [--top N]`.

Prints, per thread, the share of samples spent in each function itself (self) and under it
(inclusive), so a profile can be quoted in RESULTS.md as text.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    parts = Path(m["file"]).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else m["file"]
    return f"{m['func']} ({short})"


def summarise(path: Path, top: int) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        names = [frame_name(f) for f in frames if not f.startswith(("thread", "process"))]
        total += n
        threads[thread] += n
        if names:
            self_time[names[-1]] += n
        for name in set(names):
            inclusive[name] += n
    if total == 0:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples (CPU only, idle excluded)"]
    out += [f"  thread {t}: {n / total:6.1%}" for t, n in threads.most_common(6)]
    out.append(f"  top {top} self:")
    out += [f"    {n / total:6.1%}  {name}" for name, n in self_time.most_common(top)]
    out.append(f"  top {top} inclusive:")
    out += [f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.stacks")
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    for f in args.files:
        print(summarise(f, args.top))


if __name__ == "__main__":
    main()
