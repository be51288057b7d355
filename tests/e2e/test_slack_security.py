"""What a chat member types cannot ping anyone or reach the bot's disk: the real bot against the
loopback Slack (and Discord) fakes."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot import messages
from tests.e2e.discord_harness import discord_bot, wait_result
from tests.e2e.slack_harness import ADMIN, CHANNEL, MEMBER, OTHER, TEAM, SlackBot, slack_bot
from tests.fakes.discord_fake import ALICE, BOB, DiscordFake
from tests.fakes.slack_fake import PostedMessage, SlackFake
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow

PINGS = f"<!channel> <!here> <!everyone> <@{OTHER}> <#C0002> <!subteam^S0MODS>"


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake(admins={ADMIN}) as f:
        yield f


@pytest.fixture
async def bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake) as b:
        yield b


def _everything_posted(fake: SlackFake, card: PostedMessage) -> list[str]:
    texts = [card.text, json.dumps(card.blocks)]
    texts += [u["text"] + json.dumps(u.get("blocks")) for u in card.updates]
    texts += [u.initial_comment or "" for u in fake.shared_uploads(CHANNEL)]
    return texts


def _no_live_markup(text: str) -> None:
    for token in PINGS.split():
        assert token not in text, f"{token} was posted unescaped in {text!r}"


async def test_mentions_typed_into_a_prompt_are_escaped_in_the_headline_and_card(
    bot: SlackBot, fake: SlackFake
) -> None:
    await bot.slash("/imagine", f"a red fox {PINGS}")
    card = await bot.card()
    posted = _everything_posted(fake, card)
    assert any("&lt;!channel&gt;" in t for t in posted)
    for text in posted:
        _no_live_markup(text)
    assert card.text.startswith(f"<@{MEMBER}>")  # the bot's own mention of the requester stays


async def test_mentions_echoed_in_an_error_are_escaped(bot: SlackBot, fake: SlackFake) -> None:
    delivery = await bot.slash("/imagine", "a fox --ar <!channel>")
    [note] = await fake.wait_for(lambda: fake.responses_to(delivery.response_url or ""))
    assert "&lt;!channel&gt;" in note["text"]
    _no_live_markup(note["text"])


async def test_a_moderators_answer_still_mentions_the_member(bot: SlackBot, fake: SlackFake) -> None:
    granted = await bot.slash("/quota", f"grant <@{MEMBER}> 5 for <!channel>", user=ADMIN)
    [note] = await fake.wait_for(lambda: fake.responses_to(granted.response_url or ""))
    assert f"Granted 5 credits to <@{MEMBER}>." in note["text"]
    assert messages.MENTION_MARK not in note["text"]


async def test_a_slack_member_cannot_edit_a_file_on_the_bots_disk(
    bot: SlackBot, fake: SlackFake, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "green").save(buf, "PNG")
    secret.write_bytes(buf.getvalue())
    answers = []
    for path in (secret, tmp_path / "missing.png"):
        delivery = await bot.slash("/edit", f"{path} make it night")
        [note] = await fake.wait_for(lambda d=delivery: fake.responses_to(d.response_url or ""))
        answers.append(note["text"])
    assert answers[0] == answers[1] == messages.local_path_refused()
    assert await bot.job_rows() == []
    assert fake.shared_uploads() == []
    assert (await bot.app.ledger.account(f"slack:{TEAM}", MEMBER)).balance == 100


# --- Discord: nothing but the requester may ever be pinged ----------------------------------------


async def test_discord_messages_allow_no_mention_but_the_requester(tmp_path: Path) -> None:
    async with DiscordFake() as dfake, fast_sandbox() as sandbox, discord_bot(tmp_path, dfake, sandbox):
        ix = await dfake.slash("imagine", {"prompt": f"a fox @everyone @here <@{BOB.id}>"})
        delivered = await wait_result(dfake, ix)
        assert BOB.id not in delivered.mentions
        bodies: list[dict[str, Any]] = [
            r.body for r in dfake.requests if isinstance(r.body, dict) and "@everyone" in str(r.body)
        ]
        assert bodies
        for body in bodies:
            allowed = body.get("allowed_mentions")
            assert allowed is not None, body
            assert allowed.get("parse", []) == []
            assert {str(u) for u in allowed.get("users", [])} <= {ALICE.id}
