"""The job state machine's races and crash windows (issue 9), each driven deterministically:
a hook runs a Cancel at an exact step, a Reply blocks mid-delivery, or the emulator injects
one fault at one stage. Every test checks the ledger, the job row and what the user was told."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.commands import ImagineCommand
from bot.errors import UserError
from bot.reply import JobPhase, JobResult
from bot.store import OutboxRow
from providers.sandbox.common import Fault
from tests.support.core import MEMBER, RecordingReply, RecordingRestorer, fast_sandbox, running_app


async def _balance(app: Any) -> int:
    return int((await app.ledger.account(MEMBER.tenant, MEMBER.user_id)).balance)


def _after(obj: Any, names: tuple[str, ...], hook: Callable[[Any], Awaitable[None]], *, worker: bool) -> None:
    """Run `hook(first argument)` once, right after the first call of any of `obj`'s methods
    `names`; with `worker`, only for calls the engine's own tasks make about a job id."""
    fired = False
    for name in names:
        original = getattr(obj, name, None)
        if original is None:
            continue

        async def hooked(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            nonlocal fired
            out = await _original(*args, **kwargs)
            task = asyncio.current_task()
            in_worker = task is not None and task.get_name().startswith("engine-")
            about_job = bool(args) and isinstance(args[0], str)
            if not fired and args and (not worker or (in_worker and about_job)):
                fired = True
                await hook(args[0])
            return out

        setattr(obj, name, hooked)


async def test_a_cancel_just_after_the_worker_took_the_job_stops_it(db_url: str, tmp_path: Path) -> None:
    """Defect 1: the worker must not submit and deliver a job cancelled after it took it."""
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        answers: list[str] = []

        async def cancel(job_id: str) -> None:
            answers.append(await app.engine.cancel(MEMBER, job_id))

        claim_next = app.engine.store.claim_next

        async def claimed_then_cancelled(*args: Any, **kwargs: Any) -> Any:
            job = await claim_next(*args, **kwargs)
            if job is not None and not answers:
                await cancel(job.id)  # the worker holds the claimed record now
            return job

        app.engine.store.claim_next = claimed_then_cancelled  # type: ignore[method-assign]
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        await app.engine.drain()
        assert answers and answers[0].startswith("Cancelled")
        assert reply.results == []
        assert [f.text for f in reply.failures] == [answers[0]]
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.CANCELLED
        assert await _balance(app) == 100
        assert await app.ledger.check_invariants() == []


async def test_a_cancel_after_the_charge_is_too_late_and_the_result_still_arrives(
    db_url: str, tmp_path: Path
) -> None:
    """Defect 2: once the job is charged, a Cancel changes nothing and says so."""
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        answers: list[str] = []

        async def cancel(job_id: str) -> None:
            try:
                answers.append(await app.engine.cancel(MEMBER, job_id))
            except UserError as exc:
                answers.append(str(exc))

        # The moment the credits are kept: the ledger's settle, or the store's done transition.
        _after(app.ledger, ("settle",), cancel, worker=True)
        _after(app.engine.store, ("done",), cancel, worker=True)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        await app.engine.drain()
        assert len(answers) == 1 and "too late" in answers[0].lower()
        assert reply.failures == []
        assert len(reply.results) == 1 and reply.results[0].files
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.DONE
        assert await _balance(app) == 90
        assert await app.ledger.check_invariants() == []


async def test_a_cancel_while_the_result_downloads_refunds_and_delivers_nothing(
    db_url: str, tmp_path: Path
) -> None:
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        answers: list[str] = []

        async def cancel(job_id: str) -> None:
            answers.append(await app.engine.cancel(MEMBER, job_id))

        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        _after(app.media, ("save_result",), lambda _path: cancel(ticket.job_id), worker=False)
        await reply.wait()
        await app.engine.drain()
        assert answers and answers[0].startswith("Cancelled")
        assert reply.results == [] and len(reply.failures) == 1
        assert await _balance(app) == 100
        assert await app.ledger.check_invariants() == []


class _StallingReply(RecordingReply):
    """Delivers progress, then hangs in `result` as an upload cut off by a shutdown would."""

    def __init__(self) -> None:
        super().__init__()
        self.sending = asyncio.Event()

    async def result(self, result: JobResult) -> None:
        self.sending.set()
        await asyncio.Event().wait()


async def test_a_shutdown_during_the_upload_delivers_the_result_after_restart(
    db_url: str, tmp_path: Path
) -> None:
    """Defect 3: a charged job whose upload was cut off is delivered by the next process."""
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        stalling = _StallingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), stalling)
        await asyncio.wait_for(stalling.sending.wait(), 20)
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        restorer = RecordingRestorer()
        app.engine.register_restorer("console", restorer)
        await app.engine.resume()
        await app.engine.drain()
        results = [r for reply in restorer.replies for r in reply.results]
        assert [r.job_id for r in results] == [ticket.job_id]
        assert results[0].files and results[0].files[0].path.exists()
        assert await _balance(app) == 90
        assert await app.ledger.check_invariants() == []


