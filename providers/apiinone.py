"""API in One (apiin.one): Hunyuan Image 3 text-to-image and instruction edits.

One vendor model, `hunyuan-image-3`, on `POST /api/v1/images/generations` with
`type: "text-to-image" | "edit"`. Its own page says both "returns directly" and "creates an
async task" (docs/providers.md §1.3), so a submit answer may carry the images or a task id;
either way the task can be read at `GET /api/v1/tasks/{id}`. Statuses and result locations are
undocumented, so parsing accepts every plausible shape and compares statuses case-insensitively.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, NoReturn, assert_never

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from providers.base import (
    Artifact,
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
from providers.http import VendorHTTP, classify_error, content_type_from_name, decode_data_uri, error_text

__all__ = ["ApiInOneProvider"]

_log = logging.getLogger(__name__)

VENDOR = "apiinone"
#: the vendor's model id, sent for both routes (the edit route differs only by `type`)
WIRE_MODEL = "hunyuan-image-3"
#: bot-side name of the edit route, so the two routes have distinct `vendor:model` keys
EDIT_MODEL = "hunyuan-image-3-edit"
PRICE_USD = 0.25  # 25 credits per image, text-to-image and edit alike [S0]
USD_PER_CREDIT = 0.01
MAX_EDIT_IMAGES = 2
SUBMIT_PATH = "/api/v1/images/generations"
TASK_PATH = "/api/v1/tasks/{task_id}"
#: a task id no one has: `check()` reads it to prove the key without spending credits
_PROBE_TASK = "imagine-bot-key-check"

_CONTENT_WORDS = ("content_policy", "content policy", "moderation", "sensitive", "nsfw", "unsafe", "safety")
_FUNDS_WORDS = ("insufficient", "balance", "credits", "quota")


# --- wire models (private; parsed tolerantly) ------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _ImageItem(_Wire):
    url: str | None = None
    image_url: str | None = None
    b64_json: str | None = None  # OpenAI-style inline image (the endpoint path is OpenAI-shaped)


_ImageRef = str | _ImageItem


class _Output(_Wire):
    image_urls: list[_ImageRef] = []
    images: list[_ImageRef] = []
    image_url: str | None = None
    url: str | None = None


class _ErrorInfo(_Wire):
    message: str | None = None
    code: int | str | None = None
    type: str | None = None


class _Task(_Wire):
    task_id: str | None = None
    id: str | None = None
    status: str | None = None
    output: _Output | list[_ImageRef] | str | None = None
    images: list[_ImageRef] = []
    image_urls: list[_ImageRef] = []
    credits_consumed: float | None = None
    error: _ErrorInfo | str | None = None
    error_message: str | None = None
    fail_reason: str | None = None


class _Answer(_Task):
    """Any answer: the `{code, message, data}` envelope, a flat task, or OpenAI's `data: [...]`."""

    code: int | str | None = None
    message: str | None = None
    data: _Task | list[_ImageRef] | None = None


class _TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


# Seen or plausible spellings (docs: "pending"; a third-party client: COMPLETED/SUCCESS/FAILED/ERROR).
_STATUS_WORDS: dict[str, _TaskStatus] = {
    **dict.fromkeys(("pending", "queued", "queue", "submitted", "created", "waiting"), _TaskStatus.PENDING),
    **dict.fromkeys(
        ("processing", "running", "in_progress", "in-progress", "generating", "started"),
        _TaskStatus.PROCESSING,
    ),
    **dict.fromkeys(
        ("completed", "complete", "succeeded", "success", "succeed", "done", "finished"),
        _TaskStatus.COMPLETED,
    ),
    **dict.fromkeys(
        ("failed", "failure", "fail", "error", "cancelled", "canceled", "timeout", "expired"),
        _TaskStatus.FAILED,
    ),
}


def _job_state(status: _TaskStatus) -> JobState:
    match status:
        case _TaskStatus.PENDING:
            return JobState.QUEUED
        case _TaskStatus.PROCESSING:
            return JobState.RUNNING
        case _TaskStatus.COMPLETED:
            return JobState.SUCCEEDED
        case _TaskStatus.FAILED:
            return JobState.FAILED
        case _:
            assert_never(status)


# --- the client ------------------------------------------------------------------------------


