"""The engine: the thin front adapters call, and the lifecycle of the parts behind it.

A job is a row moved through the state machine of `bot.store` (queued → submitting → running
→ done | failed | cancelled), one transaction per step. The parts:

- `bot.admission` — parameters, policy, caps, hold + insert, queueing;
- `bot.confirm` — requests above the server's threshold, waiting for Confirm (nothing held);
- `bot.scheduler` — the workers that claim queued jobs and one due-time heap for every poll;
- `bot.runner` — submit through the router, follow the vendor job, end it;
- `bot.delivery` — progress, result downloads, the outbox of user messages;
- `bot.actions` — Reroll, Edit, Make 3D, U buttons, /show;
- `bot.moderation` — /credits and the moderator operations.

On start, every unfinished job is picked up again from the database and every committed but
unsent message is sent. With several replicas on one PostgreSQL database a job is followed by
the replica holding its lease: each renews its leases, takes over those that expired (a dead
replica's jobs and messages) and hears the others through `bot.events` (a webhook or a Cancel
received elsewhere, a job admitted elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Self, assert_never

from bot import messages
from bot.actions import ResultActions
from bot.admission import Admission
from bot.catalog import Catalog
from bot.commands import Actor, EditCommand, ImagineCommand, ModCommand, Model3DCommand
from bot.confirm import EXPIRE_EVERY, Confirmations, ConfirmStore, PendingRequest
from bot.delivery import Delivery
from bot.errors import InvalidInputError
from bot.events import Event, EventBus, JobNudged, LocalEventBus, Resync
from bot.jobs import CreditsView, EngineConfig, LogReply, ModResult, Ticket
from bot.jobstore import JobRecord, JobStorePort
from bot.ledger import CreditLedger
from bot.media import MediaStore
from bot.metrics import Metrics
from bot.moderation import Moderation
from bot.polling import RouteTimes
from bot.reply import ButtonAction, JobPhase, JobResult, Reply, ReplyRestorer
from bot.router import Router
from bot.runner import Runner, WebhookURL
from bot.scheduler import Scheduler
from providers.base import Kind, ProviderError

__all__ = ["CreditsView", "Engine", "EngineConfig", "LogReply", "ModResult", "Ticket"]

_log = logging.getLogger(__name__)


class Engine:
    """The core. Use as an async context manager; call `resume()` once adapters are up.

    All public methods raise `bot.errors.UserError` subclasses for anything the user must be
    told (their `str()` is the message); those never cost credits.
    """

    def __init__(
        self,
        *,
        store: JobStorePort,
        ledger: CreditLedger,
        confirms: ConfirmStore,
        router: Router,
        media: MediaStore,
        config: EngineConfig | None = None,
        metrics: Metrics | None = None,
        webhook_url: WebhookURL | None = None,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.router = router
        self.media = media
        self.config = config or EngineConfig()
        self.metrics = metrics
        self._sleep = sleep
        self.events: EventBus = events or LocalEventBus()
        self.route_times = RouteTimes()
        self.delivery = Delivery(
            store=store,
            media=media,
            catalog=router.catalog,
            config=self.config,
            metrics=metrics,
            clock=clock,
            sleep=sleep,
        )
        self.runner = Runner(
            store=store,
            router=router,
            media=media,
            delivery=self.delivery,
            config=self.config,
            route_times=self.route_times,
            metrics=metrics,
            webhook_url=webhook_url,
            clock=clock,
        )
        self.scheduler = Scheduler(
            workers=self.config.workers,
            steps=self.config.steps,
            clock=clock,
            take=self.runner.take,
            claim=self.runner.claim,
            step=self.runner.step,
        )
        self.runner.scheduler = self.scheduler
        self.confirmations = Confirmations(store=confirms, restorers=self.delivery.restorers)
        self.admission = Admission(
            store=store,
            ledger=ledger,
            media=media,
            catalog=router.catalog,
            config=self.config,
            delivery=self.delivery,
            scheduler=self.scheduler,
            confirms=self.confirmations,
            events=self.events,
            clock=clock,
        )
        self.runner.claimed = self.admission.refresh_positions
        self.actions = ResultActions(
            store=store, catalog=router.catalog, admission=self.admission, delivery=self.delivery
        )
        self.moderation = Moderation(
            ledger=ledger, store=store, tenants=self.admission.tenants, confirms=self.confirmations.store
        )
        self._supervisor: asyncio.Task[None] | None = None
        self._subscription: contextlib.AbstractAsyncContextManager[None] | None = None

    @property
    def catalog(self) -> Catalog:
        """The routes this engine can use."""
        return self.router.catalog

    def model_names(self, kind: str) -> list[str]:
        """`--model` names for a command kind (for autocomplete)."""
        return self.catalog.model_names(Kind(kind))

    # --- lifecycle -------------------------------------------------------------------------

    def register_restorer(self, platform: str, restorer: ReplyRestorer) -> None:
        """Before `resume()`: how to rebuild replies of `platform` after a restart."""
        self.delivery.restorers[platform] = restorer

    async def __aenter__(self) -> Self:
        self.route_times.restore(await self.store.load_route_times())
        self._subscription = self.events.subscribe(self._on_event)
        await self._subscription.__aenter__()
        self._supervisor = asyncio.get_running_loop().create_task(self._loops(), name="engine")
        return self

    async def _loops(self) -> None:
        # The long-running loops live in one TaskGroup; cancelling this task stops them all.
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run(), name="engine-scheduler")
            group.create_task(self._save_route_times(), name="engine-route-times")
            group.create_task(self._expire_confirmations(), name="engine-confirmations")
            group.create_task(self._keep_leases(), name="engine-leases")
            if self.metrics is not None:
                group.create_task(self._gauges(), name="engine-gauges")

    async def __aexit__(self, *exc: object) -> None:
        # Unfinished jobs stay in the database and are resumed by the next start; wait for
        # their steps to unwind before the caller closes the database under them.
        await self.scheduler.stop()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._subscription is not None:
            await self._subscription.__aexit__(None, None, None)
            self._subscription = None
        with contextlib.suppress(Exception):  # unreleased, the leases simply run out
            await self.store.release_leases()
        with contextlib.suppress(Exception):  # best effort: the schedule is only a warm start
            await self.store.save_route_times(self.route_times.snapshot())

    async def resume(self) -> int:
        """Pick up the unfinished jobs and send the unsent messages this process may take (on
        SQLite: every one; with replicas: those whose lease expired); returns jobs resumed."""
        resumed = await self._take_over(every=self.store.exclusive)
        for job_id in await self.store.release_orphan_holds():
            _log.warning("released orphan hold job=%s", job_id)
        sent = await self.delivery.flush(every=self.store.exclusive)
        if resumed or sent:
            _log.info("resumed %d unfinished job(s), sent %d pending message(s)", resumed, sent)
        return resumed

    async def _take_over(self, *, every: bool) -> int:
        """Lease the jobs no live process follows (see `resume`) and go on with them; and make
        sure a worker will claim every queued job. How many were taken or are waiting."""
        taken = 0
        # Only jobs whose user this process can tell: the others are left to a process that
        # runs their platform rather than finished silently here.
        for job in await self.store.take_over(self.delivery.platforms(), every=every):
            match job.state:
                case JobPhase.SUBMITTING:
                    # Its process died inside the submit call: whether the vendor took the job
                    # is unknown and there is nothing to re-attach to, so refund and say so.
                    await self.runner.end(
                        job, messages.lost_after_restart(), "no vendor handle after restart"
                    )
                    continue
                case JobPhase.RUNNING:
                    _log.info("job taken over job=%s route=%s", job.id, job.route)
                    self.runner.follow(job)
                    taken += 1
        queued = await self.store.count_queued(self.delivery.platforms())
        self.scheduler.want(queued)
        return taken + queued

    async def _keep_leases(self) -> None:
        """Renew this process's leases; take over expired ones; hear of queued jobs it missed."""
        while True:
            await self._sleep(self.store.lease / 3)
            try:
                followed = self.runner.followed
                still = await self.store.renew()
                for job_id in followed - still:
                    if self.runner.follows(job_id):
                        # This process stalled past its lease and another took the job over
                        # (or it ended meanwhile): stop following it.
                        _log.warning("lease lost job=%s", job_id)
                        self.runner.drop(job_id)
                await self._take_over(every=False)
                await self.delivery.flush(every=False)
            except Exception:  # the next round tries again; a lease lasts three rounds
                _log.exception("keeping the job leases failed")

    def _on_event(self, event: Event) -> Awaitable[None] | None:
        """What another replica (or this one) announced: make the job due now, drop a job a
        Cancel ended, claim a job admitted elsewhere; after a gap, look at everything."""
        if isinstance(event, Resync):
            for job_id in self.runner.followed:
                self.scheduler.wake(job_id)
            return self._resync()
        assert isinstance(event, JobNudged)
        match event.reason:
            case "due":
                if event.origin != self.store.owner:  # its own workers heard of it already
                    self.scheduler.enqueue()
            case "webhook":
                if self.runner.follows(event.job_id):
                    self.scheduler.wake(event.job_id)
            case "cancel":
                if self.runner.follows(event.job_id):
                    return self._cancelled_elsewhere(event.job_id)
        return None

    async def _resync(self) -> None:
        await self._take_over(every=False)

    async def _cancelled_elsewhere(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job is not None and job.state.terminal:
            self.runner.drop(job_id)  # its Cancel released the hold and told the user already

    async def drain(self) -> None:
        """Wait until no job is queued, followed or delivering."""
        await self.scheduler.drain()

    def snapshot(self) -> dict[str, Any]:
        """Counts for /healthz."""
        return {
            "queued": self.scheduler.pending,
            "running": self.scheduler.followed,
            "routes": self.router.health(),
        }

    async def _gauges(self, every: float = 5.0) -> None:
        # Jobs by state for /metrics, from the database so other processes' jobs count too.
        assert self.metrics is not None
        while True:
            counts = dict.fromkeys(
                (p.value for p in JobPhase if not p.terminal and p is not JobPhase.DELIVERING), 0
            )
            counts.update(await self.store.count_unfinished())
            for state, n in counts.items():
                self.metrics.jobs_in_state.labels(state=state).set(n)
            self.metrics.queue_depth.set(counts[JobPhase.QUEUED.value])
            await self._sleep(every)

    async def _save_route_times(self) -> None:
        while True:
            await self._sleep(self.config.route_times_every)
            try:
                await self.store.save_route_times(self.route_times.snapshot())
            except Exception:  # the schedule is a warm start, not data: never stop for it
                _log.exception("saving the learned poll schedule failed")

    async def _expire_confirmations(self) -> None:
        while True:
            await self._sleep(EXPIRE_EVERY)
            try:
                await self.confirmations.expire_due()
            except Exception:  # a prompt keeps its buttons a little longer; a click still checks
                _log.exception("expiring confirmation prompts failed")

    # --- the API adapters call -------------------------------------------------------------

    async def submit(
        self,
        actor: Actor,
        command: ImagineCommand | EditCommand | Model3DCommand,
        reply: Reply,
        *,
        request_key: str | None = None,
        parent_id: str | None = None,
    ) -> Ticket:
        """Validate, check policy, hold credits, persist and queue a job.

        `request_key` (an interaction id, a Slack trigger id) makes a retried delivery of the
        same platform request return the first job's ticket instead of starting another. Above
        the server's confirmation threshold nothing is held: the ticket is
        `awaiting_confirmation` and `reply` shows the cost with Confirm / Cancel.
        """
        return await self.admission.submit(
            actor, command, reply, request_key=request_key, parent_id=parent_id
        )

    async def confirm(self, actor: Actor, request_id: str | None = None) -> Ticket:
        """Start a request that waited for its cost to be confirmed (the actor's newest one when
        `request_id` is None); only its requester may. The prompt becomes the job's status."""
        return await self.admission.confirm(actor, request_id)

    async def reroll(
        self, actor: Actor, job_id: str, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """Same parameters as `job_id`, a new seed. Owner or moderator only."""
        return await self.actions.reroll(actor, job_id, reply, request_key=request_key)

    async def edit_result(
        self,
        actor: Actor,
        job_id: str,
        index: int | None,
        instruction: str,
        reply: Reply,
        *,
        request_key: str | None = None,
    ) -> Ticket:
        """Edit image `index` (default 0) of a finished job by instruction."""
        return await self.actions.edit_result(
            actor, job_id, index, instruction, reply, request_key=request_key
        )

    async def make_3d(
        self, actor: Actor, job_id: str, index: int | None, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """Image → 3D from image `index` (default 0) of a finished job."""
        return await self.actions.make_3d(actor, job_id, index, reply, request_key=request_key)

    async def single(self, actor: Actor, job_id: str, index: int) -> JobResult:
        """One image of a finished multi-image job, alone at full size (costs nothing)."""
        return await self.actions.single(actor, job_id, index)

    async def show(self, actor: Actor, job_id: str) -> JobResult:
        """A finished job's result again, with its buttons (like Midjourney's /show)."""
        return await self.actions.show(actor, job_id)

    async def press(
        self,
        actor: Actor,
        action: ButtonAction,
        job_id: str,
        index: int | None,
        reply: Reply,
        *,
        request_key: str | None = None,
    ) -> None:
        """A result or status button (Reroll, Make 3D, Vary, one image, Cancel, Confirm), answered on `reply`.
        Edit is not a press: it needs an instruction first (`edit_result`)."""
        match action:
            case ButtonAction.REROLL:
                await self.reroll(actor, job_id, reply, request_key=request_key)
            case ButtonAction.MAKE_3D:
                await self.make_3d(actor, job_id, index, reply, request_key=request_key)
            case ButtonAction.VARY:
                await self.actions.vary(actor, job_id, index, reply, request_key=request_key)
            case ButtonAction.SINGLE:
                await reply.result(await self.single(actor, job_id, index or 0))
            case ButtonAction.CANCEL:
                # The job's own status message (or the request's prompt) turns into "Cancelled".
                await self.cancel(actor, job_id)
            case ButtonAction.CONFIRM:
                # The prompt's own reply becomes the job's status message.
                await self.confirm(actor, job_id)
            case ButtonAction.EDIT:
                raise ValueError("Edit needs an instruction: call edit_result")
            case ButtonAction.DELETE:
                raise ValueError("Delete removes platform messages: check may_delete, then delete")
            case _:
                assert_never(action)

    async def recent_jobs(self, actor: Actor, limit: int = 25) -> list[JobRecord]:
        """The actor's own latest jobs here, newest first (job-id autocomplete)."""
        return await self.store.recent(actor.tenant, actor.user_id, limit)

    async def waiting_requests(self, actor: Actor, limit: int = 25) -> list[PendingRequest]:
        """The actor's requests still waiting for Confirm here, newest first (/cancel
        autocomplete: cancelling one drops it)."""
        return await self.confirmations.waiting(actor, limit)

    async def may_delete(self, actor: Actor, job_id: str) -> None:
        """Raise a UserError unless `actor` may delete the messages of `job_id`'s result:
        its requester, or a moderator of its server."""
        await self.actions.may_delete(actor, job_id)

    async def cancel(self, actor: Actor, job_id: str) -> str:
        """Cancel an unfinished job (owner or moderator) and release its hold; the answer.

        One transaction decides: if the job finished first (its result not yet posted),
        nothing changes and the answer is "too late, your result is on its way". A request
        still waiting for Confirm is dropped (nothing was held)."""
        if (declined := await self.confirmations.decline(actor, job_id)) is not None:
            return declined
        job = await self.actions.own_job(actor, job_id)
        if job.state is JobPhase.DONE and await self.store.unsent(job.id):
            return messages.too_late_to_cancel()  # finished, its result not yet posted
        if job.state.terminal:
            raise InvalidInputError(messages.not_cancellable(job.id, job.state.value))
        state = await self.store.cancel(job.id, messages.cancelled())
        if state is JobPhase.DONE:
            return messages.too_late_to_cancel()
        if state is not JobPhase.CANCELLED:
            raise InvalidInputError(messages.not_cancellable(job.id, state.value if state else "gone"))
        followed_here = self.runner.follows(job.id)
        self.runner.drop(job.id)  # an in-flight step loses its next transition and stops
        if not followed_here and job.state is not JobPhase.QUEUED:
            # Another replica may follow it: it stops polling now rather than at its next
            # transition, which the Cancel already made lose.
            await self.events.publish(JobNudged(job.id, "cancel"))
        if job.route is not None and job.handle is not None:
            await self.router.cancel(job.route, job.handle)
        self.runner.count_end(job, JobPhase.CANCELLED)
        _log.info("job cancelled job=%s", job.id)
        await self.delivery.send_pending(job.id)
        if job.state is JobPhase.QUEUED:
            await self.admission.refresh_positions()  # the jobs behind it moved up
        return messages.cancelled()

    async def credits(self, actor: Actor) -> CreditsView:
        """The actor's balance, allowance, next refill and recent jobs."""
        return await self.moderation.credits(actor)

    async def moderate(self, actor: Actor, command: ModCommand) -> ModResult:
        """Run a moderator operation; refused with `NotModeratorError` for members."""
        return await self.moderation.moderate(actor, command)

    async def handle_webhook(self, vendor: str, job_id: str, body: bytes, headers: Mapping[str, str]) -> None:
        """A vendor callback for one of our jobs (the web server checked its token).

        Duplicates and late callbacks are harmless: a finished job ignores them, and the
        runner's transitions let only one ending win. Raises LookupError for an unknown job.
        """
        # A job followed here needs no read: its record is this process's own.
        job = self.runner.live(job_id) or await self.store.get(job_id)
        if job is None:
            raise LookupError(job_id)
        if self.metrics is not None:
            self.metrics.webhooks_total.labels(vendor=vendor, outcome="received").inc()
        if job.state.terminal:
            return
        # A callback may beat the commit of the vendor's acceptance (route still unset).
        if job.route is None and job.state is not JobPhase.SUBMITTING:
            return
        if job.route is not None and not job.route.startswith(f"{vendor}:"):
            return
        try:
            update = self.router.parse_webhook(vendor, body, headers)
        except ProviderError as exc:
            _log.warning("webhook ignored vendor=%s job=%s: %s", vendor, job_id, exc)
            return
        if update is not None and update.terminal:
            self.runner.push(job_id, update)
            if not self.runner.follows(job_id):
                # The replica holding the job polls it now (the event names the job only).
                await self.events.publish(JobNudged(job_id, "webhook"))
