"""Issue 10: ingest and drain with 1, 2 and 3 relay nodes on one PostgreSQL spool.

`python -m bench.cluster [--mails N]`: for each node count, a fresh database, N relays (the real
daemon, one bind each, window 50, replies off), the Python SMTP load spread evenly over the
nodes' ports with the SMPP sink down (ingest only: mails/s until the last `250`), then the sink
started (drain only: submit_sm/s from the first to the last). Needs a PostgreSQL at
SMS_RELAY_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import load
from bench.cases import warm_up
from bench.procs import BENCH_LIMITS, Procs, SmppSink, bench_account
from tests.integration.harness import free_port, write_config

ADMIN = os.environ.get("SMS_RELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def relay(procs: Procs, name: str, url: str, smpp_port: int) -> int:
    smtp_port = free_port()
    cfg = write_config(
        procs.workdir / f"{name}.toml",
        {
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "domains": ["sms.test"]},
            "smpp": {
                "host": "127.0.0.1",
                "port": smpp_port,
                "window": 50,
                "reconnect_min": 0.1,
                "reconnect_max": 0.3,
            },
            "spool": {"url": url, "node": name},
            "replies": {"enabled": False, "smarthost": "127.0.0.1:9"},
            "metrics": {"enabled": False},
            "limits": BENCH_LIMITS,
        },
        [bench_account()],
    )
    procs.start(name, ["-m", "relay", "serve", "-c", str(cfg)], smtp_port)
    return smtp_port


def one(nodes: int, mails: int, workdir: Path) -> dict[str, Any]:
    db = f"relay_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
    url = ADMIN.rsplit("/", 1)[0] + "/" + db
    try:
        (workdir / f"n{nodes}").mkdir(parents=True, exist_ok=True)
        with Procs(workdir / f"n{nodes}") as procs:
            smpp_port, control = free_port(), free_port()
            ports = [relay(procs, f"node{i}", url, smpp_port) for i in range(nodes)]
            for p in ports:
                warm_up(p)
            share = mails // nodes

            async def ingest() -> list[load.LoadResult]:
                return await asyncio.gather(
                    *(
                        load.drive(
                            p,
                            sessions=10,
                            count=share,
                            reuse=True,
                            time_limit=300,
                            make_mail=lambda i: load.command_mail(f"bench {i}"),
                        )
                        for p in ports
                    )
                )

            started = time.monotonic()
            results = asyncio.run(ingest())
            ingest_s = time.monotonic() - started
            accepted = sum(r.accepted for r in results)
            args = ["-m", "bench.smpp_sink", str(smpp_port), str(control)]
            sink = SmppSink(procs.start("smpp-sink", args, control), smpp_port, control)
            total = accepted + nodes  # + the warm-up mails
            st = sink.wait_count(total, timeout=300)
            drain = (st["count"] - 1) / (st["last"] - st["first"]) if st["count"] > 1 else 0.0
            return {
                "nodes": nodes,
                "mails": accepted,
                "ingest_per_s": accepted / ingest_s,
                "drained": int(st["count"]),
                "drain_per_s": drain,
            }
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mails", type=int, default=3000)
    ap.add_argument("--nodes", type=int, nargs="*", default=[1, 2, 3])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for n in args.nodes:
            r = one(n, args.mails, Path(tmp))
            print(
                f"{r['nodes']} node(s): ingest {r['ingest_per_s']:.0f} mails/s "
                f"({r['mails']} accepted), drain {r['drain_per_s']:.0f} submit_sm/s "
                f"({r['drained']} sent)",
                flush=True,
            )


if __name__ == "__main__":
    main()