class ApiInOneProvider(Provider):
    """Client of API in One's `hunyuan-image-3` (text-to-image and edit)."""

    name: ClassVar[str] = VENDOR

    def __init__(self, session: aiohttp.ClientSession, settings: ProviderSettings) -> None:
        self.http = VendorHTTP.from_settings(VENDOR, session, settings)

    @classmethod
    def routes(cls) -> tuple[RouteSpec, ...]:
        """Text-to-image and edit; sizes are assumed to be 256–1536 px per side (the WaveSpeed
        backend's limits — API in One publishes no list)."""
        common: dict[str, Any] = {
            "min_side": 256,
            "max_side": 1536,
            "max_images": 1,
            "min_prompt": 3,  # the image endpoint's generic docs: 3–5000 characters
            "max_prompt": 2000,
            "supports_seed": True,
            # "Webhook: Not required" for this model; callback_url support is unknown [S0].
            "webhook": False,
            "price_usd": PRICE_USD,
        }
        return (
            RouteSpec(VENDOR, WIRE_MODEL, Kind.IMAGE, **common),
            RouteSpec(VENDOR, EDIT_MODEL, Kind.EDIT, accepts_image=True, needs_image=True, **common),
        )

    async def submit(self, request: GenerationRequest) -> Submission:
        """Start a task; when the answer already carries the images, the submission holds the
        final update. Raises RejectedInputError for an edit without 1–2 input images."""
        if request.kind is Kind.MODEL3D:
            raise RejectedInputError(VENDOR, "API in One has no 3D model")
        edit = request.kind is Kind.EDIT
        if edit and not 1 <= len(request.image_urls) <= MAX_EDIT_IMAGES:
            raise RejectedInputError(VENDOR, f"an edit takes 1 to {MAX_EDIT_IMAGES} input images")
        body: dict[str, Any] = {
            "model": WIRE_MODEL,
            "prompt": request.prompt,
            "type": "edit" if edit else "text-to-image",
            "size": f"{request.width}*{request.height}",
            "seed": request.seed if request.seed is not None else -1,
        }
        if edit:
            body["images"] = list(request.image_urls)
        if request.webhook_url:
            body["callback_url"] = request.webhook_url
        raw = await self.http.request_json("POST", SUBMIT_PATH, json_body=body, classify=_classify)
        answer = _parse(raw)
        task_id, update = await asyncio.to_thread(_read, answer)  # may decode inline base64
        if task_id is None and update is None:
            raise RetryableError(VENDOR, "submit answer has neither a task id nor images")
        handle = JobHandle(
            vendor=VENDOR,
            model=request.model,
            job_id=task_id or f"sync-{uuid.uuid4()}",
            data={} if task_id else {"sync": "1"},
        )
        if update is not None and not update.terminal:
            update = None  # an in-flight status at submit says nothing the first poll won't
        return Submission(handle=handle, update=update, cost_usd=PRICE_USD * max(1, request.count))

    async def poll(self, handle: JobHandle) -> JobUpdate:
        """Read the task at `/api/v1/tasks/{id}`. Raises UnknownJobError when it is gone."""
        if handle.data.get("sync"):
            # A synchronous answer created no task; there is nothing to read back.
            raise UnknownJobError(VENDOR, "a synchronous result cannot be polled")
        raw = await self.http.request_json("GET", TASK_PATH.format(task_id=handle.job_id), classify=_classify)
        _task_id, update = await asyncio.to_thread(_read, _parse(raw))  # may decode inline base64
        if update is None:
            raise RetryableError(VENDOR, "task answer has no status and no images")
        return update

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> JobUpdate | None:
        """A `callback_url` POST in the task shape; None while the task is still running."""
        try:
            answer = _Answer.model_validate_json(body)
        except ValidationError as exc:
            raise RejectedInputError(VENDOR, "callback body is not a task") from exc
        _task_id, update = _read(answer)
        return update if update is not None and update.terminal else None

    async def check(self) -> str:
        """Read a task that does not exist: a 404 proves the key (free), a 401 refutes it."""
        with contextlib.suppress(UnknownJobError, RejectedInputError):
            await self.http.request_json("GET", TASK_PATH.format(task_id=_PROBE_TASK), classify=_classify)
        return "ok"


# --- parsing -------------------------------------------------------------------------------


def _classify(status: int, body: Any) -> type[ProviderError] | None:
    # 402 is documented nowhere for this vendor; recognise "insufficient credits" wording on any
    # 4xx, and safety refusals on 400/422 (our own guess at their vocabulary).
    text = _lower_text(body)
    if 400 <= status < 500 and status not in (401, 429) and any(w in text for w in _FUNDS_WORDS):
        return OutOfFundsError
    if status in (400, 422) and any(w in text for w in _CONTENT_WORDS):
        return ContentBlockedError
    return None


def _lower_text(body: Any) -> str:
    if isinstance(body, dict):
        parts = [error_text(body)]
        err = body.get("error")
        if isinstance(err, dict):
            parts += [str(err.get("type") or ""), str(err.get("code") or "")]
        return " ".join(parts).lower()
    return str(body or "").lower()


def _parse(raw: Any) -> _Answer:
    try:
        answer = _Answer.model_validate(raw)
    except ValidationError as exc:
        raise RetryableError(VENDOR, "answer in an unknown shape") from exc
    _raise_for_code(answer)
    return answer


