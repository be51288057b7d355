"""The database wrapper: migrations and transactions that survive cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.db import Database


async def test_a_transaction_cancelled_at_begin_leaves_the_connection_usable(tmp_path: Path) -> None:
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"]) as db:
        for _ in range(20):  # cancel at varying points around BEGIN

            async def write() -> None:
                async with db.transaction() as conn:
                    await conn.execute("INSERT INTO t VALUES (1)")

            task = asyncio.create_task(write())
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not db.conn.in_transaction
        async with db.transaction() as conn:  # still works
            await conn.execute("INSERT INTO t VALUES (2)")
        rows = await db.fetchall("SELECT x FROM t WHERE x = 2")
        assert len(rows) == 1


async def test_an_error_inside_a_transaction_rolls_it_back(tmp_path: Path) -> None:
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"]) as db:
        try:
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert await db.fetchall("SELECT x FROM t") == []


async def test_migrations_are_versioned_and_run_once(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    migrations = ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y INTEGER)"]
    async with Database(path, migrations=migrations[:1]) as db:
        assert (await db.fetchone("PRAGMA user_version"))[0] == 1
    async with Database(path, migrations=migrations) as db:  # an upgrade applies only the new one
        assert (await db.fetchone("PRAGMA user_version"))[0] == 2
    async with Database(path, migrations=migrations) as db:
        assert (await db.fetchone("PRAGMA user_version"))[0] == 2
