"""SQLite through aiosqlite: one writer connection, WAL, versioned migrations.

Writes go through `Database.run(fn)`: `fn` is a plain function on the raw `sqlite3` connection
that runs on aiosqlite's worker thread inside `BEGIN IMMEDIATE … COMMIT`, so one transaction
costs one thread hop however many statements it has. `Database.transaction()` (one hop per
statement) remains for code not yet written that way. Both hold an asyncio lock, so
coroutines sharing the connection never interleave inside one another's transaction.

Another process holding the write lock never blocks the worker thread for long: sqlite waits
`busy_timeout` per attempt, `run` retries with async backoff up to `lock_wait` seconds, then
raises `DatabaseBusyError`, a `UserError` whose text is a friendly "try again" — sqlite's
"database is locked" never reaches a user.
"""

from __future__ import annotations

import asyncio
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

__all__ = ["MIGRATIONS", "Database", "DatabaseBusyError"]

T = TypeVar("T")

#: milliseconds sqlite itself waits for a lock per attempt (on the worker thread)
_BUSY_MS = 100


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
]


class Database:
    """An open SQLite database with the migrations applied; use as an async context manager."""

    def __init__(
        self, path: str | Path, *, migrations: Sequence[str] | None = None, lock_wait: float = 10.0
    ) -> None:
        self.path = str(path)
        self._migrations = list(MIGRATIONS if migrations is None else migrations)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._pending: list[_Call] = []
        #: transactions run by `run` (fewer than its calls when they are committed in groups)
        self.hops = 0
        #: seconds a transaction keeps retrying for the write lock before DatabaseBusyError
        self.lock_wait = lock_wait

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
        self._conn = await aiosqlite.connect(self.path, isolation_level=None, timeout=30.0)
        self._conn.row_factory = aiosqlite.Row
        await self._conn.execute("PRAGMA journal_mode=WAL")
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        await self._conn.execute("PRAGMA foreign_keys=ON")
        await self._conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        await self._migrate()
        return self

    async def __aexit__(self, *exc: object) -> None:
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
        (group commit: one thread hop and one COMMIT for the lot, each call in a savepoint
        of its own so one failing call undoes only its own writes); a call returns only once
        its writes are committed. A caller cancelled while its batch runs waits for the hop
        to finish, so the lock never passes on mid-transaction. Raises DatabaseBusyError when
        another writer holds the file for longer than `lock_wait`.
        """
        call = _Call(fn, asyncio.get_running_loop().create_future(), time.monotonic() + self.lock_wait)
        self._pending.append(call)
        delay = 0.01
        try:
            while not call.future.done():
                async with self._lock:
                    if call.future.done():
                        break
                    batch, self._pending = self._pending, []
                    if await _finish(self._commit(batch)):
                        continue
                    self._pending[:0] = [c for c in batch if not c.future.done()]
                # Another process holds the write lock: wait outside our lock, then retry.
                await asyncio.sleep(delay)
                delay = min(0.2, delay * 2)
        except asyncio.CancelledError:
            if call in self._pending:  # not started: it never runs
                self._pending.remove(call)
            raise
        result: T = call.future.result()
        return result

    async def _commit(self, batch: list[_Call]) -> bool:
        """One hop for the batch; False when the write lock could not be had (nothing ran)."""
        now = time.monotonic()
        for call in batch:
            if now >= call.deadline:
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
                return False
            for call in live:
                call.future.set_exception(exc)
            return True
        for call, (ok, value) in zip(live, outcomes, strict=True):
            if ok:
                call.future.set_result(value)
            elif isinstance(value, sqlite3.OperationalError) and _locked(value):
                call.future.set_exception(DatabaseBusyError(messages.database_busy()))
            else:
                call.future.set_exception(value)
        return True

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


@dataclass(slots=True, eq=False)
class _Call:
    """One `Database.run` call waiting for its transaction."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    deadline: float  # monotonic time after which it fails with DatabaseBusyError


def _in_batch(
    conn: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]
) -> list[tuple[bool, Any]]:
    """On the worker thread: every fn in one transaction, each in its own savepoint."""
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[tuple[bool, Any]] = []
    try:
        if len(fns) == 1:  # alone: the transaction itself is its savepoint
            try:
                outcomes.append((True, fns[0](conn)))
            except Exception as exc:
                conn.execute("ROLLBACK")
                return [(False, exc)]
            conn.execute("COMMIT")
            return outcomes
        for fn in fns:
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
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return outcomes


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
