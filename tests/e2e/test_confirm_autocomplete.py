"""Discord's `/cancel` autocomplete offers the member's requests still waiting for Confirm
(real discord.py in the real bot against the loopback Discord)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import messages
from tests.e2e.discord_harness import discord_bot, wait_original
from tests.fakes.discord_fake import ALICE, BOB, MOD, DiscordFake, FakeMessage, FakeUser
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
async def fake() -> AsyncIterator[DiscordFake]:
    async with DiscordFake() as f:
        yield f


async def _ask(fake: DiscordFake, prompt: str, user: FakeUser = ALICE) -> str:
    """A request above the threshold; the id its prompt's Confirm button carries."""
    ix = await fake.slash("imagine", {"prompt": prompt, "count": 2}, user=user)
    msg: FakeMessage = await wait_original(
        fake, ix, lambda m: any(c.startswith("ib:confirm:") for c in m.custom_ids)
    )
    return msg.button("Confirm")["custom_id"].split(":")[2]


async def test_cancel_suggests_the_members_requests_waiting_for_confirmation(
    tmp_path: Path, fake: DiscordFake
) -> None:
    async with fast_sandbox() as sb, discord_bot(tmp_path, fake, sb) as app:
        mod = await fake.slash("quota confirm-above", {"amount": 15}, user=MOD)
        await fake.wait_for(lambda: any(m.content for m in fake.replies(mod)))
        first = await _ask(fake, "two red foxes")
        second = await _ask(fake, "two snowy owls")
        await _ask(fake, "bob's two cats", user=BOB)

        offered = await fake.autocomplete("cancel", {"job_id": ""}, focused="job_id")
        typed = await fake.autocomplete("cancel", {"job_id": "owl"}, focused="job_id")
        shown = await fake.autocomplete("show", {"job_id": ""}, focused="job_id")

        assert [c["value"] for c in offered] == [second, first]  # newest first, Bob's not
        label = offered[0]["name"]
        assert second in label and "two snowy owls" in label and messages.confirm_waiting() in label
        assert all(len(c["name"]) <= 100 for c in offered)
        assert [c["value"] for c in typed] == [second]
        assert shown == []  # nothing to show: no job has started

        ix = await fake.slash("cancel", {"job_id": second})
        await fake.wait_for(lambda: any(messages.confirm_declined() in m.content for m in fake.replies(ix)))
        after = await fake.autocomplete("cancel", {"job_id": ""}, focused="job_id")
        assert [c["value"] for c in after] == [first]  # a declined request is no longer offered

        confirmations = app.engine.confirmations
        later = confirmations.clock() + confirmations.ttl + 1
        confirmations.clock = lambda: later
        assert await fake.autocomplete("cancel", {"job_id": ""}, focused="job_id") == []  # expired
