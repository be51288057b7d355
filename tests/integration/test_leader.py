"""Only one replica syncs Discord's commands: the command-sync lock on real PostgreSQL (advisory
lock), and on SQLite (always granted: one process per database)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bot.errors import ConfigError
from bot.leader import COMMAND_SYNC, AdvisoryLock, command_sync_lock, lock_key
from tests.support.postgres import fresh_pg_url


async def test_without_postgresql_the_lock_is_always_granted() -> None:
    async with command_sync_lock(None) as first, command_sync_lock(None) as second:
        assert first and second


async def test_of_two_contenders_on_one_postgresql_exactly_one_syncs(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url:
        synced: list[str] = []
        both_tried = asyncio.Barrier(2)

        async def replica(name: str) -> None:
            async with command_sync_lock(url) as leader:
                # Both hold their answer at the same time: the loser tried while the winner held.
                await both_tried.wait()
                if leader:
                    synced.append(name)

        await asyncio.gather(replica("a"), replica("b"))
        assert len(synced) == 1


async def test_many_contenders_one_leader_and_the_lock_is_free_again_afterwards(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url:
        locks = [AdvisoryLock(url, COMMAND_SYNC) for _ in range(5)]
        granted = await asyncio.gather(*(lock.try_acquire() for lock in locks))
        assert sum(granted) == 1
        for lock in locks:
            await lock.release()
        async with command_sync_lock(url) as leader:
            assert leader  # nobody kept it


async def test_the_lock_dies_with_its_holder_session(pg_server: str) -> None:
    # A SIGKILLed replica's connection ends; the server drops its advisory lock with it.
    async with fresh_pg_url(pg_server) as url:
        holder = AdvisoryLock(url, COMMAND_SYNC)
        assert await holder.try_acquire()
        async with command_sync_lock(url) as leader:
            assert not leader
        admin = await asyncpg.connect(url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed == 1
        async with command_sync_lock(url) as leader:
            assert leader
        await holder.release()  # its connection is gone; release must not raise


async def test_other_chores_do_not_share_the_lock(pg_server: str) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        command_sync_lock(url) as sync,
        command_sync_lock(url, "imagine-bot/other") as other,
    ):
        assert sync and other
    assert lock_key(COMMAND_SYNC) != lock_key("imagine-bot/other")
    assert -(2**63) <= lock_key(COMMAND_SYNC) < 2**63


async def test_an_unreachable_postgresql_is_one_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        async with command_sync_lock("postgresql://bot:hunter2-secret@127.0.0.1:1/imagine"):
            pass
    assert "hunter2" not in str(caught.value) and "DATABASE_URL" in str(caught.value)
