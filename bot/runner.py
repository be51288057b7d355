"""Running jobs: submit through the router, follow the vendor job, hand the result to delivery.

Each call here is one step of one job, started by the scheduler; between steps a job is only
an entry in the scheduler's heap and a row in the database. Every step ends in a store
transition; losing one (`LostRaceError`: a Cancel, another replica) stops the job's work here
without a word, since the winner already told the user.

What is fatal and what is not, while following a job the vendor has usually billed already:
a 5xx, 429, timeout, malformed answer — and a 400 on a *poll*, which is about our poll, not
the user's prompt — is retried with backoff until the job's deadline. A refused key or empty
wallet marks the route unhealthy (the router's breaker) and the job is still followed. Only
content blocks, a vendor that forgot the job, and the deadline end it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from bot import messages
from bot.delivery import Delivery
from bot.jobs import EngineConfig, JobEndedError
from bot.jobstore import JobRecord, JobStorePort, LostRaceError, StoredResult
from bot.media import MediaStore
from bot.metrics import Metrics
from bot.polling import PollSchedule, RouteTimes
from bot.reply import JobPhase
from bot.router import NoRouteError, Router
from bot.scheduler import Scheduler, Throttle
from providers.base import (
    ContentBlockedError,
    JobState,
    JobUpdate,
    ProviderError,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)

__all__ = ["Runner"]

_log = logging.getLogger(__name__)

WebhookURL = Callable[[str, str], str | None]


class Runner:
    """Submits and follows jobs; owns what memory knows about each followed job."""

    def __init__(
        self,
        *,
        store: JobStorePort,
        router: Router,
        media: MediaStore,
        delivery: Delivery,
        config: EngineConfig,
        route_times: RouteTimes,
        metrics: Metrics | None,
        webhook_url: WebhookURL | None,
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.router = router
        self.media = media
        self.delivery = delivery
        self.config = config
        self.route_times = route_times
        self.metrics = metrics
        self._webhook_url = webhook_url
        self._clock = clock
        self._wall = wall
        self.scheduler: Scheduler  # set by the engine (the two refer to each other)
        # Set by the engine: the queue moved (a status refresh for the jobs still waiting). Run
        # through a Throttle, at most once per progress interval however many workers claim.
        self.claimed: Callable[[], Awaitable[None]] | None = None
        self._claimed: Throttle | None = None
        self._live: dict[str, JobRecord] = {}
        self._taken: dict[str, JobRecord] = {}  # claimed, between the take and the submit
        self._schedules: dict[str, PollSchedule] = {}
        self._started: dict[str, float] = {}
        self._errors: dict[str, int] = {}
        self._resumed: set[str] = set()
        self._pushed: dict[str, JobUpdate] = {}

    def follows(self, job_id: str) -> bool:
        """Whether this process is following the job."""
        return job_id in self._live

    def live(self, job_id: str) -> JobRecord | None:
        """The record of a job this process follows (current: its transitions are made here)."""
        return self._live.get(job_id)

    # --- steps -----------------------------------------------------------------------------

    async def take(self) -> str | None:
        """A worker's first step: claim the oldest queued job (queued → submitting, leased to
        this process); its id, or None when none waits."""
        job = await self.store.claim_next(self._wall() + self.config.job_timeout, self.delivery.platforms())
        if job is None:
            return None
        self._taken[job.id] = job
        return job.id

    async def claim(self, job_id: str) -> None:
        """A worker's second step: submit the job it took."""
        job = self._taken.pop(job_id)
        if self.claimed is not None:
            if self._claimed is None:
                self._claimed = self.scheduler.throttle(self.claimed, self.config.progress_interval)
            await self._claimed()  # the jobs behind this one moved up
        await self._guarded(job, self._submit(job))

    @property
    def followed(self) -> set[str]:
        """The ids of the jobs this process follows."""
        return set(self._live)

    def follow(self, job: JobRecord) -> None:
        """Re-attach a running job after a restart: poll it at once."""
        if job.deadline is None:  # a row from before deadlines were stored
            job.deadline = self._wall() + self.config.job_timeout
        self._live[job.id] = job
        self._resumed.add(job.id)
        self._started[job.id] = self._clock()
        self._schedules[job.id] = self._schedule(job)
        job.compact()
        self.scheduler.wake(job.id)

    async def step(self, job_id: str) -> None:
        """The scheduler's step for a followed job: look at the vendor job once."""
        job = self._live.get(job_id)
        if job is not None:
            await self._guarded(job, self._poll(job))

    def push(self, job_id: str, update: JobUpdate) -> None:
        """A terminal update from a webhook: use it at the job's next step, now."""
        self._pushed[job_id] = update
        if job_id in self._live:
            self.scheduler.wake(job_id)

    def drop(self, job_id: str) -> None:
        """Forget a job that ended (or that another actor ended)."""
        self._live.pop(job_id, None)
        self._schedules.pop(job_id, None)
        self._started.pop(job_id, None)
        self._errors.pop(job_id, None)
        self._resumed.discard(job_id)
        self._pushed.pop(job_id, None)
        self.scheduler.forget(job_id)

    async def _guarded(self, job: JobRecord, work: Awaitable[None]) -> None:
        try:
            await work
        except LostRaceError as lost:
            _log.info("job %s moved on without us (now %s)", job.id, lost.state)
            self.drop(job.id)
        except JobEndedError as ended:
            await self.end(job, ended.text, ended.why)
        except Exception as exc:  # never leave a job (or its hold) behind
            _log.exception("job crashed job=%s", job.id)
            await self.end(job, messages.failed(messages.REASON_VENDOR_FAILED), f"internal: {exc!r}")

    async def end(self, job: JobRecord, text: str, why: str) -> None:
        """failed, with the release and the user's message (if the job was still open)."""
        self.drop(job.id)
        row = await self.store.failed(job.id, text, why)
        if row is None:
            return
        _log.warning("job failed job=%s route=%s: %s", job.id, job.route, why)
        self.count_end(job, JobPhase.FAILED)
        await self.delivery.send(row, job)

    def count_end(self, job: JobRecord, state: JobPhase) -> None:
        """Metrics of a job that reached `state`."""
        if self.metrics is not None:
            self.metrics.jobs_total.labels(kind=job.spec.kind.value, state=state.value).inc()
            if state is JobPhase.DONE:
                self.metrics.credits_spent_total.labels(kind=job.spec.kind.value).inc(job.cost)

    # --- submit ----------------------------------------------------------------------------

    def _input_url(self, job: JobRecord) -> str | None:
        if not job.spec.input_name:
            return None
        link = self.media.link_for(self.media.files_dir / job.spec.input_name)
        if link:
            return link
        if job.spec.input_url:
            return job.spec.input_url
        raise JobEndedError(
            messages.failed(messages.REASON_DOWNLOAD),
            "no way to hand the input image to a vendor (set PUBLIC_BASE_URL)",
        )

    async def _submit(self, job: JobRecord) -> None:
        hook = self._webhook_url
        try:
            routed = await self.router.submit(
                job.spec,
                image_url=self._input_url(job),
                webhook_url=lambda route: hook(route.vendor, job.id) if hook else None,
                exclude=job.routes_tried,
            )
        except ContentBlockedError as exc:
            raise JobEndedError(messages.failed(messages.REASON_CONTENT), f"content blocked: {exc}") from exc
        except RejectedInputError as exc:
            raise JobEndedError(messages.failed(messages.REASON_REJECTED), f"rejected: {exc}") from exc
        except NoRouteError as exc:
            raise JobEndedError(messages.failed(messages.REASON_VENDORS_DOWN), str(exc)) from exc
        job.route = routed.route.key
        job.handle = routed.submission.handle
        job.routes_tried = [*job.routes_tried, routed.route.key]
        job.vendor_cost_usd = routed.submission.cost_usd or routed.route.price_usd
        if routed.request.width != job.spec.width or routed.request.height != job.spec.height:
            job.result = StoredResult(size=(routed.request.width, routed.request.height))
        try:
            await self.store.accepted(job)
        except LostRaceError:  # a Cancel won while the vendor answered: stop its job too
            await self.router.cancel(job.route, job.handle)
            raise
        _log.info("job submitted job=%s route=%s vendor_job=%s", job.id, job.route, job.handle.job_id)
        self._live[job.id] = job
        self._started[job.id] = self._clock()
        schedule = self._schedules[job.id] = self._schedule(job)
        await self.delivery.progress(job, JobPhase.SUBMITTING, messages.submitted(job.cost))
        job.compact()  # the vendor has the job: actor and spec wait as JSON until it ends
        if routed.submission.update is not None:
            self._pushed.setdefault(job.id, routed.submission.update)
        if job.id in self._pushed:
            self.scheduler.wake(job.id)
        else:
            first = self.config.webhook_poll_interval if self._webhook(job) else schedule.first
            self._again(job, first)

    def _webhook(self, job: JobRecord) -> bool:
        return (
            self._webhook_url is not None and job.route is not None and self.router.route(job.route).webhook
        )

    def _schedule(self, job: JobRecord) -> PollSchedule:
        assert job.route is not None
        return self.route_times.schedule(job.route, self.config.poll_initial, self.config.poll_max)

    def _again(self, job: JobRecord, wait: float) -> None:
        # Never sleep past the deadline: the step after it ends the job as timed out.
        left = (job.deadline or float("inf")) - self._wall()
        self.scheduler.schedule(job.id, max(0.0, min(wait, left)))

    # --- follow ----------------------------------------------------------------------------

    async def _poll(self, job: JobRecord) -> None:
        assert job.handle is not None and job.route is not None
        if job.deadline is not None and self._wall() >= job.deadline:
            raise JobEndedError(messages.failed(messages.REASON_TIMEOUT), "timed out")
        elapsed = self._clock() - self._started.get(job.id, self._clock())
        update = self._pushed.pop(job.id, None)
        pushed = update is not None
        if update is None:
            try:
                update = await self.router.poll(job.route, job.handle)
            except ContentBlockedError as exc:
                raise JobEndedError(
                    messages.failed(messages.REASON_CONTENT), f"content blocked: {exc}"
                ) from exc
            except UnknownJobError as exc:
                raise JobEndedError(messages.lost_after_restart(), f"vendor lost the job: {exc}") from exc
            except ProviderError as exc:
                self._again(job, self._backoff(job, exc))
                return
            self._errors.pop(job.id, None)
        if update.cost_usd is not None:
            job.vendor_cost_usd = update.cost_usd
        match update.state:
            case JobState.QUEUED | JobState.RUNNING:
                if self.delivery.due(job.id):  # most polls fall inside the status throttle
                    usual = self.route_times.usual(job.route)
                    text = messages.running(elapsed, update.progress, usual, job.cost)
                    await self.delivery.progress(job, JobPhase.RUNNING, text, percent=update.progress)
                schedule = self._schedules.get(job.id) or self._schedule(job)
                wait = (
                    self.config.webhook_poll_interval
                    if self._webhook(job)
                    else schedule.next_wait(elapsed, update.eta_seconds)
                )
                self._again(job, wait)
            case JobState.SUCCEEDED:
                known = self._schedules.get(job.id)
                # A resumed job was submitted before this process started: no duration to learn.
                if known is not None and job.id not in self._resumed:
                    if pushed:  # a callback (or a synchronous answer) says when it ended
                        self.route_times.record(job.route, elapsed, since=elapsed)
                    else:
                        self.route_times.observed(job.route, known, elapsed)
                await self._finish(job, update)
            case JobState.FAILED | JobState.CANCELLED:
                await self._vendor_failed(job, update)

    def _backoff(self, job: JobRecord, exc: ProviderError) -> float:
        n = self._errors[job.id] = self._errors.get(job.id, 0) + 1
        wait = min(self.config.poll_max, self.config.poll_initial * 2 ** min(n, 10))
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        level = logging.INFO if isinstance(exc, RetryableError) else logging.WARNING
        _log.log(level, "poll retry job=%s in %.2fs (%s): %s", job.id, wait, type(exc).__name__, exc)
        return wait

    async def _finish(self, job: JobRecord, update: JobUpdate) -> None:
        await self.delivery.progress(job, JobPhase.DELIVERING, messages.delivering())
        result = await self.delivery.download(job, update)
        row = await self.store.done(job.id, result, job.vendor_cost_usd)
        self.drop(job.id)
        if row is None:
            _log.info("job %s ended while its result downloaded; nothing charged", job.id)
            return
        job.state, job.result = JobPhase.DONE, result
        self.count_end(job, JobPhase.DONE)
        _log.info("job done job=%s route=%s files=%d", job.id, job.route, len(result.files))
        await self.delivery.send(row, job)  # the row the ending committed: no read back

    async def _vendor_failed(self, job: JobRecord, update: JobUpdate) -> None:
        reason = update.error or f"vendor reported {update.state.value}"
        _log.warning(
            "vendor job ended job=%s route=%s charged=%s: %s", job.id, job.route, update.charged, reason
        )
        if not self.router.fail_over(
            job.spec, update, job.routes_tried, job.attempts, self.config.max_attempts
        ):
            raise JobEndedError(messages.failed(messages.REASON_VENDOR_FAILED), reason)
        await self.store.resubmit(job)
        job.state = JobPhase.SUBMITTING
        self._live.pop(job.id, None)
        self.scheduler.forget(job.id)
        await self._submit(job)
