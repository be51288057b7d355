"""Novita client for Hunyuan Image 3 (`POST /v3/async/hunyuan-image-3`).

Asynchronous: submit returns a `task_id`, the Task Result API (`GET /v3/async/task-result`)
reports progress and the pre-signed image URLs (valid about an hour), and a webhook can be
asked for with `extra.webhook.url`. Contract: docs/providers.md §4.
"""

from __future__ import annotations

import json
import logging
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
from providers.http import VendorHTTP, error_code

__all__ = ["MODEL", "PRICE_USD", "NovitaProvider", "parse_task_result"]

_log = logging.getLogger(__name__)

MODEL = "hunyuan-image-3"
PRICE_USD = 0.10  # per image, from Novita's announcement of the model
SEED_MAX = 2**31 - 1
WEBHOOK_EVENT = "ASYNC_TASK_RESULT"


class _TaskStatus(StrEnum):
    QUEUED = "TASK_STATUS_QUEUED"
    PROCESSING = "TASK_STATUS_PROCESSING"
    SUCCEED = "TASK_STATUS_SUCCEED"
    FAILED = "TASK_STATUS_FAILED"


class _Task(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str = ""
    status: _TaskStatus
    reason: str = ""
    eta: float | None = None
    progress_percent: float | None = None


class _Image(BaseModel):
    model_config = ConfigDict(extra="ignore")

    image_url: str
    image_type: str | None = None
    image_url_ttl: int | None = None

    @field_validator("image_url_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> int | None:
        # An int in the SDK and the task-result docs, the string "3600" in the webhook docs.
        if value is None or value == "":
            return None
        try:
            return int(str(value))
        except ValueError:
            return None


class _TaskResult(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task: _Task
    images: list[_Image] | None = None  # absent or empty until the task succeeds


class _Submitted(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str


class _WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_type: str
    payload: dict[str, Any] | None = None


class _Balance(BaseModel):
    model_config = ConfigDict(extra="ignore")

    availableBalance: float | None = None  # the vendor's field; 1/10000 USD, often a string


def _classify(status: int, body: Any) -> type[ProviderError] | None:
    # Two envelopes: flat `{code: <int>, reason, message}` (observed in production) and
    # `{"error": {"message", "code"}}` (Novita's own skill file); the shared reader takes both.
    code = (error_code(body) or "").upper()
    # Out of balance is a 403 (observed) or a 400 (documented), never a 402.
    if "BALANCE" in code:
        return OutOfFundsError
    if code in ("FAILED_TO_AUTH", "INVALID_API_KEY"):
        return AuthError
    if code == "RATE_LIMIT_EXCEEDED":
        return RetryableError
    if "NSFW" in code or "SENSITIVE" in code:
        return ContentBlockedError
    if code == "MODEL_NOT_FOUND":
        return ProviderError  # our configuration, not the user's input: fail over
    if "TASK" in code and "NOT_FOUND" in code:
        return UnknownJobError
    return None


def _content_type(image_type: str | None) -> str:
    kind = (image_type or "png").lower()
    return "image/jpeg" if kind in ("jpg", "jpeg") else f"image/{kind}"


def parse_task_result(body: Any) -> JobUpdate:
    """A JobUpdate from a Task Result body (the same schema as a webhook's `payload`)."""
    try:
        result = _TaskResult.model_validate(body)
    except ValidationError as exc:
        raise RetryableError("novita", "malformed task result") from exc
    task = result.task
    progress = task.progress_percent / 100 if task.progress_percent is not None else None
    eta = task.eta if task.eta and task.eta > 0 else None
    match task.status:
        case _TaskStatus.QUEUED:
            return JobUpdate(state=JobState.QUEUED, progress=progress, eta_seconds=eta)
        case _TaskStatus.PROCESSING:
            return JobUpdate(state=JobState.RUNNING, progress=progress, eta_seconds=eta)
        case _TaskStatus.SUCCEED:
            images = result.images or []
            if not images:
                raise RetryableError("novita", "task succeeded without images")
            return JobUpdate(
                state=JobState.SUCCEEDED,
                progress=1.0,
                artifacts=tuple(
                    Artifact(url=i.image_url, content_type=_content_type(i.image_type)) for i in images
                ),
                cost_usd=round(PRICE_USD * len(images), 4),
            )
        case _TaskStatus.FAILED:
            # Billing of failed tasks is not documented; assume the usual "no image, no charge".
            return JobUpdate(state=JobState.FAILED, error=task.reason or "task failed", charged=False)
        case _:
            assert_never(task.status)


class NovitaProvider(Provider):
    """Novita: asynchronous Hunyuan Image 3 with polling and optional webhooks."""

    name = "novita"

    def __init__(self, session: aiohttp.ClientSession, settings: ProviderSettings) -> None:
        self.settings = settings
        self.http = VendorHTTP.from_settings(self.name, session, settings)

    @classmethod
    def routes(cls) -> tuple[RouteSpec, ...]:
        """One text-to-image route: any `W*H` with sides 256–1536, one image per task."""
        return (
            RouteSpec(
                vendor=cls.name,
                model=MODEL,
                kind=Kind.IMAGE,
                sizes=(),
                min_side=256,
                max_side=1536,
                size_step=8,
                max_images=1,
                max_prompt=2000,  # the vendor's cap is undocumented; stay modest
                supports_negative=False,
                supports_seed=True,
                webhook=True,
                price_usd=PRICE_USD,
            ),
        )

    def body_for(self, request: GenerationRequest) -> dict[str, Any]:
        """The vendor's JSON body for a request."""
        body: dict[str, Any] = {"prompt": request.prompt, "size": f"{request.width}*{request.height}"}
        if request.seed is not None:
            body["seed"] = request.seed % (SEED_MAX + 1) if request.seed >= 0 else -1
        if request.webhook_url:
            # The generic V3 async webhook; this endpoint does not list it, so polling stays on.
            body["extra"] = {"webhook": {"url": request.webhook_url}}
        return body

    async def submit(self, request: GenerationRequest) -> Submission:
        """Create a task; the handle's job id is Novita's `task_id`."""
        if request.kind is not Kind.IMAGE or request.model != MODEL:
            raise RejectedInputError(self.name, f"unsupported {request.kind} model {request.model!r}")
        answer = await self.http.request_json(
            "POST", f"/v3/async/{MODEL}", json_body=self.body_for(request), classify=_classify
        )
        try:
            submitted = _Submitted.model_validate(answer)
        except ValidationError as exc:
            raise RetryableError(self.name, "submit answer without task_id") from exc
        _log.info("novita task submitted task=%s", submitted.task_id)
        return Submission(
            handle=JobHandle(vendor=self.name, model=MODEL, job_id=submitted.task_id),
            cost_usd=PRICE_USD,
        )

    async def poll(self, handle: JobHandle) -> JobUpdate:
        """Ask the Task Result API about a task."""
        answer = await self.http.request_json(
            "GET", "/v3/async/task-result", params={"task_id": handle.job_id}, classify=_classify
        )
        return parse_task_result(answer)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> JobUpdate | None:
        """An `ASYNC_TASK_RESULT` delivery as an update; other event types are ignored (None).
        Novita signs nothing: the secrecy of the callback URL (its token) is the only auth."""
        try:
            event = _WebhookEvent.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            raise RejectedInputError(self.name, "webhook body is not a Novita event") from exc
        if event.event_type != WEBHOOK_EVENT:
            return None
        if event.payload is None:
            raise RejectedInputError(self.name, "webhook event without payload")
        try:
            return parse_task_result(event.payload)
        except RetryableError as exc:
            raise RejectedInputError(self.name, "webhook payload is not a task result") from exc

    async def check(self) -> str:
        """Read the account balance (`GET /openapi/v1/billing/balance/detail`)."""
        answer = await self.http.request_json("GET", "/openapi/v1/billing/balance/detail", classify=_classify)
        try:
            balance = _Balance.model_validate(answer)
        except ValidationError as exc:
            raise RetryableError(self.name, "malformed balance answer") from exc
        if balance.availableBalance is None:
            return "ok"
        return f"ok (balance ${balance.availableBalance / 10000:.2f})"
