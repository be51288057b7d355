"""Chat members cannot reach the bot's disk, and their text reaches no vendor with control or
invisible characters; broken characters get one clear message. The real engine on the sandbox."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from bot import messages
from bot.app import BotApp
from bot.commands import Actor, EditCommand, ImageRef, ImagineCommand, Model3DCommand
from bot.errors import InvalidInputError
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app

SLACK_MEMBER = Actor(platform="slack", tenant_id="T1", user_id="U1", display_name="ann")
DISCORD_MEMBER = Actor(platform="discord", tenant_id="1", user_id="2", display_name="bob")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[BotApp]:
    async with running_app(tmp_path, sandbox=fast_sandbox()) as running:
        yield running


@pytest.fixture
def secret_png(tmp_path: Path) -> Path:
    """A real image on the bot's disk that no chat member should be able to use."""
    path = tmp_path / "secret" / "private.png"
    path.parent.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


async def _untouched(app: BotApp, actor: Actor) -> None:
    account = await app.ledger.account(actor.tenant, actor.user_id)
    assert (account.balance, account.held) == (100, 0)
    assert await app.engine.store.recent(actor.tenant, actor.user_id) == []
    assert not (app.media.files_dir / "inputs").exists()  # nothing was read and stored


async def _refusal(app: BotApp, actor: Actor, command: EditCommand | Model3DCommand) -> str:
    with pytest.raises(InvalidInputError) as info:
        await app.engine.submit(actor, command, RecordingReply())
    await _untouched(app, actor)
    return str(info.value)


# --- local paths -----------------------------------------------------------------------------


@pytest.mark.parametrize("actor", [SLACK_MEMBER, DISCORD_MEMBER], ids=["slack", "discord"])
async def test_a_chat_member_cannot_edit_a_file_on_the_bots_disk(
    app: BotApp, secret_png: Path, actor: Actor
) -> None:
    text = await _refusal(app, actor, EditCommand(image=ImageRef(path=str(secret_png)), instruction="night"))
    assert text == messages.local_path_refused()


async def test_a_chat_member_cannot_make_3d_from_a_file_on_the_bots_disk(
    app: BotApp, secret_png: Path
) -> None:
    text = await _refusal(app, SLACK_MEMBER, Model3DCommand(image=ImageRef(path=str(secret_png))))
    assert text == messages.local_path_refused()


async def test_the_refusal_does_not_tell_whether_the_path_exists(app: BotApp, secret_png: Path) -> None:
    existing = await _refusal(
        app, SLACK_MEMBER, EditCommand(image=ImageRef(path=str(secret_png)), instruction="night")
    )
    missing = await _refusal(
        app, SLACK_MEMBER, EditCommand(image=ImageRef(path=str(secret_png) + ".nope"), instruction="night")
    )
    assert existing == missing
    assert "private.png" not in existing


async def test_the_console_may_still_name_a_local_file(app: BotApp, secret_png: Path) -> None:
    reply = RecordingReply()
    ticket = await app.engine.submit(
        MEMBER, EditCommand(image=ImageRef(path=str(secret_png)), instruction="night"), reply
    )
    await reply.wait()
    assert reply.results and reply.results[0].job_id == ticket.job_id


async def test_a_chat_members_edit_button_still_uses_the_bots_own_result_file(app: BotApp) -> None:
    first = RecordingReply()
    ticket = await app.engine.submit(SLACK_MEMBER, ImagineCommand(prompt="a red fox"), first)
    await first.wait()
    assert first.results
    edit = RecordingReply()
    await app.engine.edit_result(SLACK_MEMBER, ticket.job_id, None, "make it night", edit)
    await edit.wait()
    assert edit.results, edit.failures


# --- broken and invisible characters ---------------------------------------------------------


async def test_imagine_with_a_lone_surrogate_gets_the_clear_message(app: BotApp) -> None:
    with pytest.raises(InvalidInputError, match="broken characters"):
        await app.engine.submit(SLACK_MEMBER, ImagineCommand(prompt="a fox \ud800"), RecordingReply())
    await _untouched(app, SLACK_MEMBER)


@pytest.mark.parametrize("job_id", ["\ud800", "3f9a\udfff"])
async def test_show_with_a_lone_surrogate_gets_the_clear_message(app: BotApp, job_id: str) -> None:
    with pytest.raises(InvalidInputError, match="broken characters"):
        await app.engine.show(DISCORD_MEMBER, job_id)


@pytest.mark.parametrize("job_id", ["\ud800", "3f9a\udfff"])
async def test_cancel_with_a_lone_surrogate_gets_the_clear_message(app: BotApp, job_id: str) -> None:
    with pytest.raises(InvalidInputError, match="broken characters"):
        await app.engine.cancel(DISCORD_MEMBER, job_id)


async def test_a_job_id_with_invisible_characters_still_finds_the_job(app: BotApp) -> None:
    reply = RecordingReply()
    ticket = await app.engine.submit(SLACK_MEMBER, ImagineCommand(prompt="a red fox"), reply)
    await reply.wait()
    shown = await app.engine.show(SLACK_MEMBER, f"\u200e{ticket.job_id}\u202c ")
    assert shown.job_id == ticket.job_id


async def test_control_and_bidi_characters_never_reach_the_vendor(app: BotApp) -> None:
    reply = RecordingReply()
    prompt = "a red\x00 fox\x1b[2J in \u202esnow\u2066 --no blur\u200f, text\x07"
    await app.engine.submit(SLACK_MEMBER, ImagineCommand(prompt=prompt), reply)
    await reply.wait()
    assert reply.results, reply.failures
    [job] = await app.engine.store.recent(SLACK_MEMBER.tenant, SLACK_MEMBER.user_id)
    assert (job.spec.prompt, job.spec.negative) == ("a red fox[2J in snow", "blur, text")
    sent = [j.request for emu in app.sandbox.emulators.values() for j in emu.jobs.values()]
    assert sent
    wire = json.dumps(sent, ensure_ascii=False)
    assert not any(ch in wire for ch in "\x00\x1b\x07\u202e\u2066\u200f")
