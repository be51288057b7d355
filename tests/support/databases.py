"""One parametrised database for tests that must hold on SQLite and on PostgreSQL alike.

`database_backend` (tests/conftest.py) is session-scoped and parametrised over both backends;
a test takes a fresh, empty database from it with `async with backend.fresh_url() as url:` and
opens it with `backend.open(url)` (or `bot.sql.open_database`). The PostgreSQL half uses the
session's `pg_server`, so it skips (or, under CI=true, fails) like every PostgreSQL test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.db import MIGRATIONS
from bot.sql import SqlDatabase, open_database
from tests.support.postgres import fresh_pg_url

__all__ = ["BACKENDS", "DatabaseBackend", "database_backend_for"]

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class DatabaseBackend:
    """Where fresh databases of one kind come from."""

    name: str  # "sqlite" or "postgresql"
    tmp: Path  # SQLite files go here
    server: str | None = None  # PostgreSQL server URL (maintenance database)

    @asynccontextmanager
    async def fresh_url(self) -> AsyncIterator[str]:
        """The URL of a new, empty database, removed afterwards (PostgreSQL) or left in tmp."""
        if self.server is None:
            yield f"sqlite:///{self.tmp / f'{uuid.uuid4().hex[:12]}.sqlite3'}"
            return
        async with fresh_pg_url(self.server) as url:
            yield url

    @property
    def migrations(self) -> list[str]:
        """This backend's schema versions (`bot.db.MIGRATIONS` or `bot.pg.PG_MIGRATIONS`)."""
        if self.server is None:
            return list(MIGRATIONS)
        from bot.pg import PG_MIGRATIONS

        return list(PG_MIGRATIONS)

    def open(self, url: str, **options: Any) -> SqlDatabase:
        """An unopened database on `url` (use `async with`)."""
        return open_database(url, **options)


def database_backend_for(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> DatabaseBackend:
    """Build the backend for the fixture's current parameter (PostgreSQL asks for `pg_server`)."""
    name = request.param
    tmp = tmp_path_factory.mktemp(f"db-{name}")
    if name == "postgresql":
        return DatabaseBackend(name, tmp, server=request.getfixturevalue("pg_server"))
    return DatabaseBackend(name, tmp)
