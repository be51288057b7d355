"""Slack over HTTP, from the operator's side: malformed deliveries get 401 (never a 500 with a
traceback), and HTTP mode counts as connected for readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from tests.e2e.slack_harness import CHANNEL, MEMBER, TEAM, SlackBot, slack_bot
from tests.fakes.slack_fake import SlackFake

pytestmark = pytest.mark.slow


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake() as f:
        yield f


@pytest.fixture
async def bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake) as b:
        yield b


@pytest.mark.parametrize("timestamp", ["abc", "", "12.5", "1e9", "-5", "١٢٣٤"])
async def test_a_non_numeric_timestamp_is_refused_with_401_and_starts_nothing(
    bot: SlackBot, fake: SlackFake, timestamp: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = urlencode(
        {"team_id": TEAM, "channel_id": CHANNEL, "user_id": MEMBER, "command": "/imagine", "text": "a fox"}
    )
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": "v0=" + "0" * 64,
    }
    with caplog.at_level(logging.ERROR):
        async with (
            aiohttp.ClientSession() as client,
            client.post(bot.events_url, data=body, headers=headers) as resp,
        ):
            assert resp.status == 401
    await bot.app.adapters["slack"].drain()  # type: ignore[attr-defined]
    assert await bot.job_rows() == []
    assert [r for r in caplog.records if r.exc_info] == []


async def test_http_mode_counts_as_connected(bot: SlackBot) -> None:
    async with aiohttp.ClientSession() as client, client.get(bot.app.web.base_url + "/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["platforms"] == {"slack": "connected"}


@pytest.fixture
async def socket_bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake, mode="socket", platform_grace_seconds=0.4) as b:
        yield b


async def _readyz(bot: SlackBot) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as client, client.get(bot.app.web.base_url + "/readyz") as resp:
        return resp.status, await resp.json()


async def _wait_readyz(bot: SlackBot, status: int, timeout: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await _readyz(bot))[0] != status:
        if loop.time() > deadline:
            raise AssertionError(f"/readyz stayed {got}")
        await asyncio.sleep(0.1)
    return got[1]


async def test_a_socket_down_beyond_the_grace_period_is_503_until_it_returns(
    socket_bot: SlackBot, fake: SlackFake
) -> None:
    assert (await _readyz(socket_bot))[0] == 200
    await fake.drop_sockets(refuse=True)

    body = await _wait_readyz(socket_bot, 503)
    assert body["platforms"]["slack"].startswith("disconnected for")

    fake.socket_refused = False  # slack_sdk retries every ping interval (10 s)
    assert (await _wait_readyz(socket_bot, 200))["platforms"] == {"slack": "connected"}
