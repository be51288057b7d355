"""Runware client for HunyuanImage-3.0 (`runware:180@1`) over the REST task API.

Every call is `POST /v1` with a JSON array of tasks and answers `{"data": […]}` and/or
`{"errors": […]}`. Generation is synchronous by default (the images come back in the same
call); with a webhook URL it is asynchronous, and `getResponse` polls the task, whose
results are cumulative. Contract: docs/providers.md §5.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, assert_never

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from providers.base import (
    Artifact,
    AuthError,
    ContentBlockedError,
    GenerationRequest,
    JobHandle,
    JobState,
    JobUpdate,
    Kind,
    OutOfFundsError,
    Provider,
    ProviderError,
    ProviderSettings,
    RejectedInputError,
    RetryableError,
    RouteSpec,
    Submission,
    UnknownJobError,
)
from providers.http import VendorHTTP, decode_data_uri

__all__ = ["MAX_RESULTS", "MODEL", "SIZES", "RunwareProvider", "parse_results"]

_log = logging.getLogger(__name__)

MODEL = "runware:180@1"
MAX_RESULTS = 4  # the vendor allows 20; the bot never asks for more than 4

#: the only width/height pairs the model accepts (sent together)
SIZES: tuple[tuple[int, int], ...] = (
    (1536, 512),
    (1472, 576),
    (1408, 640),
    (1344, 704),
    (1280, 768),
    (1216, 832),
    (1152, 896),
    (1088, 960),
    (1024, 1024),
    (960, 1088),
    (896, 1152),
    (832, 1216),
    (768, 1280),
    (704, 1344),
    (640, 1408),
    (576, 1472),
    (512, 1536),
)

#: error codes that are a verdict on the call (or the account), not on the job
_CODE_ERRORS: dict[str, type[ProviderError]] = {
    "invalidApiKey": AuthError,
    "unauthorized": AuthError,
    "insufficientCredits": OutOfFundsError,
    "rateLimitExceeded": RetryableError,
    "invalidParameter": RejectedInputError,
    "contentPolicyViolation": ContentBlockedError,
    "nsfwContentDetected": ContentBlockedError,
    "unknownModel": ProviderError,  # our configuration, not the user's input: fail over
    "taskFailedOrNotFound": UnknownJobError,
}


class _ItemStatus(StrEnum):
    PROCESSING = "processing"
    SUCCESS = "success"
    ERROR = "error"
    # Tolerated by Runware's legacy SDK while a task waits for a worker.
    QUEUED = "queued"
    PENDING = "pending"
    SCHEDULED = "scheduled"
    WAITING = "waiting"


class _ApiError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = ""
    message: str = ""
    parameter: str | None = None
    taskType: str | None = None  # the vendor's field names
    taskUUID: str | None = None


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")

    taskType: str | None = None  # the vendor's field names
    taskUUID: str | None = None
    status: _ItemStatus | None = None  # absent on sync results and webhooks
    imageUUID: str | None = None
    imageURL: str | None = None
    imageBase64Data: str | None = None
    imageDataURI: str | None = None
    seed: int | None = None
    cost: float | None = None
    error: _ApiError | None = None

    @field_validator("error", mode="before")
    @classmethod
    def _error(cls, value: Any) -> Any:
        return {"message": value} if isinstance(value, str) else value

    @property
    def has_image(self) -> bool:
        return bool(self.imageURL or self.imageBase64Data or self.imageDataURI)

    def state(self) -> _ItemStatus:
        """The item's status; sync results carry none, so outputs (or an error) decide."""
        if self.status is not None:
            return self.status
        if self.has_image:
            return _ItemStatus.SUCCESS
        return _ItemStatus.ERROR if self.error else _ItemStatus.PROCESSING


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Item] = []
    errors: list[_ApiError] = []
    error: _ApiError | None = None  # a pre-stream error: `{"error": {…}, "taskUUID": …}`
    taskUUID: str | None = None


class _Account(BaseModel):
    model_config = ConfigDict(extra="ignore")

    balance: float | None = None


class _AccountAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Account] = []


def _classify(status: int, body: Any) -> type[ProviderError] | None:
    try:
        env = _Envelope.model_validate(body)
    except ValidationError:
        return None
    for err in [*env.errors, *([env.error] if env.error else [])]:
        if err.code in _CODE_ERRORS:
            return _CODE_ERRORS[err.code]
    return None


def _artifact(item: _Item) -> Artifact:
    if item.imageURL:
        return Artifact(url=item.imageURL, content_type="image/png", seed=item.seed)
    try:
        data, ctype = decode_data_uri(item.imageDataURI or item.imageBase64Data or "")
    except ValueError as exc:
        raise RetryableError("runware", "undecodable inline image") from exc
    return Artifact(data=data, content_type=ctype or "image/png", seed=item.seed)


