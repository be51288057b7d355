"""Pixazo client against its loopback emulator: five models on their own paths, both 3D output
shapes, every fault, callbacks and the key check.

Assumptions under test (docs/providers.md §3): the `image_size` presets' pixel sizes are fal's,
validation errors look like the queue's `{error, message}`, and an unknown request id is a 404.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from providers.base import (
    AuthError,
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
    RouteSpec,
    UnknownJobError,
)
from providers.pixazo import IMAGE_PRESETS, PixazoProvider
from providers.sandbox.common import Fault, render_png
from providers.sandbox.pixazo import SUBMIT_PATHS, PixazoEmulator
from providers.sandbox.server import Sandbox

VENDOR = "pixazo"
KEY = "sandbox-key"
ROUTES = {r.model: r for r in PixazoProvider.routes()}


def make_client(
    session: aiohttp.ClientSession, sandbox: Sandbox, *, key: str = KEY, timeout: float = 5.0
) -> PixazoProvider:
    settings = ProviderSettings(base_url=sandbox.base_url(VENDOR), api_key=key, timeout=timeout)
    return PixazoProvider(session, settings)


def offline_client(session: aiohttp.ClientSession) -> PixazoProvider:
    """A client for pure parsing tests; its base URL is never called."""
    return PixazoProvider(session, ProviderSettings(base_url="http://127.0.0.1:9", api_key=KEY))


def emulator(sandbox: Sandbox) -> PixazoEmulator:
    return cast(PixazoEmulator, sandbox[VENDOR])


def request_for(model: str, **fields: Any) -> GenerationRequest:
    route = ROUTES[model]
    values: dict[str, Any] = {"kind": route.kind, "model": model, "prompt": "a wooden chair"}
    if route.sizes:
        values["width"], values["height"] = route.sizes[0]
    return GenerationRequest(**{**values, **fields})


def input_image_url(sandbox: Sandbox) -> str:
    emu = emulator(sandbox)
    emu.files["input.png"] = (render_png("chair", 320, 320), "image/png")
    return emu.file_url("input.png")


async def poll_until_done(client: PixazoProvider, handle: JobHandle, timeout: float = 3.0) -> JobUpdate:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        update = await client.poll(handle)
        if update.terminal or loop.time() > deadline:
            return update
        await asyncio.sleep(0.02)


async def run(client: PixazoProvider, request: GenerationRequest) -> JobUpdate:
    return await poll_until_done(client, (await client.submit(request)).handle)


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


async def png_size(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    status, body = await fetch(session, url)
    assert status == 200
    with Image.open(io.BytesIO(body)) as im:
        assert im.format == "PNG"
        return im.size


async def assert_glb_and_thumbnail(
    session: aiohttp.ClientSession, update: JobUpdate, *, thumbnail: bool
) -> None:
    assert update.state is JobState.SUCCEEDED
    models = [a for a in update.artifacts if a.role == "model"]
    assert len(models) == 1 and models[0].url is not None
    assert models[0].content_type == "model/gltf-binary"
    status, body = await fetch(session, models[0].url)
    assert status == 200 and body[:4] == b"glTF"
    thumbs = [a for a in update.artifacts if a.role == "thumbnail"]
    assert len(thumbs) == (1 if thumbnail else 0)
    if thumbs:
        assert thumbs[0].url is not None
        assert await png_size(session, thumbs[0].url) == (256, 256)


# --- images ----------------------------------------------------------------------------------


async def test_hunyuan_image_delivers_pngs_of_the_preset_size(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    request = request_for("hunyuan-image", width=1024, height=576, count=2, negative_prompt="blur", seed=11)
    submission = await client.submit(request)
    assert submission.cost_usd == pytest.approx(0.40)
    sent = emulator(sandbox).jobs[submission.handle.job_id].request
    assert sent == {
        "prompt": "a wooden chair",
        "image_size": "landscape_16_9",
        "num_images": 2,
        "output_format": "png",
        "negative_prompt": "blur",
        "seed": 11,
    }
    update = await poll_until_done(client, submission.handle)
    assert update.state is JobState.SUCCEEDED
    assert [a.role for a in update.artifacts] == ["image", "image"]
    for artifact in update.artifacts:
        assert artifact.url is not None and artifact.content_type == "image/png"
        assert await png_size(session, artifact.url) == (1024, 576)


async def test_instruct_sends_sizes_with_an_x_and_no_negative_or_seed(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    request = request_for("hunyuan-image-3-0-instruct", width=768, height=1344, seed=3, negative_prompt="x")
    submission = await client.submit(request)
    assert submission.cost_usd is None  # no published price
    sent = emulator(sandbox).jobs[submission.handle.job_id].request
    assert sent == {
        "prompt": "a wooden chair",
        "image_size": "768x1344",
        "num_images": 1,
        "output_format": "png",
    }
    update = await poll_until_done(client, submission.handle)
    assert update.artifacts[0].url is not None
    assert await png_size(session, update.artifacts[0].url) == (768, 1344)


@pytest.mark.parametrize(
    ("model", "size"),
    [(r.model, size) for r in PixazoProvider.routes() for size in r.sizes],
    ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)),
)
async def test_every_listed_size_is_accepted_and_produced(
    sandbox: Sandbox, session: aiohttp.ClientSession, model: str, size: tuple[int, int]
) -> None:
    client = make_client(session, sandbox)
    update = await run(client, request_for(model, width=size[0], height=size[1]))
    assert update.state is JobState.SUCCEEDED and update.artifacts[0].url is not None
    assert await png_size(session, update.artifacts[0].url) == size


def test_the_preset_table_matches_the_routes_sizes() -> None:
    assert ROUTES["hunyuan-image"].sizes == tuple(IMAGE_PRESETS.values())
    assert set(ROUTES["hunyuan-image-3-0-instruct"].sizes) == {
        (512, 512),
        (1024, 1024),
        (768, 1344),
        (1344, 768),
    }


def test_routes_carry_the_published_prices_and_limits() -> None:
    assert {m: r.price_usd for m, r in ROUTES.items()} == {
        "hunyuan-image": 0.20,
        "hunyuan-image-3-0-instruct": None,
        "hunyuan-3d": 0.225,
        "hunyuan-3d-v3-1-pro-image-to-3d": 0.225,
        "hunyuan3d-3-0-api-294": 0.375,
    }
    assert (
        ROUTES["hunyuan-image"].supports_negative
        and not ROUTES["hunyuan-image-3-0-instruct"].supports_negative
    )
    assert all(r.max_images == 4 for r in ROUTES.values() if r.kind is Kind.IMAGE)
    assert [m for m, r in ROUTES.items() if r.needs_image] == [
        "hunyuan-3d-v3-1-pro-image-to-3d",
        "hunyuan3d-3-0-api-294",
    ]
    assert all(r.webhook for r in ROUTES.values())


@pytest.mark.parametrize("route", PixazoProvider.routes(), ids=lambda r: r.model)
async def test_each_model_is_submitted_on_its_own_path_and_polled_on_the_universal_one(
    sandbox: Sandbox, session: aiohttp.ClientSession, route: RouteSpec
) -> None:
    client = make_client(session, sandbox)
    extra = {"image_urls": (input_image_url(sandbox),)} if route.needs_image else {}
    submission = await client.submit(request_for(route.model, **extra))
    handle = submission.handle
    assert handle.job_id.startswith(f"{route.model}_")
    assert handle.data["polling_url"].endswith(f"/v2/requests/status/{handle.job_id}")
    await client.poll(handle)
    requests = emulator(sandbox).requests
    assert ("POST", f"/pixazo{SUBMIT_PATHS[route.model]}") in requests
    assert ("GET", f"/pixazo/v2/requests/status/{handle.job_id}") in requests


# --- 3D --------------------------------------------------------------------------------------


async def test_text_to_3d_delivers_a_glb_and_a_thumbnail(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    submission = await client.submit(request_for("hunyuan-3d"))
    assert emulator(sandbox).jobs[submission.handle.job_id].request == {"prompt": "a wooden chair"}
    update = await poll_until_done(client, submission.handle)
    await assert_glb_and_thumbnail(session, update, thumbnail=True)
    assert update.cost_usd == pytest.approx(0.225)


async def test_image_to_3d_pro_sends_the_input_geometry_type_and_face_count(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    url = input_image_url(sandbox)
    request = request_for(
        "hunyuan-3d-v3-1-pro-image-to-3d",
        prompt="",
        image_urls=(url,),
        geometry_only=True,
        face_count=100_000,
    )
    submission = await client.submit(request)
    sent = emulator(sandbox).jobs[submission.handle.job_id].request
    assert sent == {"input_image_url": url, "generate_type": "Geometry", "face_count": 100_000}
    await assert_glb_and_thumbnail(session, await poll_until_done(client, submission.handle), thumbnail=True)


async def test_image_to_3d_v3_0_sends_the_input_prompt_and_face_count(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    url = input_image_url(sandbox)
    request = request_for("hunyuan3d-3-0-api-294", prompt="oak", image_urls=(url,), face_count=500_000)
    submission = await client.submit(request)
    sent = emulator(sandbox).jobs[submission.handle.job_id].request
    assert sent == {"input_image_url": url, "prompt": "oak", "face_count": 500_000}
    update = await poll_until_done(client, submission.handle)
    await assert_glb_and_thumbnail(session, update, thumbnail=True)
    assert update.cost_usd == pytest.approx(0.375)


@pytest.mark.parametrize("model", ["hunyuan-3d", "hunyuan-3d-v3-1-pro-image-to-3d", "hunyuan3d-3-0-api-294"])
async def test_the_media_url_3d_shape_is_understood(
    sandbox: Sandbox, session: aiohttp.ClientSession, model: str
) -> None:
    emulator(sandbox).model3d_shape = "media_url"
    client = make_client(session, sandbox)
    extra = {"image_urls": (input_image_url(sandbox),)} if ROUTES[model].needs_image else {}
    update = await run(client, request_for(model, **extra))
    await assert_glb_and_thumbnail(session, update, thumbnail=False)


async def test_image_to_3d_with_an_unreachable_input_is_rejected(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    missing = emulator(sandbox).file_url("missing.png")
    with pytest.raises(RejectedInputError, match="input_image_url") as info:
        await client.submit(request_for("hunyuan3d-3-0-api-294", image_urls=(missing,)))
    assert info.value.status == 400


async def test_image_to_3d_without_an_input_is_refused_before_any_call(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(RejectedInputError):
        await make_client(session, sandbox).submit(request_for("hunyuan-3d-v3-1-pro-image-to-3d"))
    assert emulator(sandbox).requests == []


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
        await make_client(session, sandbox).submit(request_for("hunyuan-image"))
    assert type(info.value) is error and info.value.status == status


async def test_a_rate_limit_is_retryable_after_the_gateways_delay(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).inject(Fault.RATE_LIMIT, stage="submit", retry_after=4.0)
    with pytest.raises(RetryableError) as info:
        await make_client(session, sandbox).submit(request_for("hunyuan-image"))
    assert info.value.status == 429 and info.value.retry_after == 4.0


async def test_a_hung_submit_times_out_as_retryable(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    emulator(sandbox).inject(Fault.TIMEOUT, stage="submit")
    with pytest.raises(RetryableError, match="timed out"):
        await make_client(session, sandbox, timeout=0.2).submit(request_for("hunyuan-image"))


async def test_a_disabled_model_fails_over_without_blaming_the_user(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).disabled_models.add("hunyuan-image")
    with pytest.raises(ProviderError) as info:
        await make_client(session, sandbox).submit(request_for("hunyuan-image"))
    assert type(info.value) is ProviderError and info.value.failover
    assert "not found or is disabled" in info.value.message


async def test_poll_faults_are_raised_for_the_callers_backoff(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    handle = (await client.submit(request_for("hunyuan-image"))).handle
    emulator(sandbox).inject(Fault.SERVER_ERROR, stage="poll")
    with pytest.raises(RetryableError):
        await client.poll(handle)
    assert (await poll_until_done(client, handle)).state is JobState.SUCCEEDED


async def test_a_stuck_job_stays_running(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    emulator(sandbox).inject(Fault.STUCK)
    client = make_client(session, sandbox)
    handle = (await client.submit(request_for("hunyuan-image"))).handle
    await asyncio.sleep(0.25)  # well past the job's latency
    assert (await client.poll(handle)).state is JobState.RUNNING


@pytest.mark.parametrize(("fault", "charged"), [(Fault.JOB_FAILED, True), (Fault.JOB_ERROR, False)])
async def test_failed_is_charged_and_error_is_not(
    sandbox: Sandbox, session: aiohttp.ClientSession, fault: Fault, charged: bool
) -> None:
    emulator(sandbox).inject(fault)
    update = await run(make_client(session, sandbox), request_for("hunyuan-3d"))
    assert update.state is JobState.FAILED and update.charged is charged
    assert update.error and not update.artifacts


async def test_a_dead_result_url_answers_404(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    emulator(sandbox).inject(Fault.DEAD_URL)
    update = await run(make_client(session, sandbox), request_for("hunyuan-image"))
    assert update.state is JobState.SUCCEEDED and update.artifacts[0].url is not None
    status, _ = await fetch(session, update.artifacts[0].url)
    assert status == 404


async def test_a_request_the_gateway_forgot_is_unknown(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    handle = (await client.submit(request_for("hunyuan-image"))).handle
    emulator(sandbox).jobs.clear()
    with pytest.raises(UnknownJobError):
        await client.poll(handle)


# --- callbacks and key check -----------------------------------------------------------------


class Receiver:
    """A loopback webhook receiver that keeps every body it is sent."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook?token=t"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _hook(self, request: web.Request) -> web.Response:
        await self.bodies.put((await request.read(), dict(request.headers)))
        return web.Response(text="ok")


