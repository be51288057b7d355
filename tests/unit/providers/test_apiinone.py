"""API in One client against its loopback emulator: the wire format, every answer shape the docs
allow, every fault, and callbacks.

The answer shapes (task envelope, status words, where result URLs live) are assumptions the
emulator makes switchable (docs/providers.md §1.3–1.4); the client must understand all of them.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from providers.apiinone import EDIT_MODEL, WIRE_MODEL, ApiInOneProvider
from providers.base import (
    AuthError,
    ContentBlockedError,
    GenerationRequest,
    JobHandle,
    JobState,
    JobUpdate,
    Kind,
    OutOfFundsError,
    ProviderError,
    ProviderSettings,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)
from providers.sandbox.apiinone import ApiInOneEmulator
from providers.sandbox.common import Fault, render_png
from providers.sandbox.server import Sandbox

SANDBOX_OPTIONS = {"oversize_bytes": 256 * 1024}
VENDOR = "apiinone"
KEY = "sandbox-key"


def make_client(
    session: aiohttp.ClientSession, sandbox: Sandbox, *, key: str = KEY, timeout: float = 5.0
) -> ApiInOneProvider:
    settings = ProviderSettings(base_url=sandbox.base_url(VENDOR), api_key=key, timeout=timeout)
    return ApiInOneProvider(session, settings)


def offline_client(session: aiohttp.ClientSession) -> ApiInOneProvider:
    """A client for pure parsing tests; its base URL is never called."""
    return ApiInOneProvider(session, ProviderSettings(base_url="http://127.0.0.1:9", api_key=KEY))


def emulator(sandbox: Sandbox) -> ApiInOneEmulator:
    return cast(ApiInOneEmulator, sandbox[VENDOR])


def text_request(**fields: Any) -> GenerationRequest:
    values: dict[str, Any] = {"kind": Kind.IMAGE, "model": WIRE_MODEL, "prompt": "a red fox in the snow"}
    return GenerationRequest(**{**values, **fields})


def edit_request(image_urls: tuple[str, ...], **fields: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "kind": Kind.EDIT,
        "model": EDIT_MODEL,
        "prompt": "make it night",
        "image_urls": image_urls,
    }
    return GenerationRequest(**{**values, **fields})


async def poll_until_done(client: ApiInOneProvider, handle: JobHandle, timeout: float = 3.0) -> JobUpdate:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        update = await client.poll(handle)
        if update.terminal or loop.time() > deadline:
            return update
        await asyncio.sleep(0.02)


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


async def png_size(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    status, body = await fetch(session, url)
    assert status == 200
    with Image.open(io.BytesIO(body)) as im:
        assert im.format == "PNG"
        return im.size


def input_image_url(sandbox: Sandbox) -> str:
    emu = emulator(sandbox)
    emu.files["input.png"] = (render_png("input", 320, 320), "image/png")
    return emu.file_url("input.png")


# --- success paths ---------------------------------------------------------------------------


async def test_text_to_image_delivers_a_png_of_the_requested_size(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    submission = await client.submit(text_request(width=1024, height=576))
    assert submission.update is None and submission.cost_usd == 0.25
    update = await poll_until_done(client, submission.handle)
    assert update.state is JobState.SUCCEEDED
    [artifact] = update.artifacts
    assert artifact.role == "image" and artifact.url is not None
    assert await png_size(session, artifact.url) == (1024, 576)
    assert update.cost_usd == pytest.approx(0.25)  # 25 credits consumed


async def test_submit_speaks_the_documented_wire_format(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    submission = await client.submit(text_request(width=768, height=512, seed=7))
    sent = emulator(sandbox).jobs[submission.handle.job_id].request
    assert sent == {
        "model": "hunyuan-image-3",
        "prompt": "a red fox in the snow",
        "type": "text-to-image",
        "size": "768*512",
        "seed": 7,
    }
    assert ("POST", "/apiinone/api/v1/images/generations") in emulator(sandbox).requests


async def test_a_job_is_queued_then_running_before_it_completes(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).latency = (0.4, 0.4)
    client = make_client(session, sandbox)
    handle = (await client.submit(text_request())).handle
    assert (await client.poll(handle)).state is JobState.QUEUED
    await asyncio.sleep(0.15)
    assert (await client.poll(handle)).state is JobState.RUNNING


async def test_edit_sends_the_input_images_and_returns_an_image(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    url = input_image_url(sandbox)
    submission = await client.submit(edit_request((url,), width=512, height=512))
    sent = emulator(sandbox).jobs[submission.handle.job_id].request
    assert (sent["type"], sent["images"], sent["model"]) == ("edit", [url], "hunyuan-image-3")
    update = await poll_until_done(client, submission.handle)
    assert update.state is JobState.SUCCEEDED
    assert update.artifacts[0].url is not None
    assert await png_size(session, update.artifacts[0].url) == (512, 512)


async def test_edit_with_an_unreachable_input_image_is_rejected(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    with pytest.raises(RejectedInputError) as info:
        await client.submit(edit_request((emulator(sandbox).file_url("missing.png"),)))
    assert info.value.status == 400


async def test_edit_without_an_input_image_is_refused_before_any_call(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    with pytest.raises(RejectedInputError):
        await client.submit(edit_request(()))
    assert emulator(sandbox).requests == []


async def test_the_emulator_answers_400_to_an_edit_without_images(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    body = {"model": "hunyuan-image-3", "prompt": "x", "type": "edit"}
    async with session.post(
        sandbox.base_url(VENDOR) + "/api/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == 400 and "images" in error["message"]


async def test_a_synchronous_answer_carries_the_final_update(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).sync_mode = True
    client = make_client(session, sandbox)
    submission = await client.submit(text_request(width=640, height=640))
    assert submission.update is not None and submission.update.state is JobState.SUCCEEDED
    assert submission.update.artifacts[0].url is not None
    assert await png_size(session, submission.update.artifacts[0].url) == (640, 640)
    # The emulator still knows the task by id, so the handle is a real one.
    assert (await client.poll(submission.handle)).state is JobState.SUCCEEDED


async def test_a_synchronous_failure_is_a_failed_update_not_an_exception(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emu = emulator(sandbox)
    emu.sync_mode = True
    emu.inject(Fault.JOB_FAILED)
    submission = await make_client(session, sandbox).submit(text_request())
    assert submission.update is not None
    assert submission.update.state is JobState.FAILED and submission.update.charged is False


@pytest.mark.parametrize("flat", [False, True], ids=["data-envelope", "flat-envelope"])
@pytest.mark.parametrize("shape", ["image_urls", "images", "output_list"])
async def test_result_urls_are_found_in_every_plausible_place(
    sandbox: Sandbox, session: aiohttp.ClientSession, shape: str, flat: bool
) -> None:
    emu = emulator(sandbox)
    emu.result_shape = shape  # type: ignore[assignment]
    emu.flat_envelope = flat  # also upper-case statuses: compared case-insensitively
    client = make_client(session, sandbox)
    update = await poll_until_done(client, (await client.submit(text_request(width=512, height=768))).handle)
    assert update.state is JobState.SUCCEEDED
    assert update.artifacts[0].url is not None
    assert await png_size(session, update.artifacts[0].url) == (512, 768)


async def test_a_synchronous_openai_style_answer_with_inline_images_is_understood(
    session: aiohttp.ClientSession,
) -> None:
    # `/images/generations` is OpenAI-shaped; an inline `b64_json` answer must not be lost.
    png = render_png("inline", 256, 256)
    body = json.dumps({"created": 1, "data": [{"b64_json": base64.b64encode(png).decode()}]}).encode()
    client = offline_client(session)
    update = client.parse_webhook(body, {})
    assert update is not None and update.state is JobState.SUCCEEDED
    assert update.artifacts[0].data == png and update.artifacts[0].content_type == "image/png"


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(256, 256), (1536, 1536), (256, 1536), (1536, 256)])
async def test_sizes_at_the_assumed_bounds_are_accepted(
    sandbox: Sandbox, session: aiohttp.ClientSession, width: int, height: int
) -> None:
    route = ApiInOneProvider.routes()[0]
    assert (route.min_side, route.max_side) == (256, 1536)
    client = make_client(session, sandbox)
    update = await poll_until_done(
        client, (await client.submit(text_request(width=width, height=height))).handle
    )
    assert update.artifacts[0].url is not None
    assert await png_size(session, update.artifacts[0].url) == (width, height)


async def test_a_size_outside_the_bounds_is_rejected(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(RejectedInputError, match="between 256 and 1536"):
        await make_client(session, sandbox).submit(text_request(width=2048, height=1024))


def test_routes_are_image_and_edit_at_the_published_price() -> None:
    image, edit = ApiInOneProvider.routes()
    assert (image.kind, edit.kind) == (Kind.IMAGE, Kind.EDIT)
    assert edit.needs_image and edit.accepts_image and not image.needs_image
    assert image.key != edit.key
    assert image.price_usd == edit.price_usd == 0.25


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault.AUTH, AuthError, 401),
        (Fault.FUNDS, OutOfFundsError, 402),
        (Fault.SERVER_ERROR, RetryableError, 500),
        (Fault.MALFORMED, RetryableError, 200),
        (Fault.REJECT, RejectedInputError, 400),
    ],
)
async def test_submit_faults_map_to_error_types(
    sandbox: Sandbox,
    session: aiohttp.ClientSession,
    fault: Fault,
    error: type[ProviderError],
    status: int,
) -> None:
    emulator(sandbox).inject(fault, stage="submit")
    with pytest.raises(error) as info:
        await make_client(session, sandbox).submit(text_request())
    assert type(info.value) is error and info.value.status == status


async def test_a_rate_limit_is_retryable_after_the_vendors_delay(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).inject(Fault.RATE_LIMIT, stage="submit", retry_after=2.0)
    with pytest.raises(RetryableError) as info:
        await make_client(session, sandbox).submit(text_request())
    assert info.value.status == 429 and info.value.retry_after == 2.0


async def test_a_hung_submit_times_out_as_retryable(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    emulator(sandbox).inject(Fault.TIMEOUT, stage="submit")
    with pytest.raises(RetryableError, match="timed out"):
        await make_client(session, sandbox, timeout=0.2).submit(text_request())


async def test_poll_faults_are_raised_for_the_callers_backoff(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    handle = (await client.submit(text_request())).handle
    emulator(sandbox).inject(Fault.RATE_LIMIT, stage="poll", retry_after=3.0)
    with pytest.raises(RetryableError) as info:
        await client.poll(handle)
    assert info.value.retry_after == 3.0
    assert (await poll_until_done(client, handle)).state is JobState.SUCCEEDED


async def test_a_refused_prompt_is_content_blocked(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    with pytest.raises(ContentBlockedError):
        await make_client(session, sandbox).submit(text_request(prompt="something nsfw"))


async def test_a_stuck_job_stays_running(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    emulator(sandbox).inject(Fault.STUCK)
    client = make_client(session, sandbox)
    handle = (await client.submit(text_request())).handle
    await asyncio.sleep(0.25)  # well past the job's latency
    assert (await client.poll(handle)).state is JobState.RUNNING


@pytest.mark.parametrize("fault", [Fault.JOB_FAILED, Fault.JOB_ERROR])
async def test_a_failed_task_is_a_failed_update_and_not_charged(
    sandbox: Sandbox, session: aiohttp.ClientSession, fault: Fault
) -> None:
    emulator(sandbox).inject(fault)
    client = make_client(session, sandbox)
    update = await poll_until_done(client, (await client.submit(text_request())).handle)
    assert update.state is JobState.FAILED
    assert update.charged is False  # "billed on successful requests"
    assert update.error and not update.artifacts


async def test_a_dead_result_url_answers_404(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    emulator(sandbox).inject(Fault.DEAD_URL)
    client = make_client(session, sandbox)
    update = await poll_until_done(client, (await client.submit(text_request())).handle)
    assert update.state is JobState.SUCCEEDED and update.artifacts[0].url is not None
    status, _ = await fetch(session, update.artifacts[0].url)
    assert status == 404


async def test_an_oversize_result_is_served_beyond_any_cap(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).inject(Fault.OVERSIZE)
    client = make_client(session, sandbox)
    update = await poll_until_done(client, (await client.submit(text_request())).handle)
    assert update.artifacts[0].url is not None
    async with session.get(update.artifacts[0].url) as resp:
        assert resp.content_length == 256 * 1024


async def test_a_task_the_vendor_forgot_is_unknown(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(session, sandbox)
    handle = (await client.submit(text_request())).handle
    emulator(sandbox).jobs.clear()
    with pytest.raises(UnknownJobError):
        await client.poll(handle)


# --- callbacks and key check -----------------------------------------------------------------


async def test_a_callback_round_trips_to_the_final_update(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        client = make_client(session, sandbox)
        submission = await client.submit(text_request(webhook_url=f"http://127.0.0.1:{port}/hook?token=t"))
        assert emulator(sandbox).jobs[submission.handle.job_id].request["callback_url"].endswith("token=t")
        body = await asyncio.wait_for(received.get(), 3.0)
    finally:
        await runner.cleanup()
    update = client.parse_webhook(body, {"Content-Type": "application/json"})
    assert update is not None and update.state is JobState.SUCCEEDED
    assert update.artifacts[0].url is not None
    assert await png_size(session, update.artifacts[0].url) == (1024, 1024)


async def test_a_callback_for_a_running_task_carries_no_outcome(session: aiohttp.ClientSession) -> None:
    client = offline_client(session)
    body = json.dumps({"code": 200, "data": {"task_id": "t1", "status": "processing"}}).encode()
    assert client.parse_webhook(body, {}) is None


async def test_a_garbage_callback_is_rejected(session: aiohttp.ClientSession) -> None:
    client = offline_client(session)
    with pytest.raises(RejectedInputError):
        client.parse_webhook(b"<html>", {})


async def test_check_accepts_a_good_key_without_creating_a_task(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    assert await make_client(session, sandbox).check() == "ok"
    assert emulator(sandbox).jobs == {}


async def test_check_refuses_a_bad_key(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    with pytest.raises(AuthError):
        await make_client(session, sandbox, key="aio_wrong").check()
