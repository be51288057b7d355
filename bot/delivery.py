"""Talking back and delivering: progress, result downloads and the outbox.

A job's ending is committed with an outbox row (`bot.store`); this module sends those rows
through the job's `Reply` after the commit, marks them sent, and sends the ones still unsent
again after a restart. The platform fallbacks (a DM when a channel refuses the bot, and so on)
live in the adapters' Reply implementations; a row that even they cannot deliver is logged
with one precise warning and counted, and stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from bot import messages
from bot.catalog import Catalog
from bot.errors import BotError
from bot.jobs import EngineConfig, JobEndedError, file_from_stored, file_to_stored, restore_reply
from bot.jobstore import JobRecord, JobStorePort, OutboxRow, StoredResult
from bot.media import DownloadError, MediaStore
from bot.metrics import Metrics
from bot.pngmeta import ResultInfo
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
from providers.base import JobUpdate, Kind

__all__ = ["Delivery"]

_log = logging.getLogger(__name__)

#: how many delivered outbox rows are remembered against stale re-sends
_SENT_MEMORY = 50_000

#: longest pause between two tries of a result download
_MAX_DOWNLOAD_BACKOFF = 10.0


class Delivery:
    """Replies of live jobs, throttled progress, downloads and the outbox sender."""

    def __init__(
        self,
        *,
        store: JobStorePort,
        media: MediaStore,
        catalog: Catalog,
        config: EngineConfig,
        metrics: Metrics | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.media = media
        self.catalog = catalog
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self.restorers: dict[str, ReplyRestorer] = {}
        self._replies: dict[str, Reply] = {}
        self._live_platforms: set[str] = set()  # platforms of the jobs admitted here
        self._last_progress: dict[str, float] = {}
        self._sending: set[int] = set()
        # Rows this process delivered lately: a list of unsent rows read before they were sent
        # (the start-up flush racing a job that ends meanwhile) must not send them again.
        self._sent: OrderedDict[int, None] = OrderedDict()

    # --- replies ---------------------------------------------------------------------------

    def attach(self, job_id: str, reply: Reply, platform: str | None = None) -> None:
        """The live reply of a job admitted in this process (on `platform`)."""
        self._replies[job_id] = reply
        if platform is not None:
            self._live_platforms.add(platform)

    def reply_for(self, job: JobRecord) -> Reply:
        """The job's reply: live, restored from its saved address, or a log-only stand-in."""
        reply = self._replies.get(job.id)
        if reply is None:
            reply = self._replies[job.id] = restore_reply(self.restorers, job.actor.platform, job.reply_ref)
        return reply

    def forget(self, job_id: str) -> None:
        """Drop what memory holds for a finished job."""
        self._replies.pop(job_id, None)
        self._last_progress.pop(job_id, None)

    def due(self, job_id: str) -> bool:
        """Whether a status line for the job would be shown now (the throttle lets it through):
        callers skip building a text that would be dropped."""
        last = self._last_progress.get(job_id)
        return last is None or self._clock() - last >= self.config.progress_interval

    async def progress(
        self,
        job: JobRecord,
        phase: JobPhase,
        text: str,
        *,
        position: int | None = None,
        percent: float | None = None,
        force: bool = False,
    ) -> bool:
        """Show a status line (at most one per `progress_interval` unless forced); False when
        the throttle dropped it."""
        now = self._clock()
        last = self._last_progress.get(job.id)
        if not force and last is not None and now - last < self.config.progress_interval:
            return False
        self._last_progress[job.id] = now
        buttons = () if phase.terminal else (Button(ButtonAction.CANCEL, job.id, "Cancel"),)
        update = Progress(
            job_id=job.id, phase=phase, text=text, position=position, percent=percent, buttons=buttons
        )
        reply = self.reply_for(job)
        try:
            await reply.progress(update)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("reply.progress failed job=%s platform=%s", job.id, job.actor.platform)
        await self._keep_ref(job, reply)
        return True

    async def _keep_ref(self, job: JobRecord, reply: Reply) -> None:
        ref = reply.ref()
        if ref != job.reply_ref:
            job.reply_ref = ref
            await self.store.save_reply_ref(job.id, ref)

    # --- the outbox ------------------------------------------------------------------------

    async def send_pending(self, job_id: str, job: JobRecord | None = None) -> None:
        """Send the job's committed but unsent messages (right after its ending commits);
        `job` is the caller's up-to-date copy, if it has one."""
        rows = await self.store.unsent(job_id)
        if not rows:
            return
        if job is None:
            job = await self.store.get(job_id)
        if job is not None:
            for row in rows:
                await self.send(row, job)

    def platforms(self) -> set[str]:
        """The platforms whose users this process can tell: those it can rebuild replies of,
        and those of jobs admitted here. It claims and takes over only their jobs, so a job
        is never followed where its user cannot hear of it."""
        return self._live_platforms | self.restorers.keys()

    async def flush(self, *, every: bool = False) -> int:
        """Send the unsent messages no live process is sending (their lease expired; `every`:
        all of other processes', at the start of the database's only process) whose platform
        this process runs; how many were sent."""
        sent = 0
        for row in await self.store.take_unsent(self.platforms(), every=every):
            job = await self.store.get(row.job_id)
            if job is not None:
                sent += await self.send(row, job)
        return sent

    async def send(self, row: OutboxRow, job: JobRecord) -> bool:
        """Deliver one outbox row through the job's reply; True once it is marked sent."""
        if row.id in self._sending or row.id in self._sent:
            return False
        self._sending.add(row.id)
        try:
            reply = self.reply_for(job)
            try:
                match row.kind:
                    case "result":
                        await reply.result(self.job_result(job))
                    case "failure" | "cancelled":
                        await reply.failure(
                            Failure(job_id=job.id, text=str(row.payload.get("text", "")), refunded=True)
                        )
            except asyncio.CancelledError:
                raise  # shutdown: the row stays unsent and the next start sends it
            except Exception as exc:
                _log.warning(
                    "undeliverable %s message for job %s (platform %s, attempt %d): %s: %s",
                    row.kind,
                    job.id,
                    job.actor.platform,
                    row.attempts + 1,
                    type(exc).__name__,
                    exc,
                )
                if self.metrics is not None:
                    self.metrics.outbox_undeliverable_total.labels(kind=row.kind).inc()
                await self.store.mark_attempt(row.id)
                return False
            await self.store.mark_sent(row.id)
            self._sent[row.id] = None
            if len(self._sent) > _SENT_MEMORY:
                self._sent.popitem(last=False)
            if self.metrics is not None:
                self.metrics.outbox_sent_total.labels(kind=row.kind).inc()
            await self._keep_ref(job, reply)
            self.forget(job.id)
            return True
        finally:
            self._sending.discard(row.id)

    # --- results ---------------------------------------------------------------------------

    async def download(self, job: JobRecord, update: JobUpdate) -> StoredResult:
        """Fetch every artifact at once (vendor URLs expire), with a grid for several images.

        Transport trouble (5xx, 429, timeouts) is retried with backoff until the job's
        deadline: the vendor has billed already. Raises JobEndedError when it cannot be done."""
        dest = self.media.files_dir / "jobs" / job.id
        info = ResultInfo(job.spec.prompt, job.spec.negative, job.spec.seed, job.route or "", job.id)
        delay = 0.25
        while True:
            try:
                files = [
                    await self.media.save_result(artifact, dest, f"{job.id}-{i}", metadata=info)
                    for i, artifact in enumerate(update.artifacts)
                ]
                break
            except DownloadError as exc:
                left = (job.deadline or float("inf")) - self._wall()
                if not exc.retryable or left < delay:
                    raise JobEndedError(messages.failed(messages.REASON_DOWNLOAD), str(exc)) from exc
                _log.info("result download retry job=%s in %.2fs: %s", job.id, delay, exc)
                await self._sleep(delay)
                delay = min(_MAX_DOWNLOAD_BACKOFF, delay * 2)
        if not files:
            raise JobEndedError(
                messages.failed(messages.REASON_DOWNLOAD), "the vendor reported success without files"
            )
        try:
            model = await self.media.model_preview(files, dest / f"{job.id}-view")
        except BotError as exc:
            raise JobEndedError(messages.failed(messages.REASON_DOWNLOAD), str(exc)) from exc
        files += [model.thumbnail] if model.thumbnail else []
        images = [f for f in files if f.role == "image"]
        size = job.result.size if job.result else None
        if images and images[0].width and images[0].height:  # vendors may snap to their own sizes
            size = (images[0].width, images[0].height)
        try:
            preview = (
                await self.media.compose_grid(images, dest / f"{job.id}-grid") if len(images) > 1 else None
            )
        except BotError as exc:
            raise JobEndedError(messages.failed(messages.REASON_DOWNLOAD), str(exc)) from exc
        root = self.media.files_dir
        return StoredResult(
            size=size,
            files=[file_to_stored(f, root) for f in files],
            preview=file_to_stored(preview, root) if preview else None,
            faces=model.faces,
        )

    def files(self, job: JobRecord) -> list[OutputFile]:
        """A finished job's files, with fresh links."""
        return [file_from_stored(f, self.media) for f in (job.result.files if job.result else [])]

    def job_result(self, job: JobRecord) -> JobResult:
        """The rendered result message of a finished job."""
        files = self.files(job)
        stored = job.result or StoredResult()
        size: tuple[int, int] = stored.size or (job.spec.width, job.spec.height)
        images = [f for f in files if f.role == "image"]
        return JobResult(
            job_id=job.id,
            kind=job.spec.kind.value,
            text=messages.result_caption(
                job.id,
                job.spec.kind.value,
                job.spec.prompt,
                size,
                job.spec.seed,
                job.cost,
                len(images),
                stored.faces,
            ),
            files=tuple(files),
            preview=file_from_stored(stored.preview, self.media) if stored.preview else None,
            buttons=self.result_buttons(job, len(images)),
        )

    def result_buttons(self, job: JobRecord, images: int, *, index: int | None = None) -> tuple[Button, ...]:
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
        # Variations need the instruction-edit route: without one there is no V button.
        if Kind.EDIT in kinds and images > 1:
            buttons += [Button(ButtonAction.VARY, job.id, messages.vary_label(i), i) for i in range(images)]
        elif Kind.EDIT in kinds and images == 1:
            buttons.append(Button(ButtonAction.VARY, job.id, messages.vary_label(None), index))
        return (*buttons, Button(ButtonAction.DELETE, job.id, "Delete"))