def parse_results(body: Any, *, task_uuid: str | None, expected: int, complete: bool) -> JobUpdate:
    """Interpret an inference answer, a `getResponse` answer or a webhook body.

    Only items of `task_uuid` count (any task when None). Results are de-duplicated by
    `imageUUID`. Errors that judge the call (bad key, balance, rate limit, bad input,
    content policy) are raised; any other task error makes the job FAILED. `complete` says
    the answer is final (sync delivery, a webhook): it succeeds with whatever images it has.
    """
    try:
        env = _Envelope.model_validate(body)
    except ValidationError as exc:
        raise RetryableError("runware", "malformed task answer") from exc
    mine = [i for i in env.data if task_uuid is None or i.taskUUID in (None, task_uuid)]
    errors = [
        e
        for e in [*env.errors, *([env.error] if env.error else [])]
        if task_uuid is None or e.taskUUID in (None, task_uuid)
    ]
    images: dict[str, _Item] = {}
    waiting = False
    for item in mine:
        status = item.state()
        match status:
            case _ItemStatus.SUCCESS:
                if item.has_image:
                    images.setdefault(item.imageUUID or item.imageURL or str(len(images)), item)
            case _ItemStatus.ERROR:
                errors.append(item.error or _ApiError(message="generation failed"))
            case _ItemStatus.PROCESSING:
                pass
            case _ItemStatus.QUEUED | _ItemStatus.PENDING | _ItemStatus.SCHEDULED | _ItemStatus.WAITING:
                waiting = True
            case _:
                assert_never(status)
    for err in errors:
        cls = _CODE_ERRORS.get(err.code)
        if cls is not None and cls is not UnknownJobError:
            raise cls("runware", err.message or err.code, code=err.code)
    if errors:
        text = "; ".join(f"{e.code}: {e.message}".strip(": ") for e in errors)
        # Runware bills delivered results; a failed task produced none.
        return JobUpdate(state=JobState.FAILED, error=text or "task failed", charged=False)
    costs = [i.cost for i in images.values() if i.cost is not None]
    cost = round(sum(costs), 6) if costs else None
    if images and (complete or len(images) >= expected):
        return JobUpdate(
            state=JobState.SUCCEEDED,
            progress=1.0,
            artifacts=tuple(_artifact(i) for i in images.values()),
            cost_usd=cost,
        )
    if complete:
        raise RetryableError("runware", "the answer carries no image")
    progress = len(images) / expected if images and expected > 1 else None
    state = JobState.QUEUED if waiting and not images else JobState.RUNNING
    return JobUpdate(state=state, progress=progress, cost_usd=cost)


def _task_of(payload: dict[str, Any]) -> str | None:
    """The taskUUID a webhook post is about."""
    for item in payload.get("data") or payload.get("errors") or []:
        if isinstance(item, dict) and isinstance(item.get("taskUUID"), str):
            return str(item["taskUUID"])
    return None


