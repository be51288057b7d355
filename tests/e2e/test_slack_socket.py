"""Slack in Socket Mode, end to end: the real AsyncSocketModeHandler connects to the fake's
websocket (through `apps.connections.open` with the app token), receives envelopes and acks
them; the work after the ack is the same as over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.slack_harness import ADMIN, CHANNEL, MEMBER, OTHER, TEAM, SlackBot, slack_bot
from tests.fakes.slack_fake import SlackFake

pytestmark = pytest.mark.slow


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake(admins={ADMIN}) as f:
        yield f


@pytest.fixture
async def bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake, mode="socket") as b:
        yield b


async def test_socket_mode_connects_with_the_app_token_and_mounts_no_http_route(
    bot: SlackBot, fake: SlackFake
) -> None:
    [opened] = fake.calls_to("apps.connections.open")
    assert opened.token == fake.app_token
    assert fake.socket_connections == 1
    async with bot._session.post(bot.events_url, data=b"x") as resp:
        assert resp.status == 404


async def test_socket_mode_imagine_is_acked_and_delivered_with_buttons(
    bot: SlackBot, fake: SlackFake
) -> None:
    delivery = await bot.slash("/imagine", "a red fox --ar 16:9")
    assert delivery.status == 200 and delivery.elapsed < 3.0
    card = await bot.card()
    [upload] = fake.shared_uploads(CHANNEL)
    assert upload.data.startswith(b"\x89PNG")
    assert {"Reroll", "Edit", "Make 3D"} <= {b["text"]["text"] for b in card.buttons()}
    [job] = await bot.job_rows()
    assert job["state"] == "done"


async def test_socket_mode_reroll_button_starts_a_child_job(bot: SlackBot, fake: SlackFake) -> None:
    await bot.slash("/imagine", "a fox")
    card = await bot.card()
    pressed = await bot.press(card, "ib:reroll:")
    assert pressed.status == 200 and pressed.elapsed < 3.0
    await fake.wait_for(lambda: len(fake.shared_uploads(CHANNEL)) == 2)
    parent, child = await bot.job_rows()
    assert child["parent_id"] == parent["id"] and child["state"] == "done"


async def test_socket_mode_edit_button_modal_submission_edits_the_image(
    bot: SlackBot, fake: SlackFake
) -> None:
    await bot.slash("/imagine", "a fox")
    card = await bot.card()
    await bot.press(card, "ib:edit:")
    view = await fake.wait_for(lambda: fake.views and fake.views[-1])
    await bot.submit_view(view, {"instruction": "make it night"})
    await fake.wait_for(lambda: len(fake.shared_uploads(CHANNEL)) == 2)
    parent, edit = await bot.job_rows()
    assert edit["parent_id"] == parent["id"] and edit["state"] == "done"


async def test_socket_mode_credits_after_an_admin_grant(bot: SlackBot, fake: SlackFake) -> None:
    refused = await bot.slash("/quota", f"grant <@{MEMBER}> 50", user=OTHER)
    [note] = await fake.wait_for(lambda: fake.responses_to(refused.response_url or ""))
    assert note["text"] == "Only moderators can do that."

    granted = await bot.slash("/quota", f"grant <@{MEMBER}|member> 50", user=ADMIN)
    await fake.wait_for(lambda: fake.responses_to(granted.response_url or ""))
    credits = await bot.slash("/credits", user=MEMBER)
    [view] = await fake.wait_for(lambda: fake.responses_to(credits.response_url or ""))
    assert "You have *150 credits*" in view["text"]
    assert (await bot.app.ledger.account(f"slack:{TEAM}", MEMBER)).balance == 150


async def test_socket_mode_help_is_the_ack_payload(bot: SlackBot) -> None:
    delivery = await bot.slash("/imagine", "help")
    assert "--ar" in delivery.body["text"]
    assert await bot.job_rows() == []
