"""Loopback emulator of AI/ML API's synchronous `POST /v1/images/generations` (docs §2).

The call holds the connection for the job's latency and answers 201 with the images. Job
faults have no job to show them on, so they become what a synchronous vendor sends instead:
STUCK waits for the gateway's 504 "Generation timeout", JOB_FAILED / JOB_ERROR answer 500.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import uuid
from typing import Any

from aiohttp import web

from providers.sandbox.common import FAL_PRESETS, Fault, Phase, VendorEmulator, json_response

__all__ = ["PRESET_SIZES", "AimlApiEmulator"]

_log = logging.getLogger(__name__)

MODEL = "hunyuan/hunyuan-image-v3-text-to-image"
GENERATIONS = "/v1/images/generations"

#: pixel sizes of the enum presets: fal's standard ones, but 1280×768 for `landscape_16_9` as documented
PRESET_SIZES = {**FAL_PRESETS, "landscape_16_9": (1280, 768)}

_MESSAGES = {
    401: "This request requires a valid API key. You can create a new API key on the Billing page: "
    "https://aimlapi.com/app/keys",
    403: "You've run out of credits. Please top up your balance or update your payment method to "
    "continue: https://aimlapi.com/app/billing/",
    429: "Too Many Requests",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Generation timeout",
}


def _error(status: int, message: str, path: str = GENERATIONS) -> web.Response:
    # statusCode is a string in the vendor's documented example; keep it that way.
    return json_response(
        {
            "message": message,
            "path": path,
            "requestId": str(uuid.uuid4()),
            "statusCode": str(status),
            "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
        status,
    )


def _invalid(detail: str) -> web.Response:
    return _error(400, f"Body validation error! {detail}")


class AimlApiEmulator(VendorEmulator):
    """AI/ML API on loopback: bearer key, zod-like validation, synchronous generation."""

    name = "aimlapi"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.balance = 551_564_495  # credits, as in the vendor's balance example

    def error_response(self, fault: Fault) -> web.Response:
        """The vendor's status and body for a request-level fault."""
        match fault:
            case Fault.AUTH:
                return _error(401, _MESSAGES[401])
            case Fault.FUNDS:
                return _error(403, _MESSAGES[403])  # out of credits is a 403 here, not a 402
            case Fault.RATE_LIMIT:
                return _error(429, _MESSAGES[429])
            case Fault.REJECT:
                return _invalid("prompt: String must contain at most 4000 character(s)")
            case _:
                return _error(500, _MESSAGES[500])

    def key_ok(self, request: web.Request) -> bool:
        """`Authorization: Bearer <key>`."""
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    def add_routes(self, app: web.Application) -> None:
        """The generation endpoint and the balance endpoint (billing host in production)."""
        app.router.add_post(GENERATIONS, self.generate)
        app.router.add_get("/v1/billing/balance", self.balance_detail)

    async def balance_detail(self, request: web.Request) -> web.Response:
        """GET /v1/billing/balance."""
        self.requests.append((request.method, request.path))
        if (fault := await self.fault_response("check")) is not None:
            return fault
        if not self.key_ok(request):
            return _error(401, _MESSAGES[401], "/v1/billing/balance")
        return json_response(
            {
                "balance": self.balance,
                "lowBalance": False,
                "lowBalanceThreshold": 10000,
                "lastUpdated": dt.datetime.now(dt.UTC).isoformat(),
                "autoDebitStatus": "disabled",
                "status": "current",
                "statusExplanation": "Balance is current and up to date",
            }
        )

    async def generate(self, request: web.Request) -> web.Response:
        """POST /v1/images/generations: validate, wait the job's latency, answer 201."""
        if (refused := await self.admit(request, "submit")) is not None:
            return refused
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "Unexpected token in JSON")
        if not isinstance(body, dict):
            return _invalid("Expected object, received array")
        problem, size = _validate(body)
        if problem:
            return _invalid(problem)
        assert size is not None
        job = self.new_job(MODEL, body)
        if not await self.hold(job):
            return _error(504, _MESSAGES[504])
        match job.outcome():
            case Phase.FAILED:
                return _error(500, "Something wrong with the server. Please, try again later.")
            case Phase.ERROR:
                return _error(500, "The model is under maintenance, please contact us at help@aimlapi.com.")
        width, height = size
        count = int(body.get("num_images", 1))
        urls = await self.produce_images(job, body["prompt"], width, height, count, body.get("seed"))
        items: list[dict[str, Any]] = []
        for url, name in zip(urls, job.outputs, strict=True):
            item: dict[str, Any] = {
                "url": url,
                "content_type": "image/png",
                "file_name": None,
                "file_size": None,
                "width": width,
                "height": height,
            }
            if body.get("sync_mode") and name in self.files:
                png = self.files[name][0]
                item["url"] = "data:image/png;base64," + base64.b64encode(png).decode()
            items.append(item)
        self.balance -= 120_000 * count
        return json_response({"data": items, "meta": {"usage": {"tokens_used": 210_000 * count}}}, 201)


def _validate(body: dict[str, Any]) -> tuple[str | None, tuple[int, int] | None]:
    """A zod-like complaint about the body (or None) and the pixel size it asks for."""
    if body.get("model") != MODEL:
        return f"model: Invalid enum value. Expected '{MODEL}', received '{body.get('model')}'", None
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "prompt: Required", None
    if len(prompt) > 4000:
        return "prompt: String must contain at most 4000 character(s)", None
    negative = body.get("negative_prompt", "")
    if not isinstance(negative, str):
        return "negative_prompt: Expected string", None
    num = body.get("num_images", 1)
    if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= 4:
        return "num_images: Number must be between 1 and 4", None
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 1):
        return "seed: Number must be greater than or equal to 1", None
    size = body.get("image_size", "square_hd")
    if isinstance(size, str):
        if size not in PRESET_SIZES:
            names = " | ".join(f"'{n}'" for n in PRESET_SIZES)
            return f"image_size: Invalid enum value. Expected {names}, received '{size}'", None
        return None, PRESET_SIZES[size]
    if isinstance(size, dict):
        w, h = size.get("width"), size.get("height")
        # Custom bounds are undocumented; the sandbox assumes 256–1536 in steps of 8.
        for key, side in (("width", w), ("height", h)):
            if not isinstance(side, int) or isinstance(side, bool):
                return f"image_size.{key}: Expected number", None
            if not 256 <= side <= 1536 or side % 8:
                return f"image_size.{key}: must be a multiple of 8 between 256 and 1536", None
        assert isinstance(w, int) and isinstance(h, int)
        return None, (w, h)
    return "image_size: Expected string or object", None
