"""Loopback emulator of Pixazo's gateway for the five Hunyuan models (docs/providers.md §3).

Submit paths per model answer 202 `{request_id, status:"QUEUED", polling_url}`; every job is read
at `GET /v2/requests/status/{request_id}` (QUEUED → PROCESSING → COMPLETED | FAILED | ERROR).
`X-Webhook-URL` gets one terminal POST with the status body (`X-Webhook-Mode: sync` also posts
each in-flight status change). Gateway errors use Azure APIM's `{statusCode, message}` (401, 429);
queue errors use `{error, message}` (402, 400). Validation errors are not documented: we answer
`{"error":"Bad Request","message":…}`, an assumption.

`model3d_shape` picks the 3D output shape: "model_glb" (default; the status-endpoint example,
`output.model_glb`/`thumbnail`/`model_urls`) or "media_url" (the webhook example,
`output.media_url[]` with `media_type:"model/glb"` and no thumbnail).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal, assert_never
from urllib.parse import urlsplit

from aiohttp import web

from providers.sandbox.common import FAL_PRESETS, Fault, Phase, SandboxJob, VendorEmulator, json_response

__all__ = ["PixazoEmulator"]

_log = logging.getLogger(__name__)

IMAGE, INSTRUCT = "hunyuan-image", "hunyuan-image-3-0-instruct"
TEXT_3D, IMAGE_3D_PRO, IMAGE_3D = "hunyuan-3d", "hunyuan-3d-v3-1-pro-image-to-3d", "hunyuan3d-3-0-api-294"

#: model id -> submit path (relative to the `/pixazo` mount)
SUBMIT_PATHS: dict[str, str] = {
    IMAGE: "/hunyuan-image/v1/hunyuan-image/generateRequest",
    INSTRUCT: f"/{INSTRUCT}/v1/{INSTRUCT}-request",
    TEXT_3D: "/hunyuan-3d/v1/hunyuan-3d-request",
    IMAGE_3D_PRO: f"/{IMAGE_3D_PRO}/v1/{IMAGE_3D_PRO}-request",
    IMAGE_3D: "/hunyuan3d-3-0-api-294/v1/hunyuan3d-3-0-api-request",
}
#: fal's pixel sizes for the `image_size` presets (Pixazo names them only) — an assumption
PRESETS = FAL_PRESETS
INSTRUCT_SIZES: dict[str, tuple[int, int]] = {
    "auto": (1024, 1024),
    "512x512": (512, 512),
    "1024x1024": (1024, 1024),
    "768x1344": (768, 1344),
    "1344x768": (1344, 768),
}
PRICES = {IMAGE: 0.20, INSTRUCT: None, TEXT_3D: 0.225, IMAGE_3D_PRO: 0.225, IMAGE_3D: 0.375}
MAX_URL = 5000
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

Model3DShape = Literal["model_glb", "media_url"]

_FAULT_BODIES: dict[Fault, tuple[int, dict[str, Any]]] = {
    Fault.AUTH: (
        401,
        {
            "statusCode": 401,
            "message": "Access denied due to invalid subscription key. "
            "Make sure to provide a valid key for an active subscription.",
        },
    ),
    Fault.FUNDS: (
        402,
        {"error": "Insufficient Balance", "message": "Your wallet does not have enough balance."},
    ),
    Fault.RATE_LIMIT: (
        429,
        {"statusCode": 429, "message": "Rate limit is exceeded. Try again in 1 seconds."},
    ),
    Fault.SERVER_ERROR: (500, {"statusCode": 500, "message": "Internal server error"}),
    Fault.REJECT: (400, {"error": "Bad Request", "message": "Invalid request body"}),
}


def _bad(message: str) -> web.Response:
    return json_response({"error": "Bad Request", "message": message}, 400)


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PixazoEmulator(VendorEmulator):
    """The five Hunyuan submit paths and the universal status route under `/pixazo`."""

    name = "pixazo"

    def __init__(self, *, model3d_shape: Model3DShape = "model_glb", **options: Any) -> None:
        super().__init__(**options)
        self.model3d_shape: Model3DShape = model3d_shape
        #: models the gateway answers "not found or is disabled" for (set by tests)
        self.disabled_models: set[str] = set()

    # --- VendorEmulator hooks ----------------------------------------------------------------

    def error_response(self, fault: Fault) -> web.Response:
        """APIM's `{statusCode, message}` for gateway faults, `{error, message}` for the queue's."""
        status, body = _FAULT_BODIES[fault]
        return json_response(body, status)

    def key_ok(self, request: web.Request) -> bool:
        """`Ocp-Apim-Subscription-Key: <key>`."""
        return request.headers.get("Ocp-Apim-Subscription-Key") == self.api_key

    async def render(self, job: SandboxJob) -> None:
        """Draw an asynchronous job's outputs (ahead of its end)."""
        await self._render(job)

    def add_routes(self, app: web.Application) -> None:
        """One POST per model and the status GET."""
        for model, path in SUBMIT_PATHS.items():
            app.router.add_post(path, self._submitter(model))
        app.router.add_get("/v2/requests/status/{request_id}", self._status)

    def callback_moments(self, job: SandboxJob) -> list[float]:
        """The end; in `sync` mode also the submit (QUEUED) and the start of PROCESSING."""
        if not job.extra.get("sync"):
            return [job.done_at]
        return [job.created, job.created + min(0.25 * job.latency, 1.0), job.done_at]

    async def send_due(self, job: SandboxJob) -> None:
        """Post once at a terminal status, and on each change in `sync` mode."""
        if not job.webhook_url or job.webhook_sent:
            return
        phase = job.phase(self.clock())
        terminal = phase.finished
        if terminal or (job.extra.get("sync") and job.extra.get("last_posted") != phase):
            job.extra["last_posted"] = str(phase)
            job.webhook_sent = terminal
            body = await self._status_body(job)
            due = job.done_at if terminal else self.clock()
            self.send_webhook(job.webhook_url, body, job=job, due_at=due)
            await self.save(job)

    # --- handlers ----------------------------------------------------------------------------

    def _submitter(self, model: str) -> Any:
        async def submit(request: web.Request) -> web.Response:
            return await self._submit(model, request)

        return submit

    async def _submit(self, model: str, request: web.Request) -> web.Response:
        if (refused := await self.admit(request, "submit")) is not None:
            return refused
        if model in self.disabled_models:
            return json_response(
                {"error": "Model not found", "message": f"Model '{model}' not found or is disabled"}, 400
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad("Request body must be valid JSON")
        if not isinstance(body, dict):
            return _bad("Request body must be a JSON object")
        problem = _validate(model, body)
        if problem:
            return _bad(problem)
        webhook, mode = (
            request.headers.get("X-Webhook-URL"),
            request.headers.get("X-Webhook-Mode", "terminal"),
        )
        if webhook is not None and (problem := _check_webhook(webhook, mode)):
            return _bad(problem)
        image_url = body.get("input_image_url")
        inputs = await self.fetch_inputs([image_url] if image_url else [])
        if inputs is None:
            return _bad(f"Could not download input_image_url: {image_url}")

        job = self.new_job(model, body, prefix=f"{model}_")
        await self.keep_inputs(job, inputs)
        job.webhook_url = webhook
        job.cost_usd = PRICES[model]
        if webhook and mode == "sync":
            job.extra["sync"] = True
        await self.accept(job)
        return json_response(
            {
                "request_id": job.id,
                "status": "QUEUED",
                "polling_url": f"{self.base_url}/v2/requests/status/{job.id}",
            },
            202,
        )

    async def _status(self, request: web.Request) -> web.Response:
        if (refused := await self.admit(request, "poll")) is not None:
            return refused
        job = self.jobs.get(request.match_info["request_id"])
        if job is None:
            return json_response({"error": "Not Found", "message": "Request not found"}, 404)
        return json_response(await self._status_body(job))

    # --- helpers -----------------------------------------------------------------------------

    async def _status_body(self, job: SandboxJob) -> dict[str, Any]:
        created = datetime.fromtimestamp(job.created_at, UTC)
        now = datetime.now(UTC)
        body: dict[str, Any] = {
            "request_id": job.id,
            "model_id": job.model,
            "error": None,
            "output": None,
            "created_at": _iso(created),
            # The docs show both ISO and "YYYY-MM-DD HH:MM:SS" timestamps; emit both kinds.
            "updated_at": now.strftime("%Y-%m-%d %H:%M:%S"),
            "completed_at": None,
        }
        phase = job.phase(self.clock())
        match phase:
            case Phase.QUEUED:
                body["status"] = "QUEUED"
            case Phase.RUNNING:
                body["status"] = "PROCESSING"
            case Phase.FAILED:
                body |= {"status": "FAILED", "error": "Generation failed: the model could not produce output"}
            case Phase.ERROR:
                body |= {"status": "ERROR", "error": "Internal system error while processing the request"}
            case Phase.SUCCEEDED:
                body |= {"status": "COMPLETED", "output": await self._render(job)}
            case _:
                assert_never(phase)
        if phase.finished:
            body["completed_at"] = body["updated_at"]
        return body

    async def _render(self, job: SandboxJob) -> dict[str, Any]:
        body = job.request
        if job.model in (IMAGE, INSTRUCT):
            table = PRESETS if job.model == IMAGE else INSTRUCT_SIZES
            default = "square_hd" if job.model == IMAGE else "auto"
            width, height = table[body.get("image_size", default)]
            urls = await self.produce_images(
                job, body["prompt"], width, height, int(body.get("num_images", 1)), body.get("seed")
            )
            return {"media_url": urls, "media_type": "image/png"}
        label = body.get("prompt") or "image to 3D"
        glb_url, thumb_url = await self.produce_model(job, label)
        if self.model3d_shape == "media_url":
            return {"media_url": [glb_url], "media_type": "model/glb"}
        glb_file, thumb_file = [await self.get_file(name) for name in job.outputs[-2:]]
        glb = {
            "file_name": "model.glb",
            "url": glb_url,
            "file_size": len(glb_file[0]) if glb_file else 0,
            "content_type": "model/gltf-binary",
        }
        thumb = {
            "file_name": "thumbnail.png",
            "url": thumb_url,
            "file_size": len(thumb_file[0]) if thumb_file else 0,
            "content_type": "image/png",
        }
        # No OBJ is rendered, so `model_urls` lists only the GLB.
        return {"model_glb": glb, "thumbnail": thumb, "model_urls": {"glb": glb}}


def _check_webhook(url: str, mode: str) -> str | None:
    if mode not in ("terminal", "sync"):
        return 'X-Webhook-Mode must be "terminal" or "sync"'
    parts = urlsplit(url)
    # Pixazo rejects plain http://; the sandbox allows it for loopback receivers (tests, demo).
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return None
    return "X-Webhook-URL must be an HTTPS URL"


def _validate(model: str, body: dict[str, Any]) -> str | None:
    match model:
        case "hunyuan-image":
            return _validate_image(body, PRESETS, negative=True)
        case "hunyuan-image-3-0-instruct":
            return _validate_image(body, INSTRUCT_SIZES, negative=False)
        case "hunyuan-3d":
            return _need_text(body, "prompt")
        case "hunyuan-3d-v3-1-pro-image-to-3d":
            problem = _need_url(body, "input_image_url")
            if problem:
                return problem
            if body.get("generate_type", "Normal") not in ("Normal", "Geometry"):
                return 'generate_type must be "Normal" or "Geometry"'
            if not isinstance(body.get("enable_pbr", True), bool):
                return "enable_pbr must be a boolean"
            return _face_count(body, (40_000, 1_500_000))
        case "hunyuan3d-3-0-api-294":
            problem = _need_url(body, "input_image_url")
            if problem:
                return problem
            if not isinstance(body.get("prompt", ""), str):
                return "prompt must be a string"
            return _face_count(body, (1, None))
        case _:
            return f"Model '{model}' not found or is disabled"


def _validate_image(body: dict[str, Any], sizes: dict[str, tuple[int, int]], *, negative: bool) -> str | None:
    problem = _need_text(body, "prompt")
    if problem:
        return problem
    size = body.get("image_size", "square_hd" if negative else "auto")
    if size not in sizes:
        return f"image_size must be one of: {', '.join(sizes)}"
    count = body.get("num_images", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 4:
        return "num_images must be an integer from 1 to 4"
    if negative:
        if not isinstance(body.get("negative_prompt", ""), str):
            return "negative_prompt must be a string"
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            return "seed must be an integer or null"
    allowed = ("png", "jpeg") if negative else ("png", "jpeg", "webp")
    if body.get("output_format", "png") not in allowed:
        return f"output_format must be one of: {', '.join(allowed)}"
    return None


def _need_text(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        return f"{field} is required"
    return None


def _need_url(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        return f"{field} is required"
    if len(value) > MAX_URL:
        return f"{field} must be at most {MAX_URL} characters"
    return None


def _face_count(body: dict[str, Any], bounds: tuple[int, int | None]) -> str | None:
    if "face_count" not in body:
        return None
    value, (low, high) = body["face_count"], bounds
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        return f"face_count must be an integer from {low:,}" + (f" to {high:,}" if high else "")
    return None