async def test_a_hold_left_without_a_job_by_a_crash_is_released_at_the_next_start(
    db_url: str, tmp_path: Path
) -> None:
    """Defect 4: a crash between hold and insert must not keep the credits."""
    async with running_app(tmp_path, database_url=db_url) as app:
        # What a process killed between the two writes of an admission left behind.
        await app.ledger.hold(MEMBER.tenant, MEMBER.user_id, "0123456789", 10, kind="image")
    async with running_app(tmp_path, database_url=db_url) as app:
        assert await app.ledger.hold_state("0123456789") == "released"
        assert await _balance(app) == 100
        assert await app.ledger.check_invariants() == []


@pytest.mark.parametrize(
    ("fault", "stage"),
    [
        (Fault.SERVER_ERROR, "file"),
        (Fault.RATE_LIMIT, "file"),
        (Fault.SERVER_ERROR, "poll"),
        (Fault.AUTH, "poll"),
        (Fault.FUNDS, "poll"),
        (Fault.REJECT, "poll"),
    ],
)
async def test_one_transient_error_while_following_a_job_does_not_fail_it(
    db_url: str, tmp_path: Path, fault: Fault, stage: str
) -> None:
    """Defect 5: the vendor usually billed already; one bad answer is retried, not fatal."""
    sandbox = fast_sandbox()
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone") as app:
        sandbox["apiinone"].inject(fault, 1, stage=stage, retry_after=0.1)
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert [f.text for f in reply.failures] == []
        assert len(reply.results) == 1
        assert await _balance(app) == 90
        assert await app.ledger.check_invariants() == []


async def test_an_auth_error_while_polling_marks_the_route_unhealthy(db_url: str, tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, database_url=db_url, sandbox=sandbox, route_order="apiinone") as app:
        sandbox["apiinone"].inject(Fault.AUTH, 1, stage="poll")
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.results
        assert app.router.health()["apiinone:hunyuan-image-3"] != "closed"


async def test_a_held_database_lock_is_a_friendly_message_not_database_is_locked(tmp_path: Path) -> None:
    """Defect 6: another writer holding the lock must not leak sqlite's error to a user."""
    async with running_app(tmp_path) as app:
        app.db.lock_wait = 0.5  # how long a transaction waits for the write lock before giving up
        other = sqlite3.connect(app.settings.db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(UserError) as refused:
                await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), RecordingReply())
            assert "locked" not in str(refused.value).lower()
            assert "try again" in str(refused.value).lower()
        finally:
            other.rollback()
            other.close()
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.results
        assert await _balance(app) == 90


class _RefusedReply(RecordingReply):
    """A chat that refuses the result on every route the adapter has (channel gone, DMs shut)."""

    async def result(self, result: JobResult) -> None:
        raise RuntimeError("channel deleted and DMs closed")


async def test_a_result_no_route_can_deliver_is_logged_counted_and_kept_for_the_next_start(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), _RefusedReply())
        await app.engine.drain()
        warnings = [r.getMessage() for r in caplog.records if "undeliverable" in r.getMessage()]
        assert len(warnings) == 1 and ticket.job_id in warnings[0]
        sample = app.metrics.registry.get_sample_value(
            "imagine_outbox_undeliverable_total", {"kind": "result"}
        )
        assert sample == 1
        assert [r.job_id for r in await app.engine.store.unsent()] == [ticket.job_id]
        assert await _balance(app) == 90  # the work was done and is paid for; the files wait
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        restorer = RecordingRestorer()
        app.engine.register_restorer("console", restorer)
        await app.engine.resume()
        assert [r.job_id for reply in restorer.replies for r in reply.results] == [ticket.job_id]
        assert await app.engine.store.unsent() == []


async def test_the_learned_poll_schedule_survives_a_restart(db_url: str, tmp_path: Path) -> None:
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        replies = [RecordingReply() for _ in range(2)]
        for reply in replies:
            await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await app.engine.drain()
        learned = app.engine.route_times.snapshot()
        assert len(learned["apiinone:hunyuan-image-3"]) == 2
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        assert app.engine.route_times.snapshot() == learned


async def test_a_stale_list_of_unsent_messages_does_not_tell_the_user_twice(
    db_url: str, tmp_path: Path
) -> None:
    """The start-up flush reads the unsent rows, then a job among them ends and is delivered
    meanwhile: the flush must not send that row again (found by the chaos test)."""
    async with running_app(tmp_path, database_url=db_url, route_order="apiinone") as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        await app.engine.drain()
        row = await app.db.fetchrow("SELECT id FROM outbox WHERE job_id = $1", ticket.job_id)
        assert row is not None
        stale = OutboxRow(id=row["id"], job_id=ticket.job_id, kind="result", payload={}, attempts=0)
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None
        app.engine.delivery.attach(job.id, reply)
        assert not await app.engine.delivery.send(stale, job)
        assert len(reply.results) == 1
