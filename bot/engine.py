"""The engine: admits commands, runs durable jobs through the router, talks back via Reply.

Admission (policy, parameters, input media, then a credit hold) happens before anything is
queued, so bad input never costs credits or leaves a job behind. Each admitted job is a row in
the jobs table; a worker submits it through the router, follows the vendor job (polling with
backoff shaped by the vendor's ETA, or woken by a webhook), downloads the results at once,
settles the hold and delivers. Any failure releases the hold exactly once and tells the user.
On start, every unfinished job in the database is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, assert_never

from bot import messages
from bot.catalog import Catalog
from bot.commands import Actor, EditCommand, ImageRef, ImagineCommand, ModCommand, Model3DCommand, ModOp
from bot.errors import (
    BannedError,
    BotError,
    BusyError,
    FrozenError,
    InvalidInputError,
    NotFoundError,
    QueueFullError,
    UserError,
)
from bot.params import (
    JobSpec,
    fit_to_input,
    parse_edit,
    parse_imagine,
    parse_model3d,
    random_seed,
    split_words,
)
from bot.pngmeta import ResultInfo
from bot.policy import check_image_source, check_job_id, check_prompt, require_moderator
from bot.polling import RouteTimes
from bot.reply import (
    Button,
    ButtonAction,
    Failure,
    JobPhase,
    JobResult,
    OutputFile,
    Progress,
    Reply,
    ReplyRestorer,
)
from bot.router import NoRouteError, Router
from bot.store import JobRecord, JobStore, new_job_id
from providers.base import (
    ContentBlockedError,
    JobState,
    JobUpdate,
    Kind,
    ProviderError,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)

__all__ = ["CreditsView", "Engine", "EngineConfig", "LogReply", "ModResult", "Ticket"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted job: its id, its place in the queue (1 = next) and the credits held."""

    job_id: str
    position: int
    cost: int
    text: str  # rendered acknowledgement, e.g. "Queued — position 2 in line."


@dataclass(frozen=True, slots=True)
class CreditsView:
    """What /credits shows; `text` is the rendered answer."""

    balance: int
    allowance: int
    next_refill: float  # unix time
    frozen: bool
    banned: bool
    recent: tuple[dict[str, Any], ...]
    text: str


@dataclass(frozen=True, slots=True)
class ModResult:
    """A moderator operation's answer: the new state, rendered."""

    text: str
    log_line: str  # for a moderation-log channel


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's knobs (from Settings; tests shrink the timings)."""

    workers: int = 64
    queue_size: int = 500
    max_jobs_per_user: int = 2
    progress_interval: float = 3.0
    job_timeout: float = 900.0
    poll_initial: float = 1.0
    poll_max: float = 10.0
    webhook_poll_interval: float = 30.0  # slow fallback polling when a webhook was requested
    max_attempts: int = 3  # vendor jobs tried (failover after a vendor-side failure)


