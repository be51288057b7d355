"""Pixazo (gateway.pixazo.ai): Hunyuan Image 3.0, its Instruct variant and three Hunyuan3D models.

Every model has its own submit path behind one Azure-APIM-style gateway
(`Ocp-Apim-Subscription-Key`); a submit answers 202 `{request_id, status, polling_url}` and every
job is read at the universal `GET /v2/requests/status/{request_id}` (docs/providers.md §3).
Callbacks (`X-Webhook-URL`) carry the same body as that status answer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, assert_never

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

from providers.base import (
    Artifact,
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
from providers.http import VendorHTTP, content_type_from_name

__all__ = ["IMAGE_PRESETS", "PixazoProvider"]

_log = logging.getLogger(__name__)

VENDOR = "pixazo"
IMAGE = "hunyuan-image"
INSTRUCT = "hunyuan-image-3-0-instruct"
TEXT_3D = "hunyuan-3d"
IMAGE_3D_PRO = "hunyuan-3d-v3-1-pro-image-to-3d"
IMAGE_3D = "hunyuan3d-3-0-api-294"

STATUS_PATH = "/v2/requests/status/{request_id}"
#: a request id no one has: `check()` reads it to prove the key without spending anything
_PROBE_ID = "imagine-bot_key-check"

#: `hunyuan-image`'s `image_size` presets. Pixazo lists only the names; the pixel sizes are fal's
#: documented ones for the same presets (the parameter set is fal's) — an assumption.
IMAGE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
#: `hunyuan-image-3-0-instruct`'s sizes, sent as "WxH" (with an `x`, not `*`)
INSTRUCT_SIZES: tuple[tuple[int, int], ...] = ((512, 512), (1024, 1024), (768, 1344), (1344, 768))
MAX_IMAGES = 4
FACE_COUNT_RANGE = (40_000, 1_500_000)


@dataclass(frozen=True, slots=True)
class _Model:
    path: str
    price_usd: float | None


_MODELS: dict[str, _Model] = {
    # hunyuan-image is priced by size: $0.20 is the 1024² price, used as the route's price.
    IMAGE: _Model("/hunyuan-image/v1/hunyuan-image/generateRequest", 0.20),
    INSTRUCT: _Model(f"/{INSTRUCT}/v1/{INSTRUCT}-request", None),  # "Could not load current pricing"
    TEXT_3D: _Model("/hunyuan-3d/v1/hunyuan-3d-request", 0.225),
    IMAGE_3D_PRO: _Model(f"/{IMAGE_3D_PRO}/v1/{IMAGE_3D_PRO}-request", 0.225),
    IMAGE_3D: _Model("/hunyuan3d-3-0-api-294/v1/hunyuan3d-3-0-api-request", 0.375),
}
_3D_MODELS = frozenset({TEXT_3D, IMAGE_3D_PRO, IMAGE_3D})


# --- wire models (private; parsed tolerantly) ------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Accepted(_Wire):
    request_id: str
    status: str | None = None
    polling_url: str | None = None


class _File(_Wire):
    url: str | None = None
    content_type: str | None = None
    file_name: str | None = None


class _Output(_Wire):
    # Two documented shapes for 3D (§3.4): the status example's `model_glb`/`thumbnail`/
    # `model_urls`, and the webhook example's generic `media_url[]`. Images use `media_url[]`.
    media_url: list[str] | str | None = None
    media_type: str | None = None
    model_glb: _File | None = None
    thumbnail: _File | None = None
    model_urls: dict[str, _File] | None = None


class _ErrorDetail(_Wire):
    message: str | None = None


class _StatusBody(_Wire):
    request_id: str | None = None
    status: str
    model_id: str | None = None
    error: str | _ErrorDetail | None = None
    output: _Output | None = None


class _Status(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ERROR = "ERROR"


def _job_state(status: _Status) -> JobState:
    match status:
        case _Status.QUEUED:
            return JobState.QUEUED
        case _Status.PROCESSING:
            return JobState.RUNNING
        case _Status.COMPLETED:
            return JobState.SUCCEEDED
        case _Status.FAILED | _Status.ERROR:
            return JobState.FAILED
        case _:
            assert_never(status)


# --- the client ------------------------------------------------------------------------------


class PixazoProvider(Provider):
    """Client of Pixazo's Hunyuan image and 3D models."""

    name: ClassVar[str] = VENDOR

    def __init__(self, session: aiohttp.ClientSession, settings: ProviderSettings) -> None:
        self.http = VendorHTTP.from_settings(
            VENDOR, session, settings, key_header="Ocp-Apim-Subscription-Key"
        )

    @classmethod
    def routes(cls) -> tuple[RouteSpec, ...]:
        """Two text-to-image models and three 3D models, with their published prices."""
        price = {name: m.price_usd for name, m in _MODELS.items()}
        return (
            RouteSpec(
                VENDOR,
                IMAGE,
                Kind.IMAGE,
                sizes=tuple(IMAGE_PRESETS.values()),
                max_images=MAX_IMAGES,
                supports_negative=True,
                supports_seed=True,
                webhook=True,
                price_usd=price[IMAGE],
            ),
            RouteSpec(
                VENDOR,
                INSTRUCT,
                Kind.IMAGE,
                sizes=INSTRUCT_SIZES,
                max_images=MAX_IMAGES,
                webhook=True,
                price_usd=price[INSTRUCT],
            ),
            RouteSpec(VENDOR, TEXT_3D, Kind.MODEL3D, webhook=True, price_usd=price[TEXT_3D]),
            RouteSpec(
                VENDOR,
                IMAGE_3D_PRO,
                Kind.MODEL3D,
                needs_image=True,
                accepts_image=True,
                webhook=True,
                price_usd=price[IMAGE_3D_PRO],
            ),
            RouteSpec(
                VENDOR,
                IMAGE_3D,
                Kind.MODEL3D,
                needs_image=True,
                accepts_image=True,
                webhook=True,
                price_usd=price[IMAGE_3D],
            ),
        )

    async def submit(self, request: GenerationRequest) -> Submission:
        """Queue a job on the model's own path. Raises RejectedInputError for a model this
        client does not know or an image→3D request without an image."""
        model = _MODELS.get(request.model)
        if model is None:
            raise RejectedInputError(VENDOR, f"unknown Pixazo model {request.model!r}")
        headers = {"Cache-Control": "no-cache"}
        if request.webhook_url:
            headers |= {"X-Webhook-URL": request.webhook_url, "X-Webhook-Mode": "terminal"}
        raw = await self.http.request_json(
            "POST", model.path, json_body=_body(request), headers=headers, classify=_classify_submit
        )
        try:
            accepted = _Accepted.model_validate(raw)
        except ValidationError as exc:
            raise RetryableError(VENDOR, "submit answer without a request_id") from exc
        data = {"polling_url": accepted.polling_url} if accepted.polling_url else {}
        handle = JobHandle(vendor=VENDOR, model=request.model, job_id=accepted.request_id, data=data)
        return Submission(handle=handle, cost_usd=_cost(request.model, request.count))

    async def poll(self, handle: JobHandle) -> JobUpdate:
        """Read the universal status endpoint. Raises UnknownJobError when the id is gone."""
        # The base URL is a setting (proxies, the sandbox), so the documented path is joined to
        # it rather than following the answer's absolute `polling_url`.
        raw = await self.http.request_json(
            "GET", STATUS_PATH.format(request_id=handle.job_id), classify=_classify
        )
        try:
            body = _StatusBody.model_validate(raw)
        except ValidationError as exc:
            raise RetryableError(VENDOR, "status answer in an unknown shape") from exc
        return _update(body, handle.model)

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> JobUpdate | None:
        """A callback has the status answer's shape; None for in-flight (`sync` mode) posts."""
        try:
            status = _StatusBody.model_validate_json(body)
        except ValidationError as exc:
            raise RejectedInputError(VENDOR, "callback body is not a status answer") from exc
        update = _update(status, status.model_id or _model_of(status.request_id))
        return update if update.terminal else None

    async def check(self) -> str:
        """Read a request id that does not exist: anything but 401/402 proves the key."""
        with contextlib.suppress(UnknownJobError, RejectedInputError):
            await self.http.request_json("GET", STATUS_PATH.format(request_id=_PROBE_ID), classify=_classify)
        return "ok"


