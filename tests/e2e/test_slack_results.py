"""Slack result cards end to end: what a finished job leaves in the channel, and the Delete
button (the real slack-bolt app and slack_sdk against the loopback Slack)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import messages
from tests.e2e.slack_harness import ADMIN, CHANNEL, MEMBER, OTHER, SlackBot, slack_bot
from tests.fakes.slack_fake import SlackFake

pytestmark = pytest.mark.slow


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake(admins={ADMIN}) as f:
        yield f


@pytest.fixture
async def bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake) as b:
        yield b


def _everything_shown(fake: SlackFake) -> list[str]:
    """Every text a member sees in the channel: message texts and upload comments."""
    texts = [m.text for m in fake.messages if m.channel == CHANNEL]
    texts += [u.initial_comment or "" for u in fake.shared_uploads(CHANNEL)]
    return texts


async def test_the_caption_is_posted_once(bot: SlackBot, fake: SlackFake) -> None:
    await bot.slash("/imagine", "a lonely lighthouse --seed 7")
    card = await bot.card()
    [job] = await bot.job_rows()

    caption_line = next(line for line in card.text.splitlines() if f"job `{job['id']}`" in line)
    assert "seed 7" in caption_line
    shown = _everything_shown(fake)
    assert sum(text.count(f"job `{job['id']}`") for text in shown) == 1, shown
    assert sum(text.count("*a lonely lighthouse*") for text in shown) == 1, shown
    [upload] = fake.shared_uploads(CHANNEL)
    assert upload.data.startswith(b"\x89PNG")


# --- the Delete button ---------------------------------------------------------------------------


async def test_the_requester_deletes_the_card_and_its_files(bot: SlackBot, fake: SlackFake) -> None:
    await bot.slash("/imagine", "a regrettable fox")
    card = await bot.card()
    assert card.button("ib:delete:")["style"] == "danger"

    delivery = await bot.press(card, "ib:delete:")
    await fake.wait_for(lambda: card.deleted)

    assert delivery.status == 200 and delivery.elapsed < 3.0
    assert fake.shared_uploads(CHANNEL) == []  # the file share went with it
    assert [m for m in fake.messages if m.channel == CHANNEL and not m.deleted] == []
    assert fake.responses_to(delivery.response_url or "") == []  # nothing to apologise for


async def test_someone_else_is_politely_refused_delete_and_the_result_stays(
    bot: SlackBot, fake: SlackFake
) -> None:
    await bot.slash("/imagine", "a member's fox", user=MEMBER)
    card = await bot.card()

    delivery = await bot.press(card, "ib:delete:", user=OTHER)
    [answer] = await fake.wait_for(lambda: fake.responses_to(delivery.response_url or ""))

    assert answer["text"] == messages.not_yours_to_delete()
    assert answer["response_type"] == "ephemeral"
    assert not card.deleted and len(fake.shared_uploads(CHANNEL)) == 1
    assert fake.calls_to("chat.delete") == fake.calls_to("files.delete") == []


async def test_a_workspace_admin_may_delete_a_members_result(bot: SlackBot, fake: SlackFake) -> None:
    await bot.slash("/imagine", "an off-topic fox", user=MEMBER)
    card = await bot.card()

    await bot.press(card, "ib:delete:", user=ADMIN)

    await fake.wait_for(lambda: card.deleted and not fake.shared_uploads(CHANNEL))
