"""Which replica does a once-per-deployment chore (today: syncing Discord's slash commands).

`command_sync_lock(postgres_url)` is an async context manager that yields whether this process
holds the chore's lock, and keeps holding it until the block ends:

    async with command_sync_lock(settings.postgres_url) as leader:
        if leader:
            ...  # sync

On SQLite it always grants: one process owns the database (bot/instance.py's flock). On
PostgreSQL it is a session advisory lock (`pg_try_advisory_lock`) on a connection of its own:
exactly one of any number of replicas gets it, nobody waits, and the server drops it when the
holder's connection ends (a SIGKILLed replica never leaves it behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bot.errors import ConfigError

__all__ = ["COMMAND_SYNC", "AdvisoryLock", "command_sync_lock", "lock_key"]

_log = logging.getLogger(__name__)

#: the chore's name; its advisory lock key is derived from it
COMMAND_SYNC = "imagine-bot/discord-command-sync"
_CONNECT_TIMEOUT = 10.0


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name` (what `pg_try_advisory_lock` takes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class AdvisoryLock:
    """One PostgreSQL session advisory lock, tried without waiting, on its own connection."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self.name = name
        self.key = lock_key(name)
        self._conn: Any = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock right now."""
        return self._conn is not None and not self._conn.is_closed()

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False at once if another session does. ConfigError
        (one line, no password) when the server cannot be reached."""
        if self.held:
            return True
        import asyncpg  # only the PostgreSQL mode needs it

        try:
            conn = await asyncpg.connect(self._url, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise ConfigError(
                f"cannot reach the PostgreSQL of DATABASE_URL for the {self.name} lock: {type(exc).__name__}"
            ) from None
        try:
            got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        """Give the lock up (closing the session drops it too); idempotent."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", self.key)
        except Exception as exc:  # the session is closed next anyway, which drops the lock
            _log.debug("advisory unlock of %s failed: %r", self.name, exc)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()


@asynccontextmanager
async def command_sync_lock(postgres_url: str | None, name: str = COMMAND_SYNC) -> AsyncIterator[bool]:
    """Yields whether this process may sync commands, holding the right until the block ends:
    always True without PostgreSQL (`postgres_url` None), else the advisory lock's answer."""
    if postgres_url is None:
        yield True
        return
    lock = AdvisoryLock(postgres_url, name)
    granted = await lock.try_acquire()
    try:
        yield granted
    finally:
        await lock.release()
