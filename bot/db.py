"""SQLite through aiosqlite: one writer connection, WAL, versioned migrations.

Writes go through `Database.run(fn)`: `fn` is a plain function on the raw `sqlite3` connection
that runs on aiosqlite's worker thread inside `BEGIN IMMEDIATE … COMMIT`, so one transaction
costs one thread hop however many statements it has, and calls that arrive together share one
transaction (group commit, driven by one drainer task). `Database.transact(step)` runs a
`bot.sql` step the same way, so code written once also runs on PostgreSQL (`bot.pg`).
`Database.transaction()` (one hop per statement) remains for code not yet written that way.
All of them hold an asyncio lock, so coroutines sharing the connection never interleave
inside one another's transaction. A thread of its own checkpoints the WAL every few commits,
so the writer rarely waits for a checkpoint's fsyncs.

Another process holding the write lock never blocks the worker thread for long: sqlite waits
`busy_timeout` per attempt, `run` retries with async backoff up to `lock_wait` seconds, then
raises `DatabaseBusyError`, a `UserError` whose text is a friendly "try again" — sqlite's
"database is locked" never reaches a user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from bot import messages
from bot.errors import UserError
from bot.sql import Dialect, SqliteTx, Step, qmark, run_sync

__all__ = ["MIGRATIONS", "Database", "DatabaseBusyError"]

T = TypeVar("T")

#: milliseconds sqlite itself waits for a lock per attempt (on the worker thread)
_BUSY_MS = 100
#: WAL pages (4 KiB) after which a commit checkpoints the WAL back into the database file
#: itself: the backstop, and what lets SQLite restart the WAL from its beginning
_CHECKPOINT_PAGES = 4000
#: commits after which a checkpoint runs on a thread of its own, off the writer's path
_CHECKPOINT_COMMITS = 32


class DatabaseBusyError(UserError):
    """Another writer held the database for longer than `Database.lock_wait`."""


_log = logging.getLogger(__name__)

#: Schema versions, applied in order; PRAGMA user_version records the last one applied.
#: Append only: a released migration is never edited.
MIGRATIONS: list[str] = [
    # 1: durable jobs
    """
    CREATE TABLE jobs (
        id            TEXT PRIMARY KEY,
        created       REAL NOT NULL,
        updated       REAL NOT NULL,
        platform      TEXT NOT NULL,
        tenant        TEXT NOT NULL,
        user_id       TEXT NOT NULL,
        kind          TEXT NOT NULL,
        state         TEXT NOT NULL,
        spec          TEXT NOT NULL,      -- the validated job spec (JSON)
        actor         TEXT NOT NULL,      -- the Actor (JSON)
        reply_ref     TEXT NOT NULL,      -- where the reply lives (JSON)
        cost          INTEGER NOT NULL,   -- credits held for it
        route         TEXT,               -- vendor:model that took it
        handle        TEXT,               -- the vendor's JobHandle (JSON)
        attempts      INTEGER NOT NULL DEFAULT 0,
        routes_tried  TEXT NOT NULL DEFAULT '[]',
        vendor_cost_usd REAL,
        result        TEXT,               -- delivered files (JSON)
        error         TEXT,
        parent_id     TEXT,               -- the job a reroll/edit/3D button came from
        request_key   TEXT UNIQUE         -- platform delivery id: a retried request maps to one job
    );
    CREATE INDEX jobs_open ON jobs(state) WHERE state NOT IN ('done', 'failed', 'cancelled');
    CREATE INDEX jobs_user ON jobs(tenant, user_id, created);
    """,
    # 2: the credit ledger (bot/ledger.py). `entries` is append-only: balances are derivable.
    """
    CREATE TABLE accounts (
        tenant      TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        balance     INTEGER NOT NULL CHECK (balance >= 0),   -- available: open holds already taken
        frozen      INTEGER NOT NULL DEFAULT 0,
        banned      INTEGER NOT NULL DEFAULT 0,
        refill_day  INTEGER,                                 -- UTC day (unix days) of the last top-up
        PRIMARY KEY (tenant, user_id)
    );
    CREATE TABLE entries (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        ts            REAL NOT NULL,
        tenant        TEXT NOT NULL,
        user_id       TEXT,               -- NULL for tenant-wide settings
        delta         INTEGER NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('allowance', 'hold', 'settle', 'release', 'grant',
                          'take', 'set', 'freeze', 'unfreeze', 'ban', 'unban', 'allowance_set',
                          'cost_set', 'budget_set', 'block_add', 'block_remove')),
        job_id        TEXT,
        actor         TEXT,               -- NULL for the ledger's own acts (allowance, holds)
        reason        TEXT NOT NULL DEFAULT '',
        balance_after INTEGER,            -- NULL for tenant-wide settings
        detail        TEXT                -- what a setting changed to, e.g. image:* = 5
    );
    CREATE INDEX entries_account ON entries(tenant, user_id, id);
    CREATE UNIQUE INDEX entries_job_kind ON entries(job_id, kind) WHERE job_id IS NOT NULL;
    CREATE UNIQUE INDEX entries_job_resolved ON entries(job_id) WHERE kind IN ('settle', 'release');
    CREATE TABLE holds (
        job_id    TEXT PRIMARY KEY,
        tenant    TEXT NOT NULL,
        user_id   TEXT NOT NULL,
        amount    INTEGER NOT NULL CHECK (amount >= 0),
        kind      TEXT NOT NULL,          -- command kind: image, edit, model3d
        state     TEXT NOT NULL CHECK (state IN ('held', 'settled', 'released')),
        created   REAL NOT NULL,
        day       INTEGER NOT NULL,       -- UTC day of `created`: the budget period it counts in
        resolved  REAL
    );
    CREATE INDEX holds_open ON holds(state) WHERE state = 'held';
    CREATE INDEX holds_budget ON holds(tenant, day);
    CREATE INDEX holds_user ON holds(tenant, user_id, state);
    CREATE TABLE tenant_settings (
        tenant          TEXT PRIMARY KEY,
        daily_allowance INTEGER CHECK (daily_allowance >= 0),          -- NULL: the default
        budget          INTEGER CHECK (budget IS NULL OR budget >= 0)  -- NULL: no daily cap
    );
    CREATE TABLE costs (
        tenant  TEXT NOT NULL,
        kind    TEXT NOT NULL,
        model   TEXT NOT NULL,            -- '*' for any model
        amount  INTEGER NOT NULL CHECK (amount >= 0),
        PRIMARY KEY (tenant, kind, model)
    );
    CREATE TABLE blocklist (
        tenant  TEXT NOT NULL,
        word    TEXT NOT NULL,
        PRIMARY KEY (tenant, word)
    );
    """,
    # 3: the job state machine (issue 9): CAS version, lease, deadline; the outbox of user
    # messages; the learned poll schedule per route; a per-tenant-per-day budget counter.
    """
    UPDATE jobs SET state = 'submitting' WHERE state = 'submitted';
    UPDATE jobs SET state = 'running' WHERE state = 'delivering';
    ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until REAL;
    ALTER TABLE jobs ADD COLUMN deadline REAL;
    CREATE TABLE outbox (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id    TEXT NOT NULL,
        kind      TEXT NOT NULL CHECK (kind IN ('result', 'failure', 'cancelled')),
        payload   TEXT NOT NULL,          -- what the message needs to render (JSON)
        created   REAL NOT NULL,
        sent_at   REAL,
        attempts  INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX outbox_job ON outbox(job_id);
    CREATE INDEX outbox_unsent ON outbox(id) WHERE sent_at IS NULL;
    CREATE TABLE route_times (
        route    TEXT PRIMARY KEY,
        samples  TEXT NOT NULL,           -- recent durations in seconds (JSON list)
        updated  REAL NOT NULL
    );
    CREATE TABLE budget_used (
        tenant  TEXT NOT NULL,
        day     INTEGER NOT NULL,
        used    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, day)
    );
    INSERT INTO budget_used (tenant, day, used)
        SELECT tenant, day, SUM(amount) FROM holds WHERE state != 'released' GROUP BY tenant, day
    """,
    # 4: expensive jobs ask first (bot/confirm.py): a server's threshold, and the requests
    # waiting for their requester's Confirm (nothing is held for them).
    """
    CREATE TABLE confirm_settings (
        tenant      TEXT PRIMARY KEY,
        above       INTEGER CHECK (above IS NULL OR above > 0),  -- NULL: never ask
        updated     REAL NOT NULL,
        updated_by  TEXT NOT NULL,          -- platform:user of the moderator
        reason      TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE confirmations (
        id          TEXT PRIMARY KEY,       -- also the id of the job a Confirm starts
        created     REAL NOT NULL,
        expires     REAL NOT NULL,
        tenant      TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        actor       TEXT NOT NULL,          -- the Actor (JSON)
        spec        TEXT NOT NULL,          -- the validated job spec (JSON)
        reply_ref   TEXT NOT NULL,          -- where the prompt was shown (JSON)
        cost        INTEGER NOT NULL,       -- the credits the prompt showed
        state       TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'cancelled', 'expired')),
        parent_id   TEXT,
        request_key TEXT UNIQUE             -- the platform request that asked
    );
    CREATE INDEX confirmations_open ON confirmations(tenant, user_id, created) WHERE state = 'pending';
    CREATE INDEX confirmations_expires ON confirmations(expires)
    """,
    # 5: the budget counter (schema 3) replaced the only reader of holds(tenant, day); every hold
    # paid for that index on its hot path
    """
    DROP INDEX holds_budget
    """,
    # 6: a hold + settle wrote ~19 B-trees; now ~10. `holds` keyed by job id alone (WITHOUT
    # ROWID: one B-tree, not a table and its key index) with one partial index on the open holds
    # (for the member's held sum, the open-hold list and the orphan sweep) instead of two.
    # `entries` without AUTOINCREMENT: it is append-only, so SQLite's max(id) + 1 already never
    # reuses an id, and each insert no longer writes `sqlite_sequence`. One unique index says
    # what the two did: a job has at most one hold entry and at most one resolution (settle or
    # release); only those three kinds name a job. The tables are copied once, on upgrade.
    """
    CREATE TABLE holds_v6 (
        job_id    TEXT PRIMARY KEY,
        tenant    TEXT NOT NULL,
        user_id   TEXT NOT NULL,
        amount    INTEGER NOT NULL CHECK (amount >= 0),
        kind      TEXT NOT NULL,
        state     TEXT NOT NULL CHECK (state IN ('held', 'settled', 'released')),
        created   REAL NOT NULL,
        day       INTEGER NOT NULL,
        resolved  REAL
    ) WITHOUT ROWID;
    INSERT INTO holds_v6 (job_id, tenant, user_id, amount, kind, state, created, day, resolved)
        SELECT job_id, tenant, user_id, amount, kind, state, created, day, resolved FROM holds;
    DROP TABLE holds;
    ALTER TABLE holds_v6 RENAME TO holds;
    CREATE INDEX holds_open ON holds(tenant, user_id) WHERE state = 'held';
    CREATE TABLE entries_v6 (
        id            INTEGER PRIMARY KEY,
        ts            REAL NOT NULL,
        tenant        TEXT NOT NULL,
        user_id       TEXT,
        delta         INTEGER NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('allowance', 'hold', 'settle', 'release', 'grant',
                          'take', 'set', 'freeze', 'unfreeze', 'ban', 'unban', 'allowance_set',
                          'cost_set', 'budget_set', 'block_add', 'block_remove')),
        job_id        TEXT,
        actor         TEXT,
        reason        TEXT NOT NULL DEFAULT '',
        balance_after INTEGER,
        detail        TEXT
    );
    INSERT INTO entries_v6 (id, ts, tenant, user_id, delta, kind, job_id, actor, reason, balance_after, detail)
        SELECT id, ts, tenant, user_id, delta, kind, job_id, actor, reason, balance_after, detail FROM entries;
    DROP TABLE entries;
    ALTER TABLE entries_v6 RENAME TO entries;
    CREATE INDEX entries_account ON entries(tenant, user_id, id);
    CREATE UNIQUE INDEX entries_job ON entries(job_id, (kind = 'hold')) WHERE job_id IS NOT NULL
    """,
]


class Database:
    """An open SQLite database with the migrations applied; use as an async context manager."""

    dialect: Dialect = "sqlite"

    def __init__(
        self, path: str | Path, *, migrations: Sequence[str] | None = None, lock_wait: float = 10.0
    ) -> None:
        self.path = str(path)
        self._migrations = list(MIGRATIONS if migrations is None else migrations)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._pending: list[_Call] = []
        self._drainer: asyncio.Task[None] | None = None
        #: transactions run by `run` (fewer than its calls when they are committed in groups)
        self.hops = 0
        #: seconds a transaction keeps retrying for another writer's lock (from the first time it
        #: is refused) before DatabaseBusyError
        self.lock_wait = lock_wait
        #: commits of `run` between two checkpoints on the checkpoint thread
        self.checkpoint_every = _CHECKPOINT_COMMITS
        #: checkpoints that thread has finished
        self.checkpoints = 0
        self._commits_since_checkpoint = 0
        self._checkpointer: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpoint: asyncio.Future[None] | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> aiosqlite.Connection:
        """The open connection (after `__aenter__`)."""
        if self._conn is None:
            raise RuntimeError("database is not open")
        return self._conn

    async def __aenter__(self) -> Self:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, sqlite3 adds nothing.
        self._conn = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=30.0, cached_statements=512
        )
        self._conn.row_factory = aiosqlite.Row
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        await self._conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        # Savepoint journals and RETURNING's scratch tables in memory, not in temp files.
        await self._conn.execute("PRAGMA temp_store=MEMORY")
        # Checkpoint every ~16 MB of WAL rather than 4 MB: hot pages (accounts, index
        # leaves) are copied back once per checkpoint, so fewer checkpoints copy less.
        await self._conn.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
        if self.path != ":memory:":
            self._checkpointer = concurrent.futures.ThreadPoolExecutor(1, "sqlite-checkpoint")
        await self._migrate()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer])
        if self._checkpointer is not None:
            if self._checkpoint is not None and self._checkpoint_running():
                await asyncio.wait([self._checkpoint])
            await asyncio.get_running_loop().run_in_executor(self._checkpointer, self._close_checkpointer)
            # Its one thread is idle: joining it takes no time, but not on the event loop.
            await asyncio.to_thread(self._checkpointer.shutdown)
            self._checkpointer = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _migrate(self) -> None:
        async with self.transaction() as conn:
            row = await (await conn.execute("PRAGMA user_version")).fetchone()
            current = int(row[0]) if row else 0
            for version, script in enumerate(self._migrations, start=1):
                if version <= current:
                    continue
                for statement in _split(script):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {version}")
                _log.info("database %s migrated to schema version %d", self.path, version)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """`BEGIN IMMEDIATE` … `COMMIT`, rolled back on any exception (also cancellation)."""
        async with self._lock:
            conn = self.conn
            try:
                await self._begin(conn)
                yield conn
            except BaseException:
                # Also when cancelled during BEGIN: the statement still runs in aiosqlite's
                # thread, whose queue keeps order, so this ROLLBACK always runs after it.
                with contextlib.suppress(sqlite3.OperationalError):  # BEGIN itself failed
                    await conn.execute("ROLLBACK")
                raise
            else:
                await _commit(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in one `BEGIN IMMEDIATE … COMMIT` on the worker thread.

        `fn` is plain sync code; an exception in it undoes its writes and propagates. Calls
        that arrive while a transaction is running are committed together in the next one
        (group commit: one thread hop and one COMMIT for the lot); a call returns only once
        its writes are committed. When a call of a group fails, the group is rolled back and
        run again with that call in a savepoint of its own, so `fn` may run more than once
        and must have no effect outside `conn`. A caller cancelled before its group started
        never runs; once started, the group commits without it waiting. Raises
        DatabaseBusyError when another writer holds the file for longer than `lock_wait`.
        """
        loop = asyncio.get_running_loop()
        call = _Call(fn, loop.create_future())
        self._pending.append(call)
        if self._drainer is None or self._drainer.done():
            # One task drains the queue for everyone: a caller awaits its own future only,
            # instead of every caller taking the lock in turn.
            self._drainer = loop.create_task(self._drain())
        result: T = await call.future  # cancelling the caller cancels the future: skipped
        return result

    async def transact(self, step: Step[T], *, snapshot: bool = False) -> T:
        """Run the coroutine step `step(tx)` in one transaction (see `bot.sql.SqlDatabase`).

        On SQLite the step runs on the database thread through `run`, driven synchronously:
        its awaits on the `Tx` never suspend. `snapshot` changes nothing here (a SQLite
        transaction always reads one state)."""
        return await self.run(lambda conn: run_sync(step(SqliteTx(conn))))

    async def _drain(self) -> None:
        delay = 0.01
        try:
            while self._pending:
                async with self._lock:
                    batch = [c for c in self._pending if not c.future.done()]
                    self._pending = []
                    if await _finish(self._commit(batch)):
                        delay = 0.01
                        continue
                    self._pending[:0] = [c for c in batch if not c.future.done()]
                # Another process holds the write lock: wait, then retry the lot.
                await asyncio.sleep(delay)
                delay = min(0.2, delay * 2)
        except BaseException as exc:  # cancelled with the loop, or a bug: nobody waits forever
            for call in self._pending:
                if not call.future.done():
                    call.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            self._pending = []
            raise

    async def _commit(self, batch: list[_Call]) -> bool:
        """One hop for the batch; False when the write lock could not be had (nothing ran)."""
        now = time.monotonic()
        for call in batch:
            if call.deadline is not None and now >= call.deadline and not call.future.done():
                _log.warning("database %s stayed locked for %.1fs", self.path, self.lock_wait)
                call.future.set_exception(DatabaseBusyError(messages.database_busy()))
        live = [c for c in batch if not c.future.done()]
        if not live:
            return True
        self.hops += 1
        try:
            outcomes = await self.conn._execute(_in_batch, self._raw(), [c.fn for c in live])
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                # `lock_wait` counts from the first refusal: time spent in this process's own
                # line (a long group ahead of it) is not another writer holding the lock.
                for call in live:
                    if call.deadline is None:
                        call.deadline = now + self.lock_wait
                return False
            _fail(live, exc)
            return True
        except Exception as exc:  # BEGIN or COMMIT itself failed: nothing of the group stands
            _fail(live, exc)
            return True
        except BaseException as exc:  # e.g. KeyboardInterrupt in a fn: no caller waits forever
            _fail(live, RuntimeError(f"database thread interrupted: {exc!r}"))
            raise
        self._after_commit()
        for call, (ok, value) in zip(live, outcomes, strict=True):
            if call.future.done():  # its caller was cancelled meanwhile; the writes stand
                continue
            if ok:
                call.future.set_result(value)
            elif isinstance(value, sqlite3.OperationalError) and _locked(value):
                call.future.set_exception(DatabaseBusyError(messages.database_busy()))
            else:
                call.future.set_exception(value)
        return True

    def _after_commit(self) -> None:
        """Every `checkpoint_every` commits, start a checkpoint on the checkpoint thread.

        A checkpoint fsyncs the WAL and the database file (10-170 ms on a small VM), and the
        commit that crosses `wal_autocheckpoint` would pay it on the writer's thread while
        every transaction waits. PASSIVE on a connection of its own neither waits for nor
        blocks the writer; the writer's own checkpoint stays as the backstop, and finds little
        left to copy and sync."""
        self._commits_since_checkpoint += 1
        if self._checkpointer is None or self._commits_since_checkpoint < self.checkpoint_every:
            return
        if self._checkpoint_running():
            return  # one at a time; the next starts with the next commit after it
        self._commits_since_checkpoint = 0
        self._checkpoint = asyncio.get_running_loop().run_in_executor(
            self._checkpointer, self._checkpoint_now
        )
        self._checkpoint.add_done_callback(self._checkpoint_done)

    def _checkpoint_running(self) -> bool:
        return self._checkpoint is not None and not self._checkpoint.done()

    def _checkpoint_now(self) -> None:
        # On the checkpoint thread, which alone uses this connection.
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._checkpoint_conn.execute("PRAGMA synchronous=NORMAL")
        self._checkpoint_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpoint_done(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:  # the backstop still checkpoints
            _log.warning("database %s: background checkpoint failed: %s", self.path, exc)
            return
        self.checkpoints += 1

    def _close_checkpointer(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _raw(self) -> sqlite3.Connection:
        # aiosqlite keeps the sqlite3 connection private; `run` needs it to hand `fn` the
        # connection on aiosqlite's own thread (the one place that touches the internals).
        return self.conn._conn

    async def _begin(self, conn: aiosqlite.Connection) -> None:
        # Short sqlite waits with async backoff between them (see the module docstring).
        deadline = time.monotonic() + self.lock_wait
        delay = 0.01
        while True:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
                if time.monotonic() >= deadline:
                    _log.warning("database %s stayed locked for %.1fs", self.path, self.lock_wait)
                    raise DatabaseBusyError(messages.database_busy()) from exc
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 2)

    async def fetchall(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[aiosqlite.Row]:
        """Run one read under the lock (never inside someone else's transaction)."""
        async with self._lock:
            cursor = await self.conn.execute(sql, params)
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> aiosqlite.Row | None:
        """Run one read returning its first row, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def schema_version(self) -> int:
        """The last migration applied (PRAGMA user_version)."""
        return int(await self.fetchval("PRAGMA user_version") or 0)

    async def fetch(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        """One read with `$1`-style parameters (the `bot.sql.SqlDatabase` surface)."""
        return await self.fetchall(qmark(sql), args)

    async def fetchrow(self, sql: str, *args: Any) -> aiosqlite.Row | None:
        """One read with `$1`-style parameters, its first row or None."""
        return await self.fetchone(qmark(sql), args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """One read with `$1`-style parameters, the first column of its first row or None."""
        row = await self.fetchone(qmark(sql), args)
        return None if row is None else row[0]


@dataclass(slots=True, eq=False)
class _Call:
    """One `Database.run` call waiting for its transaction."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    #: monotonic time after which it fails with DatabaseBusyError; set when the write lock is
    #: first refused (None: never refused)
    deadline: float | None = None


class _Redo(Exception):
    """A call outside a savepoint failed: the group is rolled back and run again."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def _in_batch(
    conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]
) -> list[tuple[bool, Any]]:
    """On the worker thread: every fn in one transaction.

    Savepoints are not free in SQLite (the first change of each page after one copies the
    page aside), so a group first runs without them. If a call fails, the group is rolled
    back and run again: the calls before it as they were (they succeeded on that very
    state), it and the rest each in a savepoint. Should a call before it now fail (a step
    that is not deterministic), the third run gives every call a savepoint.
    """
    if len(fns) == 1:  # alone: the transaction itself is its savepoint
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = fns[0](conn)
        except Exception as exc:
            _rollback(conn)
            return [(False, exc)]
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")
        return [(True, value)]
    guarded_from = len(fns)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes = _run_group(conn, fns, guarded_from)
        except _Redo as redo:
            _rollback(conn)
            guarded_from = redo.index if guarded_from == len(fns) else 0
            continue
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")
        return outcomes


def _run_group(
    conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]], guarded_from: int
) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    for i, fn in enumerate(fns):
        if i < guarded_from:
            try:
                outcomes.append((True, fn(conn)))
            except Exception as exc:
                raise _Redo(i) from exc
            continue
        conn.execute("SAVEPOINT call")
        try:
            value = fn(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            outcomes.append((False, exc))
        else:
            conn.execute("RELEASE call")
            outcomes.append((True, value))
    return outcomes


def _fail(calls: list[_Call], exc: BaseException) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(exc)


def _rollback(conn: sqlite3.Connection) -> None:
    # Some errors (a full disk) end the transaction themselves; then there is nothing to undo.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


async def _finish(coro: Any) -> Any:
    """Await `coro`; if cancelled meanwhile, wait for it to end first, then re-raise."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise


async def _commit(conn: aiosqlite.Connection) -> None:
    """COMMIT, finished even if the caller is cancelled meanwhile (then the cancellation goes
    on): the lock must not pass to the next transaction while this one is half-way."""
    commit = asyncio.ensure_future(conn.execute("COMMIT"))
    try:
        await asyncio.shield(commit)
    except asyncio.CancelledError:
        await asyncio.wait([commit])
        raise


def _split(script: str) -> list[str]:
    # Migrations hold no semicolons inside strings or triggers, so a plain split is exact.
    return [s.strip() for s in script.split(";") if s.strip()]
