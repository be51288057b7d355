"""The job store's interface: what the engine's parts ask of the database that holds the jobs.

`JobStorePort` is the contract a backend implements — the SQLite `bot.store.JobStore` today, a
PostgreSQL store next — together with the records it hands out. Nothing here names a database
driver: a transition is one call that either wins (and commits its ledger effect and outbox row
with it) or reports that someone else moved the job first (`LostRaceError`, None, or the state
it found). Admission, the runner, delivery, the result actions and moderation depend on this
module only; the composition root (`bot.app`) picks the backend.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from bot.commands import Actor
from bot.errors import BotError
from bot.params import JobSpec
from bot.reply import JobPhase
from providers.base import JobHandle

__all__ = [
    "OPEN",
    "Admitted",
    "ConfirmationClosedError",
    "JobRecord",
    "JobStorePort",
    "LostRaceError",
    "OutboxKind",
    "OutboxRow",
    "StoredFile",
    "StoredResult",
    "new_job_id",
]

OPEN = (JobPhase.QUEUED, JobPhase.SUBMITTING, JobPhase.RUNNING)

OutboxKind = Literal["result", "failure", "cancelled"]


def new_job_id() -> str:
    """A short, unguessable id users can type (`/show 3f9a1c02de`)."""
    return secrets.token_hex(5)


class StoredFile(BaseModel):
    """One delivered file as saved with the job (paths relative to the media root)."""

    model_config = ConfigDict(extra="ignore")

    path: str
    filename: str
    content_type: str
    size: int
    role: str = "image"
    width: int | None = None
    height: int | None = None
    url: str | None = None


class StoredResult(BaseModel):
    """What a job produced: the size the vendor made, the files and the grid preview."""

    model_config = ConfigDict(extra="ignore")

    size: tuple[int, int] | None = None
    files: list[StoredFile] = Field(default_factory=list)
    preview: StoredFile | None = None
    faces: int | None = None  # a 3D model's face count, when its GLB could be read


class ConfirmationClosedError(BotError):
    """The request a Confirm admits is no longer waiting (a Cancel or its expiry came first)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request {request_id} is no longer waiting for Confirm")
        self.request_id = request_id


class LostRaceError(BotError):
    """A transition found the job no longer in the state it expected: someone else moved it."""

    def __init__(self, job_id: str, state: JobPhase | None) -> None:
        super().__init__(f"job {job_id} is {state.value if state else 'gone'}")
        self.job_id = job_id
        self.state = state


@dataclass(slots=True)
class JobRecord:
    """A job row, decoded. The actor and spec are models, or their stored JSON until first
    asked for: a followed job keeps them as JSON (`compact`), ~1.5 KB less per job in flight."""

    id: str
    created: float
    updated: float
    _actor: Actor | str
    _spec: JobSpec | str
    state: JobPhase
    reply_ref: dict[str, Any]
    cost: int
    route: str | None = None
    handle: JobHandle | None = None
    attempts: int = 0
    routes_tried: list[str] = field(default_factory=list)
    vendor_cost_usd: float | None = None
    result: StoredResult | None = None
    error: str | None = None
    parent_id: str | None = None
    request_key: str | None = None
    version: int = 0
    deadline: float | None = None  # unix time after which the job fails as timed out

    @property
    def actor(self) -> Actor:
        """Who asked (decoded on first use)."""
        if isinstance(self._actor, str):
            self._actor = Actor.model_validate_json(self._actor)
        return self._actor

    @property
    def spec(self) -> JobSpec:
        """What to make (decoded on first use)."""
        if isinstance(self._spec, str):
            self._spec = JobSpec.model_validate_json(self._spec)
        return self._spec

    def compact(self) -> None:
        """Hold the actor and spec as JSON while nothing needs them (a job at the vendor)."""
        if not isinstance(self._actor, str):
            self._actor = self._actor.model_dump_json()
        if not isinstance(self._spec, str):
            self._spec = self._spec.model_dump_json()

    @property
    def tenant(self) -> str:
        """The ledger tenant of the job's actor."""
        return self.actor.tenant


