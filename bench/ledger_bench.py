"""Ledger throughput: hold+settle pairs per second under concurrency, then the invariants.

python bench/ledger_bench.py                         # 5,000 pairs, 64 concurrent, 200 users
python bench/ledger_bench.py --pairs 20000 --concurrency 256 --release-every 5
python bench/ledger_bench.py --json out.json         # also write the figures as JSON

`--database-url` is accepted for the PostgreSQL backend to come; only sqlite:///PATH (or the
default, a temp file) works today.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.db import Database  # noqa: E402
from bot.ledger import CreditLedger  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--release-every", type=int, default=10, help="every Nth job fails and is released")
    parser.add_argument("--json", metavar="OUT.json", help="also write the figures as JSON")
    parser.add_argument(
        "--database-url", default="", help="sqlite:///PATH (default: a WAL file in a temp directory)"
    )
    args = parser.parse_args()
    if args.database_url and not args.database_url.startswith("sqlite:///"):
        raise SystemExit(f"only sqlite:///PATH is supported for now, not {args.database_url!r}")

    with tempfile.TemporaryDirectory() as tmp:
        path = (
            Path(args.database_url.removeprefix("sqlite:///"))
            if args.database_url
            else Path(tmp) / "bench.sqlite3"
        )
        async with Database(path) as db:
            ledger = CreditLedger(db, default_allowance=10**6)
            gate = asyncio.Semaphore(args.concurrency)
            latencies: list[float] = []

            async def pair(i: int) -> None:
                async with gate:
                    t0 = time.perf_counter()
                    job = f"job-{i}"
                    await ledger.hold("bench", f"user-{i % args.users}", job, 3, kind="image")
                    if args.release_every and i % args.release_every == 0:
                        await ledger.release(job, reason="bench failure")
                    else:
                        await ledger.settle(job)
                    latencies.append(time.perf_counter() - t0)

            cpu0 = sum(os.times()[:2])
            start = time.perf_counter()
            await asyncio.gather(*(pair(i) for i in range(args.pairs)))
            wall = time.perf_counter() - start
            cpu = sum(os.times()[:2]) - cpu0
            t0 = time.perf_counter()
            problems = await ledger.check_invariants()
            check = time.perf_counter() - t0
            latencies.sort()
            print(
                f"ledger benchmark: {args.pairs} hold+settle/release pairs, {args.concurrency} concurrent, "
                f"{args.users} users, WAL on a temp file"
            )
            print(f"pairs/s        {args.pairs / wall:,.0f}")
            print(
                f"pair latency   p50 {latencies[len(latencies) // 2] * 1000:.2f} ms   "
                f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms"
            )
            print(f"CPU seconds    {cpu:.2f} (wall {wall:.2f} s)")
            print(f"invariants     {'OK' if not problems else problems[:5]} (checked in {check:.2f} s)")
            if args.json:
                figures = {
                    "pairs": args.pairs,
                    "concurrency": args.concurrency,
                    "users": args.users,
                    "release_every": args.release_every,
                    "database": "sqlite (WAL)",
                    "pairs_per_s": args.pairs / wall,
                    "pair_p50_ms": latencies[len(latencies) // 2] * 1000,
                    "pair_p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
                    "cpu_s": cpu,
                    "wall_s": wall,
                    "cpu_ms_per_pair": cpu * 1000 / args.pairs,
                    "invariants_ok": not problems,
                    "invariant_problems": [str(p) for p in problems[:5]],
                    "command": " ".join(["python", "bench/ledger_bench.py", *sys.argv[1:]]),
                }
                Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
            if problems:
                raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
