"""Discord end to end, the interactions around results: command descriptions, job id
autocomplete, the Delete button, the message context menus and the tree's error handler
(real discord.py in the real bot against the loopback Discord)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

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
        # Whatever a test did, the bot answered every interaction within Discord's 3 seconds.
        assert [ix.name or ix.custom_id for ix in f.unanswered()] == []
        assert max(f.ack_latencies(), default=0.0) < 3.0


@pytest.fixture
async def sandbox() -> AsyncIterator[object]:
    async with fast_sandbox() as sb:
        yield sb


@pytest.fixture
async def bot(tmp_path: Path, fake: DiscordFake, sandbox: object) -> AsyncIterator[BotApp]:
    async with discord_bot(tmp_path, fake, sandbox) as app:  # type: ignore[arg-type]
        yield app


def _options(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for opt in node.get("options") or []:
        here = f"{path} {opt['name']}"
        if opt["type"] in (1, 2):  # a subcommand or group: its options are what users fill
            yield from _options(opt, here)
        else:
            yield here, opt


# --- the synced command set ------------------------------------------------------------------


async def test_every_synced_option_has_a_real_description(bot: BotApp, fake: DiscordFake) -> None:
    synced = fake.commands["global"]
    options = [(path, opt) for cmd in synced for path, opt in _options(cmd, cmd["name"])]

    assert len([p for p, _ in options if p.startswith("quota ")]) >= 24
    undescribed = [path for path, opt in options if (opt.get("description") or "").strip() in ("", "…")]
    assert undescribed == []