# --- requests --------------------------------------------------------------------------------


def _body(request: GenerationRequest) -> dict[str, Any]:
    match request.model:
        case "hunyuan-image":
            body: dict[str, Any] = {
                "prompt": request.prompt,
                "image_size": _preset(request.width, request.height),
                "num_images": _count(request),
                "output_format": "png",
            }
            if request.negative_prompt:
                body["negative_prompt"] = request.negative_prompt
            if request.seed is not None:
                body["seed"] = request.seed
            return body
        case "hunyuan-image-3-0-instruct":
            # No seed or negative prompt is documented for Instruct.
            return {
                "prompt": request.prompt,
                "image_size": f"{request.width}x{request.height}",
                "num_images": _count(request),
                "output_format": "png",
            }
        case "hunyuan-3d":
            return {"prompt": request.prompt}
        case "hunyuan-3d-v3-1-pro-image-to-3d":
            body = {
                "input_image_url": _input_image(request),
                "generate_type": "Geometry" if request.geometry_only else "Normal",
            }
            if request.face_count is not None:
                body["face_count"] = _face_count(request.face_count)
            return body
        case "hunyuan3d-3-0-api-294":
            # 3.0 has no geometry-only mode; the prompt only refines the image's model.
            body = {"input_image_url": _input_image(request)}
            if request.prompt:
                body["prompt"] = request.prompt
            if request.face_count is not None:
                body["face_count"] = _face_count(request.face_count)
            return body
        case other:
            raise RejectedInputError(VENDOR, f"unknown Pixazo model {other!r}")


def _preset(width: int, height: int) -> str:
    for name, size in IMAGE_PRESETS.items():
        if size == (width, height):
            return name
    # The core maps sizes to the route's list; anything else gets the closest aspect ratio.
    return min(IMAGE_PRESETS, key=lambda n: abs(IMAGE_PRESETS[n][0] / IMAGE_PRESETS[n][1] - width / height))


