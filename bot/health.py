"""Readiness: is every configured platform connected, and can the database take a write?

Adapters report their connection through a `PlatformHealth` (a neutral object: the core never
sees a gateway or a socket). `/healthz` stays liveness (the process answers); `/readyz` asks
`Readiness.check()`. A platform that drops is still ready for a grace period, since discord.py
and the Slack socket client reconnect by themselves within seconds; one that never connected is
not ready. `Readiness.gone()` returns once a platform has failed for good or stayed away longer
than the give-up period, so the process can exit non-zero and the restart policy bring it back.
`database_probe(url)` is the database half, for SQLite's file or a PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bot.sql import sqlite_path

__all__ = ["DatabaseProbe", "PlatformHealth", "PostgresProbe", "Readiness", "database_probe"]

_log = logging.getLogger(__name__)


class PlatformHealth:
    """One platform's connection, as its adapter reports it. Starts as never connected."""

    def __init__(self, name: str, on_change: Callable[[], None], clock: Callable[[], float]) -> None:
        self.name = name
        self._on_change = on_change
        self._clock = clock
        self.is_connected = False
        self.ever_connected = False
        self.down_since: float | None = clock()
        self.fatal: str | None = None

    def connected(self) -> None:
        """The platform's events flow (READY, RESUMED, a socket hello, or HTTP mode)."""
        if not self.is_connected:
            if self.ever_connected:
                _log.info("%s reconnected", self.name)
            self.is_connected, self.ever_connected, self.down_since = True, True, None
            self._on_change()

    def disconnected(self) -> None:
        """The connection dropped; the platform library is trying to reconnect."""
        if self.is_connected:
            _log.info("%s disconnected; waiting for it to reconnect", self.name)  # routine for Discord
            self.is_connected, self.down_since = False, self._clock()
            self._on_change()

    def failed(self, reason: str) -> None:
        """The connection is gone for good (refused token, missing intents, gave up)."""
        if self.fatal is None:
            self.is_connected, self.fatal = False, reason
            if self.down_since is None:
                self.down_since = self._clock()
            self._on_change()

    def down_for(self) -> float:
        """Seconds since the connection was last lost (0 while connected)."""
        return 0.0 if self.down_since is None else self._clock() - self.down_since


class DatabaseProbe:
    """A cheap write probe on its own short-lived connection: `BEGIN IMMEDIATE; ROLLBACK` takes
    SQLite's write lock without writing anything, so it fails when the file is read-only,
    its directory is gone, or another writer holds the lock longer than `timeout`."""

    def __init__(self, path: Path, *, timeout: float = 2.0) -> None:
        self.path = path
        self.timeout = timeout

    async def __call__(self) -> str | None:
        """None when writable, else why not."""
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> str | None:
        if not self.path.exists():
            return "database file missing"
        try:
            # mode=rw: never create a fresh empty database where the real one vanished
            conn = sqlite3.connect(
                f"file:{self.path}?mode=rw", uri=True, timeout=self.timeout, isolation_level=None
            )
        except sqlite3.Error as exc:
            return f"database cannot be opened: {exc}"
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            return f"database not writable: {exc}"
        finally:
            conn.close()
        return None


class PostgresProbe:
    """The PostgreSQL twin of `DatabaseProbe`, on its own short-lived connection (not the pool,
    so it also notices a server that takes no new connections): the server answers within
    `timeout` and is not read-only (a standby, or `default_transaction_read_only`)."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._url = url  # may hold a password: never logged, never in an answer
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"PostgresProbe(timeout={self.timeout:g})"

    async def __call__(self) -> str | None:
        """None when writable, else why not."""
        import asyncpg  # only a PostgreSQL deployment pays for the import

        try:
            async with asyncio.timeout(self.timeout):
                conn = await asyncpg.connect(self._url, timeout=self.timeout)
                try:
                    read_only = await conn.fetchval("SELECT current_setting('transaction_read_only')")
                finally:
                    await conn.close(timeout=self.timeout)
        except TimeoutError:
            return f"database did not answer within {self.timeout:g}s"
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return f"database cannot be reached: {self._redact(exc)}"
        if read_only == "on":
            return "database not writable: the server is read-only"
        return None

    def _redact(self, exc: BaseException) -> str:
        # Driver messages name the user, host and database but not the password; should one
        # ever echo the URL, the password still never reaches /readyz.
        text = f"{type(exc).__name__}: {exc}"
        password = urlsplit(self._url).password
        if password:
            for form in {password, unquote(password)}:
                text = text.replace(form, "***")
        return text


def database_probe(url: str | Path, *, timeout: float = 2.0) -> DatabaseProbe | PostgresProbe:
    """The probe for a `bot.sql.open_database` URL: PostgreSQL's for `postgresql://…`, else
    SQLite's on the file (`sqlite:///PATH` or a plain path)."""
    path = sqlite_path(url)
    if path is None:
        return PostgresProbe(str(url), timeout=timeout)
    return DatabaseProbe(path, timeout=timeout)


class Readiness:
    """Every platform's health and the database probe; what `/readyz` answers."""

    def __init__(
        self,
        *,
        grace: float,
        give_up: float,
        db_probe: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.give_up = give_up
        self._db_probe = db_probe
        self._clock = clock
        self._platforms: dict[str, PlatformHealth] = {}
        self._changed = asyncio.Event()

    def platform(self, name: str) -> PlatformHealth:
        """The health object an adapter reports to (one per platform name)."""
        if name not in self._platforms:
            self._platforms[name] = PlatformHealth(name, self._changed.set, self._clock)
        return self._platforms[name]

    async def check(self) -> dict[str, Any]:
        """`{"ok": bool, "platforms": {...}, "database": ...}` for `/readyz`."""
        platforms: dict[str, str] = {}
        ok = True
        for name, p in self._platforms.items():
            if p.fatal is not None:
                platforms[name], ok = f"failed: {p.fatal}", False
            elif p.is_connected:
                platforms[name] = "connected"
            elif not p.ever_connected:
                platforms[name], ok = "connecting", False
            elif p.down_for() > self.grace:
                platforms[name], ok = f"disconnected for {p.down_for():.0f}s", False
            else:
                platforms[name] = "reconnecting"
        database = "writable"
        if self._db_probe is not None:
            problem = await self._db_probe()
            if problem is not None:
                database, ok = problem, False
        return {"ok": ok, "platforms": platforms, "database": database}

    def _verdict(self) -> tuple[str | None, float | None]:
        # (why the process should end, or None; when to look again)
        soonest: float | None = None
        for name, p in self._platforms.items():
            if p.fatal is not None:
                return f"{name}: {p.fatal}", None
            if p.down_since is not None and p.ever_connected:
                left = self.give_up - p.down_for()
                if left <= 0:
                    return f"{name}: disconnected for more than {self.give_up:g}s", None
                soonest = left if soonest is None else min(soonest, left)
        return None, soonest

    async def gone(self) -> str:
        """Wait until a platform is gone for good; returns why."""
        while True:
            reason, wait = self._verdict()
            if reason is not None:
                return reason
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