def _raise_for_code(answer: _Answer) -> None:
    # The `{code, message, data}` envelope may carry an error code inside a 200 answer, and a
    # bare `{"error": {...}}` with no task in it is a refused call whatever the HTTP status.
    if isinstance(answer.code, int) and answer.code >= 400:
        _raise_status(answer.code, answer.message or "error")
    if answer.error is None or answer.status is not None or answer.data is not None:
        return
    if answer.task_id or answer.id:
        return
    info = answer.error
    text = info if isinstance(info, str) else (info.message or "error")
    code = None if isinstance(info, str) else info.code
    if isinstance(code, int) and code >= 400:
        _raise_status(code, text)
    raise RetryableError(VENDOR, f"error without a status: {text}")


def _raise_status(status: int, text: str) -> NoReturn:
    cls = classify_error(status, {"message": text}, _classify)
    raise cls(VENDOR, text, status=status)


def _read(answer: _Answer) -> tuple[str | None, JobUpdate | None]:
    """The task id (`data.task_id` ?? `task_id` ?? `id`) and what the answer says about the job."""
    task = answer.data if isinstance(answer.data, _Task) else answer
    task_id = task.task_id or task.id or answer.task_id or answer.id
    refs = _image_refs(task)
    if isinstance(answer.data, list):
        refs += answer.data  # OpenAI-style `{"data": [{"url": …}]}`
    if task is not answer:
        refs += _image_refs(answer)
    found = [a for a in (_artifact(r) for r in refs) if a is not None]
    # The same URL may sit in two of the places we look; deliver it once.
    artifacts = tuple({a.url or id(a): a for a in found}.values())

    status = _status(task.status or answer.status)
    if status is None:
        if not artifacts:
            return task_id, None
        status = _TaskStatus.COMPLETED  # a synchronous answer with images and no status
    state = _job_state(status)
    credits = task.credits_consumed if task.credits_consumed is not None else answer.credits_consumed
    match state:
        case JobState.SUCCEEDED:
            if not artifacts:
                return task_id, JobUpdate(
                    state=JobState.FAILED, error="completed without images", charged=False
                )
            cost = credits * USD_PER_CREDIT if credits is not None else PRICE_USD * len(artifacts)
            return task_id, JobUpdate(state=state, progress=1.0, artifacts=artifacts, cost_usd=cost)
        case JobState.FAILED:
            # "Billed on successful requests" [S0]: a failed task costs nothing.
            return task_id, JobUpdate(state=state, error=_failure_text(task, answer), charged=False)
        case JobState.QUEUED | JobState.RUNNING | JobState.CANCELLED:
            return task_id, JobUpdate(state=state)
        case _:
            assert_never(state)


def _status(raw: str | None) -> _TaskStatus | None:
    if not raw:
        return None
    status = _STATUS_WORDS.get(raw.strip().lower())
    if status is None:
        # An unknown word is most likely another in-flight state; the job timeout ends it if not.
        _log.warning("unknown task status vendor=%s status=%r", VENDOR, raw)
        return _TaskStatus.PROCESSING
    return status


def _image_refs(task: _Task) -> list[_ImageRef]:
    refs: list[_ImageRef] = []
    out = task.output
    if isinstance(out, _Output):
        refs += out.image_urls + out.images
        refs += [u for u in (out.image_url, out.url) if u]
    elif isinstance(out, list):
        refs += out
    elif isinstance(out, str) and out:
        refs.append(out)
    return refs + task.images + task.image_urls


def _artifact(ref: _ImageRef) -> Artifact | None:
    if isinstance(ref, _ImageItem):
        if ref.b64_json:
            return _inline(ref.b64_json)
        ref = ref.url or ref.image_url or ""
    if ref.startswith("data:"):
        return _inline(ref)
    if not ref.startswith(("http://", "https://")):
        return None
    return Artifact(url=ref, content_type=content_type_from_name(ref))


def _inline(value: str) -> Artifact | None:
    # Undocumented answers: be lenient (stray characters skipped) and drop what cannot be read.
    try:
        data, ctype = decode_data_uri(value, strict=False)
    except ValueError:
        return None
    return Artifact(data=data, content_type=ctype or _sniff(data)) if data else None


def _sniff(data: bytes | None) -> str | None:
    if not data:
        return None
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _failure_text(task: _Task, answer: _Answer) -> str:
    for t in (task, answer):
        if isinstance(t.error, str) and t.error:
            return t.error
        if isinstance(t.error, _ErrorInfo) and t.error.message:
            return t.error.message
        if t.error_message:
            return t.error_message
        if t.fail_reason:
            return t.fail_reason
    return "the vendor reported a failed task"
