"""Admission: from a command to a queued job, or a refusal that costs nothing.

Parameters, policy and input media are checked first, so bad input never costs credits or
leaves a job behind. Then one store transaction holds the credits and inserts the job —
idempotent by the platform's request key, with the per-user cap counted in the same
transaction — and the job is queued for a worker.

A request that costs more than the server's threshold stops before the hold: it waits for its
requester's Confirm (`bot.confirm`), then comes back through `confirm` and the same steps.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot import messages
from bot.catalog import Catalog
from bot.commands import Actor, EditCommand, ImageRef, ImagineCommand, Model3DCommand
from bot.confirm import Confirmations, ConfirmState, confirm_request_key
from bot.delivery import Delivery
from bot.errors import (
    BannedError,
    FrozenError,
    InsufficientCreditsError,
    InvalidInputError,
    NotFoundError,
)
from bot.events import EventBus, JobNudged
from bot.jobs import EngineConfig, Ticket
from bot.jobstore import ConfirmationClosedError, JobRecord, JobStorePort, new_job_id
from bot.ledger import CreditLedger
from bot.media import MediaStore
from bot.params import JobSpec, fit_to_input, parse_edit, parse_imagine, parse_model3d
from bot.policy import check_image_source, check_prompt
from bot.reply import JobPhase, Reply
from bot.scheduler import Scheduler

__all__ = ["Admission", "TenantCache"]

_log = logging.getLogger(__name__)


class TenantCache:
    """Tenant settings read on every admission (blocklist, costs), kept for a few seconds.

    This process's moderator changes drop the tenant at once; changes made by another
    process (the operator CLI) show after at most `ttl` seconds.
    """

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._values: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._loading: dict[tuple[str, ...], asyncio.Future[Any]] = {}

    async def get(self, key: tuple[str, ...], load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value, or a fresh one from `load` (one load for all who ask meanwhile:
        a burst of admissions costs one read, not one each)."""
        hit = self._values.get(key)
        now = self._clock()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        pending = self._loading.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # the first load failed: load again, so this caller meets its own error
        pending = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            value = await load()
        except BaseException:
            pending.cancel()
            raise
        finally:
            if self._loading.get(key) is pending:
                del self._loading[key]
        self._values[key] = (now, value)
        pending.set_result(value)
        return value

    def drop(self, tenant: str) -> None:
        """Forget everything about one tenant."""
        for key in [k for k in self._values if k[0] == tenant]:
            del self._values[key]


