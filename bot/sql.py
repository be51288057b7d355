"""One small transaction interface for SQLite and PostgreSQL, so rules are written once.

A *step* is a coroutine function taking a `Tx` and returning a value; it runs inside one
transaction of whichever database is open. SQL is written with PostgreSQL's `$1`-style
parameters; on SQLite they become `?1` (SQLite numbers parameters the same way).

On PostgreSQL a `Tx` is an asyncpg connection inside a transaction. On SQLite it wraps the raw
`sqlite3` connection on the database thread: its coroutines never suspend, so a step is driven
to completion by `run_sync` without an event loop (one `send(None)`).

Both backends offer the same `SqlDatabase` surface: `transact(step)`, one-shot reads
(`fetch`, `fetchrow`, `fetchval`) and async context management. `open_database(url)` picks one.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TypeVar

__all__ = [
    "Dialect",
    "Row",
    "SqlDatabase",
    "SqliteTx",
    "Step",
    "StepSuspendedError",
    "Tx",
    "open_database",
    "qmark",
    "run_sync",
    "sqlite_path",
]

T = TypeVar("T")

Dialect = Literal["sqlite", "postgresql"]

#: A result row: `sqlite3.Row` or `asyncpg.Record`; both index by column name and position.
Row = Any


class Tx(Protocol):
    """The statements a step may run inside its transaction (`$1`-style parameters)."""

    #: which database this is, for the rare statement that must differ
    dialect: Dialect
    #: `" FOR UPDATE"` on PostgreSQL (lock the rows read), `""` on SQLite (writes are serial)
    for_update: str

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it inserted, updated or deleted."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row of a query."""
        ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row of a query (or of a statement's RETURNING), or None."""
        ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        ...


#: A transaction body: given the transaction, returns its result.
Step = Callable[[Tx], Coroutine[Any, Any, T]]


class SqlDatabase(Protocol):
    """What the ledger (and a store) needs of an open database, SQLite or PostgreSQL."""

    dialect: Dialect

    async def transact(self, step: Step[T], *, snapshot: bool = False) -> T:
        """Run `step` in one transaction and commit; an exception rolls it back and propagates.

        The step may be run again (after a lost race the database resolved by aborting), so it
        must have no effect outside the transaction. `snapshot`: all its reads see one
        consistent state (PostgreSQL: repeatable read; SQLite transactions always do).
        """
        ...

    async def schema_version(self) -> int:
        """The last migration applied."""
        ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """One read outside any caller's transaction."""
        ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """One read, its first row or None."""
        ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """One read, the first column of its first row or None."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


_PARAM = re.compile(r"\$(\d+)")
_QMARK: dict[str, str] = {}


def qmark(sql: str) -> str:
    """`$1`-style parameters as SQLite's `?1` (cached: the same SQL text is translated once)."""
    out = _QMARK.get(sql)
    if out is None:
        # No statement of ours has a `$` inside a string literal, so a plain rewrite is exact.
        out = _QMARK[sql] = _PARAM.sub(r"?\1", sql)
    return out


class SqliteTx:
    """A `Tx` over the raw `sqlite3` connection, inside a transaction on the database thread."""

    __slots__ = ("conn",)

    dialect: Dialect = "sqlite"
    for_update = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; rows changed."""
        return self.conn.execute(qmark(sql), args).rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Every row."""
        return self.conn.execute(qmark(sql), args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """The first row or None."""
        return self.conn.execute(qmark(sql), args).fetchone()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """The first column of the first row or None."""
        row = self.conn.execute(qmark(sql), args).fetchone()
        return None if row is None else row[0]


class StepSuspendedError(RuntimeError):
    """A step driven synchronously awaited something that really suspends (a bug in the step)."""


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine whose awaits never suspend (a step on `SqliteTx`) to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise StepSuspendedError("a step on SQLite awaited something other than its Tx")


def sqlite_path(url: str | Path) -> Path | None:
    """The file of a SQLite URL (`sqlite:///relative`, `sqlite:////absolute`) or plain path;
    None for a PostgreSQL URL."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        return None
    if text.startswith("sqlite://"):
        rest = text.removeprefix("sqlite://")
        if not rest.startswith("/"):
            raise ValueError(f"a SQLite URL is sqlite:///PATH, not {text!r}")
        return Path(rest[1:] or ":memory:")
    if "://" in text:
        raise ValueError(f"unsupported database URL {text!r}: use sqlite:///PATH or postgresql://…")
    return Path(text)


def open_database(url: str | Path, **options: Any) -> SqlDatabase:
    """An unopened database for `url` (use `async with`): `postgresql://…` → PostgreSQL
    (asyncpg pool), `sqlite:///PATH` or a plain path → SQLite. `options` go to its constructor."""
    path = sqlite_path(url)
    if path is None:
        from bot.pg import PgDatabase

        return PgDatabase(str(url), **options)
    from bot.db import Database

    return Database(path, **options)
