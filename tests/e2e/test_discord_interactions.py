"""Discord end to end, the interactions around results: command descriptions, job id
autocomplete, the Delete button, the message context menus and the tree's error handler
(real discord.py in the real bot against the loopback Discord)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from PIL import Image

from adapters import discord_commands
from bot import messages
from bot.app import BotApp
from tests.e2e.discord_harness import balance, discord_bot, private_answer, wait_original, wait_result
from tests.fakes.discord_fake import ALICE, BOB, MOD, DiscordFake, FakeMessage
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


# --- job id autocomplete -----------------------------------------------------------------------


def _job_id(msg: FakeMessage) -> str:
    return msg.custom_ids[0].split(":")[2]


async def test_show_suggests_the_users_own_finished_jobs_newest_first(bot: BotApp, fake: DiscordFake) -> None:
    fox = _job_id(await wait_result(fake, await fake.slash("imagine", {"prompt": "a red fox"})))
    owl = _job_id(await wait_result(fake, await fake.slash("imagine", {"prompt": "a snowy owl"})))
    await wait_result(fake, await fake.slash("imagine", {"prompt": "bob's cat"}, user=BOB))

    choices = await fake.autocomplete("show", {"job_id": ""}, focused="job_id")

    assert [c["value"] for c in choices] == [owl, fox]
    assert "a snowy owl" in choices[0]["name"] and owl in choices[0]["name"]
    assert all(len(c["name"]) <= 100 for c in choices)
    typed = await fake.autocomplete("show", {"job_id": "fox"}, focused="job_id")
    assert [c["value"] for c in typed] == [fox]


async def test_cancel_suggests_only_jobs_still_running(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox(latency=(3.0, 3.0)) as slow, discord_bot(tmp_path, fake, slow):
        ix = await fake.slash("imagine", {"prompt": "a slow tortoise"})
        running = _job_id(await wait_original(fake, ix, lambda m: bool(m.custom_ids)))

        offered = await fake.autocomplete("cancel", {"job_id": ""}, focused="job_id")
        shown = await fake.autocomplete("show", {"job_id": ""}, focused="job_id")

        assert [c["value"] for c in offered] == [running]
        assert "a slow tortoise" in offered[0]["name"]
        assert shown == []  # nothing finished yet
        await wait_result(fake, ix)


# --- the Delete button ---------------------------------------------------------------------------


async def test_the_requester_deletes_their_result(bot: BotApp, fake: DiscordFake) -> None:
    result = await wait_result(fake, await fake.slash("imagine", {"prompt": "a regrettable fox"}))
    assert [b["label"] for b in result.buttons][-1] == "Delete"

    ix = await fake.click(result.id, result.button("Delete")["custom_id"])
    await fake.wait_for(lambda: result.deleted)

    assert fake.channel_messages() == []
    assert [m for m in fake.replies(ix) if m.ephemeral] == []  # nothing else to say


async def test_someone_else_is_politely_refused_delete_and_the_result_stays(
    bot: BotApp, fake: DiscordFake
) -> None:
    result = await wait_result(fake, await fake.slash("imagine", {"prompt": "alice's fox"}))

    ix = await fake.click(result.id, result.button("Delete")["custom_id"], user=BOB)
    answer = await private_answer(fake, ix)

    assert answer.content == messages.not_yours_to_delete()
    assert not result.deleted and result.files


async def test_a_moderator_may_delete_a_members_result(bot: BotApp, fake: DiscordFake) -> None:
    result = await wait_result(fake, await fake.slash("imagine", {"prompt": "an off-topic fox"}))

    await fake.click(result.id, result.button("Delete")["custom_id"], user=MOD)

    await fake.wait_for(lambda: result.deleted)


async def test_delete_on_one_image_of_a_grid_removes_only_that_message(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    async with discord_bot(tmp_path, fake, sandbox, route_order="pixazo"):  # type: ignore[arg-type]
        grid = await wait_result(fake, await fake.slash("imagine", {"prompt": "four foxes", "count": 4}))
        single = await wait_result(fake, await fake.click(grid.id, grid.button("U2")["custom_id"]))

        await fake.click(single.id, single.button("Delete")["custom_id"])
        await fake.wait_for(lambda: single.deleted)

        assert not grid.deleted


# --- message context menus -----------------------------------------------------------------------


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


async def test_both_message_menus_are_synced_as_message_commands(bot: BotApp, fake: DiscordFake) -> None:
    menus = {c["name"]: c for c in fake.commands["global"] if c.get("type") == 3}

    assert sorted(menus) == sorted([messages.discord_edit_menu(), messages.discord_model3d_menu()])


async def test_edit_image_on_a_members_picture_asks_for_the_instruction_then_edits_it(
    bot: BotApp, fake: DiscordFake
) -> None:
    photo = fake.add_attachment("cat.png", png())
    post = fake.user_message(BOB, "look at my cat", attachments=(photo,))

    opened = await fake.message_command(messages.discord_edit_menu(), post, user=ALICE)
    await fake.wait_for(lambda: opened.modal)
    ix = await fake.submit_modal(opened, {"instruction": "give it a tiny hat"})
    edited = await wait_result(fake, ix)

    assert "Edit ·" in edited.content and "give it a tiny hat" in edited.content
    assert edited.files[0].data.startswith(PNG_MAGIC)
    assert await balance(bot, fake) < 100 and await balance(bot, fake, BOB.id) == 100


async def test_make_3d_model_from_a_pasted_image_link(bot: BotApp, fake: DiscordFake) -> None:
    linked = fake.add_attachment("vase.png", png(96, 96))
    post = fake.user_message(BOB, linked.url, embeds=(fake.image_embed(linked),))

    ix = await fake.message_command(messages.discord_model3d_menu(), post, user=ALICE)
    model = await wait_result(fake, ix)

    assert "3D model" in model.content
    assert any(f.filename.endswith(".glb") and f.data[:4] == b"glTF" for f in model.files)


async def test_make_3d_model_from_the_bots_own_result(bot: BotApp, fake: DiscordFake) -> None:
    result = await wait_result(fake, await fake.slash("imagine", {"prompt": "a teapot"}))

    ix = await fake.message_command(messages.discord_model3d_menu(), result, user=ALICE)
    model = await wait_result(fake, ix)

    assert any(f.data[:4] == b"glTF" for f in model.files)


async def test_a_menu_on_a_message_without_an_image_says_so_privately(bot: BotApp, fake: DiscordFake) -> None:
    post = fake.user_message(BOB, "just words")

    for menu in (messages.discord_edit_menu(), messages.discord_model3d_menu()):
        ix = await fake.message_command(menu, post, user=ALICE)
        answer = await private_answer(fake, ix)
        assert answer.content == messages.no_image_in_message()
        assert ix.modal is None
    assert await balance(bot, fake) == 100


async def test_an_edit_dialog_opened_before_a_restart_asks_to_open_it_again(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    photo = fake.add_attachment("cat.png", png())
    post = fake.user_message(BOB, attachments=(photo,))
    async with discord_bot(tmp_path, fake, sandbox):  # type: ignore[arg-type]
        opened = await fake.message_command(messages.discord_edit_menu(), post)
        await fake.wait_for(lambda: opened.modal)

    async with discord_bot(tmp_path, fake, sandbox) as app:  # type: ignore[arg-type]
        ix = await fake.submit_modal(opened, {"instruction": "give it a hat"})
        answer = await private_answer(fake, ix)

        assert answer.content == messages.edit_dialog_expired()
        assert await balance(app, fake) == 100
