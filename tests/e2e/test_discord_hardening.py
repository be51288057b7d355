"""Discord end to end, hostile wire text: a lone UTF-16 surrogate escape (`\\ud800`) in an
interaction reaches the core and gets the one clear message, on every route, while the gateway
stays up (real discord.py in the real bot against the loopback Discord)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import messages
from bot.app import BotApp
from tests.e2e.discord_harness import balance, discord_bot, private_answer, wait_result
from tests.fakes.discord_fake import (
    ALICE,
    MOD,
    DiscordFake,
    FakeUser,
    RawJSON,
)
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow

#: JSON text with an escape for half of a surrogate pair: valid JSON, but no valid Unicode
BROKEN = RawJSON(r'"a fox \ud800 at dawn"')


@pytest.fixture
async def fake() -> AsyncIterator[DiscordFake]:
    async with DiscordFake() as f:
        yield f
        # Whatever a test did, the bot answered every interaction within Discord's 3 seconds.
        assert [ix.name or ix.custom_id for ix in f.unanswered()] == []


@pytest.fixture
async def sandbox() -> AsyncIterator[object]:
    async with fast_sandbox() as sb:
        yield sb


@pytest.fixture
async def bot(tmp_path: Path, fake: DiscordFake, sandbox: object) -> AsyncIterator[BotApp]:
    async with discord_bot(tmp_path, fake, sandbox) as app:  # type: ignore[arg-type]
        yield app


async def test_a_surrogate_escape_in_imagine_gets_the_clear_message_and_the_gateway_stays_up(
    bot: BotApp, fake: DiscordFake
) -> None:
    ix = await fake.slash("imagine", {"prompt": BROKEN})
    answer = await private_answer(fake, ix)

    assert answer.content == messages.unreadable_characters()
    assert await balance(bot, fake) == 100
    assert await bot.engine.store.count_unfinished() == {}
    # The same connection goes on: no reconnect, no resume, and the next command just works.
    assert (fake.identifies, fake.resumes) == (1, 0)
    await wait_result(fake, await fake.slash("imagine", {"prompt": "a fox at dawn"}))
    assert (fake.identifies, fake.resumes) == (1, 0)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("show", {"job_id": BROKEN}),
        ("cancel", {"job_id": BROKEN}),
        ("model3d", {"prompt": BROKEN}),
    ],
)
async def test_a_surrogate_escape_in_any_command_gets_the_clear_message(
    bot: BotApp, fake: DiscordFake, name: str, options: dict[str, object]
) -> None:
    ix = await fake.slash(name, options)

    assert (await private_answer(fake, ix)).content == messages.unreadable_characters()
    assert await balance(bot, fake) == 100


async def test_a_surrogate_escape_in_a_quota_reason_gets_the_clear_message_and_changes_nothing(
    bot: BotApp, fake: DiscordFake
) -> None:
    ix = await fake.slash("quota grant", {"member": ALICE, "amount": 50, "reason": BROKEN}, user=MOD)
    answer = await private_answer(fake, ix)

    assert answer.content == messages.unreadable_characters()
    assert await balance(bot, fake) == 100
    assert fake.channel_messages(fake.modlog_channel_id) == []


# --- a broken display name: buttons and autocomplete build the actor too --------------------

#: a member whose display name arrives with half of a surrogate pair
EVE = FakeUser("1000000000000000005", "eve", global_name=RawJSON(r'"Eve \udc00"'))


async def test_a_button_press_from_a_member_with_a_broken_name_gets_the_clear_message(
    bot: BotApp, fake: DiscordFake
) -> None:
    result = await wait_result(fake, await fake.slash("imagine", {"prompt": "a fox"}))
    [reroll] = [c for c in result.custom_ids if c.startswith("ib:reroll:")]

    ix = await fake.click(result.id, reroll, user=EVE)

    assert (await private_answer(fake, ix)).content == messages.unreadable_characters()
    assert await balance(bot, fake, EVE.id) == 100  # nothing was charged
    assert await bot.engine.store.count_unfinished() == {}


async def test_job_id_autocomplete_for_a_member_with_a_broken_name_offers_nothing(
    bot: BotApp, fake: DiscordFake
) -> None:
    assert await fake.autocomplete("show", {"job_id": ""}, focused="job_id", user=EVE) == []
