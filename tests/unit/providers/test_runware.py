"""The Runware client against its loopback emulator: task arrays, sync and async delivery,
cumulative getResponse results, per-image webhooks and the error codes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from providers.base import (
    AuthError,
    ContentBlockedError,
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
from providers.runware import MODEL, SIZES, RunwareProvider, parse_results
from providers.sandbox.common import Fault
from providers.sandbox.runware import RunwareEmulator
from providers.sandbox.server import Sandbox
from tests.unit.providers.conftest import Hook

KEY = "sandbox-key"
VENDOR = "runware"


@pytest.fixture
def client(sandbox: Sandbox, session: aiohttp.ClientSession) -> RunwareProvider:
    return make_client(sandbox.base_url("runware"), session)


def make_client(
    base_url: str, session: aiohttp.ClientSession, *, key: str = KEY, timeout: float = 5.0
) -> RunwareProvider:
    return RunwareProvider(session, ProviderSettings(base_url=base_url, api_key=key, timeout=timeout))


def image_request(width: int = 1024, height: int = 1024, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        kind=Kind.IMAGE, model=MODEL, prompt="a koi pond in autumn", width=width, height=height, **fields
    )


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        return img.size


async def post_tasks(
    session: aiohttp.ClientSession, sandbox: Sandbox, tasks: list[dict[str, Any]], *, key: str | None = KEY
) -> tuple[int, Any]:
    """A raw call to the emulator, for wire behaviour the client never exercises."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.post(sandbox.base_url("runware") + "/v1", json=tasks, headers=headers) as resp:
        return resp.status, await resp.json()


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


# --- routes and sync inference ---------------------------------------------------------------


def test_route_offers_the_17_documented_sizes_up_to_four_images_with_webhook() -> None:
    (route,) = RunwareProvider.routes()
    assert route.key == "runware:runware:180@1"
    assert len(route.sizes) == 17 and (1024, 1024) in route.sizes and (1536, 512) in route.sizes
    assert all(w * h <= 1024 * 1024 for w, h in route.sizes)
    assert route.max_images == 4 and route.max_prompt == 3000
    assert route.supports_negative and route.supports_seed and route.webhook


async def test_sync_inference_returns_pngs_of_the_requested_size_with_their_cost(
    client: RunwareProvider, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(1280, 768, count=2, seed=11))
    update = submission.update
    assert update is not None and update.state is JobState.SUCCEEDED
    assert submission.handle.data == {"numberResults": "2", "delivery": "sync"}
    assert len(update.artifacts) == 2
    assert [a.seed for a in update.artifacts] == [11, 12]
    assert update.cost_usd is not None and update.cost_usd > 0
    assert submission.cost_usd == update.cost_usd
    for artifact in update.artifacts:
        assert artifact.url is not None
        status, data = await fetch(session, artifact.url)
        assert status == 200
        assert png_size(data) == (1280, 768)


async def test_the_task_carries_the_documented_fields(
    client: RunwareProvider, emulator: RunwareEmulator
) -> None:
    submission = await client.submit(image_request(896, 1152, count=9, seed=5, negative_prompt="blurry"))
    (job,) = emulator.jobs.values()
    task = job.request
    assert task["taskUUID"] == submission.handle.job_id
    assert uuid.UUID(task["taskUUID"]).version == 4
    assert {k: task[k] for k in ("taskType", "model", "width", "height", "numberResults", "seed")} == {
        "taskType": "imageInference",
        "model": "runware:180@1",
        "width": 896,
        "height": 1152,
        "numberResults": 4,  # capped for the bot
        "seed": 5,
    }
    assert (task["outputType"], task["outputFormat"], task["includeCost"]) == ("URL", "PNG", True)
    assert task["deliveryMethod"] == "sync" and "webhookURL" not in task
    assert task["negativePrompt"] == "blurry"


async def test_every_documented_size_is_accepted(client: RunwareProvider, emulator: RunwareEmulator) -> None:
    emulator.latency = (0.0, 0.0)
    for width, height in RunwareProvider.routes()[0].sizes:
        submission = await client.submit(image_request(width, height))
        assert submission.update is not None
        assert submission.update.state is JobState.SUCCEEDED, (width, height)


