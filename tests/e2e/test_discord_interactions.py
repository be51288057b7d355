"""Discord end to end, the interactions around results: command descriptions, job id
autocomplete, the Delete button, the message context menus and the tree's error handler
(real discord.py in the real bot against the loopback Discord)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from adapters import discord_commands
from bot import messages
from bot.app import BotApp
from tests.e2e.discord_harness import discord_bot
from tests.fakes.discord_fake import DiscordFake, FakeInteraction, FakeMessage
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


async def private_answer(fake: DiscordFake, ix: FakeInteraction) -> FakeMessage:
    """The one message only the user sees (an ephemeral reply or followup)."""
    return await fake.wait_for(  # type: ignore[no-any-return]
        lambda: next((m for m in fake.replies(ix) if m.ephemeral and m.content), None)
    )


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


# --- the tree's error handler ----------------------------------------------------------------


async def test_an_unexpected_error_in_a_command_gets_a_polite_private_answer_and_a_log_line(
    bot: BotApp, fake: DiscordFake, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object, **__: object) -> NoReturn:
        raise RuntimeError("boom: an internal detail")

    monkeypatch.setattr(discord_commands, "imagine_command", broken)
    caplog.set_level(logging.INFO)

    ix = await fake.slash("imagine", {"prompt": "a fox"})
    answer = await private_answer(fake, ix)

    assert answer.content == messages.something_went_wrong()
    assert "boom" not in answer.content and "Traceback" not in answer.content
    [line] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.name == "adapters.discord_bot" and "imagine" in line.getMessage()
    assert line.exc_info is not None and "boom" in str(line.exc_info[1])
    assert await bot.engine.store.count_unfinished() == {}  # nothing was started or charged
