"""The provider interface: what every vendor client offers the core, and the errors it raises.

A provider knows one vendor's wire format and nothing about chat. The core drives it with
`submit` → (`poll` | `parse_webhook`)* until a terminal `JobUpdate`; the waiting loop lives in
the core (`bot.engine`), never in a provider.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Artifact",
    "AuthError",
    "ContentBlockedError",
    "GenerationRequest",
    "JobHandle",
    "JobState",
    "JobUpdate",
    "Kind",
    "OutOfFundsError",
    "Provider",
    "ProviderError",
    "RejectedInputError",
    "RetryableError",
    "RouteSpec",
    "Submission",
    "UnknownJobError",
]


class Kind(StrEnum):
    """What a route produces from what."""

    IMAGE = "image"  # text → image
    EDIT = "edit"  # image + instruction → image
    MODEL3D = "model3d"  # text or image → 3D mesh


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One vendor model the router can send work to, with what it accepts.

    `sizes` lists the exact (width, height) pairs the vendor accepts; when it is empty any
    size with both sides in [min_side, max_side] (multiples of `size_step`) is accepted.
    """

    vendor: str
    model: str
    kind: Kind
    sizes: tuple[tuple[int, int], ...] = ()
    min_side: int = 256
    max_side: int = 1536
    size_step: int = 8
    max_images: int = 1
    min_prompt: int = 0  # characters the vendor insists on (API in One 3, Runware 2)
    max_prompt: int = 2000
    supports_negative: bool = False
    supports_seed: bool = False
    needs_image: bool = False  # image→3D routes take an input image instead of a prompt
    accepts_image: bool = False
    webhook: bool = False
    price_usd: float | None = None  # published price per image / generation, for "cheapest first"

    @property
    def key(self) -> str:
        """`vendor:model`, the name used in settings, logs and metrics."""
        return f"{self.vendor}:{self.model}"


class GenerationRequest(BaseModel):
    """A vendor-neutral job, already validated and size-mapped by the core for one route."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    model: str
    prompt: str = ""
    negative_prompt: str | None = None
    width: int = 1024
    height: int = 1024
    count: int = 1
    seed: int | None = None
    image_urls: tuple[str, ...] = ()  # inputs the vendor fetches itself (edit, image→3D)
    face_count: int | None = None  # 3D only
    geometry_only: bool = False  # 3D only: untextured "white model"
    webhook_url: str | None = None  # set only when the operator configured PUBLIC_BASE_URL


class JobHandle(BaseModel):
    """A submitted vendor job: small, serializable, saved with the job row at submit time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vendor: str
    model: str
    job_id: str
    data: dict[str, str] = Field(default_factory=dict)  # vendor-specific extras (e.g. a poll URL)


class JobState(StrEnum):
    """The closed set of vendor job states the core understands."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the vendor (or we, through it) stopped the job; never billed


class Artifact(BaseModel):
    """One output file of a finished job: a URL to download at once, or inline bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = None
    data: bytes | None = None
    content_type: str | None = None
    role: str = "image"  # "image" | "model" | "thumbnail"
    filename: str | None = None
    seed: int | None = None


class JobUpdate(BaseModel):
    """What a vendor said about a job, from a poll, a webhook or a synchronous submit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: JobState
    progress: float | None = None  # 0.0 … 1.0 when the vendor reports it
    eta_seconds: float | None = None
    artifacts: tuple[Artifact, ...] = ()
    error: str | None = None  # vendor's failure text when state is FAILED
    charged: bool = True  # False when the vendor says a failure was not billed
    cost_usd: float | None = None

    @property
    def terminal(self) -> bool:
        """True once the job will not change any more."""
        return self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class Submission:
    """The answer to a submit: the handle, and the final update when the vendor is synchronous."""

    handle: JobHandle
    update: JobUpdate | None = None
    cost_usd: float | None = None


# --- errors -------------------------------------------------------------------------------


class ProviderError(Exception):
    """A vendor call failed. `status` is the HTTP status when there was one."""

    #: whether the router may send the same request to another route
    failover: ClassVar[bool] = True

    def __init__(
        self,
        vendor: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{vendor}: {message}" + (f" (HTTP {status})" if status else ""))
        self.vendor = vendor
        self.message = message
        self.status = status
        self.code = code


class RetryableError(ProviderError):
    """Transient: rate limit, 5xx, timeout, connection or malformed body. Retry, then fail over."""

    def __init__(
        self,
        vendor: str,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(vendor, message, status=status, code=code)
        self.retry_after = retry_after


class AuthError(ProviderError):
    """The operator's key was refused. Fail over and tell the operator."""


class OutOfFundsError(ProviderError):
    """The operator's vendor account is out of balance. Fail over and tell the operator."""


class RejectedInputError(ProviderError):
    """The vendor refused the request itself (the user's input). No failover, no charge."""

    failover = False


class ContentBlockedError(RejectedInputError):
    """The vendor's safety system refused the prompt or the output."""


class UnknownJobError(ProviderError):
    """The vendor no longer knows this job id (expired or never existed)."""

    failover = False


# --- the interface -------------------------------------------------------------------------


@dataclass(slots=True)
class ProviderSettings:
    """What every client needs: where the vendor lives and the key to use."""

    base_url: str
    api_key: str = field(repr=False)  # never in a repr, a log line or a traceback's locals
    timeout: float = 60.0
    extra: Mapping[str, Any] = field(default_factory=dict)


class Provider(abc.ABC):
    """One vendor's client. Stateless apart from the injected session; safe to share.

    Contract: `submit` is not idempotent (each call may create a vendor job); `poll` is
    idempotent; both raise only `ProviderError` subclasses. A FAILED job is a `JobUpdate`
    with state FAILED, not an exception: the call worked, the job did not.
    """

    name: ClassVar[str]

    def __init__(self, session: aiohttp.ClientSession, settings: ProviderSettings) -> None:  # noqa: B027
        """Every client is built from the process's one HTTP session and its vendor settings."""

    @classmethod
    @abc.abstractmethod
    def routes(cls) -> tuple[RouteSpec, ...]:
        """Every model of this vendor the bot can use, with its limits and price."""

    @abc.abstractmethod
    async def submit(self, request: GenerationRequest) -> Submission:
        """Start a job. Synchronous vendors return the final update in the submission."""

    @abc.abstractmethod
    async def poll(self, handle: JobHandle) -> JobUpdate:
        """Ask the vendor how a job is doing."""

    def parse_webhook(self, body: bytes, headers: Mapping[str, str]) -> JobUpdate | None:
        """Turn a vendor callback into an update; None when the body is not about a job's
        outcome (a test ping, an intermediate event). Raises `RejectedInputError` on garbage."""
        return None

    async def check(self) -> str:
        """Verify the key with the cheapest call the vendor offers; returns a short status."""
        raise NotImplementedError

    async def cancel(self, handle: JobHandle) -> None:  # noqa: B027 - optional hook
        """Ask the vendor to stop a job where it can; by default the job is left to finish."""