async def test_a_size_outside_the_list_is_refused_before_any_call(
    client: RunwareProvider, emulator: RunwareEmulator
) -> None:
    with pytest.raises(RejectedInputError):
        await client.submit(image_request(1000, 1000))
    assert emulator.requests == []


@pytest.mark.parametrize(
    "dims",
    [{"width": 1000, "height": 1000}, {"width": 1024}, {"height": 1024}],
    ids=["off-list", "no-height", "no-width"],
)
async def test_the_vendor_refuses_sizes_it_does_not_list_or_half_a_size(
    sandbox: Sandbox, session: aiohttp.ClientSession, dims: dict[str, int]
) -> None:
    task = {
        "taskType": "imageInference",
        "taskUUID": str(uuid.uuid4()),
        "model": MODEL,
        "positivePrompt": "a cat",
    }
    status, body = await post_tasks(session, sandbox, [{**task, **dims}])
    assert status == 400
    assert body["errors"][0]["code"] == "invalidParameter"


async def test_in_band_authentication_task_is_accepted(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    tasks = [
        {"taskType": "authentication", "apiKey": KEY},
        {"taskType": "accountManagement", "taskUUID": str(uuid.uuid4()), "operation": "getDetails"},
    ]
    status, body = await post_tasks(session, sandbox, tasks, key=None)
    assert status == 200
    assert [d["taskType"] for d in body["data"]] == ["authentication", "accountManagement"]


# --- async delivery, polling and webhooks ---------------------------------------------------


async def test_a_webhook_makes_a_single_image_task_async_and_its_post_parses_to_success(
    client: RunwareProvider, emulator: RunwareEmulator, hook: Hook, session: aiohttp.ClientSession
) -> None:
    submission = await client.submit(image_request(1344, 704, webhook_url=hook.url))
    assert submission.update is None
    assert submission.handle.data == {"numberResults": "1", "delivery": "async"}
    (job,) = emulator.jobs.values()
    assert (job.request["deliveryMethod"], job.request["webhookURL"]) == ("async", hook.url)
    body = await asyncio.wait_for(hook.deliveries.get(), timeout=3.0)
    update = client.parse_webhook(body, {"Content-Type": "application/json"})
    assert update is not None and update.state is JobState.SUCCEEDED
    (artifact,) = update.artifacts
    assert artifact.url is not None
    assert png_size((await fetch(session, artifact.url))[1]) == (1344, 704)
    assert update.cost_usd is not None
    # The polling fallback sees the same finished task.
    polled = await client.poll(submission.handle)
    assert polled.state is JobState.SUCCEEDED and polled.artifacts[0].url == artifact.url


async def test_several_images_with_a_webhook_arrive_one_post_each(
    client: RunwareProvider, hook: Hook
) -> None:
    submission = await client.submit(image_request(count=3, webhook_url=hook.url))
    assert submission.handle.data["delivery"] == "async"
    assert submission.update is None
    updates = [client.parse_webhook(await asyncio.wait_for(hook.deliveries.get(), 10), {}) for _ in range(3)]
    # The client gathers the per-image posts: progress twice, then one success with all three.
    assert [u.state if u else None for u in updates] == [
        JobState.RUNNING,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert updates[-1] is not None and len({a.url for a in updates[-1].artifacts}) == 3


async def test_polling_collects_cumulative_results_once_each_until_all_are_in(
    sandbox: Sandbox, client: RunwareProvider, emulator: RunwareEmulator, session: aiohttp.ClientSession
) -> None:
    clock = emulator.clock = ManualClock()
    emulator.latency = (3.0, 3.0)
    task_uuid = str(uuid.uuid4())
    task = {
        "taskType": "imageInference",
        "taskUUID": task_uuid,
        "model": MODEL,
        "positivePrompt": "three lanterns",
        "width": 512,
        "height": 1536,
        "numberResults": 3,
        "deliveryMethod": "async",
        "includeCost": True,
    }
    status, ack = await post_tasks(session, sandbox, [task])
    assert status == 200 and ack["data"][0]["taskUUID"] == task_uuid
    handle = JobHandle(vendor="runware", model=MODEL, job_id=task_uuid, data={"numberResults": "3"})
    assert (await client.poll(handle)).state is JobState.RUNNING
    clock.now += 2.0  # two of three images are done
    partial = await client.poll(handle)
    assert partial.state is JobState.RUNNING
    assert partial.progress == pytest.approx(2 / 3)
    assert partial.artifacts == ()
    clock.now += 1.0
    final = await client.poll(handle)
    assert final.state is JobState.SUCCEEDED
    assert len({a.url for a in final.artifacts}) == 3 == len(final.artifacts)
    assert (await client.poll(handle)).artifacts == final.artifacts  # repeated results, same set


def test_repeated_items_are_counted_once() -> None:
    item = {
        "taskType": "imageInference",
        "taskUUID": "t",
        "status": "success",
        "imageUUID": "i1",
        "imageURL": "u1",
    }
    body = {"data": [item, item, {"taskType": "imageInference", "taskUUID": "t", "status": "processing"}]}
    update = parse_results(body, task_uuid="t", expected=2, complete=False)
    assert update.state is JobState.RUNNING and update.progress == 0.5


def test_results_of_other_tasks_are_ignored() -> None:
    other = {"taskUUID": "other", "status": "success", "imageUUID": "x", "imageURL": "ux"}
    mine = {"taskUUID": "t", "status": "processing"}
    update = parse_results({"data": [other, mine]}, task_uuid="t", expected=1, complete=False)
    assert update.state is JobState.RUNNING and update.artifacts == ()


def test_inline_base64_results_become_bytes() -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    b64 = base64.b64encode(png.getvalue()).decode()
    body = {
        "data": [
            {"taskUUID": "t", "imageUUID": "a", "imageBase64Data": b64},
            {"taskUUID": "t", "imageUUID": "b", "imageDataURI": f"data:image/png;base64,{b64}"},
        ]
    }
    update = parse_results(body, task_uuid="t", expected=2, complete=True)
    assert [a.data for a in update.artifacts] == [png.getvalue(), png.getvalue()]


async def test_a_stuck_async_task_stays_running(
    client: RunwareProvider, emulator: RunwareEmulator, hook: Hook
) -> None:
    clock = emulator.clock = ManualClock()
    emulator.inject(Fault.STUCK)
    submission = await client.submit(image_request(webhook_url=hook.url))
    for _ in range(3):
        clock.now += 60.0
        assert (await client.poll(submission.handle)).state is JobState.RUNNING
    assert hook.deliveries.empty()


async def test_a_stuck_sync_call_ends_in_a_retryable_timeout(
    client: RunwareProvider, emulator: RunwareEmulator
) -> None:
    emulator.timeout_seconds = 0.2
    emulator.inject(Fault.STUCK)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 504


@pytest.mark.parametrize("fault", [Fault.JOB_FAILED, Fault.JOB_ERROR])
async def test_a_failed_sync_task_is_failed_and_not_charged(
    client: RunwareProvider, emulator: RunwareEmulator, fault: Fault
) -> None:
    emulator.inject(fault)
    submission = await client.submit(image_request())
    update = submission.update
    assert update is not None and update.state is JobState.FAILED
    assert update.charged is False and update.error
    assert update.artifacts == ()


@pytest.mark.parametrize(
    ("fault", "code"), [(Fault.JOB_FAILED, "inferenceError"), (Fault.JOB_ERROR, "timeoutProvider")]
)
async def test_a_failed_async_task_polls_and_calls_back_as_failed(
    client: RunwareProvider, emulator: RunwareEmulator, hook: Hook, fault: Fault, code: str
) -> None:
    emulator.inject(fault)
    submission = await client.submit(image_request(webhook_url=hook.url))
    body = await asyncio.wait_for(hook.deliveries.get(), timeout=3.0)
    from_hook = client.parse_webhook(body, {})
    assert from_hook is not None and from_hook.state is JobState.FAILED
    polled = await client.poll(submission.handle)
    assert polled.state is JobState.FAILED and polled.charged is False
    assert polled.error is not None and code in polled.error


# --- faults ----------------------------------------------------------------------------------


async def test_bad_key_is_an_auth_error(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    client = make_client(sandbox.base_url("runware"), session, key="wrong")
    with pytest.raises(AuthError) as err:
        await client.submit(image_request())
    assert (err.value.status, err.value.code) == (401, "invalidApiKey")


async def test_insufficient_credits_is_out_of_funds(
    client: RunwareProvider, emulator: RunwareEmulator
) -> None:
    emulator.inject(Fault.FUNDS)
    with pytest.raises(OutOfFundsError) as err:
        await client.submit(image_request())
    assert (err.value.status, err.value.code) == (402, "insufficientCredits")


async def test_rate_limit_is_retryable_with_retry_after(
    client: RunwareProvider, emulator: RunwareEmulator
) -> None:
    emulator.inject(Fault.RATE_LIMIT, retry_after=2)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert (err.value.status, err.value.retry_after) == (429, 2)


async def test_service_unavailable_is_retryable(client: RunwareProvider, emulator: RunwareEmulator) -> None:
    emulator.inject(Fault.SERVER_ERROR)
    with pytest.raises(RetryableError) as err:
        await client.submit(image_request())
    assert err.value.status == 503


async def test_a_slow_answer_times_out_as_retryable(
    sandbox: Sandbox, emulator: RunwareEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.timeout_seconds = 0.3
    emulator.inject(Fault.TIMEOUT)
    client = make_client(sandbox.base_url("runware"), session, timeout=0.1)
    with pytest.raises(RetryableError, match="timed out"):
        await client.submit(image_request())


async def test_malformed_json_while_polling_is_retryable(
    client: RunwareProvider, emulator: RunwareEmulator, hook: Hook
) -> None:
    submission = await client.submit(image_request(webhook_url=hook.url))
    emulator.inject(Fault.MALFORMED, stage="poll")
    with pytest.raises(RetryableError, match="malformed"):
        await client.poll(submission.handle)


async def test_invalid_parameter_is_rejected_input(
    client: RunwareProvider, emulator: RunwareEmulator
) -> None:
    emulator.inject(Fault.REJECT)
    with pytest.raises(RejectedInputError) as err:
        await client.submit(image_request())
    assert err.value.code == "invalidParameter"


async def test_a_one_letter_prompt_is_rejected_input(client: RunwareProvider) -> None:
    with pytest.raises(RejectedInputError):
        await client.submit(image_request().model_copy(update={"prompt": "x"}))


@pytest.mark.parametrize("code", ["contentPolicyViolation", "nsfwContentDetected"])
async def test_a_content_policy_refusal_is_content_blocked(
    canned: Callable[[int, Any], Awaitable[str]], session: aiohttp.ClientSession, code: str
) -> None:
    body = {
        "errors": [{"code": code, "message": "Refused by the content policy.", "taskType": "imageInference"}]
    }
    client = make_client(await canned(400, body), session)
    with pytest.raises(ContentBlockedError):
        await client.submit(image_request())


def test_a_content_policy_error_item_while_polling_is_content_blocked() -> None:
    item = {"taskUUID": "t", "status": "error", "error": {"code": "nsfwContentDetected", "message": "NSFW"}}
    with pytest.raises(ContentBlockedError):
        parse_results({"data": [item]}, task_uuid="t", expected=1, complete=False)


async def test_dead_result_url_answers_404(
    client: RunwareProvider, emulator: RunwareEmulator, session: aiohttp.ClientSession
) -> None:
    emulator.inject(Fault.DEAD_URL)
    submission = await client.submit(image_request())
    assert submission.update is not None
    url = submission.update.artifacts[0].url
    assert url is not None
    assert (await fetch(session, url))[0] == 404


async def test_an_unknown_task_is_an_unknown_job(client: RunwareProvider) -> None:
    with pytest.raises(UnknownJobError):
        await client.poll(JobHandle(vendor="runware", model=MODEL, job_id=str(uuid.uuid4())))


# --- webhook parsing and check ---------------------------------------------------------------


def test_a_garbage_webhook_is_rejected_and_an_empty_one_ignored(client: RunwareProvider) -> None:
    with pytest.raises(RejectedInputError):
        client.parse_webhook(b"not json", {})
    assert client.parse_webhook(json.dumps({"data": []}).encode(), {}) is None


async def test_check_reports_the_balance(client: RunwareProvider) -> None:
    assert await client.check() == "ok (balance $2450.75)"


async def test_check_with_a_bad_key_is_an_auth_error(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(AuthError):
        await make_client(sandbox.base_url("runware"), session, key="wrong").check()


def test_sizes_constant_matches_the_route() -> None:
    assert RunwareProvider.routes()[0].sizes == SIZES
