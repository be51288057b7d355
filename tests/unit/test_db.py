"""The database wrappers: migrations and transactions that survive cancellation (SQLite), the
shared step interface, and the PostgreSQL backend's migrations, retries and lock waits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.db import Database, DatabaseBusyError
from bot.pg import PgDatabase
from bot.sql import Step, StepSuspendedError, Tx, open_database
from tests.support.postgres import fresh_pg_url


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


async def test_the_wal_is_checkpointed_off_the_writers_thread(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with Database(path, migrations=["CREATE TABLE t (x BLOB)"]) as db:
        await db.conn.execute("PRAGMA wal_autocheckpoint=0")  # the writer never checkpoints
        db.checkpoint_every = 4
        for _ in range(40):  # each commit adds a row of 5,000 bytes to the WAL
            await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (zeroblob(5000))").rowcount)
        for _ in range(1000):  # a checkpoint fsyncs: give the last one time to end
            if not db._checkpoint_running():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # its done callback counts it
        assert db.checkpoints >= 1
        # At least the first four commits' rows reached the database file itself, copied
        # there by the checkpoint thread (the writer's WAL holds all of them).
        assert path.stat().st_size >= 4 * 5000
        assert len(await db.fetchall("SELECT x FROM t")) == 40
    assert not any(t.name.startswith("sqlite-checkpoint") for t in threading.enumerate())


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


async def test_a_call_queued_behind_this_processs_own_slow_transaction_is_not_a_busy_error(
    tmp_path: Path,
) -> None:
    # `lock_wait` bounds the wait for another writer's lock; a wait in this process's own line
    # (a long transaction ahead, a large group) is not "the database is busy".
    async with Database(
        tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"], lock_wait=0.2
    ) as db:
        started, release = threading.Event(), threading.Event()

        def slow(conn: sqlite3.Connection) -> None:
            started.set()
            release.wait(5.0)  # on the database thread, until the test lets it go
            conn.execute("INSERT INTO t VALUES (1)")

        first = asyncio.create_task(db.run(slow))
        while not started.is_set():  # noqa: ASYNC110 (the thread has no awaitable to wait on)
            await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_later(0.6, release.set)  # three times lock_wait
        await db.run(lambda conn: conn.execute("INSERT INTO t VALUES (2)").rowcount)
        await first
        assert sorted(r["x"] for r in await db.fetchall("SELECT x FROM t")) == [1, 2]


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


# --- the shared step interface and the PostgreSQL backend ------------------------------------


def test_open_database_picks_the_backend_by_url(tmp_path: Path) -> None:
    assert isinstance(open_database(tmp_path / "a.sqlite3"), Database)
    relative = open_database("sqlite:///data/bot.sqlite3")
    assert isinstance(relative, Database) and relative.path == "data/bot.sqlite3"
    absolute = open_database(f"sqlite:///{tmp_path}/b.sqlite3")
    assert isinstance(absolute, Database) and absolute.path == f"{tmp_path}/b.sqlite3"
    for url in ("postgresql://u@127.0.0.1:5432/db", "postgres://u@127.0.0.1/db"):
        pg = open_database(url)
        assert isinstance(pg, PgDatabase) and pg.url == url
    with pytest.raises(ValueError, match="unsupported"):
        open_database("mysql://127.0.0.1/db")


async def test_a_step_on_sqlite_runs_on_the_database_thread_and_may_not_suspend(tmp_path: Path) -> None:
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER)"]) as db:

        async def insert(tx: Tx) -> int:
            await tx.execute("INSERT INTO t VALUES ($1), ($2)", 1, 2)
            return int(await tx.fetchval("SELECT SUM(x) FROM t WHERE x >= $1", 1))

        assert await db.transact(insert) == 3

        async def suspends(tx: Tx) -> None:
            await tx.execute("INSERT INTO t VALUES (3)")
            await asyncio.sleep(0)  # yields to a loop: this step cannot run synchronously

        with pytest.raises(StepSuspendedError):
            await db.transact(suspends)
        assert [r["x"] for r in await db.fetch("SELECT x FROM t ORDER BY x")] == [1, 2]


async def test_two_replicas_starting_together_apply_the_migrations_once(pg_server: str) -> None:
    # The first migration sleeps, so without the advisory lock both openers would run it; it
    # also outlasts lock_wait, which bounds row-lock waits but not the wait for migrations.
    migrations = ["CREATE TABLE a (x INTEGER); SELECT pg_sleep(0.5)", "CREATE TABLE b (y INTEGER)"]
    async with fresh_pg_url(pg_server) as url:

        async def start() -> int:
            async with PgDatabase(url, migrations=migrations, lock_wait=0.2) as db:
                return await db.schema_version()

        assert await asyncio.gather(start(), start()) == [2, 2]
        async with PgDatabase(url, migrations=migrations) as db:
            rows = await db.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == [1, 2]
            # An upgrade applies only what is new.
        async with PgDatabase(url, migrations=[*migrations, "CREATE TABLE c (z INTEGER)"]) as db:
            assert await db.schema_version() == 3


async def test_both_databases_have_the_same_tables_and_columns_at_the_latest_version(
    tmp_path: Path, pg_server: str
) -> None:
    # A SQLite migration appended without its PostgreSQL twin (or the other way) fails here.
    async with Database(tmp_path / "t.sqlite3") as sqlite_db:
        tables = await sqlite_db.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        sqlite_schema = {
            t["name"]: {c["name"] for c in await sqlite_db.fetchall(f"PRAGMA table_info({t['name']})")}
            for t in tables
        }
    async with fresh_pg_url(pg_server) as url, PgDatabase(url) as pg_db:
        rows = await pg_db.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        )
    pg_schema: dict[str, set[str]] = {}
    for r in rows:
        pg_schema.setdefault(r["table_name"], set()).add(r["column_name"])
    pg_schema.pop("schema_migrations", None)  # PostgreSQL's version record (SQLite: user_version)
    pg_schema["jobs"].discard("seq")  # PostgreSQL's stand-in for SQLite's rowid
    assert pg_schema == sqlite_schema


async def test_a_transaction_postgresql_aborts_as_a_deadlock_is_run_again(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url, PgDatabase(url, migrations=[_PAIR]) as db:
        first_locked, second_locked = asyncio.Event(), asyncio.Event()
        runs = {"ab": 0, "ba": 0}

        def crosswise(
            name: str, mine: asyncio.Event, theirs: asyncio.Event, order: tuple[int, int]
        ) -> Step[None]:
            async def step(tx: Tx) -> None:
                runs[name] += 1
                await tx.execute("UPDATE pair SET n = n + 1 WHERE id = $1", order[0])
                mine.set()
                await theirs.wait()  # both hold one row and want the other's: a deadlock
                await tx.execute("UPDATE pair SET n = n + 1 WHERE id = $1", order[1])

            return step

        await asyncio.gather(
            db.transact(crosswise("ab", first_locked, second_locked, (1, 2))),
            db.transact(crosswise("ba", second_locked, first_locked, (2, 1))),
        )
        assert db.retried == 1 and sorted(runs.values()) == [1, 2]
        assert [r["n"] for r in await db.fetch("SELECT n FROM pair ORDER BY id")] == [2, 2]


_PAIR = (
    "CREATE TABLE pair (id INTEGER PRIMARY KEY, n INTEGER NOT NULL); INSERT INTO pair VALUES (1, 0), (2, 0)"
)


async def test_a_row_locked_too_long_on_postgresql_is_the_same_friendly_busy_error(pg_server: str) -> None:
    import asyncpg

    async with fresh_pg_url(pg_server) as url, PgDatabase(url, migrations=[_PAIR], lock_wait=0.3) as db:
        other = await asyncpg.connect(url)
        try:
            async with other.transaction():
                await other.execute("SELECT * FROM pair WHERE id = 1 FOR UPDATE")
                with pytest.raises(DatabaseBusyError) as busy:
                    await db.transact(lambda tx: tx.execute("UPDATE pair SET n = 5 WHERE id = 1"))
                assert "lock" not in str(busy.value)
                # Another row is not stuck behind it.
                assert await db.transact(lambda tx: tx.execute("UPDATE pair SET n = 7 WHERE id = 2")) == 1
        finally:
            await other.close()
        assert [r["n"] for r in await db.fetch("SELECT n FROM pair ORDER BY id")] == [0, 7]


async def test_a_group_with_failing_calls_commits_every_other_call_once(tmp_path: Path) -> None:
    # A group first runs without savepoints; a failure rolls it back and runs it again, so a
    # call may run twice, but only one run of each is committed.
    async with Database(tmp_path / "t.sqlite3", migrations=["CREATE TABLE t (x INTEGER UNIQUE)"]) as db:

        def write(x: int) -> Callable[[sqlite3.Connection], int]:
            def fn(conn: sqlite3.Connection) -> int:
                conn.execute("INSERT INTO t VALUES (?)", (x,))
                if x in (3, 7):
                    raise ValueError(x)
                return x

            return fn

        results = await asyncio.gather(*(db.run(write(i)) for i in range(10)), return_exceptions=True)
        assert [r if isinstance(r, int) else "failed" for r in results] == [
            0, 1, 2, "failed", 4, 5, 6, "failed", 8, 9,
        ]  # fmt: skip
        assert [r["x"] for r in await db.fetch("SELECT x FROM t ORDER BY x")] == [0, 1, 2, 4, 5, 6, 8, 9]
        assert not db.conn.in_transaction


def test_the_database_url_setting_picks_the_backend(tmp_path: Path) -> None:
    from bot.config import Settings

    sqlite = open_database(Settings(_env_file=None, data_dir=tmp_path).db_url)  # type: ignore[call-arg]
    assert isinstance(sqlite, Database) and sqlite.path == str(tmp_path / "imagine-bot.sqlite3")
    url = "postgresql://bot@127.0.0.1:5432/imagine"
    settings = Settings(_env_file=None, database_url=url, secret_key="k" * 32)  # type: ignore[call-arg]
    pg = open_database(settings.db_url)
    assert isinstance(pg, PgDatabase) and pg.url == url
