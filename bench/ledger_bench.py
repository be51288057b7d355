"""Ledger throughput: hold+settle pairs per second under concurrency, then the invariants.

python bench/ledger_bench.py                         # 5,000 pairs, 64 concurrent, 200 users
python bench/ledger_bench.py --pairs 20000 --concurrency 256 --release-every 5
python bench/ledger_bench.py --json out.json         # also write the figures as JSON
python bench/ledger_bench.py --database-url postgresql://user@127.0.0.1:5432/postgres
python bench/ledger_bench.py --floor                 # also the SQLite writer's floor (see below)

Default: a SQLite WAL file in a temp directory; `--database-url sqlite:///PATH` picks the file.
With a `postgresql://` URL the benchmark creates a scratch database on that server (the URL's
database is only used to create and drop it), runs there and drops it afterwards.

`--floor` (SQLite) then runs the same pairs on a second temp file with no event loop and no
concurrency: the ledger's own steps, grouped as the concurrent run groups them (N holds in one
transaction, then their N settles or releases), back to back on the database thread in one
call. What the writer alone costs; the concurrent figure cannot exceed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.db import Database  # noqa: E402
from bot.ledger import CreditLedger  # noqa: E402
from bot.sql import SqliteTx, open_database, run_sync, sqlite_path  # noqa: E402


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
    parser.add_argument(
        "--floor", action="store_true", help="SQLite: also the writer alone, with no event loop"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(args.database_url, tmp) as (url, where):
            options = (
                {"min_size": args.pool_size, "max_size": args.pool_size} if sqlite_path(url) is None else {}
            )
            if args.floor and sqlite_path(url) is None:
                parser.error("--floor measures the SQLite writer; drop it with a PostgreSQL URL")
            floor = (
                await writer_floor(args, f"sqlite:///{Path(tmp) / 'floor.sqlite3'}") if args.floor else None
            )
            await run(args, url, where, options, floor)


async def writer_floor(args: argparse.Namespace, url: str) -> dict[str, float]:
    """The same pairs and groups on the database thread alone (one `run` call); invariants checked."""
    async with open_database(url) as db:
        ledger = CreditLedger(db, default_allowance=10**6)

        def pairs(conn: sqlite3.Connection) -> float:
            # Inside the one transaction `run` opened: commit after every group, as a group commit does.
            tx = SqliteTx(conn)
            start = time.perf_counter()
            for first in range(0, args.pairs, args.concurrency):
                group = range(first, min(args.pairs, first + args.concurrency))
                for i in group:
                    run_sync(
                        ledger.hold_tx(tx, "bench", f"user-{i % args.users}", f"job-{i}", 3, kind="image")
                    )
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
                for i in group:
                    if args.release_every and i % args.release_every == 0:
                        run_sync(ledger.release_tx(tx, f"job-{i}", reason="bench failure"))
                    else:
                        run_sync(ledger.settle_tx(tx, f"job-{i}"))
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
            return time.perf_counter() - start

        assert isinstance(db, Database)
        wall = await db.run(pairs)
        problems = await ledger.check_invariants()
        if problems:
            raise SystemExit(f"writer floor: invariants broken: {problems[:5]}")
        return {"floor_pairs_per_s": args.pairs / wall, "floor_us_per_pair": wall * 1e6 / args.pairs}


async def run(
    args: argparse.Namespace,
    url: str,
    where: str,
    options: dict[str, int],
    floor: dict[str, float] | None = None,
) -> None:
    """The timed pairs and the invariants, on the database at `url`."""
    async with open_database(url, **options) as db:
        ledger = CreditLedger(db, default_allowance=10**6)
        latencies: list[float] = []
        numbers = iter(range(args.pairs))

        async def holder() -> None:
            # `concurrency` holders share one iterator: each takes the next pair when its last is
            # done. (One task per pair behind a semaphore measured the semaphore: with 20,000
            # waiters its wake-ups were a fifth of the loop's CPU.)
            for i in numbers:
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
        await asyncio.gather(*(holder() for _ in range(args.concurrency)))
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
        if floor:
            print(
                f"writer floor   {floor['floor_pairs_per_s']:,.0f} pairs/s "
                f"({floor['floor_us_per_pair']:.0f} µs a pair on the database thread alone)"
            )
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
                **(floor or {}),
            }
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        if problems:
            raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
