"""Which replica does a once-per-deployment chore (today: syncing Discord's slash commands),
and which replicas are alive.

`command_sync_lock(postgres_url)` is an async context manager that yields whether this process
holds the chore's lock, and keeps holding it until the block ends:

    async with command_sync_lock(settings.postgres_url) as leader:
        if leader:
            ...  # sync

On SQLite it always grants: one process owns the database (bot/instance.py's flock). On
PostgreSQL it is a session advisory lock (`pg_try_advisory_lock`) on a connection of its own:
exactly one of any number of replicas gets it, nobody waits, and the server drops it when the
holder's connection ends (a SIGKILLed replica never leaves it behind).

The same kind of lock tells the living replicas from the dead: each replica on PostgreSQL
holds one named for its lease owner id for its whole life (`ReplicaLiveness`), so a job leased
to an owner whose lock nobody holds is known to be orphaned at once (`dead_owners`), without
waiting for its lease to run out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self

from bot.errors import ConfigError
from bot.sql import Tx

__all__ = [
    "COMMAND_SYNC",
    "LIVE_OWNER_PREFIX",
    "AdvisoryLock",
    "ReplicaLiveness",
    "command_sync_lock",
    "dead_owners",
    "lock_key",
]

_log = logging.getLogger(__name__)

#: the chore's name; its advisory lock key is derived from it
COMMAND_SYNC = "imagine-bot/discord-command-sync"
_CONNECT_TIMEOUT = 10.0
#: lease owners that hold a liveness lock say so in their id; any other owner (a replica of a
#: version before these locks) is judged by its lease alone, never taken for dead
LIVE_OWNER_PREFIX = "live-"


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


def _replica_lock_name(owner: str) -> str:
    return f"imagine-bot/replica/{owner}"


class ReplicaLiveness:
    """This replica's liveness lock: held on a connection of its own while the process lives, so
    others see at once when it died. An async context manager; `keep` takes the lock again
    after its connection was lost (the server restarted, a network cut)."""

    def __init__(self, url: str, owner: str) -> None:
        if not owner.startswith(LIVE_OWNER_PREFIX):
            raise ValueError(f"a liveness lock's owner id starts with {LIVE_OWNER_PREFIX!r}")
        self.owner = owner
        self._lock = AdvisoryLock(url, _replica_lock_name(owner))

    @property
    def key(self) -> int:
        """The advisory lock key (what `pg_locks` shows as classid and objid)."""
        return self._lock.key

    @property
    def held(self) -> bool:
        """Whether the lock is held right now (False once its session ended)."""
        return self._lock.held

    async def __aenter__(self) -> Self:
        if not await self._lock.try_acquire():  # the id is random: nobody else has it
            raise ConfigError(f"another process already uses the replica id {self.owner}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._lock.release()

    async def keep(self) -> None:
        """Hold the lock again if its session ended. Meanwhile other replicas may have taken
        this one's jobs over; its leases then say so, as after a stall."""
        if self._lock.held:
            return
        try:
            if await self._lock.try_acquire():
                _log.warning("liveness lock of replica %s taken again after its connection ended", self.owner)
        except ConfigError as exc:  # the next round tries again
            _log.warning("%s", exc)


async def dead_owners(tx: Tx, owners: set[str]) -> set[str]:
    """Of the lease `owners`, those known dead: they hold liveness locks by their id, and no
    session holds theirs (PostgreSQL; on SQLite one process owns the file, nobody asks)."""
    judged = {o for o in owners if o.startswith(LIVE_OWNER_PREFIX)}
    if not judged:
        return set()
    # pg_locks shows a bigint advisory key as its high half (classid) and low half (objid).
    rows = await tx.fetch(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks"
        " WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    held = {r[0] for r in rows}
    return {o for o in judged if lock_key(_replica_lock_name(o)) not in held}