class RunwareProvider(Provider):
    """Runware: HunyuanImage-3.0 over REST, sync by default, async with a webhook."""

    name = "runware"

    def __init__(self, session: aiohttp.ClientSession, settings: ProviderSettings) -> None:
        self.settings = settings
        self.http = VendorHTTP.from_settings(self.name, session, settings)
        # Async tasks post one webhook per finished image; the posts of a task are gathered
        # here until `numberResults` are in, so the core sees one closed status per job.
        self._expected: dict[str, int] = {}
        self._gathered: dict[str, dict[str, Artifact]] = {}

    @classmethod
    def routes(cls) -> tuple[RouteSpec, ...]:
        """One text-to-image route: the 17 documented sizes, up to 4 images per task."""
        return (
            RouteSpec(
                vendor=cls.name,
                model=MODEL,
                kind=Kind.IMAGE,
                sizes=SIZES,
                max_images=MAX_RESULTS,
                min_prompt=2,  # positivePrompt: 2–3000 characters
                max_prompt=3000,
                supports_negative=True,
                supports_seed=True,
                webhook=True,
                price_usd=None,  # not published; the answers report `cost` (≈ $0.15–0.18 an image)
            ),
        )

    def task_for(self, request: GenerationRequest, task_uuid: str) -> dict[str, Any]:
        """The `imageInference` task for a request."""
        count = max(1, min(MAX_RESULTS, request.count))
        task: dict[str, Any] = {
            "taskType": "imageInference",
            "taskUUID": task_uuid,
            "model": MODEL,
            "positivePrompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "numberResults": count,
            "outputType": "URL",
            "outputFormat": "PNG",
            "includeCost": True,
            "deliveryMethod": "sync",
        }
        if request.negative_prompt and len(request.negative_prompt.strip()) >= 2:
            task["negativePrompt"] = request.negative_prompt[:3000]
        if request.seed is not None and request.seed >= 0:
            task["seed"] = request.seed
        # With a webhook Runware posts once per finished image; the core gathers the posts
        # until the job's image count is in (and its slow fallback poll sees them all too).
        if request.webhook_url:
            task["deliveryMethod"] = "async"
            task["webhookURL"] = request.webhook_url
        return task

    async def submit(self, request: GenerationRequest) -> Submission:
        """Run (sync) or start (async, with a webhook) an inference task; the handle's job id
        is our `taskUUID`, and `data` keeps `numberResults` and the delivery method."""
        if request.kind is not Kind.IMAGE or request.model != MODEL:
            raise RejectedInputError(self.name, f"unsupported {request.kind} model {request.model!r}")
        if (request.width, request.height) not in SIZES:
            raise RejectedInputError(self.name, f"size {request.width}x{request.height} is not offered")
        task_uuid = str(uuid.uuid4())
        task = self.task_for(request, task_uuid)
        answer = await self.http.request_json("POST", "/v1", json_body=[task], classify=_classify)
        handle = JobHandle(
            vendor=self.name,
            model=MODEL,
            job_id=task_uuid,
            data={"numberResults": str(task["numberResults"]), "delivery": task["deliveryMethod"]},
        )
        if task["deliveryMethod"] == "async":
            self._expected[task_uuid] = int(task["numberResults"])
            # The ack is `{"data": [{taskType, taskUUID, …}]}` or `{"data": []}`: only errors matter.
            ack = parse_results(answer, task_uuid=task_uuid, expected=task["numberResults"], complete=False)
            _log.info("runware task accepted task=%s delivery=async", task_uuid)
            return Submission(handle=handle, update=ack if ack.terminal else None)
        update = await asyncio.to_thread(  # may decode inline base64
            parse_results, answer, task_uuid=task_uuid, expected=task["numberResults"], complete=True
        )
        _log.info("runware task done task=%s images=%d", task_uuid, len(update.artifacts))
        return Submission(handle=handle, update=update, cost_usd=update.cost_usd)

    async def poll(self, handle: JobHandle) -> JobUpdate:
        """`getResponse` for the task; SUCCEEDED once `numberResults` images are in."""
        answer = await self.http.request_json(
            "POST",
            "/v1",
            json_body=[{"taskType": "getResponse", "taskUUID": handle.job_id}],
            classify=_classify,
        )
        expected = int(handle.data.get("numberResults", "1"))
        update = parse_results(answer, task_uuid=handle.job_id, expected=expected, complete=False)
        if update.terminal:  # the poll saw the whole task: nothing left to gather
            self._expected.pop(handle.job_id, None)
            self._gathered.pop(handle.job_id, None)
        return update

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> JobUpdate | None:
        """One delivered result (`{"data": [item]}`, like a sync answer) as a SUCCEEDED update
        with that image; an error delivery as FAILED (or the raised call-level error).

        Runware posts once per finished image: posts of a task submitted by this client are
        gathered here, RUNNING (with progress) until the task's image count is in, then one
        SUCCEEDED with every image.
        """
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise RejectedInputError(self.name, "webhook body is not JSON") from exc
        if not isinstance(payload, dict) or not (payload.get("data") or payload.get("errors")):
            return None
        try:
            update = parse_results(payload, task_uuid=None, expected=1, complete=True)
        except RetryableError as exc:
            raise RejectedInputError(self.name, f"webhook body is not a result: {exc.message}") from exc
        task = _task_of(payload)
        if task is None:
            return update
        expected = self._expected.get(task)
        if update.state is not JobState.SUCCEEDED:
            self._expected.pop(task, None)
            self._gathered.pop(task, None)
            return update
        if expected is None:
            # Not submitted by this process (a restart): which share of the task this post is
            # is unknown, so report progress and let the fallback poll collect the whole task.
            return JobUpdate(state=JobState.RUNNING)
        got = self._gathered.setdefault(task, {})
        for artifact in update.artifacts:
            got.setdefault(artifact.url or f"inline-{len(got)}", artifact)
        if len(got) < expected:
            return JobUpdate(state=JobState.RUNNING, progress=len(got) / expected)
        self._expected.pop(task, None)
        self._gathered.pop(task, None)
        return update.model_copy(update={"artifacts": tuple(got.values())})

    async def check(self) -> str:
        """`accountManagement` / `getDetails`, which needs a valid key; reports the balance."""
        answer = await self.http.request_json(
            "POST",
            "/v1",
            json_body=[
                {"taskType": "accountManagement", "taskUUID": str(uuid.uuid4()), "operation": "getDetails"}
            ],
            classify=_classify,
        )
        try:
            accounts = _AccountAnswer.model_validate(answer).data
        except ValidationError as exc:
            raise RetryableError(self.name, "malformed account answer") from exc
        balance = next((a.balance for a in accounts if a.balance is not None), None)
        return "ok" if balance is None else f"ok (balance ${balance:.2f})"
