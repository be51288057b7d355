"""Loopback emulator of Novita's async Hunyuan Image 3 API and Task Result API (docs §4).

Errors come in the flat gateway envelope `{code, reason, message, metadata}` by default; set
`envelope = "nested"` for the `{"error": {"message", "code"}}` shape of Novita's own docs
(which also moves balance errors to 400 and bad keys to 403).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
from typing import Any

from aiohttp import web

from providers.sandbox.common import Fault, Phase, SandboxJob, VendorEmulator, json_response

__all__ = ["NovitaEmulator"]

_log = logging.getLogger(__name__)

MODEL = "hunyuan-image-3"
SEED_MAX = 2**31 - 1
URL_TTL = 3600
_SIZE = re.compile(r"^(\d+)\*(\d+)$")

_STATUS: dict[Phase, str] = {
    Phase.QUEUED: "TASK_STATUS_QUEUED",
    Phase.RUNNING: "TASK_STATUS_PROCESSING",
    Phase.SUCCEEDED: "TASK_STATUS_SUCCEED",
    Phase.FAILED: "TASK_STATUS_FAILED",
    Phase.ERROR: "TASK_STATUS_FAILED",
}


class NovitaEmulator(VendorEmulator):
    """Novita on loopback: bearer key, both error envelopes, task state machine, webhooks."""

    name = "novita"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.envelope = "flat"  # "flat" (observed gateway) or "nested" (Novita's skill docs)
        self.balance = 1_000_000  # 1/10000 USD, i.e. $100

    # --- errors --------------------------------------------------------------------------

    def error(self, status: int, code: str, message: str) -> web.Response:
        """An error answer in the configured envelope."""
        if self.envelope == "nested":
            return json_response({"error": {"message": message, "code": code}}, status)
        return json_response({"code": status, "reason": code, "message": message, "metadata": {}}, status)

    def error_response(self, fault: Fault) -> web.Response:
        """The vendor's status and body for a request-level fault."""
        nested = self.envelope == "nested"
        match fault:
            case Fault.AUTH:
                if nested:
                    return self.error(403, "INVALID_API_KEY", "invalid api key")
                return self.error(401, "FAILED_TO_AUTH", "failed to authenticate API key")
            case Fault.FUNDS:
                if nested:
                    return self.error(400, "BILLING_BALANCE_NOT_ENOUGH", "billing balance not enough")
                return self.error(403, "NOT_ENOUGH_BALANCE", "not enough balance")
            case Fault.RATE_LIMIT:
                return self.error(429, "RATE_LIMIT_EXCEEDED", "Too many requests, please try again later")
            case Fault.REJECT:
                return self.error(400, "INVALID_REQUEST_BODY", "prompt is too long")
            case _:
                return self.error(503, "SERVICE_NOT_AVAILABLE", "Service unavailable")

    def key_ok(self, request: web.Request) -> bool:
        """`Authorization: Bearer <key>`."""
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    # --- routes --------------------------------------------------------------------------

    async def render(self, job: SandboxJob) -> None:
        """Draw an asynchronous job's outputs (ahead of its end)."""
        await self._outputs(job)

    def add_routes(self, app: web.Application) -> None:
        """Submit, task result and the balance endpoint."""
        app.router.add_post(f"/v3/async/{MODEL}", self.submit)
        app.router.add_get("/v3/async/task-result", self.task_result)
        app.router.add_get("/openapi/v1/billing/balance/detail", self.balance_detail)

    async def submit(self, request: web.Request) -> web.Response:
        """POST /v3/async/hunyuan-image-3 → `{"task_id": …}`."""
        if (refused := await self.admit(request, "submit")) is not None:
            return refused
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self.error(400, "INVALID_REQUEST_BODY", "request body is not valid JSON")
        if not isinstance(body, dict):
            return self.error(400, "INVALID_REQUEST_BODY", "request body must be an object")
        problem = _validate(body)
        if problem:
            return self.error(400, "INVALID_REQUEST_BODY", problem)
        job = self.new_job(MODEL, body)
        webhook = (body.get("extra") or {}).get("webhook") or {}
        job.webhook_url = webhook.get("url") or None
        job.cost_usd = 0.10
        await self.accept(job)
        return json_response({"task_id": job.id})

    async def task_result(self, request: web.Request) -> web.Response:
        """GET /v3/async/task-result?task_id=…"""
        if (refused := await self.admit(request, "poll")) is not None:
            return refused
        task_id = request.query.get("task_id", "")
        if not task_id:
            return self.error(400, "INVALID_REQUEST_BODY", "task_id is required")
        job = self.jobs.get(task_id)
        if job is None:
            return self.error(404, "TASK_NOT_FOUND", "task not found")
        return json_response(await self.result_body(job))

    async def balance_detail(self, request: web.Request) -> web.Response:
        """GET /openapi/v1/billing/balance/detail (units of 1/10000 USD, as strings)."""
        if (refused := await self.admit(request, "check")) is not None:
            return refused
        return json_response(
            {
                "availableBalance": str(self.balance),
                "cashBalance": str(self.balance),
                "creditLimit": "0",
                "pendingCharges": "0",
                "outstandingInvoices": "0",
            }
        )

    # --- task results --------------------------------------------------------------------

    async def result_body(self, job: SandboxJob, *, ttl_as_string: bool = False) -> dict[str, Any]:
        """The Task Result schema for a job at this moment (also a webhook's payload)."""
        now = self.clock()
        phase = job.phase(now)
        images: list[dict[str, Any]] = []
        if phase is Phase.SUCCEEDED:
            for url in await self._outputs(job):
                images.append(
                    {
                        "image_url": url,
                        "image_type": "png",
                        # An int here, the string "3600" in the webhook docs: emulate both.
                        "image_url_ttl": str(URL_TTL) if ttl_as_string else URL_TTL,
                        "nsfw_detection_result": None,
                    }
                )
        reason = ""
        if phase is Phase.FAILED:
            reason = "the model could not generate an image for this prompt"
        elif phase is Phase.ERROR:
            reason = "internal error, please try again later"
        if phase is Phase.QUEUED:
            percent = 0
        elif phase is Phase.RUNNING:
            percent = int(job.progress(now) * 100)
        else:
            percent = 100
        extra: dict[str, Any] = {
            "seed": str(job.request.get("seed", -1)),
            "enable_nsfw_detection": False,
            "debug_info": {
                "request_info": "",
                "submit_time_ms": "",
                "execute_time_ms": "",
                "complete_time_ms": "",
            },
        }
        if job.webhook_url:
            extra["webhook"] = {"url": job.webhook_url}
        return {
            "extra": extra,
            "task": {
                "task_id": job.id,
                "task_type": "HUNYUAN_IMAGE_3",
                "status": _STATUS[phase],
                "reason": reason,
                "eta": max(0, math.ceil(job.latency - (now - job.created))) if not phase.finished else 0,
                "progress_percent": percent,
            },
            "images": images,
            "videos": [],
            "audios": [],
        }

    async def _outputs(self, job: SandboxJob) -> list[str]:
        """Pre-signed-looking URLs of the job's image, drawn once."""
        width, height = _size(job.request)
        seed = job.request.get("seed")
        urls = await self.produce_images(
            job, job.request["prompt"], width, height, 1, seed if seed and seed > 0 else None
        )
        if not job.extra.get("billed"):
            job.extra["billed"] = True
            self.balance -= 1000
        return [self._presign(u) for u in urls]

    def _presign(self, url: str) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        sig = hashlib.sha256(url.encode()).hexdigest()
        return (
            f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=SANDBOX%2Fap-southeast-1%2Fs3"
            f"&X-Amz-Date={stamp}&X-Amz-Expires={URL_TTL}&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}"
        )

    async def callback_payload(self, job: SandboxJob) -> dict[str, Any]:
        """`ASYNC_TASK_RESULT`, once, when a job that asked for a webhook ends."""
        payload = await self.result_body(job, ttl_as_string=True)
        return {"event_type": "ASYNC_TASK_RESULT", "payload": payload}


def _size(body: dict[str, Any]) -> tuple[int, int]:
    match = _SIZE.match(str(body.get("size", "1024*1024")))
    assert match is not None  # validated at submit
    return int(match.group(1)), int(match.group(2))


def _validate(body: dict[str, Any]) -> str | None:
    """Novita's complaint about a submit body, or None."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt is required"
    size = body.get("size", "1024*1024")
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None:
        return f"size must be formatted as width*height, got {size!r}"
    for side in (int(match.group(1)), int(match.group(2))):
        if not 256 <= side <= 1536:
            return f"size {size} is out of range: each side must be between 256 and 1536"
    seed = body.get("seed", -1)
    if not isinstance(seed, int) or isinstance(seed, bool) or not -1 <= seed <= SEED_MAX:
        return f"seed must be an integer between -1 and {SEED_MAX}"
    extra = body.get("extra")
    if extra is not None:
        webhook = extra.get("webhook") if isinstance(extra, dict) else None
        if webhook is not None and not (isinstance(webhook, dict) and isinstance(webhook.get("url"), str)):
            return "extra.webhook.url must be a string"
    return None
