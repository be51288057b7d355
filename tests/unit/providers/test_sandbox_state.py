"""The sandbox keeps its jobs across a restart: a job submitted through a real vendor client
before the emulator stopped is answered by a fresh emulator on the same state dir, whatever
port it listens on, and a job whose time passed while it was down is finished at the next poll."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from providers.apiinone import EDIT_MODEL, ApiInOneProvider
from providers.base import GenerationRequest, JobHandle, JobState, JobUpdate, Kind, ProviderSettings
from providers.novita import MODEL as NOVITA_MODEL
from providers.novita import NovitaProvider
from providers.pixazo import PixazoProvider
from providers.runware import MODEL as RUNWARE_MODEL
from providers.runware import RunwareProvider
from providers.sandbox.common import SandboxJob
from providers.sandbox.media import render_png
from providers.sandbox.server import Sandbox

KEY = "sandbox-key"
LATENCY = 0.4


def sandbox(state: Path, vendor: str) -> Sandbox:
    return Sandbox([vendor], api_key=KEY, latency=(LATENCY, LATENCY), state_dir=state)


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        assert resp.status == 200, url
        return await resp.read()


async def restart_and_poll(
    state: Path, vendor: str, client_cls: type, handle: JobHandle, session: aiohttp.ClientSession
) -> tuple[JobUpdate, Sandbox]:
    """The job's time passes while no emulator runs; a new one answers the first poll."""
    await asyncio.sleep(LATENCY)
    second = sandbox(state, vendor)
    await second.__aenter__()
    client = client_cls(session, ProviderSettings(base_url=second.base_url(vendor), api_key=KEY))
    return await client.poll(handle), second


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_a_3d_job_submitted_before_a_restart_is_finished_by_the_next_emulator(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with sandbox(tmp_path, "pixazo") as first:
        client = PixazoProvider(session, ProviderSettings(base_url=first.base_url("pixazo"), api_key=KEY))
        request = GenerationRequest(kind=Kind.MODEL3D, model="hunyuan-3d", prompt="a wooden chair")
        handle = (await client.submit(request)).handle
        assert (await client.poll(handle)).state in (JobState.QUEUED, JobState.RUNNING)
    update, second = await restart_and_poll(tmp_path, "pixazo", PixazoProvider, handle, session)
    try:
        assert update.state is JobState.SUCCEEDED
        [model] = [a for a in update.artifacts if a.role == "model"]
        assert model.url is not None and model.url.startswith(second.base_url("pixazo"))
        assert (await fetch(session, model.url))[:4] == b"glTF"
    finally:
        await second.__aexit__(None, None, None)


async def test_an_edit_is_drawn_from_its_input_even_when_the_input_link_died_with_the_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # The input is served by a server that is gone after the restart, as the bot's signed
    # links may be: the emulator must have kept the image itself.
    source = Image.new("RGB", (320, 180), (0, 0, 0))
    source.paste((255, 255, 255), (160, 0, 320, 180))
    body = io.BytesIO()
    source.save(body, format="PNG")

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(body=body.getvalue(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/in.png", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/in.png"
    async with sandbox(tmp_path, "apiinone") as first:
        client = ApiInOneProvider(session, ProviderSettings(base_url=first.base_url("apiinone"), api_key=KEY))
        request = GenerationRequest(
            kind=Kind.EDIT, model=EDIT_MODEL, prompt="make it night", image_urls=(url,), width=640, height=360
        )
        handle = (await client.submit(request)).handle
    await runner.cleanup()
    update, second = await restart_and_poll(tmp_path, "apiinone", ApiInOneProvider, handle, session)
    try:
        assert update.state is JobState.SUCCEEDED
        [artifact] = update.artifacts
        assert artifact.url is not None
        with Image.open(io.BytesIO(await fetch(session, artifact.url))) as result:
            assert result.size == (640, 360)
            gray = result.convert("L")
            # the input's dark left and bright right half show through the recolouring
            left, right = gray.getpixel((100, 300)), gray.getpixel((540, 300))
            assert isinstance(left, int) and isinstance(right, int)
            assert right - left > 60
    finally:
        await second.__aexit__(None, None, None)


async def test_a_runware_task_is_found_by_its_task_uuid_after_a_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # Async delivery (a webhook URL) is what gives Runware a task to poll later.
    hook = "http://127.0.0.1:9/webhooks/runware/job-1"
    async with sandbox(tmp_path, "runware") as first:
        client = RunwareProvider(session, ProviderSettings(base_url=first.base_url("runware"), api_key=KEY))
        request = GenerationRequest(
            kind=Kind.IMAGE, model=RUNWARE_MODEL, prompt="two koi", count=2, webhook_url=hook
        )
        handle = (await client.submit(request)).handle
        uuid.UUID(handle.job_id)  # the client's taskUUID, not an id the emulator chose
    update, second = await restart_and_poll(tmp_path, "runware", RunwareProvider, handle, session)
    try:
        assert update.state is JobState.SUCCEEDED
        assert len(update.artifacts) == 2
        for artifact in update.artifacts:
            assert artifact.url is not None
            assert (await fetch(session, artifact.url))[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        await second.__aexit__(None, None, None)


async def test_a_finished_job_answers_with_the_same_files_after_a_restart(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with sandbox(tmp_path, "novita") as first:
        client = NovitaProvider(session, ProviderSettings(base_url=first.base_url("novita"), api_key=KEY))
        handle = (
            await client.submit(GenerationRequest(kind=Kind.IMAGE, model=NOVITA_MODEL, prompt="a fox"))
        ).handle
        await asyncio.sleep(LATENCY)
        before = await client.poll(handle)
        assert before.state is JobState.SUCCEEDED and before.artifacts[0].url
        original = await fetch(session, before.artifacts[0].url)
    update, second = await restart_and_poll(tmp_path, "novita", NovitaProvider, handle, session)
    try:
        assert update.state is JobState.SUCCEEDED and update.artifacts[0].url
        assert await fetch(session, update.artifacts[0].url) == original
    finally:
        await second.__aexit__(None, None, None)


async def test_a_job_record_round_trips_on_the_wall_clock() -> None:
    job = SandboxJob(
        id="j1", model="m", request={"prompt": "p"}, created=50.0, latency=4.0, created_at=1000.0
    )
    # another process, whose clock reads 7.0 when the wall clock says 3 s have passed
    again = SandboxJob.from_record(job.to_record(), clock_now=7.0, wall_now=1003.0)
    assert again.created == pytest.approx(4.0)
    assert again.done_at == pytest.approx(8.0)
    assert again.request == job.request and again.faults == job.faults


async def test_without_a_state_dir_nothing_is_written(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with Sandbox(["novita"], api_key=KEY, latency=(0.0, 0.0)) as sb:
        client = NovitaProvider(session, ProviderSettings(base_url=sb.base_url("novita"), api_key=KEY))
        handle = (
            await client.submit(GenerationRequest(kind=Kind.IMAGE, model=NOVITA_MODEL, prompt="a fox"))
        ).handle
        assert (await client.poll(handle)).state is JobState.SUCCEEDED
        assert sb["novita"].state_dir is None
    assert list(tmp_path.iterdir()) == []


def test_sandbox_images_say_sandbox() -> None:
    with Image.open(io.BytesIO(render_png("a fox", 512, 512, 1))) as img:
        # the yellow SANDBOX badge in the top-left corner
        r, g, b = img.convert("RGB").getpixel((20, 20))  # type: ignore[misc]
        assert r > 230 and g > 190 and b < 60
