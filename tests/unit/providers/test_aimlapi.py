"""The AI/ML API client against its loopback emulator: synchronous generation, sizes, faults."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from providers.aimlapi import MODEL, PRESETS, AimlApiProvider, parse_generation
from providers.base import (
    AuthError,
    GenerationRequest,
    JobHandle,
    JobState,
    Kind,
    OutOfFundsError,
    ProviderSettings,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)
from providers.sandbox.aimlapi import PRESET_SIZES, AimlApiEmulator
from providers.sandbox.common import Fault
from providers.sandbox.server import Sandbox

KEY = "sandbox-key"
VENDOR = "aimlapi"


@pytest.fixture
def client(sandbox: Sandbox, session: aiohttp.ClientSession) -> AimlApiProvider:
    return make_client(sandbox.base_url("aimlapi"), session)


def make_client(
    base_url: str, session: aiohttp.ClientSession, *, key: str = KEY, timeout: float = 5.0, **extra: Any
) -> AimlApiProvider:
    return AimlApiProvider(
        session, ProviderSettings(base_url=base_url, api_key=key, timeout=timeout, extra=extra)
    )


def image_request(width: int = 1024, height: int = 1024, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        kind=Kind.IMAGE, model=MODEL, prompt="a fox in the snow", width=width, height=height, **fields
    )


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[int, Any], Awaitable[str]]]:
    """A loopback server answering every request with one fixed status and JSON body."""
    runners: list[web.AppRunner] = []

    async def start(status: int, body: Any) -> str:
        async def answer(_request: web.Request) -> web.Response:
            return web.json_response(body, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


# --- routes and sizes ----------------------------------------------------------------------


def test_route_takes_custom_sizes_up_to_four_images_and_has_no_webhook() -> None:
    (route,) = AimlApiProvider.routes()
    assert route.key == f"aimlapi:{MODEL}"
    assert route.sizes == ()
    assert (route.min_side, route.max_side, route.size_step) == (256, 1536, 8)
    assert route.max_images == 4
    assert route.supports_negative and route.supports_seed
    assert not route.webhook
    assert route.price_usd is None


def test_client_presets_match_the_emulator_presets() -> None:
    assert {name: size for size, name in PRESETS.items()} == PRESET_SIZES


async def test_preset_size_is_sent_by_name_and_yields_a_png_of_that_size(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(1024, 768))
    (job,) = emulator.jobs.values()
    assert job.request["image_size"] == "landscape_4_3"
    update = submission.update
    assert update is not None and update.state is JobState.SUCCEEDED
    (artifact,) = update.artifacts
    assert artifact.url is not None and artifact.content_type == "image/png"
    status, data = await fetch(session, artifact.url)
    assert status == 200
    assert png_size(data) == (1024, 768)


async def test_landscape_16_9_is_1280_by_768_as_the_vendor_documents(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    # The documented example: image_size "landscape_16_9" answered with width 1280, height 768.
    assert PRESETS[(1280, 768)] == "landscape_16_9"
    submission = await client.submit(image_request(1280, 768))
    (job,) = emulator.jobs.values()
    assert job.request["image_size"] == "landscape_16_9"
    assert submission.update is not None
    (artifact,) = submission.update.artifacts
    assert artifact.url is not None
    _, data = await fetch(session, artifact.url)
    assert png_size(data) == (1280, 768)


async def test_an_exact_16_9_size_is_sent_as_width_and_height_not_as_the_5_3_preset(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(1024, 576))
    (job,) = emulator.jobs.values()
    assert job.request["image_size"] == {"width": 1024, "height": 576}
    assert submission.update is not None
    (artifact,) = submission.update.artifacts
    assert artifact.url is not None
    _, data = await fetch(session, artifact.url)
    assert png_size(data) == (1024, 576)


async def test_custom_size_is_sent_as_width_and_height(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(1216, 832))
    (job,) = emulator.jobs.values()
    assert job.request["image_size"] == {"width": 1216, "height": 832}
    assert submission.update is not None
    url = submission.update.artifacts[0].url
    assert url is not None
    assert png_size((await fetch(session, url))[1]) == (1216, 832)


async def test_every_preset_and_the_corners_of_the_size_range_are_accepted(client: AimlApiProvider) -> None:
    (route,) = client.routes()
    corners = [
        (route.min_side, route.min_side),
        (route.max_side, route.max_side),
        (route.min_side, route.max_side),
    ]
    for width, height in [*PRESETS, *corners]:
        submission = await client.submit(image_request(width, height))
        assert submission.update is not None
        assert submission.update.state is JobState.SUCCEEDED, (width, height)


async def test_four_images_come_back_from_one_call(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(512, 512, count=4))
    assert submission.update is not None
    assert len(submission.update.artifacts) == 4
    assert len(emulator.jobs) == 1
    for artifact in submission.update.artifacts:
        assert artifact.url is not None
        assert png_size((await fetch(session, artifact.url))[1]) == (512, 512)


async def test_negative_prompt_and_seed_reach_the_vendor_with_seed_at_least_one(
    client: AimlApiProvider, emulator: AimlApiEmulator
) -> None:
    await client.submit(image_request(negative_prompt="blur", seed=0))
    (job,) = emulator.jobs.values()
    assert job.request["negative_prompt"] == "blur"
    assert job.request["seed"] == 1
    assert job.request["num_images"] == 1


async def test_submission_is_finished_and_has_a_local_job_id(client: AimlApiProvider) -> None:
    submission = await client.submit(image_request())
    assert submission.update is not None and submission.update.terminal
    assert submission.handle.vendor == "aimlapi" and submission.handle.job_id


# --- inline answers --------------------------------------------------------------------------


async def test_sync_mode_returns_the_png_inline(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(sandbox.base_url("aimlapi"), session, sync_mode=True)
    submission = await client.submit(image_request(768, 1024))
    assert submission.update is not None
    (artifact,) = submission.update.artifacts
    assert artifact.url is None and artifact.data is not None
    assert artifact.content_type == "image/png"
    assert png_size(artifact.data) == (768, 1024)


def test_b64_json_answer_is_decoded_to_bytes() -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    body = {"data": [{"url": None, "b64_json": base64.b64encode(png.getvalue()).decode()}], "meta": {}}
    update = parse_generation(body)
    assert update.artifacts[0].data == png.getvalue()


def test_success_answer_without_images_is_retryable() -> None:
    with pytest.raises(RetryableError):
        parse_generation({"data": [], "meta": {"usage": {"credits_used": 1}}})


# --- faults ----------------------------------------------------------------------------------


async def test_bad_key_is_an_auth_error(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(sandbox.base_url("aimlapi"), session, key="wrong")
    with pytest.raises(AuthError) as err:
        await client.submit(image_request())
    assert err.value.status == 401


async def test_injected_auth_fault_is_an_auth_error(
    client: AimlApiProvider, emulator: AimlApiEmulator
) -> None:
    emulator.inject(Fault.AUTH)
    with pytest.raises(AuthError):
        await client.submit(image_request())


async def test_out_of_credits_403_is_out_of_funds(client: AimlApiProvider, emulator: AimlApiEmulator) -> None:
    emulator.inject(Fault.FUNDS)
    with pytest.raises(OutOfFundsError) as err:
        await client.submit(image_request())
    assert err.value.status == 403


async def test_a_403_about_anything_else_is_an_auth_error(
    canned: Callable[[int, Any], Awaitable[str]], session: aiohttp.ClientSession
) -> None:
    body = {"message": "Forbidden: this key cannot use this model", "statusCode": "403", "path": "/v1"}
    client = make_client(await canned(403, body), session)
    with pytest.raises(AuthError):
        await client.submit(image_request())


async def test_rate_limit_is_retryable_with_retry_after(
    client: AimlApiProvider, emulator: AimlApiEmulator
) -> None:
    emulator.inject(Fault.RATE_LIMIT, retry_after=7)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 429
    assert err.value.retry_after == 7


async def test_server_error_is_retryable(client: AimlApiProvider, emulator: AimlApiEmulator) -> None:
    emulator.inject(Fault.SERVER_ERROR)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 500


async def test_a_slow_answer_times_out_as_retryable(
    sandbox: Sandbox, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.timeout_seconds = 0.3
    emulator.inject(Fault.TIMEOUT)
    client = make_client(sandbox.base_url("aimlapi"), session, timeout=0.1)
    with pytest.raises(RetryableError, match="timed out"):
        await client.submit(image_request())


async def test_malformed_json_is_retryable(client: AimlApiProvider, emulator: AimlApiEmulator) -> None:
    emulator.inject(Fault.MALFORMED)
    with pytest.raises(RetryableError, match="malformed"):
        await client.submit(image_request())


async def test_injected_validation_error_is_rejected_input(
    client: AimlApiProvider, emulator: AimlApiEmulator
) -> None:
    emulator.inject(Fault.REJECT)
    with pytest.raises(RejectedInputError) as err:
        await client.submit(image_request())
    assert "Body validation error!" in err.value.message


async def test_size_off_the_grid_is_rejected_input(client: AimlApiProvider) -> None:
    with pytest.raises(RejectedInputError, match="multiple of 8"):
        await client.submit(image_request(1001, 1001))


async def test_stuck_generation_ends_in_a_retryable_gateway_timeout(
    client: AimlApiProvider, emulator: AimlApiEmulator
) -> None:
    emulator.timeout_seconds = 0.2
    emulator.inject(Fault.STUCK)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 504
    assert err.value.message == "Generation timeout"


@pytest.mark.parametrize("fault", [Fault.JOB_FAILED, Fault.JOB_ERROR])
async def test_a_failed_generation_is_a_retryable_server_error(
    client: AimlApiProvider, emulator: AimlApiEmulator, fault: Fault
) -> None:
    # A synchronous vendor has no FAILED job to report: the call itself fails with a 500.
    emulator.inject(fault)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 500


async def test_dead_result_url_answers_404(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.inject(Fault.DEAD_URL)
    submission = await client.submit(image_request())
    assert submission.update is not None
    url = submission.update.artifacts[0].url
    assert url is not None
    assert (await fetch(session, url))[0] == 404


async def test_oversize_result_announces_more_bytes_than_any_cap(
    client: AimlApiProvider, emulator: AimlApiEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.oversize_bytes = 3 * 1024 * 1024
    emulator.inject(Fault.OVERSIZE)
    submission = await client.submit(image_request())
    assert submission.update is not None
    url = submission.update.artifacts[0].url
    assert url is not None
    async with session.get(url) as resp:
        assert resp.content_length == 3 * 1024 * 1024


# --- poll, webhook, check ---------------------------------------------------------------------


async def test_polling_a_synchronous_handle_is_an_unknown_job(client: AimlApiProvider) -> None:
    with pytest.raises(UnknownJobError):
        await client.poll(JobHandle(vendor="aimlapi", model=MODEL, job_id="whatever"))


def test_callbacks_are_never_parsed(client: AimlApiProvider) -> None:
    assert client.parse_webhook(json.dumps({"data": []}).encode(), {}) is None


async def test_check_reads_the_balance(client: AimlApiProvider, emulator: AimlApiEmulator) -> None:
    status = await client.check()
    assert status.startswith("ok")
    assert ("GET", "/aimlapi/v1/billing/balance") in emulator.requests


async def test_check_with_a_bad_key_is_an_auth_error(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    client = make_client(sandbox.base_url("aimlapi"), session, key="wrong")
    with pytest.raises(AuthError):
        await client.check()


def test_production_balance_lives_on_the_billing_host() -> None:
    client = AimlApiProvider(
        cast(aiohttp.ClientSession, None), ProviderSettings(base_url="https://api.aimlapi.com", api_key="k")
    )
    assert client.billing_url == "https://billing.aimlapi.com"