class Admission:
    """Turns commands into queued jobs."""

    def __init__(
        self,
        *,
        store: JobStorePort,
        ledger: CreditLedger,
        media: MediaStore,
        catalog: Catalog,
        config: EngineConfig,
        delivery: Delivery,
        scheduler: Scheduler,
        confirms: Confirmations,
        events: EventBus,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.confirms = confirms
        self.ledger = ledger
        self.media = media
        self.catalog = catalog
        self.config = config
        self.delivery = delivery
        self.scheduler = scheduler
        self.events = events
        self.tenants = TenantCache(ttl=10.0, clock=clock)
        self._waiting: dict[str, tuple[JobRecord, int]] = {}  # queued here: the record, the place shown
        # A burst of commands waits here, before anything is parsed, fetched or held: 10,000 at
        # once would otherwise each hold a spec, a record and a transaction in the database's line.
        self._admitting = asyncio.Semaphore(config.admissions)

    async def submit(
        self,
        actor: Actor,
        command: ImagineCommand | EditCommand | Model3DCommand,
        reply: Reply,
        *,
        request_key: str | None = None,
        parent_id: str | None = None,
    ) -> Ticket:
        """Parse a generation command and admit it (see `admit`)."""
        check_image_source(actor, command)  # a chat member never names a file on our disk
        async with self._admitting:
            if request_key and (existing := await self.store.by_request_key(request_key)):
                return await self.ticket(existing)
            image: ImageRef | None
            match command:
                case ImagineCommand():
                    spec = parse_imagine(command, self.catalog)
                    image = None
                case EditCommand():
                    spec = parse_edit(command, self.catalog)
                    image = command.image
                case Model3DCommand():
                    spec = parse_model3d(command, self.catalog)
                    image = command.image
            return await self._admit(
                actor, spec, reply, image=image, request_key=request_key, parent_id=parent_id
            )

    async def admit(
        self,
        actor: Actor,
        spec: JobSpec,
        reply: Reply,
        *,
        image: ImageRef | None = None,
        request_key: str | None = None,
        parent_id: str | None = None,
        job_id: str | None = None,
        confirmed_cost: int | None = None,
        confirming: bool = False,
    ) -> Ticket:
        """Check policy, fetch the input image, hold the credits and queue the job.

        Above the server's threshold nothing is held: the request waits for Confirm and the
        ticket says so. `confirmed_cost` is what the requester confirmed (asked again only if
        the price rose since); `job_id` the id the job takes (the confirmed request's)."""
        async with self._admitting:
            return await self._admit(
                actor,
                spec,
                reply,
                image=image,
                request_key=request_key,
                parent_id=parent_id,
                job_id=job_id,
                confirmed_cost=confirmed_cost,
                confirming=confirming,
            )

    async def _admit(
        self,
        actor: Actor,
        spec: JobSpec,
        reply: Reply,
        *,
        image: ImageRef | None = None,
        request_key: str | None = None,
        parent_id: str | None = None,
        job_id: str | None = None,
        confirmed_cost: int | None = None,
        confirming: bool = False,
    ) -> Ticket:
        tenant = actor.tenant
        has_input = image is not None and bool(image.url or image.path or image.data)
        if has_input:
            # Refuse banned or frozen members before anything is downloaded; without an input
            # the hold in the admission transaction refuses them, one transaction fewer.
            account = await self.ledger.account(tenant, actor.user_id)
            if account.banned:
                raise BannedError(messages.banned())
            if account.frozen:
                raise FrozenError(messages.frozen())
        blocklist = await self.tenants.get((tenant, "blocklist"), lambda: self.ledger.blocklist(tenant))
        check_prompt(actor, (spec.prompt, spec.negative), blocklist)
        if image is not None and has_input:
            stored = await self.media.load_input(image)
            spec = fit_to_input(spec, stored.width, stored.height)
            spec = spec.model_copy(update={"input_name": stored.name, "input_url": _public_url(image)})
        unit = await self.tenants.get(
            (tenant, "cost", spec.kind.value, spec.model or "*"),
            lambda: self.ledger.cost_for(tenant, spec.kind.value, spec.model),
        )
        cost = unit * spec.count
        if confirmed_cost is None or cost > confirmed_cost:
            above = await self.tenants.get(
                (tenant, "confirm-above"), lambda: self.confirms.store.threshold(tenant)
            )
            if above is not None and cost > above:
                return await self._ask(actor, spec, reply, cost, above, request_key, parent_id)
        now = time.time()
        job = JobRecord(
            id=job_id or new_job_id(),
            created=now,
            updated=now,
            _actor=actor,
            _spec=spec,
            state=JobPhase.QUEUED,
            reply_ref=reply.ref(),
            cost=cost,
            parent_id=parent_id,
            request_key=request_key,
        )
        # The queue bound and the member's cap are counted in the admission transaction, over
        # every replica's jobs; so is the place in line. Jobs this process's free workers will
        # take at once are not waiting: a burst into idle workers is not refused.
        admitted = await self.store.admit(
            job,
            max_open=self.config.max_jobs_per_user,
            max_queued=self.config.queue_size + self.scheduler.free_workers,
            confirming=confirming,
        )
        job, position = admitted.job, admitted.position
        if not admitted.created:
            return await self.ticket(job)  # a concurrent retry of the same platform request won
        self.delivery.attach(job.id, reply, job.actor.platform)
        _log.info(
            "job admitted job=%s kind=%s tenant=%s user=%s cost=%d position=%d",
            job.id,
            spec.kind,
            tenant,
            actor.user_id,
            job.cost,
            position,
        )
        text = messages.queued(position, job.cost)
        await self.delivery.progress(job, JobPhase.QUEUED, text, position=position, force=True)
        self._waiting[job.id] = (job, position)
        await self.announce(job.id)
        return Ticket(job_id=job.id, position=position, cost=job.cost, text=text)

    async def _ask(
        self,
        actor: Actor,
        spec: JobSpec,
        reply: Reply,
        cost: int,
        above: int,
        request_key: str | None,
        parent_id: str | None,
    ) -> Ticket:
        # Asking is pointless when the member could not pay or may not generate: say so now.
        account = await self.ledger.account(actor.tenant, actor.user_id)
        if account.banned:
            raise BannedError(messages.banned())
        if account.frozen:
            raise FrozenError(messages.frozen())
        if account.balance < cost:
            raise InsufficientCreditsError(
                messages.insufficient_credits(account.balance, cost), balance=account.balance, cost=cost
            )
        return await self.confirms.ask(
            actor,
            spec,
            reply,
            cost=cost,
            balance=account.balance,
            threshold=above,
            request_key=request_key,
            parent_id=parent_id,
        )

    async def confirm(self, actor: Actor, request_id: str | None) -> Ticket:
        """Confirm a request that waited for it (the actor's newest when `request_id` is None):
        admitted like any other, so the hold, caps and policy are checked now. A second Confirm
        returns the first one's job; a request of another member, an expired or a cancelled
        one is refused with a UserError."""
        request = await self.confirms.find(actor, request_id)
        if request is None:
            raise NotFoundError(messages.job_not_found(request_id or ""))
        async with self.confirms.guard(request.id):
            # Read again under the guard: a click that waited for another one sees its outcome.
            request = await self.confirms.store.get(request.id) or request
            await self.confirms.check_open(request)
            key = confirm_request_key(request.id)
            if request.state is ConfirmState.CONFIRMED:
                job = await self.store.by_request_key(key)
                if job is not None:
                    return await self.ticket(job)
            reply = self.confirms.reply_for(request)
            try:
                ticket = await self.admit(
                    actor,
                    request.spec,
                    reply,
                    request_key=key,
                    parent_id=request.parent_id,
                    job_id=request.id,
                    confirmed_cost=request.cost,
                    confirming=True,
                )
            except ConfirmationClosedError:
                # Another replica took its Cancel (or its expiry) between our check and the
                # admission: nothing was held, and the request says why.
                self.confirms.forget(request.id)
                fresh = await self.confirms.store.get(request.id) or request
                await self.confirms.check_open(fresh)
                raise InvalidInputError(messages.confirm_declined()) from None
            if ticket.awaiting_confirmation:
                # The price rose since it was shown: the same message now asks again with the
                # new cost (a new request), and this one is done with.
                await self.confirms.store.move(request.id, ConfirmState.CANCELLED)
                self.confirms.forget(request.id)
                return ticket
            self.confirms.forget(request.id)
            _log.info("confirmation accepted request=%s job=%s", request.id, ticket.job_id)
            return ticket

    async def announce(self, job_id: str) -> None:
        """A job was queued: this process's workers hear of it at once, and with replicas every
        other one does too (an idle one may claim it first)."""
        self.scheduler.enqueue()
        if self.events.shared:
            await self.events.publish(JobNudged(job_id, "due", origin=self.store.owner))

    async def refresh_positions(self) -> None:
        """A job left the queue: show the jobs waiting behind it their new place in line.

        One read for the whole queue; each status is edited only when its place changed, and
        through the usual progress throttle.
        """
        if not self._waiting:
            return
        positions = await self.store.queue_positions()
        for job_id, (job, shown) in list(self._waiting.items()):
            position = positions.get(job_id, 0)
            if not position:
                del self._waiting[job_id]  # claimed, cancelled or ended: its status moved on
                continue
            if position == shown:
                continue
            text = messages.queued(position, job.cost)
            if await self.delivery.progress(job, JobPhase.QUEUED, text, position=position):
                self._waiting[job_id] = (job, position)

    async def ticket(self, job: JobRecord) -> Ticket:
        """The ticket of an existing job (a retried request)."""
        position = await self.store.queue_position(job.id) if job.state is JobPhase.QUEUED else 0
        text = messages.queued(position, job.cost) if position else messages.already_running()
        return Ticket(job_id=job.id, position=position, cost=job.cost, text=text)


def _public_url(image: ImageRef) -> str | None:
    # Only a plain URL without private headers can be handed to a vendor as is.
    return image.url if image.url and not image.headers else None