def _count(request: GenerationRequest) -> int:
    if not 1 <= request.count <= MAX_IMAGES:
        raise RejectedInputError(VENDOR, f"num_images must be 1 to {MAX_IMAGES}")
    return request.count


def _input_image(request: GenerationRequest) -> str:
    if not request.image_urls:
        raise RejectedInputError(VENDOR, "image-to-3D needs an input image")
    return request.image_urls[0]


def _face_count(value: int) -> int:
    low, high = FACE_COUNT_RANGE
    return max(low, min(high, value))


def _cost(model: str, count: int) -> float | None:
    price = _MODELS[model].price_usd if model in _MODELS else None
    if price is None:
        return None
    # Image prices are per image (assumed; the table lists one price per resolution).
    return price * count if model in (IMAGE, INSTRUCT) else price


# --- answers ---------------------------------------------------------------------------------


def _classify_submit(status: int, body: Any) -> type[ProviderError] | None:
    # "Model not found or is disabled" (400) and a 404 on a submit path are the vendor's side,
    # not the user's: fail over without retrying.
    if status == 404 or (status == 400 and _error_word(body) == "model not found"):
        return ProviderError
    return _classify(status, body)


def _classify(status: int, body: Any) -> type[ProviderError] | None:
    if status >= 400 and _error_word(body) == "insufficient balance":
        return OutOfFundsError
    return None


def _error_word(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"]).strip().lower()
    return ""


def _model_of(request_id: str | None) -> str | None:
    # Request ids are "<model_id>_<uuid>"; model ids contain '-' but never '_'.
    return request_id.split("_", 1)[0] if request_id and "_" in request_id else None


def _update(body: _StatusBody, model: str | None) -> JobUpdate:
    try:
        status = _Status(body.status.strip().upper())
    except ValueError:
        # Undocumented word: most likely another in-flight state; the job timeout ends it if not.
        _log.warning("unknown status vendor=%s status=%r", VENDOR, body.status)
        status = _Status.PROCESSING
    state = _job_state(status)
    match state:
        case JobState.QUEUED | JobState.RUNNING | JobState.CANCELLED:
            return JobUpdate(state=state)
        case JobState.FAILED:
            # ERROR is a system error and "not charged"; FAILED carries no such promise.
            return JobUpdate(state=state, error=_error_text(body), charged=status is not _Status.ERROR)
        case JobState.SUCCEEDED:
            artifacts = _artifacts(body.output, model)
            if not artifacts:
                return JobUpdate(state=JobState.FAILED, error="completed without output", charged=False)
            count = sum(1 for a in artifacts if a.role == "image")
            return JobUpdate(
                state=state,
                progress=1.0,
                artifacts=artifacts,
                cost_usd=_cost(model, max(1, count)) if model else None,
            )
        case _:
            assert_never(state)


def _error_text(body: _StatusBody) -> str:
    if isinstance(body.error, str) and body.error:
        return body.error
    if isinstance(body.error, _ErrorDetail) and body.error.message:
        return body.error.message
    return f"the vendor reported {body.status}"


def _artifacts(output: _Output | None, model: str | None) -> tuple[Artifact, ...]:
    if output is None:
        return ()
    is_3d = model in _3D_MODELS if model else False
    out: list[Artifact] = []
    glb = output.model_glb or (output.model_urls or {}).get("glb")
    if glb is None and output.model_urls:
        glb = next(iter(output.model_urls.values()), None)
    if glb is not None and glb.url:
        out.append(Artifact(url=glb.url, role="model", content_type=_model_type(glb.content_type, glb.url)))
    if output.thumbnail is not None and output.thumbnail.url:
        ctype = output.thumbnail.content_type or content_type_from_name(output.thumbnail.url)
        out.append(Artifact(url=output.thumbnail.url, role="thumbnail", content_type=ctype))
    urls = [output.media_url] if isinstance(output.media_url, str) else list(output.media_url or [])
    known = {a.url for a in out}
    for url in urls:
        if not url or url in known:
            continue
        guessed = content_type_from_name(url)
        if is_3d or guessed == "model/gltf-binary":
            # A 3D job's media list: the mesh, and a picture (if any) is its thumbnail.
            if guessed is not None and guessed.startswith("image/"):
                out.append(Artifact(url=url, role="thumbnail", content_type=guessed))
            else:
                out.append(Artifact(url=url, role="model", content_type=_model_type(output.media_type, url)))
        else:
            ctype = output.media_type if (output.media_type or "").startswith("image/") else guessed
            out.append(Artifact(url=url, role="image", content_type=ctype))
    return tuple(out)


def _model_type(declared: str | None, url: str) -> str | None:
    # The docs say both "model/glb" and "model/gltf-binary"; the registered type is the latter.
    if declared in ("model/glb", "model/gltf-binary") or url.split("?", 1)[0].lower().endswith(".glb"):
        return "model/gltf-binary"
    return declared
