"""Readiness of the real bot (real discord.py against the loopback Discord fake): `/readyz`
follows the gateway and the database; a gateway gone for good ends `Readiness.gone()`."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import BotApp
from tests.e2e.discord_harness import discord_bot
from tests.fakes.discord_fake import DiscordFake
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
async def fake() -> AsyncIterator[DiscordFake]:
    async with DiscordFake() as f:
        yield f


@pytest.fixture
async def sandbox() -> AsyncIterator[Any]:
    async with fast_sandbox() as sb:
        yield sb


async def readyz(app: BotApp) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(app.web.base_url + "/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def wait_readyz(app: BotApp, status: int, timeout: float = 30.0) -> dict[str, Any]:
    """The /readyz body once it answers `status` (asked again every 0.1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got, body = await readyz(app)
        if got == status:
            return body
        if loop.time() > deadline:
            raise AssertionError(f"/readyz stayed {got}: {body}")
        await asyncio.sleep(0.1)


@contextmanager
def write_locked(db_path: Path) -> Iterator[None]:
    """Another writer holding the database's write lock."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def test_ready_once_the_gateway_is_connected(tmp_path: Path, fake: DiscordFake, sandbox: Any) -> None:
    async with discord_bot(tmp_path, fake, sandbox) as app:
        status, body = await readyz(app)
    assert status == 200
    assert body["platforms"] == {"discord": "connected"} and body["database"] == "writable"


async def test_a_gateway_down_beyond_the_grace_period_is_503_until_it_returns(
    tmp_path: Path, fake: DiscordFake, sandbox: Any
) -> None:
    async with discord_bot(tmp_path, fake, sandbox, platform_grace_seconds=0.3) as app:
        fake.gateway_refused = True
        await fake.drop_connection()

        body = await wait_readyz(app, 503)
        assert body["platforms"]["discord"].startswith("disconnected for")
        async with aiohttp.ClientSession() as client, client.get(app.web.base_url + "/healthz") as resp:
            assert resp.status == 200  # liveness: the process itself is fine

        fake.gateway_refused = False
        body = await wait_readyz(app, 200)
    assert body["platforms"] == {"discord": "connected"}


async def test_a_short_drop_inside_the_grace_period_stays_ready(
    tmp_path: Path, fake: DiscordFake, sandbox: Any
) -> None:
    async with discord_bot(tmp_path, fake, sandbox, platform_grace_seconds=600) as app:
        fake.gateway_refused = True
        await fake.drop_connection()
        await fake.wait_for(lambda: not app.readiness.platform("discord").is_connected)
        status, body = await readyz(app)
    assert status == 200 and body["platforms"] == {"discord": "reconnecting"}


async def test_a_database_that_cannot_take_a_write_is_503(
    tmp_path: Path, fake: DiscordFake, sandbox: Any
) -> None:
    async with discord_bot(tmp_path, fake, sandbox) as app:
        with write_locked(app.settings.db_path):
            status, body = await readyz(app)
        assert status == 503
        assert body["database"].startswith("database not writable")
        assert body["platforms"] == {"discord": "connected"}
        assert (await readyz(app))[0] == 200


async def test_a_gateway_refusing_for_good_ends_the_watch(
    tmp_path: Path, fake: DiscordFake, sandbox: Any
) -> None:
    async with discord_bot(tmp_path, fake, sandbox) as app:
        await fake.drop_connection(code=4014)  # disallowed intents: discord.py stops for good
        reason = await asyncio.wait_for(app.readiness.gone(), 20)
        status, body = await readyz(app)
    assert "PrivilegedIntentsRequired" in reason
    assert status == 503 and body["platforms"]["discord"].startswith("failed")


async def test_a_disconnect_beyond_the_give_up_period_ends_the_watch(
    tmp_path: Path, fake: DiscordFake, sandbox: Any
) -> None:
    async with discord_bot(
        tmp_path, fake, sandbox, platform_grace_seconds=0.2, platform_give_up_seconds=0.5
    ) as app:
        fake.gateway_refused = True
        await fake.drop_connection()
        reason = await asyncio.wait_for(app.readiness.gone(), 20)
    assert reason == "discord: disconnected for more than 0.5s"