class _TenantCache:
    """Tenant settings read on every admission (blocklist, costs), kept for a few seconds.

    This process's moderator changes drop the tenant at once; changes made by another
    process (the operator CLI) show after at most `ttl` seconds.
    """

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._clock = clock
        self._values: dict[tuple[str, ...], tuple[float, Any]] = {}

    async def get(self, key: tuple[str, ...], load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value, or a fresh one from `load`."""
        hit = self._values.get(key)
        now = self._clock()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        value = await load()
        self._values[key] = (now, value)
        return value

    def drop(self, tenant: str) -> None:
        """Forget everything about one tenant."""
        for key in [k for k in self._values if k[0] == tenant]:
            del self._values[key]


class LogReply:
    """A reply for jobs whose platform is not running in this process: logs only."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self._ref = ref

    def ref(self) -> dict[str, Any]:
        """The original address, kept unchanged."""
        return self._ref

    async def progress(self, update: Progress) -> None:
        """Log the status line."""
        _log.info("job %s: %s", update.job_id, update.text)

    async def result(self, result: JobResult) -> None:
        """Log where the files are."""
        _log.info("job %s done: %s", result.job_id, ", ".join(str(f.path) for f in result.files))

    async def failure(self, failure: Failure) -> None:
        """Log the failure."""
        _log.info("job %s failed: %s", failure.job_id, failure.text)


class Engine:
    """The core. Use as an async context manager; call `resume()` once adapters are up.

    All public methods raise `bot.errors.UserError` subclasses for anything the user must be
    told (their `str()` is the message); those never cost credits.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        ledger: Any,  # bot.ledger.CreditLedger
        router: Router,
        media: Any,  # bot.media.MediaStore
        config: EngineConfig | None = None,
        metrics: Any = None,
        webhook_url: Callable[[str, str], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.router = router
        self.media = media
        self.config = config or EngineConfig()
        self.metrics = metrics
        self._webhook_url = webhook_url  # (vendor, job id) -> callback URL, when public
        self._clock = clock
        self._sleep = sleep
        self._restorers: dict[str, ReplyRestorer] = {}
        self._replies: dict[str, Reply] = {}
        self._queue: deque[str] = deque()
        # One permit per queued job; a cancelled job leaves a permit that finds nothing.
        self._queued = asyncio.Semaphore(0)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._active: dict[tuple[str, str], int] = {}  # (tenant, user) -> unfinished jobs
        self._pushed: dict[str, JobUpdate] = {}  # webhook updates waiting for their runner
        self._partial: dict[str, JobUpdate] = {}  # per-image callbacks gathered so far
        self._wake: dict[str, asyncio.Event] = {}
        self._last_progress: dict[str, float] = {}
        self._cancel_requested: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tenant_cache = _TenantCache(ttl=10.0, clock=clock)
        self._route_times = RouteTimes()
        self._click_locks: dict[tuple[str, str, str], tuple[asyncio.Lock, int]] = {}
        self._supervisor: asyncio.Task[None] | None = None

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
        self._restorers[platform] = restorer

    async def __aenter__(self) -> Self:
        self._supervisor = asyncio.get_running_loop().create_task(self._loops(), name="engine")
        return self

    async def _loops(self) -> None:
        # The long-running loops live in one TaskGroup; cancelling this task stops them all.
        async with asyncio.TaskGroup() as group:
            for i in range(self.config.workers):
                group.create_task(self._worker(), name=f"engine-worker-{i}")
            if self.metrics is not None:
                group.create_task(self._gauges(), name="engine-gauges")

    async def __aexit__(self, *exc: object) -> None:
        # Unfinished jobs stay in the database and are resumed by the next start; wait for
        # their tasks to unwind before the caller closes the database under them.
        jobs = list(self._tasks)
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    async def resume(self) -> int:
        """Pick up every unfinished job from the database; returns how many were resumed."""
        resumed = 0
        jobs = await self.store.unfinished()
        for job in jobs:
            if job.id in self._running or job.id in self._queue:
                continue
            restorer = self._restorers.get(job.actor.platform)
            if restorer is None:
                # Its user can only be told through its platform: leave it to a process that
                # runs that platform rather than finishing it silently here.
                _log.warning("job %s left for a process with platform %s", job.id, job.actor.platform)
                continue
            self._replies[job.id] = restorer.restore(job.reply_ref)
            self._count(job, +1)
            if job.state is JobPhase.QUEUED:
                self._queue.append(job.id)
                self._queued.release()
            elif job.handle is None and job.state is JobPhase.SUBMITTED:
                # The process died inside the submit call: whether the vendor took the job is
                # unknown and there is nothing to re-attach to, so refund and say so.
                await self._finish_failed(
                    job, messages.lost_after_restart(), "no vendor handle after restart"
                )
                continue
            else:
                self._spawn(job)
            resumed += 1
        await self._release_orphan_holds()
        if resumed:
            _log.info("resumed %d unfinished job(s)", resumed)
        return resumed

    async def _release_orphan_holds(self) -> None:
        # A crash between the hold and the job insert leaves a hold with no job: refund it.
        ids = await self.store.ids()
        cutoff = time.time() - 60  # younger holds may belong to a job being admitted right now
        for hold in await self.ledger.open_holds():
            if hold.job_id not in ids and hold.created < cutoff:
                await self.ledger.release(hold.job_id, reason="job lost before it was saved")
                _log.warning("released orphan hold job=%s", hold.job_id)

    # --- admission -------------------------------------------------------------------------

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
        same platform request return the first job's ticket instead of starting another.
        """
        check_image_source(actor, command)  # a chat member never names a file on our disk
        if request_key and (existing := await self.store.by_request_key(request_key)):
            return self._ticket(existing)
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

    async def _admit(
        self,
        actor: Actor,
        spec: JobSpec,
        reply: Reply,
        *,
        image: ImageRef | None = None,
        request_key: str | None = None,
        parent_id: str | None = None,
    ) -> Ticket:
        tenant = actor.tenant
        # Refuse banned or frozen members before anything is downloaded; the hold checks again.
        account = await self.ledger.account(tenant, actor.user_id)
        if account.banned:
            raise BannedError(messages.banned())
        if account.frozen:
            raise FrozenError(messages.frozen())
        blocklist = await self._tenant_cache.get((tenant, "blocklist"), lambda: self.ledger.blocklist(tenant))
        check_prompt(actor, (spec.prompt, spec.negative), blocklist)
        key = (tenant, actor.user_id)
        if self._active.get(key, 0) >= self.config.max_jobs_per_user:
            raise BusyError(messages.busy(self.config.max_jobs_per_user))
        if len(self._queue) >= self.config.queue_size:
            raise QueueFullError(messages.queue_full())
        if image is not None and (image.url or image.path or image.data):
            stored = await self.media.load_input(image)
            spec = fit_to_input(spec, stored.width, stored.height)
            spec = spec.model_copy(update={"input_name": stored.name, "input_url": _public_url(image)})
        unit = await self._tenant_cache.get(
            (tenant, "cost", spec.kind.value, spec.model or "*"),
            lambda: self.ledger.cost_for(tenant, spec.kind.value, spec.model),
        )
        cost = unit * spec.count
        # Re-check the cap: the awaits above may have let a concurrent command in.
        if self._active.get(key, 0) >= self.config.max_jobs_per_user:
            raise BusyError(messages.busy(self.config.max_jobs_per_user))
        self._active[key] = self._active.get(key, 0) + 1
        job_id = new_job_id()
        try:
            await self.ledger.hold(tenant, actor.user_id, job_id, cost, kind=spec.kind.value)
        except BaseException:
            self._active[key] -= 1
            raise
        now = time.time()
        job = JobRecord(
            id=job_id,
            created=now,
            updated=now,
            actor=actor,
            spec=spec,
            state=JobPhase.QUEUED,
            reply_ref=reply.ref(),
            cost=cost,
            parent_id=parent_id,
            request_key=request_key,
        )
        try:
            await self.store.create(job)
        except BaseException:
            self._active[key] -= 1
            await self.ledger.release(job_id, reason="job could not be saved")
            if request_key and (existing := await self.store.by_request_key(request_key)):
                return self._ticket(existing)  # a concurrent retry of the same request won
            raise
        self._replies[job_id] = reply
        self._queue.append(job_id)
        position = len(self._queue)
        self._gauge_queue()
        _log.info(
            "job admitted job=%s kind=%s tenant=%s user=%s cost=%d position=%d",
            job_id,
            spec.kind,
            tenant,
            actor.user_id,
            cost,
            position,
        )
        await self._progress(job, JobPhase.QUEUED, messages.queued(position), position=position, force=True)
        self._queued.release()
        return Ticket(job_id=job_id, position=position, cost=cost, text=messages.queued(position))

    def _ticket(self, job: JobRecord) -> Ticket:
        position = self._queue.index(job.id) + 1 if job.id in self._queue else 0
        text = messages.queued(position) if position else messages.already_running()
        return Ticket(job_id=job.id, position=position, cost=job.cost, text=text)

    # --- buttons ---------------------------------------------------------------------------

    async def _own_job(self, actor: Actor, job_id: str, *, spending: bool = True) -> JobRecord:
        job_id = check_job_id(job_id)  # typed by the user: may hold characters SQLite refuses
        job = await self.store.get(job_id)
        if job is None or job.tenant != actor.tenant:
            raise NotFoundError(messages.job_not_found(job_id))
        if spending and job.actor.user_id != actor.user_id and not actor.is_moderator:
            raise UserError(messages.not_your_job())
        return job

    @contextlib.asynccontextmanager
    async def _one_click(self, parent: JobRecord, actor: Actor, kind: Kind) -> AsyncIterator[None]:
        """Concurrent clicks on one result's button start one job: the check for a running
        child and the admission of a new one happen under one lock per (job, user, kind)."""
        key = (parent.id, actor.user_id, kind.value)
        lock, users = self._click_locks.get(key, (asyncio.Lock(), 0))
        self._click_locks[key] = (lock, users + 1)
        try:
            async with lock:
                if await self.store.active_child(parent.id, actor.user_id, kind.value):
                    raise UserError(messages.already_running())
                yield
        finally:
            lock, users = self._click_locks[key]
            if users == 1:
                del self._click_locks[key]  # the last click out forgets the lock
            else:
                self._click_locks[key] = (lock, users - 1)

    async def reroll(
        self, actor: Actor, job_id: str, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """Same parameters as `job_id`, a new seed. Owner or moderator only."""
        parent = await self._own_job(actor, job_id)
        spec = parent.spec.model_copy(update={"seed": random_seed()})
        async with self._one_click(parent, actor, parent.spec.kind):
            return await self._admit(actor, spec, reply, request_key=request_key, parent_id=parent.id)

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
        parent = await self._own_job(actor, job_id)
        image = self._result_image(parent, index)
        ref = ImageRef(path=str(image.path))
        spec = parse_edit(EditCommand(image=ref, instruction=instruction), self.catalog)
        async with self._one_click(parent, actor, Kind.EDIT):
            return await self._admit(
                actor, spec, reply, image=ref, request_key=request_key, parent_id=parent.id
            )

    async def make_3d(
        self, actor: Actor, job_id: str, index: int | None, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """Image → 3D from image `index` (default 0) of a finished job."""
        parent = await self._own_job(actor, job_id)
        image = self._result_image(parent, index)
        ref = ImageRef(path=str(image.path))
        spec = parse_model3d(Model3DCommand(image=ref), self.catalog)
        async with self._one_click(parent, actor, Kind.MODEL3D):
            return await self._admit(
                actor, spec, reply, image=ref, request_key=request_key, parent_id=parent.id
            )

    def _result_image(self, job: JobRecord, index: int | None) -> OutputFile:
        images = [f for f in self._files(job) if f.role == "image"]
        if job.state is not JobPhase.DONE or not images:
            raise InvalidInputError(messages.no_finished_image())
        i = index or 0
        if not 0 <= i < len(images):
            raise InvalidInputError(messages.image_index_out_of_range(len(images)))
        return images[i]

    async def single(self, actor: Actor, job_id: str, index: int) -> JobResult:
        """One image of a finished multi-image job, alone at full size (costs nothing)."""
        job = await self._own_job(actor, job_id, spending=False)
        image = self._result_image(job, index)
        buttons = self._result_buttons(job, 1, index=index)
        return JobResult(
            job_id=job.id,
            kind=job.spec.kind.value,
            text=messages.single_caption(job.id, index, job.spec.prompt),
            files=(image,),
            buttons=buttons,
        )

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
        """A result or status button (Reroll, Make 3D, one image, Cancel), answered on `reply`.
        Edit is not a press: it needs an instruction first (`edit_result`)."""
        match action:
            case ButtonAction.REROLL:
                await self.reroll(actor, job_id, reply, request_key=request_key)
            case ButtonAction.MAKE_3D:
                await self.make_3d(actor, job_id, index, reply, request_key=request_key)
            case ButtonAction.SINGLE:
                await reply.result(await self.single(actor, job_id, index or 0))
            case ButtonAction.CANCEL:
                # The job's own status message turns into "Cancelled" through its reply.
                await self.cancel(actor, job_id)
            case ButtonAction.EDIT:
                raise ValueError("Edit needs an instruction: call edit_result")
            case ButtonAction.DELETE:
                raise ValueError("Delete removes platform messages: check may_delete, then delete")
            case _:
                assert_never(action)

    async def show(self, actor: Actor, job_id: str) -> JobResult:
        """A finished job's result again, with its buttons (like Midjourney's /show)."""
        job = await self._own_job(actor, job_id, spending=False)
        if job.state is not JobPhase.DONE or not job.result:
            raise InvalidInputError(messages.not_finished(job.id, job.state.value))
        return self._job_result(job)

    async def cancel(self, actor: Actor, job_id: str) -> str:
        """Cancel an unfinished job (owner or moderator); releases the hold."""
        job = await self._own_job(actor, job_id)
        if job.state.terminal:
            raise InvalidInputError(messages.not_cancellable(job.id, job.state.value))
        self._cancel_requested.add(job.id)
        if job.id in self._queue:
            self._queue.remove(job.id)
            self._gauge_queue()
            await self._finish_cancelled(job)
        elif (task := self._running.get(job.id)) is not None:
            task.cancel()
        else:
            await self._finish_cancelled(job)
        return messages.cancelled()

    # --- credits and moderation ------------------------------------------------------------

    async def credits(self, actor: Actor) -> CreditsView:
        """The actor's balance, allowance, next refill and recent jobs."""
        account = await self.ledger.account(actor.tenant, actor.user_id)
        recent = tuple(
            {
                "id": j.id,
                "kind": j.spec.kind.value,
                "state": j.state.value,
                "cost": j.cost,
                "prompt": j.spec.prompt,
            }
            for j in await self.store.recent(actor.tenant, actor.user_id)
        )
        return CreditsView(
            balance=account.balance,
            allowance=account.allowance,
            next_refill=account.next_refill,
            frozen=account.frozen,
            banned=account.banned,
            recent=recent,
            text=messages.credits_view(
                account.balance,
                account.held,
                account.allowance,
                account.next_refill,
                account.frozen,
                recent,
                banned_=account.banned,
            ),
        )

    async def moderate(self, actor: Actor, command: ModCommand) -> ModResult:
        """Run a moderator operation; refused with `NotModeratorError` for members."""
        require_moderator(actor)
        self._tenant_cache.drop(actor.tenant)
        t, led, who, why = (
            actor.tenant,
            self.ledger,
            f"{actor.platform}:{actor.user_id}",
            command.reason or "",
        )
        op = command.op
        target = command.target

        def need_target() -> str:
            if not target:
                raise InvalidInputError(
                    messages.invalid("Which member?", f"Mention the member: `/quota {op} @user`.")
                )
            return target

        def need_amount() -> int:
            if command.amount is None:
                raise InvalidInputError(
                    messages.invalid("How many credits?", f"Add an amount: `/quota {op} … 50`.")
                )
            return command.amount

        match op:
            case ModOp.GRANT | ModOp.TAKE | ModOp.SET:
                user, amount = need_target(), need_amount()
                fn = {ModOp.GRANT: led.grant, ModOp.TAKE: led.take, ModOp.SET: led.set_balance}[op]
                await fn(t, user, amount, actor=who, reason=why)
                account = await led.account(t, user)
                text = messages.mod_balance(op.value, user, amount, account.balance)
            case ModOp.FREEZE | ModOp.UNFREEZE | ModOp.BAN | ModOp.UNBAN:
                user = need_target()
                fn = {
                    ModOp.FREEZE: led.freeze,
                    ModOp.UNFREEZE: led.unfreeze,
                    ModOp.BAN: led.ban,
                    ModOp.UNBAN: led.unban,
                }[op]
                await fn(t, user, actor=who, reason=why)
                text = messages.mod_flag(op.value, user)
            case ModOp.ALLOWANCE:
                amount = need_amount()
                await led.set_allowance(t, amount, actor=who, reason=why)
                text = messages.mod_allowance(amount)
            case ModOp.COST:
                kind = (command.kind or "").strip().lower()
                if kind not in {k.value for k in Kind}:
                    raise InvalidInputError(
                        messages.invalid(
                            f"`{kind or '?'}` isn't a command kind.", "Use image, edit or model3d."
                        )
                    )
                amount = need_amount()
                await led.set_cost(t, kind, amount, actor=who, reason=why)
                text = messages.mod_cost(kind, amount)
            case ModOp.BUDGET:
                await led.set_budget(t, command.amount or None, actor=who, reason=why)
                text = messages.mod_budget(command.amount or None)
            case ModOp.BLOCK_ADD | ModOp.BLOCK_REMOVE:
                words = split_words(command.words or "")
                if not words:
                    raise InvalidInputError(
                        messages.invalid("Which words?", "For example `/quota blocklist add gore`.")
                    )
                fn = led.block_add if op is ModOp.BLOCK_ADD else led.block_remove
                for w in words:
                    await fn(t, w, actor=who, reason=why)
                text = messages.mod_blocklist(op is ModOp.BLOCK_ADD, words, await led.blocklist(t))
            case ModOp.BLOCK_LIST:
                text = messages.blocklist_view(await led.blocklist(t))
            case ModOp.HISTORY:
                user = need_target()
                text = messages.history_view(user, await led.history(t, user, limit=15))
            case ModOp.TOP:
                text = messages.top_view(await led.top_spenders(t, limit=10))
            case ModOp.SPEND:
                text = messages.spend_view(await self.store.spend(t))
        self._tenant_cache.drop(actor.tenant)  # again: an admission may have re-read it meanwhile
        log_line = messages.mod_log_line(actor.display_name or actor.user_id, op.value, target, command, why)
        _log.info("moderation tenant=%s actor=%s op=%s target=%s", t, who, op.value, target)
        return ModResult(text=text, log_line=log_line)

    # --- webhooks --------------------------------------------------------------------------

    async def handle_webhook(self, vendor: str, job_id: str, body: bytes, headers: Mapping[str, str]) -> None:
        """A vendor callback for one of our jobs (the web server checked its token).

        Duplicates and late callbacks are harmless: a finished job ignores them.
        Raises LookupError for an unknown job (the server answers 404).
        """
        job = await self.store.get(job_id)
        if job is None:
            raise LookupError(job_id)
        if self.metrics is not None:
            self.metrics.webhooks_total.labels(vendor=vendor, outcome="received").inc()
        if job.state.terminal or job.route is None or not job.route.startswith(f"{vendor}:"):
            return
        try:
            update = self.router.parse_webhook(vendor, body, headers)
        except ProviderError as exc:
            _log.warning("webhook ignored vendor=%s job=%s: %s", vendor, job_id, exc)
            return
        if update is None:
            return
        previous = self._pushed.get(job_id) or self._partial.get(job_id)
        if previous is not None and previous.terminal and not update.terminal and job_id in self._pushed:
            return
        merged = _merge_updates(previous, update)
        if merged.state is JobState.SUCCEEDED and not _complete(job.spec, merged):
            # Some vendors (Runware) call back once per image: wait for the rest.
            self._partial[job_id] = merged
            return
        self._partial.pop(job_id, None)
        self._pushed[job_id] = merged
        if (event := self._wake.get(job_id)) is not None:
            event.set()

    # --- running jobs ----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._queued.acquire()
            if not self._queue:
                continue
            job_id = self._queue.popleft()
            self._gauge_queue()
            job = await self.store.get(job_id)
            if job is None or job.state.terminal:
                continue
            task = self._spawn(job)
            try:
                # Shielded: a user's /cancel ends the job, never the worker.
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # shutdown

    def _spawn(self, job: JobRecord) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.id}")
        self._running[job.id] = task
        self._tasks.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._running.pop(job.id, None)

        task.add_done_callback(forget)
        return task

    async def _run(self, job: JobRecord) -> None:
        try:
            async with asyncio.timeout(self.config.job_timeout):
                await self._follow(job)
        except asyncio.CancelledError:
            if job.id in self._cancel_requested:
                await self._finish_cancelled(job)
                return
            raise  # shutdown: the job stays unfinished in the database and resumes later
        except TimeoutError:
            await self._finish_failed(job, messages.failed(messages.REASON_TIMEOUT), "timed out")
        except ContentBlockedError as exc:
            await self._finish_failed(
                job, messages.failed(messages.REASON_CONTENT), f"content blocked: {exc}"
            )
        except RejectedInputError as exc:
            await self._finish_failed(job, messages.failed(messages.REASON_REJECTED), f"rejected: {exc}")
        except NoRouteError as exc:
            await self._finish_failed(job, messages.failed(messages.REASON_VENDORS_DOWN), str(exc))
        except _DeliveryError as exc:
            await self._finish_failed(job, messages.failed(messages.REASON_DOWNLOAD), str(exc))
        except _VendorJobFailed as exc:
            await self._finish_failed(job, messages.failed(messages.REASON_VENDOR_FAILED), str(exc))
        except UnknownJobError as exc:
            await self._finish_failed(job, messages.lost_after_restart(), f"vendor lost the job: {exc}")
        except Exception as exc:  # never leave a job (or its hold) behind
            _log.exception("job crashed job=%s", job.id)
            await self._finish_failed(
                job, messages.failed(messages.REASON_VENDOR_FAILED), f"internal: {exc!r}"
            )

    async def _follow(self, job: JobRecord) -> None:
        resumed = job.handle is not None  # after a restart the job may have finished meanwhile
        while True:
            if job.handle is None:
                await self._submit(job)
            update = await self._wait_for_result(job, immediate=resumed)
            resumed = False
            if update.state is JobState.SUCCEEDED:
                await self._deliver(job, update)
                return
            # The vendor's job failed. A system-side failure (the vendor did not bill it) may
            # succeed elsewhere, so try the next route a bounded number of times; a billed
            # failure is about the request itself and is not sent to another vendor.
            reason = update.error or "vendor reported failure"
            _log.warning(
                "vendor job failed job=%s route=%s charged=%s: %s", job.id, job.route, update.charged, reason
            )
            if (
                update.charged
                or job.attempts >= self.config.max_attempts
                or not self.router.candidates(job.spec, exclude=job.routes_tried)
            ):
                raise _VendorJobFailed(reason)
            job.handle = None
            await self.store.save(job)

    def _input_url(self, job: JobRecord) -> str | None:
        if not job.spec.input_name:
            return None
        link = self.media.link_for(self.media.files_dir / job.spec.input_name)
        if link:
            return link
        if job.spec.input_url:
            return job.spec.input_url
        raise _DeliveryError("no way to hand the input image to a vendor (set PUBLIC_BASE_URL)")

    async def _submit(self, job: JobRecord) -> None:
        job.state = JobPhase.SUBMITTED
        job.attempts += 1
        await self.store.save(job)
        routed = await self.router.submit(
            job.spec,
            image_url=self._input_url(job),
            webhook_url=lambda route: self._webhook_url(route.vendor, job.id) if self._webhook_url else None,
            exclude=job.routes_tried,
        )
        job.route = routed.route.key
        job.handle = routed.submission.handle
        job.routes_tried = [*job.routes_tried, routed.route.key]
        job.vendor_cost_usd = routed.submission.cost_usd or routed.route.price_usd
        if routed.request.width != job.spec.width or routed.request.height != job.spec.height:
            job.result = {"size": [routed.request.width, routed.request.height]}
        await self.store.save(job)
        if routed.submission.update is not None:
            self._pushed[job.id] = routed.submission.update
        _log.info("job submitted job=%s route=%s vendor_job=%s", job.id, job.route, job.handle.job_id)
        await self._progress(job, JobPhase.SUBMITTED, messages.submitted())

    async def _wait_for_result(self, job: JobRecord, *, immediate: bool = False) -> JobUpdate:
        assert job.handle is not None and job.route is not None
        route = job.route
        event = self._wake.setdefault(job.id, asyncio.Event())
        started = self._clock()
        webhook = self._webhook_url is not None and self.router.route(route).webhook
        schedule = self._route_times.schedule(route, self.config.poll_initial, self.config.poll_max)
        # With a webhook the vendor calls back and polling is only the slow fallback.
        first = self.config.webhook_poll_interval if webhook else (0.0 if immediate else schedule.first)
        if first and job.id not in self._pushed:
            await self._nap(event, first)
        try:
            while True:
                update = self._pushed.pop(job.id, None)
                elapsed = self._clock() - started
                if update is None:
                    try:
                        update = await self.router.poll(route, job.handle)
                    except RetryableError as exc:
                        wait = max(schedule.next_wait(elapsed), exc.retry_after or 0.0)
                        _log.info("poll retry job=%s in %.1fs: %s", job.id, wait, exc)
                        await self._nap(event, wait)
                        continue
                if update.terminal:
                    if update.cost_usd is not None:
                        job.vendor_cost_usd = update.cost_usd
                    if update.state is JobState.SUCCEEDED and not immediate:
                        self._route_times.record(route, elapsed)
                    return update
                if job.state is not JobPhase.RUNNING:
                    job.state = JobPhase.RUNNING
                    await self.store.save(job)
                await self._progress(
                    job, JobPhase.RUNNING, messages.running(elapsed, update.progress), percent=update.progress
                )
                wait = (
                    self.config.webhook_poll_interval
                    if webhook
                    else schedule.next_wait(elapsed, update.eta_seconds)
                )
                await self._nap(event, wait)
        finally:
            self._wake.pop(job.id, None)

    async def _nap(self, event: asyncio.Event, seconds: float) -> None:
        event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # cheaper than wait_for: no extra task per nap
                await event.wait()

    async def _deliver(self, job: JobRecord, update: JobUpdate) -> None:
        job.state = JobPhase.DELIVERING
        await self.store.save(job)
        await self._progress(job, JobPhase.DELIVERING, messages.delivering())
        dest = self.media.files_dir / "jobs" / job.id
        files: list[OutputFile] = []
        try:
            info = ResultInfo(job.spec.prompt, job.spec.negative, job.spec.seed, job.route or "", job.id)
            for i, artifact in enumerate(update.artifacts):
                files.append(await self.media.save_result(artifact, dest, f"{job.id}-{i}", metadata=info))
            if not files:
                raise _DeliveryError("the vendor reported success without files")
            model = await self.media.model_preview(files, dest / f"{job.id}-view")
            files += [model.thumbnail] if model.thumbnail else []
            images = [f for f in files if f.role == "image"]
            preview = (
                await self.media.compose_grid(images, dest / f"{job.id}-grid") if len(images) > 1 else None
            )
        except BotError as exc:  # media.DownloadError and friends
            raise _DeliveryError(str(exc)) from exc
        size = (job.result or {}).get("size")
        if images and images[0].width and images[0].height:  # vendors may snap to their own sizes
            size = [images[0].width, images[0].height]
        # Settle first, then record the result and DONE in one write: a crash in between leaves
        # the job DELIVERING with a settled hold, and the resumed job re-delivers (settle is
        # idempotent), so the user is never charged without getting the files.
        await self.ledger.settle(job.id)
        job.result = {
            "size": size,
            "files": [_file_json(f, self.media.files_dir) for f in files],
            "preview": _file_json(preview, self.media.files_dir) if preview else None,
            "faces": model.faces,
        }
        job.state = JobPhase.DONE
        await self.store.save(job)
        self._finished(job)
        _log.info("job done job=%s route=%s files=%d", job.id, job.route, len(files))
        await self._send(job, "result", self._job_result(job))

    def _files(self, job: JobRecord) -> list[OutputFile]:
        return [_file_from_json(f, self.media) for f in (job.result or {}).get("files", [])]

    def _job_result(self, job: JobRecord) -> JobResult:
        files = self._files(job)
        preview_json = (job.result or {}).get("preview")
        size = (job.result or {}).get("size") or [job.spec.width, job.spec.height]
        images = [f for f in files if f.role == "image"]
        return JobResult(
            job_id=job.id,
            kind=job.spec.kind.value,
            text=messages.result_caption(
                job.id,
                job.spec.kind.value,
                job.spec.prompt,
                tuple(size),
                job.spec.seed,
                job.cost,
                len(images),
                (job.result or {}).get("faces"),
            ),
            files=tuple(files),
            preview=_file_from_json(preview_json, self.media) if preview_json else None,
            buttons=self._result_buttons(job, len(images)),
        )

    def _result_buttons(self, job: JobRecord, images: int, *, index: int | None = None) -> tuple[Button, ...]:
        """Reroll, Edit and Make 3D (on image `index`, or the first), U1…U4 for several, Delete."""
        if job.spec.kind is Kind.MODEL3D:
            return (
                Button(ButtonAction.REROLL, job.id, "Reroll"),
                Button(ButtonAction.DELETE, job.id, "Delete"),
            )
        kinds = self.catalog.kinds()
        target = index if index is not None else (0 if images > 1 else None)
        buttons = [Button(ButtonAction.REROLL, job.id, "Reroll")]
        if Kind.EDIT in kinds:
            buttons.append(Button(ButtonAction.EDIT, job.id, "Edit", target))
        if any(r.needs_image for r in self.catalog.for_kind(Kind.MODEL3D)):
            buttons.append(Button(ButtonAction.MAKE_3D, job.id, "Make 3D", target))
        if images > 1:
            buttons += [Button(ButtonAction.SINGLE, job.id, f"U{i + 1}", i) for i in range(images)]
        return (*buttons, Button(ButtonAction.DELETE, job.id, "Delete"))

    # --- endings ---------------------------------------------------------------------------

    async def _finish_failed(self, job: JobRecord, text: str, why: str) -> None:
        await self.ledger.release(job.id, reason=why[:200])
        job.state = JobPhase.FAILED
        job.error = why[:500]
        await self.store.save(job)
        self._finished(job)
        _log.warning("job failed job=%s route=%s: %s", job.id, job.route, why)
        await self._send(job, "failure", Failure(job_id=job.id, text=text, refunded=True))

    async def _finish_cancelled(self, job: JobRecord) -> None:
        fresh = await self.store.get(job.id)
        if fresh is not None and fresh.state.terminal:
            return
        await self.ledger.release(job.id, reason="cancelled")
        job.state = JobPhase.CANCELLED
        await self.store.save(job)
        self._finished(job)
        _log.info("job cancelled job=%s", job.id)
        await self._send(job, "failure", Failure(job_id=job.id, text=messages.cancelled(), refunded=True))

    def _finished(self, job: JobRecord) -> None:
        self._count(job, -1)
        self._cancel_requested.discard(job.id)
        self._pushed.pop(job.id, None)
        self._partial.pop(job.id, None)
        self._last_progress.pop(job.id, None)
        if self.metrics is not None:
            self.metrics.jobs_total.labels(kind=job.spec.kind.value, state=job.state.value).inc()
            if job.state is JobPhase.DONE:
                self.metrics.credits_spent_total.labels(kind=job.spec.kind.value).inc(job.cost)

    def _count(self, job: JobRecord, delta: int) -> None:
        key = (job.tenant, job.actor.user_id)
        self._active[key] = max(0, self._active.get(key, 0) + delta)

    def _gauge_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))

    # --- talking back ----------------------------------------------------------------------

    async def _progress(
        self,
        job: JobRecord,
        phase: JobPhase,
        text: str,
        *,
        position: int | None = None,
        percent: float | None = None,
        force: bool = False,
    ) -> None:
        now = self._clock()
        last = self._last_progress.get(job.id)
        if not force and last is not None and now - last < self.config.progress_interval:
            return
        self._last_progress[job.id] = now
        buttons = () if phase.terminal else (Button(ButtonAction.CANCEL, job.id, "Cancel"),)
        update = Progress(
            job_id=job.id, phase=phase, text=text, position=position, percent=percent, buttons=buttons
        )
        await self._send(job, "progress", update)

    async def _send(self, job: JobRecord, what: str, payload: Any) -> None:
        reply = self._replies.get(job.id)
        if reply is None:
            restorer = self._restorers.get(job.actor.platform)
            reply = restorer.restore(job.reply_ref) if restorer else LogReply(job.reply_ref)
            self._replies[job.id] = reply
        try:
            await getattr(reply, what)(payload)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("reply.%s failed job=%s platform=%s", what, job.id, job.actor.platform)
        ref = reply.ref()
        if ref != job.reply_ref:
            job.reply_ref = ref
            await self.store.save(job)
        if what != "progress":
            self._replies.pop(job.id, None)

    async def _gauges(self, every: float = 5.0) -> None:
        # Jobs by state for /metrics, from the database so other processes' jobs count too.
        while True:
            counts = dict.fromkeys((p.value for p in JobPhase if not p.terminal), 0)
            counts.update(await self.store.count_unfinished())
            for state, n in counts.items():
                self.metrics.jobs_in_state.labels(state=state).set(n)
            await self._sleep(every)

    async def drain(self) -> None:
        """Wait until no job is queued or running (jobs of platforms without a restorer too)."""
        while self._queue or self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)
            await asyncio.sleep(0.05)

    def snapshot(self) -> dict[str, Any]:
        """Counts for /healthz."""
        return {"queued": len(self._queue), "running": len(self._running), "routes": self.router.health()}

    # --- for the platforms: job-id suggestions and deleting results -------------------------

    async def recent_jobs(self, actor: Actor, limit: int = 25) -> list[JobRecord]:
        """The actor's own latest jobs here, newest first (job-id autocomplete)."""
        return await self.store.recent(actor.tenant, actor.user_id, limit)

    async def may_delete(self, actor: Actor, job_id: str) -> None:
        """Raise a UserError unless `actor` may delete the messages of `job_id`'s result:
        its requester, or a moderator of its server."""
        job = await self.store.get(job_id)
        if job is None or job.tenant != actor.tenant:
            raise NotFoundError(messages.job_not_found(job_id))
        if job.actor.user_id != actor.user_id and not actor.is_moderator:
            raise UserError(messages.not_yours_to_delete())


