"""Ledger throughput: hold+settle pairs per second under concurrency, then the invariants.

python bench/ledger_bench.py                         # 5,000 pairs, 64 concurrent, 200 users
python bench/ledger_bench.py --pairs 20000 --concurrency 256 --release-every 5
python bench/ledger_bench.py --json out.json         # also write the figures as JSON
python bench/ledger_bench.py --database-url postgresql://user@127.0.0.1:5432/postgres

Default: a SQLite WAL file in a temp directory; `--database-url sqlite:///PATH` picks the file.
With a `postgresql://` URL the benchmark creates a scratch database on that server (the URL's
database is only used to create and drop it), runs there and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.ledger import CreditLedger  # noqa: E402
from bot.sql import open_database, sqlite_path  # noqa: E402


@asynccontextmanager
async def scratch_database(url: str, tmp: str) -> AsyncIterator[tuple[str, str]]:
    """(URL to open, what to call it): a temp SQLite file, the given file, or a fresh PostgreSQL
    database on the given server, dropped at the end."""
    if not url:
        yield f"sqlite:///{Path(tmp) / 'bench.sqlite3'}", "sqlite (WAL) on a temp file"
        return
    if sqlite_path(url) is not None:
        yield url, f"sqlite (WAL) at {sqlite_path(url)}"
        return
    import asyncpg

    name = f"ledger_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{url.rpartition('/')[0]}/{name}", "postgresql (a scratch database)"
    finally:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


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
        "--database-url",
        default="",
        help="sqlite:///PATH or postgresql://… (default: a SQLite WAL file in a temp directory)",
    )
    parser.add_argument(
        "--pool-size", type=int, default=4, help="PostgreSQL: connections in the pool (default 4)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(args.database_url, tmp) as (url, where):
            options = (
                {"min_size": args.pool_size, "max_size": args.pool_size} if sqlite_path(url) is None else {}
            )
            await run(args, url, where, options)


async def run(args: argparse.Namespace, url: str, where: str, options: dict[str, int]) -> None:
    """The timed pairs and the invariants, on the database at `url`."""
    async with open_database(url, **options) as db:
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
            f"{args.users} users, {where}"
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
                "database": where,
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
