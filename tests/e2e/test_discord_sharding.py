"""Discord sharding end to end: the real discord.py `AutoShardedClient` in the real bot against
the loopback fake, which routes each guild's events to shard `(guild_id >> 22) % count`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path

import aiohttp
import discord
import pytest

from adapters.discord_bot import DiscordAdapter
from bot.adapter import AdapterContext
from bot.app import BotApp
from bot.config import Settings
from tests.e2e.discord_harness import discord_bot, discord_settings, wait_result
from tests.fakes.discord_fake import ALICE, DiscordFake, shard_of
from tests.support.core import core_settings, fast_sandbox
from tests.support.postgres import fresh_pg_url

pytestmark = pytest.mark.slow

SHARED_KEY = "a-shared-secret-key-for-all-replicas"


@pytest.fixture
async def fake() -> AsyncIterator[DiscordFake]:
    async with DiscordFake() as f:
        yield f
        assert [ix.name or ix.custom_id for ix in f.unanswered()] == []


@pytest.fixture
async def sandbox() -> AsyncIterator[object]:
    async with fast_sandbox() as sb:
        yield sb


def _adapter(app: BotApp) -> DiscordAdapter:
    adapter = app.adapters["discord"]
    assert isinstance(adapter, DiscordAdapter)
    return adapter


async def _imagine_in(fake: DiscordFake, guild_id: str, prompt: str) -> None:
    msg = await wait_result(fake, await fake.slash("imagine", {"prompt": prompt}, guild_id=guild_id))
    assert msg.files


async def _balance(app: BotApp, guild_id: str) -> int:
    return (await app.ledger.account(f"discord:{guild_id}", ALICE.id)).balance


async def test_one_replica_running_both_shards_handles_commands_from_either(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    guilds = [fake.add_guild(shard=(0, 2)), fake.add_guild(shard=(1, 2))]
    async with discord_bot(
        tmp_path,
        fake,
        sandbox,  # type: ignore[arg-type]
        discord_shard_count=2,
        discord_shard_ids="0,1",
    ) as app:
        adapter = _adapter(app)
        assert isinstance(adapter.client, discord.AutoShardedClient)
        assert sorted(fake.identified) == [(0, 2), (1, 2)]
        assert adapter.shards_up == {0, 1}  # start() returned once every shard was READY
        for guild_id in guilds:
            await _imagine_in(fake, guild_id, "a lighthouse")
        assert [await _balance(app, g) for g in guilds] == [90, 90]
    # A fixed count never asks Discord for its recommendation.
    assert not any(r.path.endswith("/gateway/bot") for r in fake.requests)


async def test_two_replicas_split_the_shards_and_each_serves_its_own_guilds(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    on_0, on_1 = fake.add_guild(shard=(0, 2)), fake.add_guild(shard=(1, 2))
    async with (
        discord_bot(
            tmp_path / "a",
            fake,
            sandbox,  # type: ignore[arg-type]
            discord_shard_count=2,
            discord_shard_ids="0",
        ) as a,
        discord_bot(
            tmp_path / "b",
            fake,
            sandbox,  # type: ignore[arg-type]
            discord_shard_count=2,
            discord_shard_ids="1",
        ) as b,
    ):
        assert (_adapter(a).shards_up, _adapter(b).shards_up) == ({0}, {1})
        assert sorted(fake.identified) == [(0, 2), (1, 2)]
        await _imagine_in(fake, on_0, "a red fox")
        await _imagine_in(fake, on_1, "a blue whale")
        # Discord sends DMs to shard 0: the replica running it answers.
        dm = await fake.slash("imagine", {"prompt": "a quiet pond"}, dm=True)
        assert (await wait_result(fake, dm)).files
        assert (await _balance(a, f"dm:{ALICE.id}"), await _balance(b, f"dm:{ALICE.id}")) == (90, 100)
        # Each replica charged only the guild whose shard it runs (each has its own ledger here).
        assert (await _balance(a, on_0), await _balance(a, on_1)) == (90, 100)
        assert (await _balance(b, on_0), await _balance(b, on_1)) == (100, 90)


async def test_a_dropped_shard_resumes_and_keeps_serving(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    guild = fake.add_guild(shard=(1, 2))
    async with discord_bot(
        tmp_path,
        fake,
        sandbox,  # type: ignore[arg-type]
        discord_shard_count=2,
        discord_shard_ids="1",
    ) as app:
        await fake.drop_connection(shard_id=1)
        await fake.wait_for(lambda: fake.resumes == 1 and fake.shard_connected(1), timeout=20)
        await fake.wait_for(lambda: _adapter(app).shards_up == {1}, timeout=10)
        await _imagine_in(fake, guild, "a castle")
        assert fake.identifies == 1  # resumed, not identified again


async def test_shard_count_zero_takes_discords_recommended_count(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    fake.recommended_shards = 2
    async with discord_bot(tmp_path, fake, sandbox, discord_shard_count=0) as app:  # type: ignore[arg-type]
        client = _adapter(app).client
        assert isinstance(client, discord.AutoShardedClient) and client.shard_count == 2
        assert sorted(fake.identified) == [(0, 2), (1, 2)]
        assert _adapter(app).shards_up == {0, 1}
        await _imagine_in(fake, fake.guild_id, "a kite")
    assert [r.path for r in fake.requests if r.path.endswith("/gateway/bot")] == ["/api/v10/gateway/bot"]


async def test_without_shard_settings_the_client_is_unsharded_as_before(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    async with discord_bot(tmp_path, fake, sandbox) as app:  # type: ignore[arg-type]
        client = _adapter(app).client
        assert not isinstance(client, discord.AutoShardedClient)
        assert _adapter(app).shards_up == {None}
        assert fake.identified == [(0, 1)]  # IDENTIFY without a shard field
        assert _adapter(app).command_sync_leader  # SQLite: this process syncs
    assert not any(r.path.endswith("/gateway/bot") for r in fake.requests)


def test_the_fake_routes_a_guild_to_the_shard_discord_would() -> None:
    # Discord's formula (developers/events/gateway, "Sharding"): (guild_id >> 22) % num_shards.
    assert shard_of("41771983423143937", 2) == (41771983423143937 >> 22) % 2
    assert shard_of(None, 4) == 0


# --- several replicas on one PostgreSQL: one command sync --------------------------------------


@asynccontextmanager
async def _replica(app: BotApp, settings: Settings) -> AsyncIterator[DiscordAdapter]:
    """A Discord adapter with `settings` (PostgreSQL's DATABASE_URL) on `app`'s engine."""
    async with aiohttp.ClientSession() as session:
        ctx = AdapterContext(
            engine=app.engine,
            settings=settings,
            web=app.web,
            session=session,
            media=app.media,
            readiness=app.readiness,
        )
        adapter = DiscordAdapter(ctx)
        await adapter.start()
        try:
            yield adapter
        finally:
            await adapter.stop()


async def test_of_two_replicas_on_one_postgresql_only_one_syncs_commands(
    tmp_path: Path, fake: DiscordFake, sandbox: object, pg_server: str
) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        BotApp(core_settings(tmp_path / "a"), platforms=[], sandbox=nullcontext(sandbox)) as app_a,
        BotApp(core_settings(tmp_path / "b"), platforms=[], sandbox=nullcontext(sandbox)) as app_b,
    ):

        def replica_settings(name: str, shard: str) -> Settings:
            # Each replica has its own DATA_DIR (so its own command digest): only the lock stops
            # the second one from syncing too.
            return discord_settings(
                tmp_path / name,
                fake,
                database_url=url,
                secret_key=SHARED_KEY,
                discord_shard_count=2,
                discord_shard_ids=shard,
            )

        async with _replica(app_a, replica_settings("a", "0")) as a:
            async with _replica(app_b, replica_settings("b", "1")) as b:
                assert (a.command_sync_leader, b.command_sync_leader) == (True, False)
                assert fake.command_puts == 1
                assert sorted(fake.identified) == [(0, 2), (1, 2)]
            assert fake.command_puts == 1
        # The leader is gone: the next replica to start takes the lock and syncs.
        async with _replica(app_b, replica_settings("c", "0,1")) as c:
            assert c.command_sync_leader
            assert fake.command_puts == 2