class _VendorJobFailed(Exception):
    """The vendor's job ended FAILED on every route we tried."""


class _DeliveryError(Exception):
    """Results could not be downloaded or stored."""


def _public_url(image: ImageRef) -> str | None:
    # Only a plain URL without private headers can be handed to a vendor as is.
    return image.url if image.url and not image.headers else None


def _file_json(f: OutputFile, root: Path) -> dict[str, Any]:
    return {
        "path": str(f.path.relative_to(root)) if f.path.is_relative_to(root) else str(f.path),
        "filename": f.filename,
        "content_type": f.content_type,
        "size": f.size,
        "role": f.role,
        "width": f.width,
        "height": f.height,
        "url": f.url,
    }


def _file_from_json(d: dict[str, Any], media: Any) -> OutputFile:
    path = Path(d["path"])
    if not path.is_absolute():
        path = media.files_dir / path
    url = media.link_for(path) or d.get("url")
    return OutputFile(
        path=path,
        filename=d["filename"],
        content_type=d["content_type"],
        size=d["size"],
        role=d.get("role", "image"),
        url=url,
        width=d.get("width"),
        height=d.get("height"),
    )


def _complete(spec: JobSpec, update: JobUpdate) -> bool:
    """Whether a successful update carries every image the job asked for."""
    if spec.kind is not Kind.IMAGE:
        return True
    return sum(a.role == "image" for a in update.artifacts) >= spec.count


def _merge_updates(previous: JobUpdate | None, update: JobUpdate) -> JobUpdate:
    # Vendors that call back once per image (Runware) deliver artifacts piecemeal.
    if previous is None or not previous.artifacts:
        return update
    seen = {a.url for a in update.artifacts}
    extra = tuple(a for a in previous.artifacts if a.url not in seen)
    return update.model_copy(update={"artifacts": extra + update.artifacts})
