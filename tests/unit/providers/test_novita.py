"""The Novita client against its loopback emulator: async tasks, both error envelopes, webhooks."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest
from PIL import Image

from providers.base import (
    AuthError,
    GenerationRequest,
    JobHandle,
    JobState,
    JobUpdate,
    Kind,
    OutOfFundsError,
    ProviderSettings,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)
from providers.novita import MODEL, PRICE_USD, NovitaProvider
from providers.sandbox.common import Fault
from providers.sandbox.novita import NovitaEmulator
from providers.sandbox.server import Sandbox
from tests.unit.providers.conftest import Hook

KEY = "sandbox-key"
VENDOR = "novita"


@pytest.fixture
def client(sandbox: Sandbox, session: aiohttp.ClientSession) -> NovitaProvider:
    return make_client(sandbox, session)


def make_client(
    sandbox: Sandbox, session: aiohttp.ClientSession, *, key: str = KEY, timeout: float = 5.0
) -> NovitaProvider:
    return NovitaProvider(
        session, ProviderSettings(base_url=sandbox.base_url("novita"), api_key=key, timeout=timeout)
    )


def image_request(width: int = 1024, height: int = 1024, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        kind=Kind.IMAGE, model=MODEL, prompt="a lighthouse at dusk", width=width, height=height, **fields
    )


async def poll_until_done(client: NovitaProvider, handle: JobHandle, limit: float = 3.0) -> list[JobUpdate]:
    updates: list[JobUpdate] = []
    async with asyncio.timeout(limit):
        while not updates or not updates[-1].terminal:
            updates.append(await client.poll(handle))
            await asyncio.sleep(0.01)
    return updates


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


# --- routes and success --------------------------------------------------------------------


def test_route_is_one_image_of_any_size_with_webhook_and_a_published_price() -> None:
    (route,) = NovitaProvider.routes()
    assert route.key == "novita:hunyuan-image-3"
    assert route.sizes == () and (route.min_side, route.max_side) == (256, 1536)
    assert route.max_images == 1
    assert route.webhook
    assert route.price_usd == PRICE_USD == 0.10
    assert route.supports_seed and not route.supports_negative


async def test_a_task_runs_to_success_with_a_png_of_the_requested_size(
    client: NovitaProvider, emulator: NovitaEmulator, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(1280, 768))
    assert submission.update is None
    assert submission.handle.job_id in emulator.jobs
    assert submission.cost_usd == PRICE_USD
    updates = await poll_until_done(client, submission.handle)
    assert {u.state for u in updates[:-1]} <= {JobState.QUEUED, JobState.RUNNING}
    final = updates[-1]
    assert final.state is JobState.SUCCEEDED
    assert final.cost_usd == PRICE_USD
    (artifact,) = final.artifacts
    assert artifact.url is not None and artifact.content_type == "image/png"
    status, data = await fetch(session, artifact.url)
    assert status == 200
    assert png_size(data) == (1280, 768)


async def test_size_is_sent_as_width_star_height_with_the_seed(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    await client.submit(image_request(768, 1024, seed=42))
    (job,) = emulator.jobs.values()
    assert job.request == {"prompt": "a lighthouse at dusk", "size": "768*1024", "seed": 42}


async def test_the_corners_of_the_size_range_are_accepted(client: NovitaProvider) -> None:
    for width, height in [(256, 256), (1536, 1536), (256, 1536), (1536, 256)]:
        submission = await client.submit(image_request(width, height))
        assert submission.handle.job_id


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_running_task_reports_progress_and_eta(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    clock = emulator.clock = ManualClock()
    emulator.latency = (4.0, 4.0)
    submission = await client.submit(image_request())
    assert (await client.poll(submission.handle)).state is JobState.QUEUED
    clock.now += 2.5
    update = await client.poll(submission.handle)
    assert update.state is JobState.RUNNING
    assert update.progress == pytest.approx(0.62, abs=0.01)
    assert update.eta_seconds == 2


async def test_result_url_is_presigned_for_an_hour(client: NovitaProvider) -> None:
    submission = await client.submit(image_request(512, 512))
    final = (await poll_until_done(client, submission.handle))[-1]
    url = final.artifacts[0].url
    assert url is not None and "X-Amz-Expires=3600" in url


# --- faults ----------------------------------------------------------------------------------


async def test_bad_key_is_an_auth_error(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(sandbox, session, key="sk_wrong")
    with pytest.raises(AuthError) as err:
        await client.submit(image_request())
    assert (err.value.status, err.value.code) == (401, "FAILED_TO_AUTH")


async def test_bad_key_in_the_nested_envelope_is_an_auth_error(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    emulator.envelope = "nested"
    emulator.inject(Fault.AUTH)
    with pytest.raises(AuthError) as err:
        await client.submit(image_request())
    assert (err.value.status, err.value.code) == (403, "INVALID_API_KEY")


async def test_not_enough_balance_403_is_out_of_funds(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    emulator.inject(Fault.FUNDS)
    with pytest.raises(OutOfFundsError) as err:
        await client.submit(image_request())
    assert err.value.status == 403


async def test_billing_balance_not_enough_400_is_out_of_funds(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    emulator.envelope = "nested"
    emulator.inject(Fault.FUNDS)
    with pytest.raises(OutOfFundsError) as err:
        await client.submit(image_request())
    assert err.value.status == 400


async def test_rate_limit_is_retryable_with_retry_after(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    emulator.inject(Fault.RATE_LIMIT, retry_after=3)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert (err.value.status, err.value.retry_after) == (429, 3)


async def test_rate_limit_while_polling_is_retryable(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    submission = await client.submit(image_request())
    emulator.inject(Fault.RATE_LIMIT, stage="poll")
    with pytest.raises(RetryableError):
        await client.poll(submission.handle)


async def test_service_unavailable_is_retryable(client: NovitaProvider, emulator: NovitaEmulator) -> None:
    emulator.inject(Fault.SERVER_ERROR)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 503


async def test_a_slow_answer_times_out_as_retryable(
    sandbox: Sandbox, emulator: NovitaEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.timeout_seconds = 0.3
    emulator.inject(Fault.TIMEOUT)
    client = make_client(sandbox, session, timeout=0.1)
    with pytest.raises(RetryableError, match="timed out"):
        await client.submit(image_request())


async def test_malformed_task_result_is_retryable(client: NovitaProvider, emulator: NovitaEmulator) -> None:
    submission = await client.submit(image_request())
    emulator.inject(Fault.MALFORMED, stage="poll")
    with pytest.raises(RetryableError, match="malformed"):
        await client.poll(submission.handle)


async def test_invalid_request_body_is_rejected_input(
    client: NovitaProvider, emulator: NovitaEmulator
) -> None:
    emulator.inject(Fault.REJECT)
    with pytest.raises(RejectedInputError) as err:
        await client.submit(image_request())
    assert err.value.code == "INVALID_REQUEST_BODY"


async def test_size_outside_the_range_is_rejected_input(client: NovitaProvider) -> None:
    with pytest.raises(RejectedInputError, match="out of range"):
        await client.submit(image_request(2048, 1024))


async def test_a_stuck_task_stays_running(client: NovitaProvider, emulator: NovitaEmulator) -> None:
    clock = emulator.clock = ManualClock()
    emulator.inject(Fault.STUCK)
    submission = await client.submit(image_request())
    for _ in range(3):
        clock.now += 60.0  # far past the longest configured latency
        assert (await client.poll(submission.handle)).state is JobState.RUNNING


@pytest.mark.parametrize("fault", [Fault.JOB_FAILED, Fault.JOB_ERROR])
async def test_a_failed_task_is_failed_with_its_reason_and_not_charged(
    client: NovitaProvider, emulator: NovitaEmulator, fault: Fault
) -> None:
    emulator.inject(fault)
    submission = await client.submit(image_request())
    final = (await poll_until_done(client, submission.handle))[-1]
    assert final.state is JobState.FAILED
    assert final.error
    assert final.charged is False
    assert final.artifacts == ()


async def test_dead_result_url_answers_404(
    client: NovitaProvider, emulator: NovitaEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.inject(Fault.DEAD_URL)
    submission = await client.submit(image_request())
    final = (await poll_until_done(client, submission.handle))[-1]
    assert final.state is JobState.SUCCEEDED
    url = final.artifacts[0].url
    assert url is not None
    assert (await fetch(session, url))[0] == 404


async def test_an_unknown_task_is_an_unknown_job(client: NovitaProvider) -> None:
    with pytest.raises(UnknownJobError):
        await client.poll(JobHandle(vendor="novita", model=MODEL, job_id="no-such-task"))


# --- webhooks --------------------------------------------------------------------------------


async def test_webhook_url_is_sent_and_its_delivery_parses_to_success(
    client: NovitaProvider, emulator: NovitaEmulator, hook: Hook, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(512, 768, webhook_url=hook.url))
    job = emulator.jobs[submission.handle.job_id]
    assert job.request["extra"] == {"webhook": {"url": hook.url}}
    body = await asyncio.wait_for(hook.deliveries.get(), timeout=3.0)
    event = json.loads(body)
    assert event["event_type"] == "ASYNC_TASK_RESULT"
    assert event["payload"]["images"][0]["image_url_ttl"] == "3600"  # the webhook's string form
    update = client.parse_webhook(body, {"Content-Type": "application/json"})
    assert update is not None and update.state is JobState.SUCCEEDED
    url = update.artifacts[0].url
    assert url is not None
    assert png_size((await fetch(session, url))[1]) == (512, 768)
    await asyncio.sleep(0.25)  # a few more sandbox ticks: the callback is sent once
    assert hook.deliveries.empty()


async def test_webhook_of_a_failed_task_parses_to_failed(
    client: NovitaProvider, emulator: NovitaEmulator, hook: Hook
) -> None:
    emulator.inject(Fault.JOB_FAILED)
    await client.submit(image_request(webhook_url=hook.url))
    body = await asyncio.wait_for(hook.deliveries.get(), timeout=3.0)
    update = client.parse_webhook(body, {})
    assert update is not None and update.state is JobState.FAILED and update.error


def test_webhook_events_of_other_types_are_ignored(client: NovitaProvider) -> None:
    body = json.dumps({"event_type": "ASYNC_TASK_PROGRESS", "payload": {}}).encode()
    assert client.parse_webhook(body, {}) is None


def test_a_garbage_webhook_is_rejected(client: NovitaProvider) -> None:
    with pytest.raises(RejectedInputError):
        client.parse_webhook(b"<html>not json</html>", {})
    with pytest.raises(RejectedInputError):
        client.parse_webhook(
            json.dumps({"event_type": "ASYNC_TASK_RESULT", "payload": {"x": 1}}).encode(), {}
        )


# --- check -----------------------------------------------------------------------------------


async def test_check_reports_the_balance(client: NovitaProvider) -> None:
    assert await client.check() == "ok (balance $100.00)"


async def test_check_with_a_bad_key_is_an_auth_error(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(AuthError):
        await make_client(sandbox, session, key="sk_wrong").check()
