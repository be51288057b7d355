"""Loopback emulator of API in One's image endpoint for `hunyuan-image-3`.

API in One documents the request but not the answers (docs/providers.md §1.3–1.5), so the shapes
here are assumptions, each switchable so the client is tested against all of them:

* `sync_mode=False` (default): submit answers `{"code":200,"message":"success","data":{"task_id",
  "status":"pending"}}` and the task is read at `GET /api/v1/tasks/{id}` (§1.4's proposal).
  `sync_mode=True`: submit waits for the job and answers with the images in the same envelope.
* `flat_envelope=True`: the other documented envelope, `{"id","status",…}` without `data`, with
  upper-case statuses (the third-party client compares both spellings).
* `result_shape`: where result URLs live — "image_urls" (`output.image_urls[]`), "images"
  (`images[]`) or "output_list" (`output[]`).

Errors use the documented `{"error":{"code","message","type"}}` envelope; 402/429 bodies and the
content-policy refusal (prompts containing "nsfw") are our guesses.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Literal, assert_never

from aiohttp import web

from providers.sandbox.common import Fault, Phase, SandboxJob, VendorEmulator, json_response

__all__ = ["ApiInOneEmulator"]

_log = logging.getLogger(__name__)

MODEL = "hunyuan-image-3"
MIN_SIDE, MAX_SIDE = 256, 1536  # assumed from the WaveSpeed backend; API in One publishes none
MAX_PROMPT = 2000
MAX_EDIT_IMAGES = 2
CREDITS_PER_IMAGE = 25
_SIZE = re.compile(r"^(\d{2,5})\*(\d{2,5})$")

ResultShape = Literal["image_urls", "images", "output_list"]

_ERRORS: dict[Fault, tuple[int, str, str]] = {
    Fault.AUTH: (401, "Invalid API key", "authentication_error"),
    Fault.FUNDS: (402, "Insufficient credits: top up at /billing/credits", "insufficient_credits"),
    Fault.RATE_LIMIT: (429, "Rate limit exceeded, slow down", "rate_limit_error"),
    Fault.SERVER_ERROR: (500, "Upstream provider error", "server_error"),
    Fault.REJECT: (400, "Invalid request: prompt is invalid", "invalid_request_error"),
}


def _error(status: int, message: str, kind: str) -> web.Response:
    return json_response({"error": {"code": status, "message": message, "type": kind}}, status)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ApiInOneEmulator(VendorEmulator):
    """`POST /api/v1/images/generations` and `GET /api/v1/tasks/{id}` under `/apiinone`."""

    name = "apiinone"

    def __init__(
        self,
        *,
        sync_mode: bool = False,
        flat_envelope: bool = False,
        result_shape: ResultShape = "image_urls",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.sync_mode = sync_mode
        self.flat_envelope = flat_envelope
        self.result_shape: ResultShape = result_shape

    # --- VendorEmulator hooks ----------------------------------------------------------------

    def error_response(self, fault: Fault) -> web.Response:
        """The documented error envelope with the status of each fault."""
        return _error(*_ERRORS[fault])

    def key_ok(self, request: web.Request) -> bool:
        """`Authorization: Bearer <key>`."""
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    async def render(self, job: SandboxJob) -> None:
        """Draw an asynchronous job's outputs (ahead of its end)."""
        await self._outputs(job)

    def add_routes(self, app: web.Application) -> None:
        """The image endpoint and the task status route."""
        app.router.add_post("/api/v1/images/generations", self._submit)
        app.router.add_get("/api/v1/tasks/{task_id}", self._task)

    async def callback_payload(self, job: SandboxJob) -> dict[str, Any]:
        """A `callback_url` POST carries the task answer."""
        return await self._task_body(job)

    # --- handlers ----------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.Response:
        if (refused := await self.admit(request, "submit")) is not None:
            return refused
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "Request body must be JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object", "invalid_request_error")
        problem = self._validate(body)
        if problem:
            return _error(400, problem, "invalid_request_error")
        if "nsfw" in body["prompt"].lower():
            return _error(400, "Prompt rejected by content moderation", "content_policy_violation")
        images = list(body.get("images") or ())
        inputs = await self.fetch_inputs(images)
        if inputs is None:
            return _error(400, f"Failed to download image: {', '.join(images)}", "invalid_request_error")

        job = self.new_job(MODEL, body, prefix="task_")
        await self.keep_inputs(job, inputs)
        callback = body.get("callback_url")
        job.webhook_url = callback if isinstance(callback, str) and callback else None
        if self.sync_mode:
            job.webhook_url = None  # the answer itself is the result
            return await self._answer_sync(job)
        await self.accept(job)
        return json_response(self._envelope(job, "pending"))

    async def _task(self, request: web.Request) -> web.Response:
        if (refused := await self.admit(request, "poll")) is not None:
            return refused
        job = self.jobs.get(request.match_info["task_id"])
        if job is None:
            return _error(404, "Task not found", "not_found_error")
        return json_response(await self._task_body(job))

    # --- helpers -----------------------------------------------------------------------------

    def _validate(self, body: dict[str, Any]) -> str | None:
        if body.get("model") != MODEL:
            return f"Model not found: {body.get('model')!r}"
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "prompt is required"
        if len(prompt) > MAX_PROMPT:
            return f"prompt must be at most {MAX_PROMPT} characters"
        kind = body.get("type", "text-to-image")
        if kind not in ("text-to-image", "edit"):
            return 'type must be "text-to-image" or "edit"'
        size = body.get("size", "1024*1024")
        match = _SIZE.match(size) if isinstance(size, str) else None
        if match is None:
            return 'size must look like "1024*1024"'
        width, height = int(match[1]), int(match[2])
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            return f"size must be between {MIN_SIDE} and {MAX_SIDE} pixels per side"
        images = body.get("images")
        if kind == "edit":
            if not isinstance(images, list) or not images:
                return 'images is required when type is "edit"'
            if len(images) > MAX_EDIT_IMAGES or not all(isinstance(u, str) and u for u in images):
                return f"images must be 1 to {MAX_EDIT_IMAGES} URLs"
        seed = body.get("seed", -1)
        if not isinstance(seed, int) or isinstance(seed, bool):
            return "seed must be an integer"
        return None

    async def _answer_sync(self, job: SandboxJob) -> web.Response:
        if not await self.hold(job):
            return _error(504, "Generation timed out", "timeout_error")
        return json_response(await self._task_body(job, job.outcome()))

    async def _task_body(self, job: SandboxJob, phase: Phase | None = None) -> dict[str, Any]:
        phase = phase or job.phase(self.clock())
        match phase:
            case Phase.QUEUED:
                return self._envelope(job, "pending")
            case Phase.RUNNING:
                return self._envelope(job, "processing")
            case Phase.FAILED:
                return self._envelope(job, "failed", error="Generation failed: the model returned no image")
            case Phase.ERROR:
                return self._envelope(job, "error", error="Internal error at the upstream provider")
            case Phase.SUCCEEDED:
                return self._envelope(job, "completed", urls=await self._outputs(job))
            case _:
                assert_never(phase)

    async def _outputs(self, job: SandboxJob) -> list[str]:
        # Drawn once (an edit from its kept input image); later looks reuse the files.
        body = job.request
        width, height = (int(v) for v in str(body.get("size", "1024*1024")).split("*"))
        seed = body.get("seed", -1)
        return await self.produce_images(job, body["prompt"], width, height, 1, seed if seed >= 0 else None)

    def _envelope(
        self, job: SandboxJob, status: str, *, urls: list[str] | None = None, error: str | None = None
    ) -> dict[str, Any]:
        task: dict[str, Any] = {
            "status": status.upper() if self.flat_envelope else status,
            "model": MODEL,
            "created_at": _now(),
        }
        if urls is not None:
            task["credits_consumed"] = CREDITS_PER_IMAGE * len(urls)
            task["completed_at"] = _now()
            match self.result_shape:
                case "image_urls":
                    task["output"] = {"image_urls": urls}
                case "images":
                    task["images"] = urls
                case "output_list":
                    task["output"] = urls
        if error is not None:
            task["error"] = {"message": error}
            task["completed_at"] = _now()
        if self.flat_envelope:
            return {"id": job.id, **task}
        return {"code": 200, "message": "success", "data": {"task_id": job.id, **task}}