async def test_a_terminal_callback_round_trips_to_the_final_update(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, sandbox)
    async with Receiver() as receiver:
        submission = await client.submit(request_for("hunyuan-3d", webhook_url=receiver.url))
        assert emulator(sandbox).jobs[submission.handle.job_id].webhook_url == receiver.url
        body, headers = await asyncio.wait_for(receiver.bodies.get(), 3.0)
        await asyncio.sleep(0.3)
        assert receiver.bodies.empty()  # terminal mode: exactly one POST
    update = client.parse_webhook(body, headers)
    assert update is not None
    await assert_glb_and_thumbnail(session, update, thumbnail=True)


async def test_an_error_callback_is_a_failed_update_not_charged(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).inject(Fault.JOB_ERROR)
    client = make_client(session, sandbox)
    async with Receiver() as receiver:
        await client.submit(request_for("hunyuan-image", webhook_url=receiver.url))
        body, headers = await asyncio.wait_for(receiver.bodies.get(), 3.0)
    update = client.parse_webhook(body, headers)
    assert update is not None and update.state is JobState.FAILED and update.charged is False


async def test_sync_mode_in_flight_callbacks_carry_no_outcome(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    emulator(sandbox).latency = (1.0, 1.0)  # queued for 0.25 s: the 0.1 s ticker sees every phase
    client = make_client(session, sandbox)
    async with Receiver() as receiver:
        async with session.post(
            sandbox.base_url(VENDOR) + SUBMIT_PATHS["hunyuan-image"],
            json={"prompt": "a fox"},
            headers={
                "Ocp-Apim-Subscription-Key": KEY,
                "X-Webhook-URL": receiver.url,
                "X-Webhook-Mode": "sync",
            },
        ) as resp:
            assert resp.status == 202
        bodies = [await asyncio.wait_for(receiver.bodies.get(), 3.0) for _ in range(3)]
    statuses = [json.loads(b)["status"] for b, _ in bodies]
    assert statuses == ["QUEUED", "PROCESSING", "COMPLETED"]
    updates = [client.parse_webhook(b, h) for b, h in bodies]
    assert updates[0] is None and updates[1] is None
    assert updates[2] is not None and updates[2].state is JobState.SUCCEEDED


async def test_a_plain_http_webhook_to_a_public_host_is_refused(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    request = request_for("hunyuan-image", webhook_url="http://bot.example.org/webhooks/pixazo/1")
    with pytest.raises(RejectedInputError, match="HTTPS"):
        await make_client(session, sandbox).submit(request)


async def test_a_garbage_callback_is_rejected(session: aiohttp.ClientSession) -> None:
    with pytest.raises(RejectedInputError):
        offline_client(session).parse_webhook(b'{"nothing": 1}', {})


async def test_check_accepts_a_good_key_without_creating_a_job(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    assert await make_client(session, sandbox).check() == "ok"
    assert emulator(sandbox).jobs == {}


async def test_check_refuses_a_bad_key(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    with pytest.raises(AuthError):
        await make_client(session, sandbox, key="wrong").check()
