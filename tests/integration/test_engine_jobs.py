"""The engine end to end on the sandbox: admission, the job state machine, delivery, refunds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from bot.commands import ImagineCommand, Model3DCommand
from bot.errors import BusyError, QueueFullError
from bot.reply import ButtonAction, JobPhase
from providers.sandbox.common import Fault
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app


async def _balance(app, actor=MEMBER) -> int:  # type: ignore[no-untyped-def]
    return (await app.ledger.account(actor.tenant, actor.user_id)).balance


async def test_imagine_delivers_a_real_png_and_settles_the_cost(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a red fox --ar 16:9"), reply)
        await reply.wait()
        assert not reply.failures
        result = reply.results[0]
        image = result.files[0]
        assert image.path.exists() and image.role == "image"
        with Image.open(image.path) as im:
            assert im.format == "PNG"
            assert (im.width, im.height) == (image.width, image.height)
        assert ticket.cost == 10
        assert await _balance(app) == 90
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.DONE and job.route
        assert await app.ledger.check_invariants() == []


async def test_four_images_come_with_a_two_by_two_grid(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url, route_order="pixazo") as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="four foxes --n 4"), reply)
        await reply.wait()
        result = reply.results[0]
        assert len([f for f in result.files if f.role == "image"]) == 4
        assert result.preview is not None and result.preview.role == "grid"
        with Image.open(result.preview.path) as grid:
            first = result.files[0]
            assert grid.width > grid.height * 0.5  # a 2×2 mosaic, not one tile
            assert first.width is not None
        singles = [b for b in result.buttons if b.action is ButtonAction.SINGLE]
        assert [b.index for b in singles] == [0, 1, 2, 3]
        assert ticket.cost == 40


async def test_progress_goes_through_the_states_in_order(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        phases = [p.phase for p in reply.progress_updates]
        assert phases[0] is JobPhase.QUEUED
        order = [JobPhase.QUEUED, JobPhase.SUBMITTING, JobPhase.RUNNING, JobPhase.DELIVERING]
        assert [p for p in order if p in phases] == [p for p in dict.fromkeys(phases)]


async def test_progress_is_throttled_per_job(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url, progress_interval=3600.0) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        # only the first (queued) update fits in the window; the result is always delivered
        assert len(reply.progress_updates) == 1
        assert reply.results


async def test_vendor_failure_on_every_route_refunds_and_tells_the_user(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone") as app:
        for emu in sandbox.emulators.values():
            emu.inject(Fault.JOB_FAILED, 3)
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.failures and "weren't charged" in reply.failures[0].text
        assert await _balance(app) == 100
        assert await app.ledger.check_invariants() == []


async def test_a_dead_result_url_refunds(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone") as app:
        sandbox["apiinone"].inject(Fault.DEAD_URL)
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.failures and "downloaded" in reply.failures[0].text
        assert await _balance(app) == 100


async def test_an_oversize_result_is_refused_and_refunded(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox(oversize_bytes=3 * 1024 * 1024)
    async with running_app(
        tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone", max_result_bytes=1024 * 1024
    ) as app:
        sandbox["apiinone"].inject(Fault.OVERSIZE)
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.failures
        assert await _balance(app) == 100


async def test_retry_after_is_honoured_on_the_same_vendor(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone") as app:
        sandbox["apiinone"].inject(Fault.RATE_LIMIT, 1, stage="submit", retry_after=0.2)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.results
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.route is not None and job.route.startswith("apiinone:")


async def test_cancel_of_a_queued_job_releases_the_hold(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url, workers=1, max_jobs_per_user=5) as app:
        blocker, queued = RecordingReply(), RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="first"), blocker)
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="second"), queued)
        assert ticket.position >= 1
        text = await app.engine.cancel(MEMBER, ticket.job_id)
        assert "Cancelled" in text
        await queued.wait()
        await blocker.wait()
        assert queued.failures and queued.failures[0].text.startswith("Cancelled")
        assert await _balance(app) == 90  # only the first job was paid for
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.CANCELLED


async def test_cancel_of_a_running_job_releases_the_hold(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone") as app:
        sandbox["apiinone"].inject(Fault.STUCK)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="slow"), reply)
        for _ in range(100):
            job = await app.engine.store.get(ticket.job_id)
            if job and job.state is JobPhase.RUNNING:
                break
            await asyncio.sleep(0.05)
        await app.engine.cancel(MEMBER, ticket.job_id)
        await reply.wait()
        assert reply.failures[0].text.startswith("Cancelled")
        assert await _balance(app) == 100
        assert await app.ledger.check_invariants() == []


async def test_a_stuck_job_times_out_and_is_refunded(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(
        tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone", job_timeout=1.0
    ) as app:
        sandbox["apiinone"].inject(Fault.STUCK)
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="never"), reply)
        await reply.wait()
        assert "took too long" in reply.failures[0].text
        assert await _balance(app) == 100


async def test_per_user_cap_refuses_without_charging(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox(latency=(1.0, 1.0))
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, max_jobs_per_user=1) as app:
        await app.engine.submit(MEMBER, ImagineCommand(prompt="one"), RecordingReply())
        with pytest.raises(BusyError, match="1 job running"):
            await app.engine.submit(MEMBER, ImagineCommand(prompt="two"), RecordingReply())
        assert await _balance(app) == 90


async def test_bounded_queue_reports_positions_then_refuses(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox(latency=(1.0, 1.0))
    async with running_app(
        tmp_path, database_url=db_url, sandbox=sandbox, workers=1, queue_size=2, max_jobs_per_user=10
    ) as app:
        await app.engine.submit(MEMBER, ImagineCommand(prompt="running"), RecordingReply())
        for _ in range(200):  # until the one worker has taken it
            if not (await app.engine.store.count_unfinished()).get("queued"):
                break
            await asyncio.sleep(0.02)
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a"), RecordingReply())
        t2 = await app.engine.submit(MEMBER, ImagineCommand(prompt="b"), RecordingReply())
        assert (t1.position, t2.position) == (1, 2)
        assert "2nd in line" in t2.text
        with pytest.raises(QueueFullError):
            await app.engine.submit(MEMBER, ImagineCommand(prompt="c"), RecordingReply())


async def test_a_burst_into_idle_workers_is_not_refused_by_the_queue_bound(
    db_url: str, tmp_path: Path
) -> None:
    async with running_app(
        tmp_path, database_url=db_url, workers=8, queue_size=1, max_jobs_per_user=10
    ) as app:
        tickets = await asyncio.gather(
            *(
                app.engine.submit(MEMBER, ImagineCommand(prompt=f"burst {i}"), RecordingReply())
                for i in range(6)
            )
        )
        assert len(tickets) == 6  # six free workers take them: none of them waits
        await app.engine.drain()


async def test_a_burst_of_commands_is_admitted_a_few_at_a_time(db_url: str, tmp_path: Path) -> None:
    async with running_app(
        tmp_path, database_url=db_url, admissions=2, workers=8, max_jobs_per_user=10
    ) as app:
        store = app.engine.admission.store
        admit, inside, most = store.admit, 0, 0

        async def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            try:
                await asyncio.sleep(0.02)  # a busy database: the burst piles up behind it
                return await admit(*args, **kwargs)
            finally:
                inside -= 1

        store.admit = counted  # type: ignore[method-assign]
        replies = [RecordingReply() for _ in range(6)]
        tickets = await asyncio.gather(
            *(
                app.engine.submit(MEMBER, ImagineCommand(prompt=f"burst {i}"), r)
                for i, r in enumerate(replies)
            )
        )
        assert most == 2  # the rest waited in line, holding nothing yet
        assert len({t.job_id for t in tickets}) == 6
        await asyncio.gather(*(r.wait() for r in replies))
        assert all(r.results for r in replies)


async def test_a_retried_platform_request_maps_to_one_job(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        a = await app.engine.submit(MEMBER, ImagineCommand(prompt="x"), RecordingReply(), request_key="evt-1")
        b = await app.engine.submit(MEMBER, ImagineCommand(prompt="x"), RecordingReply(), request_key="evt-1")
        assert a.job_id == b.job_id
        assert await _balance(app) == 90


async def test_text_to_3d_delivers_a_glb_and_a_thumbnail(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, Model3DCommand(prompt="a wooden chair"), reply)
        await reply.wait()
        roles = {f.role for f in reply.results[0].files}
        assert {"model", "thumbnail"} <= roles
        glb = next(f for f in reply.results[0].files if f.role == "model")
        assert glb.path.read_bytes()[:4] == b"glTF"
        assert ticket.cost == 30


async def test_reroll_keeps_parameters_with_a_new_seed(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox --seed 5 --ar 3:2"), first)
        await first.wait()
        second = RecordingReply()
        t2 = await app.engine.reroll(MEMBER, t1.job_id, second)
        await second.wait()
        j1 = await app.engine.store.get(t1.job_id)
        j2 = await app.engine.store.get(t2.job_id)
        assert j1 is not None and j2 is not None
        assert (j2.spec.prompt, j2.spec.aspect, j2.parent_id) == ("a fox", "3:2", t1.job_id)
        assert j2.spec.seed != 5


async def test_make_3d_from_a_result_image(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a vase"), first)
        await first.wait()
        second = RecordingReply()
        await app.engine.make_3d(MEMBER, t1.job_id, None, second)
        await second.wait()
        assert not second.failures, second.failures
        assert any(f.role == "model" for f in second.results[0].files)


async def test_edit_of_a_result_image(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a house"), first)
        await first.wait()
        second = RecordingReply()
        await app.engine.edit_result(MEMBER, t1.job_id, 0, "make it night", second)
        await second.wait()
        assert not second.failures, second.failures
        assert second.results[0].kind == "edit"


async def test_show_reposts_a_finished_result(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        shown = await app.engine.show(MEMBER, ticket.job_id)
        assert shown.files[0].path == reply.results[0].files[0].path
        assert {b.action for b in shown.buttons} >= {ButtonAction.REROLL}


async def test_concurrent_clicks_on_one_result_start_one_job(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url, max_jobs_per_user=10) as app:
        first = RecordingReply()
        t1 = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), first)
        await first.wait()
        outcomes = await asyncio.gather(
            *(app.engine.reroll(MEMBER, t1.job_id, RecordingReply()) for _ in range(3)),
            return_exceptions=True,
        )
        started = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(started) == 1
        assert all("already running" in str(e) for e in refused)


async def test_single_image_buttons_act_on_that_image(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url, route_order="pixazo") as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="foxes --n 3"), reply)
        await reply.wait()
        single = await app.engine.single(MEMBER, ticket.job_id, 2)
        assert single.files[0].path == reply.results[0].files[2].path
        edit = next(b for b in single.buttons if b.action is ButtonAction.EDIT)
        assert edit.index == 2
