"""AI/ML API client for Hunyuan Image 3 (`hunyuan/hunyuan-image-v3-text-to-image`).

The vendor is synchronous: one `POST /v1/images/generations` answers with the images, so
`submit` returns a finished `Submission` and there is nothing to poll and no webhook.
Contract: docs/providers.md §2.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError

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
from providers.http import VendorHTTP, decode_data_uri, error_text

__all__ = ["MODEL", "PRESETS", "AimlApiProvider"]

_log = logging.getLogger(__name__)

MODEL = "hunyuan/hunyuan-image-v3-text-to-image"

#: The enum presets sent as `image_size` when a size matches one exactly. The docs' one
#: example shows `landscape_16_9` producing 1280×768, so that preset is 1280×768 here (an
#: exact 16:9 such as 1024×576 goes as `{width, height}`); the others are fal's (the backend)
#: standard sizes, undocumented. The reply states the size of the file actually delivered.
PRESETS: dict[tuple[int, int], str] = {
    (1024, 1024): "square_hd",
    (512, 512): "square",
    (768, 1024): "portrait_4_3",
    (576, 1024): "portrait_16_9",
    (1024, 768): "landscape_4_3",
    (1280, 768): "landscape_16_9",
}


class _Image(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str | None = None
    b64_json: str | None = None
    content_type: str | None = None
    file_name: str | None = None
    width: int | None = None
    height: int | None = None


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # The seed example says tokens_used, the OpenAPI schema credits_used: read either.
    tokens_used: float | None = None
    credits_used: float | None = None


class _Meta(BaseModel):
    model_config = ConfigDict(extra="ignore")

    usage: _Usage | None = None


class _GenerationResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: list[_Image] = []
    meta: _Meta | None = None


class _Balance(BaseModel):
    model_config = ConfigDict(extra="ignore")

    balance: float | None = None
    lowBalance: bool | None = None  # the vendor's field name


def _classify(status: int, body: Any) -> type[ProviderError] | None:
    # AI/ML API reports an empty balance as 403 (not 402); any other 403 is a refused key.
    text = error_text(body).lower()
    if status == 403:
        if any(word in text for word in ("credit", "balance", "top up", "billing")):
            return OutOfFundsError
        return AuthError
    if status in (400, 422) and any(word in text for word in ("nsfw", "safety", "content policy")):
        return ContentBlockedError
    return None


def _artifacts(images: list[_Image]) -> tuple[Artifact, ...]:
    """Artifacts from the `data[]` list (CDN URL, data URI in `url`, or `b64_json`)."""
    out: list[Artifact] = []
    for image in images:
        inline = image.b64_json or (image.url if image.url and image.url.startswith("data:") else None)
        if inline:
            try:
                data, ctype = decode_data_uri(inline)
            except ValueError as exc:
                raise RetryableError("aimlapi", "undecodable inline image") from exc
            out.append(Artifact(data=data, content_type=ctype or image.content_type or "image/png"))
        elif image.url:
            out.append(Artifact(url=image.url, content_type=image.content_type or "image/png"))
    return tuple(out)


def parse_generation(body: Any) -> JobUpdate:
    """The finished update of a `POST /v1/images/generations` answer; raises RetryableError
    when the body carries no usable image."""
    try:
        parsed = _GenerationResponse.model_validate(body)
    except ValidationError as exc:
        raise RetryableError("aimlapi", "malformed generation answer") from exc
    artifacts = _artifacts(parsed.data)
    if not artifacts:
        raise RetryableError("aimlapi", "the generation answer has no image")
    usage = parsed.meta.usage if parsed.meta else None
    if usage is not None:
        _log.debug("aimlapi usage tokens=%s credits=%s", usage.tokens_used, usage.credits_used)
    # The vendor bills in its own credits; no per-image USD price is published.
    return JobUpdate(state=JobState.SUCCEEDED, progress=1.0, artifacts=artifacts)


class AimlApiProvider(Provider):
    """AI/ML API: synchronous text-to-image with Hunyuan Image 3."""

    name = "aimlapi"

    def __init__(self, session: aiohttp.ClientSession, settings: ProviderSettings) -> None:
        self.settings = settings
        self.http = VendorHTTP.from_settings(self.name, session, settings)
        # The balance lives on billing.aimlapi.com; a proxy or the sandbox serves it at the base.
        self.billing_url = str(
            settings.extra.get("billing_url") or settings.base_url.replace("://api.", "://billing.", 1)
        )
        # `sync_mode` makes the vendor inline the image as a data URI instead of a CDN link.
        self.inline = bool(settings.extra.get("sync_mode", False))

    @classmethod
    def routes(cls) -> tuple[RouteSpec, ...]:
        """One text-to-image route; custom sizes 256–1536 in steps of 8 (assumed, see module)."""
        return (
            RouteSpec(
                vendor=cls.name,
                model=MODEL,
                kind=Kind.IMAGE,
                sizes=(),  # `{width, height}` is accepted besides the presets
                min_side=256,
                max_side=1536,
                size_step=8,
                max_images=4,
                max_prompt=4000,
                supports_negative=True,
                supports_seed=True,
                webhook=False,
                price_usd=None,
            ),
        )

    def body_for(self, request: GenerationRequest) -> dict[str, Any]:
        """The vendor's JSON body for a request."""
        size = (request.width, request.height)
        body: dict[str, Any] = {
            "model": MODEL,
            "prompt": request.prompt,
            "image_size": PRESETS.get(size) or {"width": request.width, "height": request.height},
            "num_images": max(1, min(4, request.count)),
            "output_format": "png",
        }
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        if request.seed is not None:
            body["seed"] = max(1, request.seed)  # the vendor's minimum is 1
        if self.inline:
            body["sync_mode"] = True
        return body

    async def submit(self, request: GenerationRequest) -> Submission:
        """Generate the images in one call; the submission carries the finished update."""
        if request.kind is not Kind.IMAGE or request.model != MODEL:
            raise RejectedInputError(self.name, f"unsupported {request.kind} model {request.model!r}")
        answer = await self.http.request_json(
            "POST", "/v1/images/generations", json_body=self.body_for(request), classify=_classify
        )
        update = await asyncio.to_thread(parse_generation, answer)  # may decode large base64
        handle = JobHandle(vendor=self.name, model=MODEL, job_id=str(uuid.uuid4()))
        _log.info("aimlapi generated job=%s images=%d", handle.job_id, len(update.artifacts))
        return Submission(handle=handle, update=update)

    async def poll(self, handle: JobHandle) -> JobUpdate:
        """Never needed: submissions are already finished. Raises UnknownJobError."""
        raise UnknownJobError(self.name, "synchronous vendor: a finished submission has no job to poll")

    async def check(self) -> str:
        """Read the credit balance (`GET /v1/billing/balance`), which needs a valid key."""
        answer = await self.http.request_json(
            "GET", self.billing_url.rstrip("/") + "/v1/billing/balance", classify=_classify
        )
        try:
            balance = _Balance.model_validate(answer)
        except ValidationError as exc:
            raise RetryableError(self.name, "malformed balance answer") from exc
        if balance.balance is None:
            return "ok"
        return f"ok ({balance.balance:.0f} credits{', low' if balance.lowBalance else ''})"
