"""Slack over HTTP, end to end: signed deliveries to the bot's `/slack/events`, the real
slack-bolt app and slack_sdk client, the engine on the sandbox vendors, and a loopback Slack
that records what users would have seen."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from PIL import Image

from bot.engine import LogReply
from tests.e2e.slack_harness import ADMIN, CHANNEL, MEMBER, OTHER, TEAM, SlackBot, slack_bot
from tests.fakes.slack_fake import PostedMessage, SlackFake
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake(admins={ADMIN}, usergroups={"S0MODS": ["U0GROUPMOD"]}) as f:
        yield f


@pytest.fixture
async def bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake, slack_moderator_group="S0MODS") as b:
        yield b


def _png(color: str = "red", size: int = 256) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


async def _imagine(bot: SlackBot, prompt: str = "a red fox", *, user: str = MEMBER) -> PostedMessage:
    delivery = await bot.slash("/imagine", prompt, user=user)
    assert delivery.status == 200
    card = await bot.card(with_button="ib:reroll:")
    return card


def _status_messages(fake: SlackFake, job_id: str) -> list[PostedMessage]:
    return [m for m in fake.messages if any(job_id in b["action_id"] for b in m.buttons())]


async def test_imagine_is_acked_within_3s_and_delivered_as_an_uploaded_file_with_buttons(
    bot: SlackBot, fake: SlackFake
) -> None:
    delivery = await bot.slash("/imagine", "a red fox --ar 16:9")
    assert delivery.status == 200
    assert delivery.elapsed < 3.0

    card = await bot.card()
    [job] = await bot.job_rows()
    assert job["state"] == "done"
    [upload] = fake.shared_uploads(CHANNEL)
    assert upload.data.startswith(b"\x89PNG")
    assert upload.filename.endswith(".png")
    assert upload.initial_comment is None  # the caption is on the card only
    # the job's one status message became the result card
    assert len([m for m in fake.messages if m.channel == CHANNEL]) == 1
    assert card.updates, "the status message was edited with chat.update"
    assert any("Queued" in u["text"] for u in card.updates)
    labels = {b["text"]["text"] for b in card.buttons()}
    assert {"Reroll", "Edit", "Make 3D"} <= labels
    assert all(b["action_id"].endswith(job["id"]) for b in card.buttons())
    assert f"<@{MEMBER}>" in card.text and "*a red fox*" in card.text


async def test_the_status_message_carries_a_cancel_button_while_the_job_runs(
    tmp_path: Path, fake: SlackFake
) -> None:
    async with slack_bot(tmp_path, fake, sandbox=None) as bot:
        await bot.slash("/imagine", "a slow fox")
        card = await bot.card()
        first_version = card.updates[0]
        actions = [
            e["action_id"] for b in first_version["blocks"] if b["type"] == "actions" for e in b["elements"]
        ]
        assert actions and actions[0].startswith("ib:cancel:")


async def test_a_bad_signature_is_refused_with_401_and_starts_nothing(bot: SlackBot, fake: SlackFake) -> None:
    body = urlencode(
        {"team_id": TEAM, "channel_id": CHANNEL, "user_id": MEMBER, "command": "/imagine", "text": "a fox"}
    )
    status, _text, _elapsed = await bot.post_signed(body, signature="v0=" + "0" * 64)
    assert status == 401
    await bot.app.adapters["slack"].drain()  # type: ignore[attr-defined]
    assert await bot.job_rows() == []
    assert fake.calls_to("chat.postMessage") == []


async def test_a_stale_timestamp_is_refused_with_401_and_starts_nothing(
    bot: SlackBot, fake: SlackFake
) -> None:
    body = urlencode(
        {"team_id": TEAM, "channel_id": CHANNEL, "user_id": MEMBER, "command": "/imagine", "text": "a fox"}
    )
    status, _text, _elapsed = await bot.post_signed(body, timestamp=int(time.time()) - 10 * 60)
    assert status == 401
    await bot.app.adapters["slack"].drain()  # type: ignore[attr-defined]
    assert await bot.job_rows() == []
    assert fake.calls_to("chat.postMessage") == []


async def test_a_retried_delivery_starts_no_second_job(bot: SlackBot, fake: SlackFake) -> None:
    first = await bot.slash("/imagine", "one fox only")
    retry = await bot.slash(
        "/imagine",
        "one fox only",
        trigger_id=first.trigger_id,
        response_url=first.response_url,
        retry_num=1,
    )
    assert retry.status == 200
    await bot.card()
    await bot.app.adapters["slack"].drain()  # type: ignore[attr-defined]
    jobs = await bot.job_rows()
    assert len(jobs) == 1
    assert len(fake.calls_to("chat.postMessage")) == 1
    assert len(fake.shared_uploads(CHANNEL)) == 1
    balance = (await bot.app.ledger.account(f"slack:{TEAM}", MEMBER)).balance
    assert balance == 90  # charged once


async def test_imagine_help_explains_the_flags_without_starting_a_job(bot: SlackBot) -> None:
    delivery = await bot.slash("/imagine", "help")
    assert delivery.status == 200
    assert "--ar" in delivery.body and "--seed" in delivery.body and "--no" in delivery.body
    assert await bot.job_rows() == []
    # Placeholders are escaped: a raw `<prompt>` is Slack link syntax and would not show.
    assert "`/imagine &lt;prompt&gt;`" in delivery.body and "<prompt>" not in delivery.body


async def test_an_unusable_saved_address_resumes_into_the_log(bot: SlackBot) -> None:
    reply = bot.app.adapters["slack"].restore({"status_ts": "1.1"})  # no channel, no user
    assert reply.ref() == {"status_ts": "1.1"}
    assert isinstance(reply, LogReply)


async def test_the_edit_button_opens_a_modal_whose_submission_edits_the_image(
    bot: SlackBot, fake: SlackFake
) -> None:
    card = await _imagine(bot)
    [parent] = await bot.job_rows()

    pressed = await bot.press(card, "ib:edit:")
    assert pressed.status == 200 and pressed.elapsed < 3.0
    view = await fake.wait_for(lambda: fake.views and fake.views[-1])
    assert view["callback_id"] == "edit_instruction"

    submitted = await bot.submit_view(view, {"instruction": "make the fox blue"})
    assert submitted.status == 200
    await fake.wait_for(lambda: len(fake.shared_uploads(CHANNEL)) == 2)
    edit = (await bot.job_rows())[-1]
    assert edit["parent_id"] == parent["id"] and edit["state"] == "done"
    edit_card = _status_messages(fake, edit["id"])[0]
    assert "make the fox blue" in edit_card.text


async def test_the_message_shortcut_edits_a_private_file_downloaded_with_the_bot_token(
    bot: SlackBot, fake: SlackFake
) -> None:
    file = fake.add_private_file("cat.png", _png("orange"))
    message = {"type": "message", "ts": "1700000000.000100", "user": OTHER, "text": "my cat", "files": [file]}

    delivery = await bot.message_shortcut(message)
    assert delivery.status == 200
    view = await fake.wait_for(lambda: fake.views and fake.views[-1])
    await bot.submit_view(view, {"instruction": "give the cat a hat"})

    [upload] = await fake.wait_for(lambda: fake.shared_uploads(CHANNEL))
    assert upload.thread_ts == message["ts"]  # the answer goes to the message's thread
    [job] = await bot.job_rows()
    assert job["state"] == "done"
    assert fake.file_downloads and all(authorised for _path, authorised in fake.file_downloads)


async def test_the_message_shortcut_on_a_message_without_an_image_says_so(
    bot: SlackBot, fake: SlackFake
) -> None:
    message = {"type": "message", "ts": "1700000000.000200", "user": OTHER, "text": "no pictures here"}
    delivery = await bot.message_shortcut(message)
    notes = await fake.wait_for(lambda: fake.responses_to(delivery.response_url or ""))
    assert "attach an image" in notes[0]["text"]
    assert fake.views == [] and await bot.job_rows() == []


async def test_edit_command_with_a_slack_file_link_uses_the_bot_token(bot: SlackBot, fake: SlackFake) -> None:
    file = fake.add_private_file("dog.png", _png("blue"))
    await bot.slash("/edit", f"<{file['url_private_download']}> make it sunny")
    await fake.wait_for(lambda: fake.shared_uploads(CHANNEL))
    [job] = await bot.job_rows()
    assert job["state"] == "done"
    assert fake.file_downloads[0][1] is True


async def test_model3d_uploads_a_glb_model(bot: SlackBot, fake: SlackFake) -> None:
    delivery = await bot.slash("/model3d", "a small wooden chair")
    assert delivery.status == 200
    card = await bot.card()
    uploads = fake.shared_uploads(CHANNEL)
    assert any(u.filename.endswith(".glb") and u.data[:4] == b"glTF" for u in uploads)
    assert "3D model" in card.text


async def test_model3d_from_a_slack_image_link(bot: SlackBot, fake: SlackFake) -> None:
    file = fake.add_private_file("vase.png", _png("green"))
    await bot.slash("/model3d", f"<{file['url_private']}>")
    await bot.card()
    [job] = await bot.job_rows()
    assert job["state"] == "done"
    assert any(u.filename.endswith(".glb") for u in fake.shared_uploads(CHANNEL))
    assert fake.file_downloads == [(file["url_private"].split("/files-pri/")[1], True)]


async def test_reroll_posts_a_new_result_as_a_child_job(bot: SlackBot, fake: SlackFake) -> None:
    card = await _imagine(bot, "a fox --seed 7")
    [parent] = await bot.job_rows()
    pressed = await bot.press(card, "ib:reroll:")
    assert pressed.status == 200 and pressed.elapsed < 3.0
    await fake.wait_for(lambda: len(fake.shared_uploads(CHANNEL)) == 2)
    child = (await bot.job_rows())[-1]
    assert child["parent_id"] == parent["id"] and child["state"] == "done"
    new_card = _status_messages(fake, child["id"])[0]
    assert re.search(r"seed 7\b", card.text) and not re.search(r"seed 7\b", new_card.text)  # a new seed


async def test_someone_else_cannot_reroll_a_members_result(bot: SlackBot, fake: SlackFake) -> None:
    card = await _imagine(bot)
    pressed = await bot.press(card, "ib:reroll:", user=OTHER)
    notes = await fake.wait_for(lambda: fake.responses_to(pressed.response_url or ""))
    assert "Only the person who started this job" in notes[0]["text"]
    assert len(await bot.job_rows()) == 1


async def test_cancel_while_running_refunds_and_edits_the_status_message(
    tmp_path: Path, fake: SlackFake
) -> None:
    async with fast_sandbox(latency=(5.0, 5.0)) as sandbox, slack_bot(tmp_path, fake, sandbox=sandbox) as bot:
        await bot.slash("/imagine", "a very slow fox")
        status = await bot.card(with_button="ib:cancel:")
        await fake.wait_for(lambda: "Generating" in status.text)  # at the vendor, not just queued
        await bot.press(status, "ib:cancel:")
        await fake.wait_for(lambda: "Cancelled" in status.text)
        assert status.buttons() == []
        [job] = await bot.job_rows()
        assert job["state"] == "cancelled"
        assert (await bot.app.ledger.account(f"slack:{TEAM}", MEMBER)).balance == 100


async def test_per_image_buttons_post_one_image_alone(tmp_path: Path, fake: SlackFake) -> None:
    async with slack_bot(tmp_path, fake, route_order="pixazo") as bot:
        await bot.slash("/imagine", "four foxes --n 4")
        card = await bot.card(with_button="ib:single:")
        [grid] = fake.shared_uploads(CHANNEL)  # the 2×2 preview, not four uploads
        assert {b["text"]["text"] for b in card.buttons()} >= {"U1", "U2", "U3", "U4"}
        await bot.press(card, "ib:single:")
        uploads = await fake.wait_for(
            lambda: len(fake.shared_uploads(CHANNEL)) == 2 and fake.shared_uploads(CHANNEL)
        )
        assert uploads[1].data != grid.data
        assert len(await bot.job_rows()) == 1  # costs nothing, starts nothing


async def test_restart_mid_job_finishes_in_the_same_status_message_and_old_buttons_work(
    tmp_path: Path, fake: SlackFake
) -> None:
    async with fast_sandbox(latency=(1.0, 1.0)) as sandbox:
        async with slack_bot(tmp_path, fake, sandbox=sandbox) as bot:
            old_card = await _imagine(bot, "the first fox")
            await bot.slash("/imagine", "the interrupted fox")

            async def submitted() -> str:
                while True:
                    rows = await bot.job_rows()
                    if len(rows) == 2 and rows[1]["state"] in ("submitted", "running"):
                        return str(rows[1]["id"])
                    await asyncio.sleep(0.05)

            interrupted = await asyncio.wait_for(submitted(), 10)
            [status] = [m for m in fake.messages if "interrupted" in m.text]
        assert not fake.shared_uploads(CHANNEL)[1:]  # stopped before delivery

        async with slack_bot(tmp_path, fake, sandbox=sandbox) as bot:
            await fake.wait_for(
                lambda: any(b["action_id"] == f"ib:reroll:{interrupted}" for b in status.buttons())
            )
            assert len(fake.shared_uploads(CHANNEL)) == 2

            pressed = await bot.press(old_card, "ib:reroll:")
            assert pressed.status == 200
            await fake.wait_for(lambda: len(fake.shared_uploads(CHANNEL)) == 3)
            states = [r["state"] for r in await bot.job_rows()]
            assert states == ["done", "done", "done"]


async def test_a_member_is_refused_quota_grant(bot: SlackBot, fake: SlackFake) -> None:
    delivery = await bot.slash("/quota", f"grant <@{OTHER}|other> 50 because", user=MEMBER)
    assert delivery.status == 200
    notes = await fake.wait_for(lambda: fake.responses_to(delivery.response_url or ""))
    assert notes[0]["text"] == "Only moderators can do that."
    assert notes[0]["response_type"] == "ephemeral"
    assert (await bot.app.ledger.account(f"slack:{TEAM}", OTHER)).balance == 100


async def test_an_admin_grants_credits_and_credits_shows_them(bot: SlackBot, fake: SlackFake) -> None:
    granted = await bot.slash("/quota", f"grant <@{MEMBER}|member> 50 contest winner", user=ADMIN)
    [note] = await fake.wait_for(lambda: fake.responses_to(granted.response_url or ""))
    assert "Granted 50 credits" in note["text"] and "150 credits" in note["text"]

    credits = await bot.slash("/credits", user=MEMBER)
    [view] = await fake.wait_for(lambda: fake.responses_to(credits.response_url or ""))
    assert view["response_type"] == "ephemeral"
    assert "You have *150 credits*" in view["text"]


async def test_a_member_of_the_moderator_group_may_grant(bot: SlackBot, fake: SlackFake) -> None:
    granted = await bot.slash("/quota", f"grant <@{MEMBER}> 5", user="U0GROUPMOD")
    [note] = await fake.wait_for(lambda: fake.responses_to(granted.response_url or ""))
    assert "Granted 5 credits" in note["text"]


async def test_rate_limited_web_api_calls_are_retried(bot: SlackBot, fake: SlackFake) -> None:
    fake.rate_limit("chat.postMessage", 1)
    fake.rate_limit("files.completeUploadExternal", 1)
    await _imagine(bot)
    for method in ("chat.postMessage", "files.completeUploadExternal"):
        assert [c.status for c in fake.calls_to(method)] == [429, 200]
    assert len(fake.shared_uploads(CHANNEL)) == 1


async def test_in_a_channel_the_bot_is_not_in_the_result_goes_to_a_dm(tmp_path: Path) -> None:
    async with SlackFake(closed_channels={"C0CLOSED"}) as fake, slack_bot(tmp_path, fake) as bot:
        delivery = await bot.slash("/imagine", "a private fox", channel="C0CLOSED")
        dm = "D" + MEMBER.lstrip("U")
        [upload] = await fake.wait_for(lambda: fake.shared_uploads(dm))
        assert upload.data.startswith(b"\x89PNG")
        notes = fake.responses_to(delivery.response_url or "")
        assert "/invite" in notes[0]["text"]


async def test_a_file_over_the_upload_limit_is_linked_with_a_small_preview(
    bot: SlackBot, fake: SlackFake
) -> None:
    bot.app.adapters["slack"].file_limit = 4_000  # type: ignore[attr-defined]
    card = await _imagine(bot)
    [preview] = fake.shared_uploads(CHANNEL)
    assert preview.filename.endswith(".jpg") and len(preview.data) <= 4_000
    assert "/media/" in card.text  # the signed link to the full-size file