@dataclass(frozen=True, slots=True)
class Admitted:
    """What an admission did: the job (the earlier one, for a repeated request key), whether
    this call created it, and its 1-based place in line when it did (0 otherwise)."""

    job: JobRecord
    created: bool
    position: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A message to a user that a committed ending owes them."""

    id: int
    job_id: str
    kind: OutboxKind
    payload: dict[str, Any]
    attempts: int


class JobStorePort(Protocol):
    """The jobs, their outbox and the learned poll times, as the engine uses them.

    Transitions (each one transaction with its ledger effect, compare-and-set on the state):
    `admit` (— → queued, with the hold), `claim_next` (queued → submitting, leased), `accepted` (submitting →
    running), `resubmit` (running → submitting), `done` (running → done, with the settle and the
    "result" outbox row), `failed` and `cancel` (open → failed / cancelled, with the release and
    the message). Everything else is a read or a bookkeeping write.
    """

    #: this process's name in the leases it takes
    owner: str
    #: seconds a lease lasts unrenewed
    lease: float

    @property
    def exclusive(self) -> bool:
        """Whether this process is the database's only user (a start may take every lease)."""
        ...

    # --- transitions -----------------------------------------------------------------------

    async def admit(
        self,
        job: JobRecord,
        *,
        max_open: int | None = None,
        max_queued: int | None = None,
        confirming: bool = False,
    ) -> Admitted:
        """Hold the credits and insert the job together, with its place in line; for a request
        key seen before, the earlier job (`created` False). Raises BusyError at `max_open`
        open jobs of the user, QueueFullError at `max_queued` waiting jobs, and the ledger's
        refusals; a refusal writes nothing. `confirming`: the job answers the waiting request
        of its id, marked confirmed in the same transaction (ConfirmationClosedError if it no
        longer waits)."""
        ...

    async def claim_next(self, deadline: float, platforms: Iterable[str]) -> JobRecord | None:
        """The oldest queued job of `platforms` (any replica's) → submitting, leased to this
        process; None when nothing waits."""
        ...

    async def accepted(self, job: JobRecord) -> None:
        """submitting → running with the route, handle, cost and size; LostRaceError if the job
        moved meanwhile."""
        ...

    async def resubmit(self, job: JobRecord) -> None:
        """running → submitting for a failover (attempts counted); LostRaceError if it moved."""
        ...

    async def done(
        self, job_id: str, result: StoredResult, vendor_cost_usd: float | None = None
    ) -> OutboxRow | None:
        """running → done with the settle and the "result" row; that row, or None if the job
        was no longer running (nothing charged)."""
        ...

    async def failed(self, job_id: str, text: str, why: str) -> OutboxRow | None:
        """open → failed with the release and the row telling the user `text`; that row, or
        None if the job had ended already."""
        ...

    async def cancel(self, job_id: str, text: str) -> JobPhase | None:
        """open → cancelled with the release and the row `text`: CANCELLED when this call won,
        else the state found (DONE: too late; None: no such job)."""
        ...

    async def save_reply_ref(self, job_id: str, ref: dict[str, Any]) -> None:
        """Where the job's reply lives now (a platform moved it)."""
        ...

    # --- leases ----------------------------------------------------------------------------

    async def renew(self) -> set[str]:
        """Extend this process's leases; the open jobs still leased to it."""
        ...

    async def release_leases(self) -> None:
        """Let this process's leases expire now (a clean shutdown)."""
        ...

    async def take_over(self, platforms: Iterable[str], *, every: bool = False) -> list[JobRecord]:
        """Lease to this process the submitting/running jobs of `platforms` whose lease expired
        (`every`: all not leased to it); those jobs."""
        ...

    async def take_unsent(self, platforms: Iterable[str], *, every: bool = False) -> list[OutboxRow]:
        """The unsent messages of ended jobs whose lease expired (`every`: all not leased to
        this process), their leases taken."""
        ...

    async def release_orphan_holds(self) -> list[str]:
        """Release every open hold whose job does not exist; their job ids."""
        ...

    # --- the outbox ------------------------------------------------------------------------

    async def unsent(self, job_id: str | None = None) -> list[OutboxRow]:
        """Committed messages not yet delivered (of one job, or all), oldest first."""
        ...

    async def mark_sent(self, row_id: int) -> None:
        """The message reached the user (or the platform took it)."""
        ...

    async def mark_attempt(self, row_id: int) -> None:
        """A delivery attempt failed; the row stays unsent."""
        ...

    # --- the learned poll schedule ---------------------------------------------------------

    async def load_route_times(self) -> dict[str, list[float]]:
        """Each route's saved recent job durations."""
        ...

    async def save_route_times(self, data: dict[str, list[float]]) -> None:
        """Replace the saved durations of every route in `data`."""
        ...

    # --- reads -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        """A job by id, or None."""
        ...

    async def queue_position(self, job_id: str) -> int:
        """1-based place of a queued job among all queued jobs (every process's), 0 if not queued."""
        ...

    async def count_queued(self, platforms: Iterable[str]) -> int:
        """How many jobs of `platforms` wait (every replica's)."""
        ...

    async def queue_positions(self) -> dict[str, int]:
        """Every queued job's place in line, in one read."""
        ...

    async def by_request_key(self, key: str) -> JobRecord | None:
        """The job a platform request already created, if any."""
        ...

    async def unfinished(self) -> list[JobRecord]:
        """Every job not yet done, failed or cancelled, oldest first."""
        ...

    async def active_child(self, parent_id: str, user_id: str, kind: str) -> JobRecord | None:
        """An unfinished job a button on `parent_id` already started."""
        ...

    async def recent(self, tenant: str, user_id: str, limit: int = 5) -> list[JobRecord]:
        """A user's latest jobs, newest first."""
        ...

    async def spend(self, tenant: str | None = None) -> list[tuple[str, int, float]]:
        """(tenant, finished jobs, vendor USD) per tenant, or for one."""
        ...

    async def count_unfinished(self) -> dict[str, int]:
        """How many jobs are in each unfinished state."""
        ...

    async def ids(self) -> set[str]:
        """Every job id."""
        ...
