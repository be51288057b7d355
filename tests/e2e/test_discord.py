"""Discord end to end: the real discord.py client in the real bot (BotApp, engine, ledger,
sandbox vendors) against the loopback Discord fake, which enforces Discord's rules."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from adapters.discord_bot import sync_commands
from bot import messages
from bot.app import BotApp
from bot.errors import ConfigError
from bot.reply import JobPhase
from tests.e2e.discord_harness import (
    balance,
    discord_bot,
    discord_settings,
    private_answer,
    wait_done,
    wait_original,
    wait_result,
)
from tests.fakes.discord_fake import ALICE, BOB, MOD, ROLE_MOD, DiscordFake, FakeMessage
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


async def imagine(fake: DiscordFake, prompt: str = "a red fox", **options: object) -> FakeMessage:
    ix = await fake.slash("imagine", {"prompt": prompt, **options})
    return await wait_result(fake, ix)


def png(width: int = 64, height: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 80, 40)).save(buf, format="PNG")
    return buf.getvalue()


# --- members ---------------------------------------------------------------------------------


async def test_imagine_delivers_an_image_with_buttons_in_one_status_message(
    bot: BotApp, fake: DiscordFake
) -> None:
    ix = await fake.slash("imagine", {"prompt": "a red fox --ar 16:9", "seed": 7})
    msg = await wait_result(fake, ix)

    assert msg.history[0].endswith(messages.queued(1, 10))
    assert any("Generating" in h for h in msg.history)
    assert "1024×576" in msg.content and "seed 7" in msg.content
    [image] = msg.files
    assert image.data.startswith(PNG_MAGIC)
    assert [b["label"] for b in msg.buttons] == ["Reroll", "Edit", "Make 3D", "Vary", "Delete"]
    assert not msg.ephemeral
    assert len([m for m in fake.messages.values() if m.interaction_id == ix.id]) == 1
    assert await balance(bot, fake) == 90


async def test_status_message_offers_cancel_while_the_job_runs(bot: BotApp, fake: DiscordFake) -> None:
    ix = await fake.slash("imagine", {"prompt": "a fox"})
    status = await wait_original(fake, ix, lambda m: bool(m.custom_ids))

    assert status.custom_ids[0].startswith("ib:cancel:")
    assert status.buttons[0]["label"] == "Cancel"


async def test_reroll_starts_a_new_job_with_the_same_parameters(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake, "a lighthouse --ar 16:9")

    ix = await fake.click(first.id, first.button("Reroll")["custom_id"])
    again = await wait_result(fake, ix)

    assert again.id != first.id
    assert "a lighthouse" in again.content and "1024×576" in again.content
    assert again.custom_ids[0] != first.custom_ids[0]  # a new job id
    assert again.files[0].data.startswith(PNG_MAGIC)


async def test_edit_button_opens_a_modal_and_edits_that_image(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake)

    opened = await fake.click(first.id, first.button("Edit")["custom_id"])
    await fake.wait_for(lambda: opened.modal)
    assert opened.modal is not None and opened.modal["custom_id"] == first.button("Edit")["custom_id"]
    ix = await fake.submit_modal(opened, {"instruction": "make it night time"})
    edited = await wait_result(fake, ix)

    assert edited.content.splitlines()[1].startswith("Edit ·")
    assert "make it night time" in edited.content
    assert edited.files[0].data.startswith(PNG_MAGIC)


async def test_make_3d_turns_a_result_into_a_glb_with_its_thumbnail(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake)

    ix = await fake.click(first.id, first.button("Make 3D")["custom_id"])
    model = await wait_result(fake, ix)

    assert model.content.startswith("3D model") or "3D model" in model.content
    names = {f.filename.rsplit(".", 1)[-1]: f for f in model.files}
    assert names["glb"].data[:4] == b"glTF"
    assert names["png"].data.startswith(PNG_MAGIC)


async def test_edit_command_takes_an_attached_image(bot: BotApp, fake: DiscordFake) -> None:
    photo = fake.add_attachment("cat.png", png())

    ix = await fake.slash("edit", {"image": photo, "instruction": "give it a hat"})
    edited = await wait_result(fake, ix)

    assert "Edit ·" in edited.content and "give it a hat" in edited.content
    assert edited.files[0].data.startswith(PNG_MAGIC)


async def test_edit_refuses_an_attachment_that_is_not_an_image(bot: BotApp, fake: DiscordFake) -> None:
    notes = fake.add_attachment("notes.png", b"just some text, not a picture", "image/png")

    ix = await fake.slash("edit", {"image": notes, "instruction": "give it a hat"})
    answer = await private_answer(fake, ix)

    assert "isn't an image" in answer.content
    assert await balance(bot, fake) == 100


async def test_model3d_from_a_prompt_attaches_the_glb(bot: BotApp, fake: DiscordFake) -> None:
    ix = await fake.slash("model3d", {"prompt": "a wooden chair", "geometry_only": True})
    model = await wait_result(fake, ix)

    assert "3D model" in model.content
    assert any(f.filename.endswith(".glb") and f.data[:4] == b"glTF" for f in model.files)
    assert await balance(bot, fake) == 70


async def test_model3d_from_an_attached_image(bot: BotApp, fake: DiscordFake) -> None:
    photo = fake.add_attachment("vase.png", png(96, 96))

    ix = await fake.slash("model3d", {"image": photo, "face_count": 50_000})
    model = await wait_result(fake, ix)

    assert any(f.data[:4] == b"glTF" for f in model.files)


async def test_multi_image_result_shows_a_grid_and_posts_each_image_alone(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    async with discord_bot(tmp_path, fake, sandbox, route_order="pixazo"):  # type: ignore[arg-type]
        grid = await imagine(fake, "four foxes", count=4)
        assert [b["label"] for b in grid.buttons][-8:] == ["U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4"]
        [preview] = grid.files
        assert "grid" in preview.filename

        ix = await fake.click(grid.id, grid.button("U3")["custom_id"])
        single = await wait_result(fake, ix)

        [full] = single.files
        with Image.open(io.BytesIO(full.data)) as im:
            assert im.size == (1024, 1024)
        assert "Image 3" in single.content


async def test_show_reposts_a_finished_result_with_its_buttons(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake)
    job_id = first.custom_ids[0].split(":")[2]

    ix = await fake.slash("show", {"job_id": job_id})
    shown = await wait_result(fake, ix)

    assert shown.id != first.id
    assert shown.custom_ids == first.custom_ids
    assert shown.files[0].data == first.files[0].data


async def test_credits_are_private_and_list_recent_jobs(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake, "a blue whale")

    ix = await fake.slash("credits")
    answer = await private_answer(fake, ix)

    assert "You have **90 credits**" in answer.content
    assert first.custom_ids[0].split(":")[2] in answer.content


async def test_cancel_button_stops_the_job_and_refunds(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox(latency=(3.0, 3.0)) as slow, discord_bot(tmp_path, fake, slow) as app:
        ix = await fake.slash("imagine", {"prompt": "a slow fox"})
        status = await wait_original(fake, ix, lambda m: "Generating" in m.content)
        assert await balance(app, fake) == 90  # held

        await fake.click(status.id, status.custom_ids[0])
        done = await wait_done(fake, ix)

        assert messages.cancelled() in done.content
        assert done.files == [] and done.custom_ids == []
        assert await balance(app, fake) == 100


async def test_oversize_result_is_sent_as_a_link_with_a_small_preview(bot: BotApp, fake: DiscordFake) -> None:
    limit = 8_000
    ix = await fake.slash("imagine", {"prompt": "a detailed city"}, attachment_size_limit=limit)
    msg = await wait_result(fake, ix)

    assert all(f.size <= limit for f in msg.files)
    [preview] = msg.files
    assert preview.filename.endswith(".jpg")
    assert f"{bot.web.base_url}/media/" in msg.content
    assert not any(r.status == 413 for r in fake.requests)


async def test_a_job_outliving_its_token_is_delivered_in_the_channel(
    tmp_path: Path, fake: DiscordFake
) -> None:
    async with fast_sandbox(latency=(1.5, 1.5)) as slow, discord_bot(tmp_path, fake, slow):
        ix = await fake.slash("imagine", {"prompt": "a very slow sunrise"})
        await wait_original(fake, ix, lambda m: bool(m.custom_ids))

        fake.advance(16 * 60)  # the token is now dead on Discord's side
        delivered = await fake.wait_for(
            lambda: next((m for m in fake.channel_messages() if m.via == "channel" and m.files), None)
        )

    assert 50027 in ix.refused
    assert ALICE.id in delivered.mentions
    assert delivered.files[0].data.startswith(PNG_MAGIC)
    assert any(c.startswith("ib:reroll:") for c in delivered.custom_ids)
    # only the result remains in the channel: no stale status message left behind
    assert [m.id for m in fake.channel_messages() if m.via == "channel"] == [delivered.id]


async def test_a_job_nearing_token_expiry_moves_to_the_channel_in_time(
    tmp_path: Path, fake: DiscordFake
) -> None:
    async with fast_sandbox(latency=(1.5, 1.5)) as slow, discord_bot(tmp_path, fake, slow) as app:
        ix = await fake.slash("imagine", {"prompt": "a patient heron"})
        status = await wait_original(fake, ix, lambda m: bool(m.custom_ids))

        # The bot's clock says the token has under a minute left; Discord still accepts it.
        app.adapters["discord"].clock = lambda: time.time() + 14.5 * 60  # type: ignore[attr-defined]
        delivered = await fake.wait_for(
            lambda: next((m for m in fake.channel_messages() if m.via == "channel" and m.files), None)
        )

    assert ix.refused == []  # it never used the token past its life
    assert status.deleted  # the old status message, about to freeze, was removed
    assert ALICE.id in delivered.mentions


async def test_a_job_outliving_its_token_in_a_closed_channel_is_delivered_by_dm(
    tmp_path: Path, fake: DiscordFake
) -> None:
    async with fast_sandbox(latency=(1.5, 1.5)) as slow, discord_bot(tmp_path, fake, slow) as app:
        ix = await fake.slash("imagine", {"prompt": "a sunrise behind closed doors"})
        status = await wait_original(fake, ix, lambda m: bool(m.custom_ids))
        job_id = status.custom_ids[0].split(":")[2]

        fake.forbid()  # a moderator took the bot's Send Messages in #general
        fake.advance(16 * 60)
        delivered = await fake.wait_for(lambda: next((m for m in fake.dm_messages(ALICE) if m.files), None))
        await asyncio.wait_for(app.engine.drain(), 15)
        job = await app.engine.store.get(job_id)

        assert delivered.content.splitlines()[0] == messages.discord_sent_by_dm(fake.channel_id)
        assert delivered.files[0].data.startswith(PNG_MAGIC)
        assert any(c.startswith("ib:reroll:") for c in delivered.custom_ids)
        assert (fake.channel_id, 50013) in fake.refused
        assert [m.id for m in fake.dm_messages(ALICE)] == [delivered.id]  # its status was replaced
        assert job is not None and job.state is JobPhase.DONE
        assert job.reply_ref["dm_channel_id"] == fake.dm_channel(ALICE)  # a restart stays in the DM
        assert await app.ledger.hold_state(job_id) == "settled"
        assert await balance(app, fake) == 90


async def test_a_job_nobody_can_be_told_about_still_ends_done_with_one_warning(
    tmp_path: Path, fake: DiscordFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with fast_sandbox(latency=(1.5, 1.5)) as slow, discord_bot(tmp_path, fake, slow) as app:
        ix = await fake.slash("imagine", {"prompt": "a sunrise for nobody"})
        status = await wait_original(fake, ix, lambda m: bool(m.custom_ids))
        job_id = status.custom_ids[0].split(":")[2]

        fake.forbid()
        fake.refuse_dms(ALICE)
        fake.advance(16 * 60)
        await fake.wait_for(lambda: (fake.dm_channel(ALICE), 50007) in fake.refused)
        await asyncio.wait_for(app.engine.drain(), 15)
        job = await app.engine.store.get(job_id)

        assert job is not None and job.state is JobPhase.DONE  # the vendor did the work
        assert await app.ledger.hold_state(job_id) == "settled"
        assert await balance(app, fake) == 90

    assert fake.dm_messages(ALICE) == []
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.name == "adapters.discord_reply"
    line = warning.getMessage()
    assert all(part in line for part in (job_id, ALICE.id, fake.channel_id, "50013", "50007")), line


async def test_cancel_command_refuses_a_finished_job(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake)
    job_id = first.custom_ids[0].split(":")[2]

    ix = await fake.slash("cancel", {"job_id": job_id})

    assert (await private_answer(fake, ix)).content == messages.not_cancellable(job_id, "done")


async def test_dm_commands_work_with_the_dm_blocklist_always_on(bot: BotApp, fake: DiscordFake) -> None:
    refused = await fake.slash("imagine", {"prompt": "an nsfw cat"}, dm=True)
    answer = await private_answer(fake, refused)
    assert "blocked word" in answer.content

    ix = await fake.slash("imagine", {"prompt": "a cat"}, dm=True)
    msg = await wait_result(fake, ix)
    assert msg.channel_id == fake.dm_channel(ALICE)
    assert (await bot.ledger.account(f"discord:dm:{ALICE.id}", ALICE.id)).balance == 90


async def test_model_autocomplete_offers_the_catalog_names(bot: BotApp, fake: DiscordFake) -> None:
    choices = await fake.autocomplete("imagine", {"prompt": "x", "model": "pix"}, focused="model")

    names = [c["value"] for c in choices]
    assert names and all("pix" in n for n in names)
    assert set(names) <= set(bot.engine.model_names("image"))


# --- refusals --------------------------------------------------------------------------------


async def test_a_member_is_refused_quota_grant(bot: BotApp, fake: DiscordFake) -> None:
    ix = await fake.slash("quota grant", {"member": BOB, "amount": 500}, user=ALICE)
    answer = await private_answer(fake, ix)

    assert answer.content == messages.not_moderator()
    assert await balance(bot, fake, BOB.id) == 100
    assert fake.channel_messages(fake.modlog_channel_id) == []


async def test_a_moderator_grant_shows_in_the_members_credits_and_the_modlog(
    bot: BotApp, fake: DiscordFake
) -> None:
    ix = await fake.slash("quota grant", {"member": ALICE, "amount": 50, "reason": "contest"}, user=MOD)
    answer = await private_answer(fake, ix)
    assert "Granted 50 credits" in answer.content and "150 credits" in answer.content

    mine = await fake.slash("credits", user=ALICE)
    assert "You have **150 credits**" in (await private_answer(fake, mine)).content
    [log] = await fake.wait_for(lambda: fake.channel_messages(fake.modlog_channel_id))
    assert "grant" in log.content and ALICE.id in log.content and "contest" in log.content
    assert log.mentions == []  # the log line must not ping anyone


async def test_the_configured_moderator_role_counts_as_moderator(bot: BotApp, fake: DiscordFake) -> None:
    ix = await fake.slash("quota allowance", {"amount": 25}, user=ROLE_MOD)

    assert "25 credits" in (await private_answer(fake, ix)).content


async def test_a_banned_member_is_refused_and_not_charged(bot: BotApp, fake: DiscordFake) -> None:
    ban = await fake.slash("quota ban", {"member": ALICE}, user=MOD)
    await private_answer(fake, ban)

    ix = await fake.slash("imagine", {"prompt": "a fox"}, user=ALICE)
    answer = await private_answer(fake, ix)

    assert answer.content == messages.banned()
    assert fake.original(ix) is None or fake.original(ix).deleted  # type: ignore[union-attr]
    assert await balance(bot, fake) == 100


async def test_a_blocklisted_prompt_is_refused(bot: BotApp, fake: DiscordFake) -> None:
    add = await fake.slash("quota blocklist add", {"words": "zombie"}, user=MOD)
    assert "zombie" in (await private_answer(fake, add)).content

    ix = await fake.slash("imagine", {"prompt": "a Zombie parade"}, user=ALICE)

    assert (await private_answer(fake, ix)).content == messages.blocked_prompt("zombie")
    assert await balance(bot, fake) == 100


async def test_out_of_credits_is_refused_with_the_balance(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    async with discord_bot(tmp_path, fake, sandbox, daily_allowance=5) as app:  # type: ignore[arg-type]
        ix = await fake.slash("imagine", {"prompt": "a fox"})

        assert (await private_answer(fake, ix)).content == messages.insufficient_credits(5, 10)
        assert await balance(app, fake) == 5


async def test_someone_else_cannot_press_a_spending_button(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake)

    ix = await fake.click(first.id, first.button("Reroll")["custom_id"], user=BOB)

    assert (await private_answer(fake, ix)).content == messages.not_your_job()
    assert await balance(bot, fake, BOB.id) == 100


async def test_concurrent_clicks_start_one_job(bot: BotApp, fake: DiscordFake) -> None:
    first = await imagine(fake)
    reroll = first.button("Reroll")["custom_id"]

    clicks = await asyncio.gather(*(fake.click(first.id, reroll) for _ in range(3)))
    await fake.wait_for(lambda: all(ix.acked for ix in clicks))

    def settled(ix) -> bool:  # type: ignore[no-untyped-def]
        # a started job edits its placeholder into a status; a refused click answers privately
        return any(m.ephemeral or (m.content and not m.deleted) for m in fake.replies(ix))

    await fake.wait_for(lambda: all(settled(ix) for ix in clicks))

    started = [ix for ix in clicks if any(not m.ephemeral and not m.deleted for m in fake.replies(ix))]
    refused = [ix for ix in clicks if any(m.ephemeral for m in fake.replies(ix))]
    assert len(started) == 1 and len(refused) == 2, [
        [(m.content, m.ephemeral, m.deleted) for m in fake.replies(ix)] for ix in clicks
    ]
    assert all(messages.already_running() in fake.texts(ix) for ix in refused)
    await wait_result(fake, started[0])
    assert await balance(bot, fake) == 80


# --- lifecycle -------------------------------------------------------------------------------


async def test_restart_mid_job_delivers_and_old_buttons_still_work(tmp_path: Path, fake: DiscordFake) -> None:
    async with fast_sandbox(latency=(1.0, 1.0)) as sb:
        async with discord_bot(tmp_path, fake, sb):
            old = await imagine(fake, "an old result")
            ix = await fake.slash("imagine", {"prompt": "started before the restart"})
            await wait_original(fake, ix, lambda m: "Generating" in m.content or "Sent" in m.content)

        async with discord_bot(tmp_path, fake, sb):
            resumed = await wait_result(fake, ix)
            assert "started before the restart" in resumed.content

            again = await fake.click(old.id, old.button("Reroll")["custom_id"])
            assert "an old result" in (await wait_result(fake, again)).content

    assert fake.identifies == 2
    assert fake.command_puts == 1  # commands are synced when they change, not on every start


async def test_a_job_moved_to_a_dm_keeps_delivering_there_after_a_restart(
    tmp_path: Path, fake: DiscordFake
) -> None:
    async with fast_sandbox(latency=(3.0, 3.0)) as sb:
        async with discord_bot(tmp_path, fake, sb):
            ix = await fake.slash("imagine", {"prompt": "a fox that waits"})
            await wait_original(fake, ix, lambda m: bool(m.custom_ids))
            fake.forbid()
            fake.advance(16 * 60)
            await fake.wait_for(lambda: any("Generating" in m.content for m in fake.dm_messages(ALICE)))
        tried = len(fake.refused)

        async with discord_bot(tmp_path, fake, sb):
            delivered = await fake.wait_for(
                lambda: next((m for m in fake.dm_messages(ALICE) if m.files), None)
            )

    assert len(fake.refused) == tried  # the resumed job went straight to the DM
    assert delivered.content.startswith(messages.discord_sent_by_dm(fake.channel_id))
    assert [m.id for m in fake.dm_messages(ALICE)] == [delivered.id]


async def test_the_gateway_resumes_after_a_disconnect(bot: BotApp, fake: DiscordFake) -> None:
    await fake.drop_connection()
    await fake.wait_for(lambda: fake.resumes == 1 and fake.connected, timeout=20)

    assert (await imagine(fake)).files


async def test_discord_rate_limits_and_server_errors_are_retried(bot: BotApp, fake: DiscordFake) -> None:
    fake.inject(429, path=r"/callback$", retry_after=0.1)
    fake.inject(502, method="PATCH", path=r"/messages/@original$")

    msg = await imagine(fake)

    assert msg.files
    assert [r.status for r in fake.requests if r.status] == [429, 502]


async def test_commands_sync_on_demand_and_then_not_on_start(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    settings = discord_settings(tmp_path, fake, discord_dev_guild=fake.guild_id)

    count = await sync_commands(settings, fake.guild_id)

    assert count == len(fake.commands[fake.guild_id]) == 9  # 7 slash commands, 2 message menus
    quota = next(c for c in fake.commands[fake.guild_id] if c["name"] == "quota")
    assert int(quota["default_member_permissions"]) == 1 << 5  # Manage Server
    async with discord_bot(tmp_path, fake, sandbox, discord_dev_guild=fake.guild_id):  # type: ignore[arg-type]
        assert (await imagine(fake)).files
    assert fake.command_puts == 1


async def test_a_refused_token_stops_startup_with_one_clear_line(
    tmp_path: Path, fake: DiscordFake, sandbox: object
) -> None:
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        async with discord_bot(tmp_path, fake, sandbox, discord_token="not-the-token"):  # type: ignore[arg-type]
            pass
    assert fake.identifies == 0
