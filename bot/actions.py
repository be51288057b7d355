"""Result actions: the buttons under a finished job (Reroll, Edit, Make 3D, U1…U4) and /show.

The paid ones start a new job through admission with the finished job as its parent; a
double click starts one job, not two.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bot import messages
from bot.admission import Admission
from bot.catalog import Catalog
from bot.commands import Actor, EditCommand, ImageRef, Model3DCommand
from bot.delivery import Delivery
from bot.errors import InvalidInputError, NotFoundError, UserError
from bot.jobs import Ticket
from bot.jobstore import JobRecord, JobStorePort
from bot.keyedlock import KeyedLock
from bot.params import parse_edit, parse_model3d, random_seed
from bot.policy import check_job_id
from bot.reply import JobPhase, JobResult, OutputFile, Reply
from providers.base import Kind

__all__ = ["ResultActions"]


class ResultActions:
    """What a finished job's buttons and /show do."""

    def __init__(
        self, *, store: JobStorePort, catalog: Catalog, admission: Admission, delivery: Delivery
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.admission = admission
        self.delivery = delivery
        self._click_locks: KeyedLock[tuple[str, str, str]] = KeyedLock()

    async def own_job(self, actor: Actor, job_id: str, *, spending: bool = True) -> JobRecord:
        """The job, if the actor may see it (and spend on it: owner or moderator)."""
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
        async with self._click_locks((parent.id, actor.user_id, kind.value)):
            if await self.store.active_child(parent.id, actor.user_id, kind.value):
                raise UserError(messages.already_running())
            yield

    async def reroll(
        self, actor: Actor, job_id: str, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """Same parameters as `job_id`, a new seed. Owner or moderator only."""
        parent = await self.own_job(actor, job_id)
        spec = parent.spec.model_copy(update={"seed": random_seed()})
        async with self._one_click(parent, actor, parent.spec.kind):
            return await self.admission.admit(
                actor, spec, reply, request_key=request_key, parent_id=parent.id
            )

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
        parent = await self.own_job(actor, job_id)
        image = self._result_image(parent, index)
        ref = ImageRef(path=str(image.path))
        spec = parse_edit(EditCommand(image=ref, instruction=instruction), self.catalog)
        async with self._one_click(parent, actor, Kind.EDIT):
            return await self.admission.admit(
                actor, spec, reply, image=ref, request_key=request_key, parent_id=parent.id
            )

    async def make_3d(
        self, actor: Actor, job_id: str, index: int | None, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """Image → 3D from image `index` (default 0) of a finished job."""
        parent = await self.own_job(actor, job_id)
        image = self._result_image(parent, index)
        ref = ImageRef(path=str(image.path))
        spec = parse_model3d(Model3DCommand(image=ref), self.catalog)
        async with self._one_click(parent, actor, Kind.MODEL3D):
            return await self.admission.admit(
                actor, spec, reply, image=ref, request_key=request_key, parent_id=parent.id
            )

    async def vary(
        self, actor: Actor, job_id: str, index: int | None, reply: Reply, *, request_key: str | None = None
    ) -> Ticket:
        """A variation of image `index` (default 0): an instruction edit from that image, asking
        for a variation of the original prompt, so it costs what an edit costs."""
        parent = await self.own_job(actor, job_id)
        limit = self.catalog.limits(Kind.EDIT).max_prompt
        instruction = messages.variation_instruction(parent.spec.prompt, limit)
        return await self.edit_result(actor, job_id, index, instruction, reply, request_key=request_key)

    def _result_image(self, job: JobRecord, index: int | None) -> OutputFile:
        images = [f for f in self.delivery.files(job) if f.role == "image"]
        if job.state is not JobPhase.DONE or not images:
            raise InvalidInputError(messages.no_finished_image())
        i = index or 0
        if not 0 <= i < len(images):
            raise InvalidInputError(messages.image_index_out_of_range(len(images)))
        return images[i]

    async def single(self, actor: Actor, job_id: str, index: int) -> JobResult:
        """One image of a finished multi-image job, alone at full size (costs nothing)."""
        job = await self.own_job(actor, job_id, spending=False)
        image = self._result_image(job, index)
        return JobResult(
            job_id=job.id,
            kind=job.spec.kind.value,
            text=messages.single_caption(job.id, index, job.spec.prompt),
            files=(image,),
            buttons=self.delivery.result_buttons(job, 1, index=index),
        )

    async def may_delete(self, actor: Actor, job_id: str) -> None:
        """Raise a UserError unless `actor` may delete the messages of `job_id`'s result:
        its requester, or a moderator of its server."""
        job = await self.own_job(actor, job_id, spending=False)
        if job.actor.user_id != actor.user_id and not actor.is_moderator:
            raise UserError(messages.not_yours_to_delete())

    async def show(self, actor: Actor, job_id: str) -> JobResult:
        """A finished job's result again, with its buttons (like Midjourney's /show)."""
        job = await self.own_job(actor, job_id, spending=False)
        if job.state is not JobPhase.DONE or not job.result or not job.result.files:
            raise InvalidInputError(messages.not_finished(job.id, job.state.value))
        return self.delivery.job_result(job)
