"""Runs the real bot (BotApp with the Discord adapter, real discord.py) against the loopback
Discord fake and the sandbox vendors, and waits for what a user would see."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

from bot.app import BotApp
from bot.config import Settings
from providers.sandbox.server import Sandbox
from tests.fakes.discord_fake import ALICE, DiscordFake, FakeInteraction, FakeMessage
from tests.support.core import core_settings

__all__ = [
    "balance",
    "discord_bot",
    "discord_settings",
    "private_answer",
    "wait_done",
    "wait_original",
    "wait_result",
]


def discord_settings(tmp_path: Path, fake: DiscordFake, **overrides: Any) -> Settings:
    """Core test settings plus Discord pointed at the fake."""
    values: dict[str, Any] = {
        "discord_token": fake.token,
        "discord_api_base": fake.api_base,
        "discord_gateway_url": fake.gateway_url,
        "discord_modlog_channel": fake.modlog_channel_id,
        "discord_moderator_role": "Moderators",
    }
    values.update(overrides)
    return core_settings(tmp_path, **values)


@asynccontextmanager
async def discord_bot(
    tmp_path: Path, fake: DiscordFake, sandbox: Sandbox, **overrides: Any
) -> AsyncIterator[BotApp]:
    """The bot, connected to the fake (READY received) and to the sandbox vendors."""
    settings = discord_settings(tmp_path, fake, **overrides)
    # nullcontext: BotApp uses the sandbox but leaves it running, so a restart keeps its jobs.
    async with BotApp(settings, platforms=["discord"], sandbox=nullcontext(sandbox)) as app:
        yield app


async def wait_original(
    fake: DiscordFake, ix: FakeInteraction, check: Callable[[FakeMessage], bool], timeout: float = 15.0
) -> FakeMessage:
    """The interaction's original response once `check` holds for it."""

    def ready() -> FakeMessage | None:
        msg = fake.original(ix)
        return msg if msg is not None and not msg.deleted and check(msg) else None

    try:
        result: FakeMessage = await fake.wait_for(ready, timeout)
    except TimeoutError:
        raise AssertionError(
            f"original of {ix.name or ix.custom_id} never matched; now: {fake.original(ix)!r}; "
            f"replies: {[m.content for m in fake.replies(ix)]}"
        ) from None
    return result


def _has_result(msg: FakeMessage) -> bool:
    return any(cid.startswith("ib:reroll:") for cid in msg.custom_ids)


async def wait_result(fake: DiscordFake, ix: FakeInteraction, timeout: float = 15.0) -> FakeMessage:
    """The status message once it became a result (it carries a Reroll button)."""
    return await wait_original(fake, ix, _has_result, timeout)


async def wait_done(fake: DiscordFake, ix: FakeInteraction, timeout: float = 15.0) -> FakeMessage:
    """The status message once the job ended either way (no Cancel button, not loading)."""
    return await wait_original(
        fake,
        ix,
        lambda m: (
            not m.loading and not any(c.startswith("ib:cancel:") for c in m.custom_ids) and bool(m.content)
        ),
        timeout,
    )


async def balance(app: BotApp, fake: DiscordFake, user: str = ALICE.id) -> int:
    """A member's credits in the fake's guild."""
    return (await app.ledger.account(f"discord:{fake.guild_id}", user)).balance


async def private_answer(fake: DiscordFake, ix: FakeInteraction, timeout: float = 15.0) -> FakeMessage:
    """The one message only the user sees (an ephemeral reply or followup)."""
    return await fake.wait_for(  # type: ignore[no-any-return]
        lambda: next((m for m in fake.replies(ix) if m.ephemeral and m.content), None), timeout=timeout
    )
