"""The database wrapper: migrations and transactions that survive cancellation."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.db import Database, DatabaseBusyError


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


async def test_concurrent_runs_are_committed_together_in_fewer_hops(tmp_path: Path) -> None:
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"]) as db:
        before = db.hops

        def insert(x: int) -> Callable[[sqlite3.Connection], int]:
            return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (x,)).rowcount

        assert await asyncio.gather(*(db.run(insert(i)) for i in range(100))) == [1] * 100
        assert len(await db.fetchall("SELECT x FROM t")) == 100
        assert db.hops - before < 100


async def test_a_failing_call_in_a_group_undoes_only_its_own_writes(tmp_path: Path) -> None:
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"]) as db:

        def write(x: int) -> Callable[[sqlite3.Connection], None]:
            def fn(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO t VALUES (?)", (x,))
                if x % 2:
                    raise ValueError(x)

            return fn

        results = await asyncio.gather(*(db.run(write(i)) for i in range(10)), return_exceptions=True)
        assert [isinstance(r, ValueError) for r in results] == [bool(i % 2) for i in range(10)]
        assert sorted(r["x"] for r in await db.fetchall("SELECT x FROM t")) == [0, 2, 4, 6, 8]


async def test_a_writer_holding_the_lock_too_long_is_a_friendly_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with Database(path, migrations=["CREATE TABLE t (x INTEGER)"], lock_wait=0.3) as db:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(DatabaseBusyError) as busy:
                await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
            assert "locked" not in str(busy.value)
            # A read is not stuck behind it (WAL readers never wait for the writer).
            assert await asyncio.wait_for(db.fetchall("SELECT x FROM t"), 1.0) == []
        finally:
            other.rollback()
        # A lock released within `lock_wait` is simply waited for.
        other.execute("BEGIN IMMEDIATE")
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, other.rollback)
        await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        other.close()
        assert [r["x"] for r in await db.fetchall("SELECT x FROM t")] == [2]


async def test_runs_cancelled_at_any_point_leave_the_database_consistent(tmp_path: Path) -> None:
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"]) as db:
        tasks = [
            asyncio.create_task(db.run(lambda conn: conn.execute("INSERT INTO t VALUES (1)")))
            for _ in range(50)
        ]
        for i, task in enumerate(tasks):
            if i % 3 == 0:
                task.cancel()
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        committed = sum(not isinstance(r, BaseException) for r in results)
        (count,) = await db.fetchone("SELECT COUNT(*) FROM t")  # type: ignore[misc]
        # A cancelled call either never ran or ran in a committed group; nothing half-done.
        assert committed <= count <= len(tasks)
        assert not db.conn.in_transaction
        await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
