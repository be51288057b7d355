"""Variations: V1…V4 under a grid and Vary under one image start an instruction edit from that
image with the original prompt, charged like an edit, for the owner or a moderator only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from bot.catalog import Catalog
from bot.commands import Actor, ImagineCommand
from bot.errors import UserError
from bot.reply import ButtonAction, JobPhase, parse_custom_id
from providers.base import Kind
from tests.support.core import MEMBER, MODERATOR, RecordingReply, running_app

OTHER = Actor(platform="console", tenant_id="t1", user_id="u-other", display_name="Other")


def _pixels(path: Path) -> bytes:
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


async def _balance(app, actor: Actor = MEMBER) -> int:  # type: ignore[no-untyped-def]
    return (await app.ledger.account(actor.tenant, actor.user_id)).balance


async def test_a_grid_has_v1_to_v4_buttons_naming_each_image(tmp_path: Path) -> None:
    async with running_app(tmp_path, route_order="pixazo") as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="four foxes --n 4"), reply)
        await reply.wait()
        varies = [b for b in reply.results[0].buttons if b.action is ButtonAction.VARY]
        assert [(b.label, b.index) for b in varies] == [("V1", 0), ("V2", 1), ("V3", 2), ("V4", 3)]


async def test_v2_starts_an_edit_of_image_two_with_the_original_prompt_at_the_edit_cost(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path, route_order="pixazo", cost_edit=7, max_jobs_per_user=10) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="four foxes --n 4"), first)
        await first.wait()
        before = await _balance(app)
        second = RecordingReply()
        await app.engine.press(MEMBER, ButtonAction.VARY, t1.job_id, 1, second)
        await second.wait()
        assert not second.failures, second.failures
        assert second.results[0].kind == "edit"
        child = await app.engine.store.get(second.results[0].job_id)
        assert child is not None and child.state is JobPhase.DONE
        assert child.parent_id == t1.job_id
        assert child.spec.prompt == "a variation of: four foxes"
        assert child.cost == 7 and await _balance(app) == before - 7
        assert child.spec.input_name is not None
        used = _pixels(app.media.files_dir / child.spec.input_name)
        images = [f for f in first.results[0].files if f.role == "image"]
        assert used == _pixels(images[1].path) != _pixels(images[0].path)


async def test_vary_under_a_single_image_makes_a_variation_of_it(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a lighthouse"), first)
        await first.wait()
        vary = [b for b in first.results[0].buttons if b.action is ButtonAction.VARY]
        assert [(b.label, b.index) for b in vary] == [("Vary", None)]
        second = RecordingReply()
        await app.engine.press(MEMBER, ButtonAction.VARY, t1.job_id, vary[0].index, second)
        await second.wait()
        assert not second.failures, second.failures
        child = await app.engine.store.get(second.results[0].job_id)
        assert child is not None and child.parent_id == t1.job_id
        assert child.spec.prompt == "a variation of: a lighthouse"


async def test_a_member_who_is_not_the_owner_may_not_vary_but_a_moderator_may(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a lighthouse"), first)
        await first.wait()
        with pytest.raises(UserError, match="Only the person who started this job"):
            await app.engine.press(OTHER, ButtonAction.VARY, t1.job_id, None, RecordingReply())
        assert await _balance(app, OTHER) == 100
        by_mod = RecordingReply()
        await app.engine.press(MODERATOR, ButtonAction.VARY, t1.job_id, None, by_mod)
        await by_mod.wait()
        assert by_mod.results and by_mod.results[0].kind == "edit"


async def test_concurrent_vary_clicks_start_one_job(tmp_path: Path) -> None:
    async with running_app(tmp_path, max_jobs_per_user=10) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), first)
        await first.wait()
        outcomes = await asyncio.gather(
            *(
                app.engine.press(MEMBER, ButtonAction.VARY, t1.job_id, None, RecordingReply())
                for _ in range(3)
            ),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(refused) == 2
        assert all("already running" in str(e) for e in refused)
        assert await _balance(app) == 90 - 10  # the imagine, then one variation held


async def test_no_edit_route_means_no_vary_button(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None
        delivery = app.engine.actions.delivery
        delivery.catalog = Catalog(r for r in delivery.catalog.routes if r.kind is not Kind.EDIT)
        buttons = delivery.result_buttons(job, 1)
        assert ButtonAction.VARY not in {b.action for b in buttons}


async def test_a_v_button_from_before_a_restart_still_works(tmp_path: Path) -> None:
    async with running_app(tmp_path, route_order="pixazo") as app:
        first = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="two foxes --n 2"), first)
        await first.wait()
        v2 = next(b for b in first.results[0].buttons if b.label == "V2")
    action, job_id, index = parse_custom_id(v2.custom_id) or (None, "", None)
    assert (action, index) == (ButtonAction.VARY, 1)
    async with running_app(tmp_path, route_order="pixazo") as app:
        second = RecordingReply()
        await app.engine.press(MEMBER, ButtonAction.VARY, job_id, index, second)
        await second.wait()
        assert not second.failures, second.failures
        child = await app.engine.store.get(second.results[0].job_id)
        assert child is not None and child.parent_id == job_id
