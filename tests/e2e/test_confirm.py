"""Expensive jobs ask first, end to end: real discord.py and slack-bolt in the real bot against
the loopback fakes. A moderator sets `/quota confirm-above`; a request above it shows its cost
with Confirm / Cancel and holds nothing; Confirm turns the prompt into the job's status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import messages
from bot.app import BotApp
from tests.e2e.discord_harness import discord_bot, wait_original, wait_result
from tests.e2e.slack_harness import ADMIN, CHANNEL, MEMBER, OTHER, TEAM, slack_bot
from tests.fakes.discord_fake import ALICE, BOB, MOD, DiscordFake, FakeInteraction, FakeMessage
from tests.fakes.slack_fake import SlackFake
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow


async def _held(app: BotApp) -> tuple[int, int]:
    """(hold rows, job rows): both zero while a request waits for Confirm."""
    holds = await app.db.fetchall("SELECT job_id FROM holds")
    jobs = await app.db.fetchall("SELECT id FROM jobs")
    return len(holds), len(jobs)


# --- Discord -----------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[DiscordFake]:
    async with DiscordFake() as f:
        yield f
        assert [ix.name or ix.custom_id for ix in f.unanswered()] == []


async def _private(fake: DiscordFake, ix: FakeInteraction) -> FakeMessage:
    return await fake.wait_for(  # type: ignore[no-any-return]
        lambda: next((m for m in fake.replies(ix) if m.ephemeral and m.content), None)
    )


async def _discord_threshold(fake: DiscordFake, amount: int) -> str:
    ix = await fake.slash("quota confirm-above", {"amount": amount}, user=MOD)
    return (await _private(fake, ix)).content


async def _prompt(fake: DiscordFake, prompt: str = "two foxes") -> tuple[FakeInteraction, FakeMessage]:
    ix = await fake.slash("imagine", {"prompt": prompt, "count": 2})
    msg = await wait_original(fake, ix, lambda m: any(c.startswith("ib:confirm:") for c in m.custom_ids))
    return ix, msg


async def _discord_balance(app: BotApp, fake: DiscordFake, user: str = ALICE.id) -> int:
    return (await app.ledger.account(f"discord:{fake.guild_id}", user)).balance


async def test_discord_confirm_turns_the_prompt_into_the_job(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox() as sb, discord_bot(tmp_path, fake, sb) as app:
        assert await _discord_threshold(fake, 15) == messages.mod_confirm_above(15)
        ix, prompt = await _prompt(fake)

        assert "This will cost **20 credits** (you have 100 credits)" in prompt.content
        assert [b["label"] for b in prompt.buttons] == ["Confirm", "Cancel"]
        assert [b["style"] for b in prompt.buttons] == [3, 4]  # success, danger
        assert await _held(app) == (0, 0)

        stranger = await fake.click(prompt.id, prompt.button("Confirm")["custom_id"], user=BOB)
        assert (await _private(fake, stranger)).content == messages.confirm_not_yours()
        assert await _held(app) == (0, 0)

        confirm = prompt.button("Confirm")["custom_id"]
        clicks = await asyncio.gather(fake.click(prompt.id, confirm), fake.click(prompt.id, confirm))
        result = await wait_result(fake, ix)  # the same message: prompt → queued → result

        assert result.id == prompt.id and len(result.files) >= 1
        assert any(h.endswith(messages.queued(1, 20)) for h in result.history)
        assert await _held(app) == (1, 1)  # two clicks, one job
        assert await _discord_balance(app, fake) == 80
        await fake.wait_for(lambda: all(c.acked for c in clicks))


async def test_discord_cancel_on_a_prompt_charges_nothing(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox() as sb, discord_bot(tmp_path, fake, sb) as app:
        await _discord_threshold(fake, 15)
        ix, prompt = await _prompt(fake)

        await fake.click(prompt.id, prompt.button("Cancel")["custom_id"])

        done = await wait_original(fake, ix, lambda m: messages.confirm_declined() in m.content)
        assert done.custom_ids == []  # the buttons are gone
        assert await _held(app) == (0, 0)
        assert await _discord_balance(app, fake) == 100


async def test_discord_confirm_after_a_restart_still_starts_the_job(
    tmp_path: Path, fake: DiscordFake
) -> None:
    async with fast_sandbox() as sb:
        async with discord_bot(tmp_path, fake, sb):
            await _discord_threshold(fake, 15)
            ix, prompt = await _prompt(fake, "asked before the restart")
        async with discord_bot(tmp_path, fake, sb) as app:
            await fake.click(prompt.id, prompt.button("Confirm")["custom_id"])
            result = await wait_result(fake, ix)
            assert "asked before the restart" in result.content
            assert await _discord_balance(app, fake) == 80


async def test_discord_an_expired_prompt_says_so(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox() as sb, discord_bot(tmp_path, fake, sb) as app:
        await _discord_threshold(fake, 15)
        ix, prompt = await _prompt(fake)
        confirmations = app.engine.confirmations
        later = confirmations.clock() + confirmations.ttl + 1
        confirmations.clock = lambda: later

        click = await fake.click(prompt.id, prompt.button("Confirm")["custom_id"])

        assert (await _private(fake, click)).content == messages.confirm_expired()
        expired = await wait_original(fake, ix, lambda m: messages.confirm_expired() in m.content)
        assert expired.custom_ids == []
        assert await _held(app) == (0, 0)


async def test_discord_reroll_above_the_threshold_asks_first(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox() as sb, discord_bot(tmp_path, fake, sb) as app:
        first = await wait_result(fake, await fake.slash("imagine", {"prompt": "a lighthouse", "count": 2}))
        await _discord_threshold(fake, 15)

        ix = await fake.click(first.id, first.button("Reroll")["custom_id"])
        prompt = await wait_original(
            fake, ix, lambda m: any(c.startswith("ib:confirm:") for c in m.custom_ids)
        )
        assert await _held(app) == (1, 1)  # only the first job's

        await fake.click(prompt.id, prompt.button("Confirm")["custom_id"])
        again = await wait_result(fake, ix)
        assert "a lighthouse" in again.content
        assert await _discord_balance(app, fake) == 60


async def test_discord_settings_view_shows_the_threshold(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox() as sb, discord_bot(tmp_path, fake, sb):
        await _discord_threshold(fake, 40)
        view = await _private(fake, await fake.slash("quota settings", user=MOD))
        assert "Ask before jobs over: 40 credits" in view.content
        assert await _discord_threshold(fake, 0) == messages.mod_confirm_above(None)


# --- Slack -------------------------------------------------------------------------------------


async def test_slack_confirm_and_cancel_on_the_prompt(tmp_path: Path) -> None:
    async with SlackFake(admins={ADMIN}) as sf, slack_bot(tmp_path, sf) as bot:
        set_it = await bot.slash("/quota", "confirm-above 15", user=ADMIN)
        [note] = await sf.wait_for(lambda: sf.responses_to(set_it.response_url or ""))
        assert "over 15 credits" in note["text"]

        await bot.slash("/imagine", "two foxes --n 2")
        prompt = await bot.card(with_button="ib:confirm:")
        assert "This will cost *20 credits* (you have 100 credits)" in prompt.blocks[0]["text"]["text"]
        assert prompt.button("ib:confirm:").get("style") == "primary"
        request = prompt.button("ib:confirm:")["value"]
        assert await _held(bot.app) == (0, 0)

        refused = await bot.press(prompt, "ib:confirm:", user=OTHER)
        [answer] = await sf.wait_for(lambda: sf.responses_to(refused.response_url or ""))
        assert messages.confirm_not_yours() in answer["text"]

        pressed = await bot.press(prompt, "ib:confirm:")
        assert pressed.status == 200 and pressed.elapsed < 3.0
        await sf.wait_for(lambda: len(sf.shared_uploads(CHANNEL)) == 1)
        [job] = await bot.job_rows()
        assert job["id"] == request and job["state"] == "done"
        card = sf.message(CHANNEL, prompt.ts)  # the prompt message became the result card
        assert any(b["action_id"].startswith("ib:reroll:") for b in card.buttons())
        balance = await bot.app.ledger.account(f"slack:{TEAM}", MEMBER)
        assert balance.balance == 80

        await bot.slash("/imagine", "two owls --n 2")
        second = await bot.card(with_button="ib:confirm:")
        await bot.press(second, "ib:cancel:")
        await sf.wait_for(
            lambda: messages.confirm_declined() in sf.message(CHANNEL, second.ts).blocks[0]["text"]["text"]
        )
        assert sf.message(CHANNEL, second.ts).buttons() == []
        assert len(await bot.job_rows()) == 1
