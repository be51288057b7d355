"""Status that informs (issue 10): a true place in line per job, the credits held from the first
message, the vendor's percent and the route's usual time while a job runs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from bot.commands import ImagineCommand
from bot.reply import JobPhase, Progress
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app


class WatchedReply(RecordingReply):
    """A RecordingReply whose test can wait for a status update of a given phase."""

    def __init__(self) -> None:
        super().__init__()
        self.updated = asyncio.Condition()

    async def progress(self, update: Progress) -> None:
        await super().progress(update)
        async with self.updated:
            self.updated.notify_all()

    async def until_submitted(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.updated:
            await self.updated.wait_for(lambda: _submitted(self))


def _queued(reply: RecordingReply) -> list[str]:
    return [u.text for u in reply.progress_updates if u.phase is JobPhase.QUEUED]


def _submitted(reply: RecordingReply) -> bool:
    return any(u.phase is not JobPhase.QUEUED for u in reply.progress_updates)


async def test_eight_jobs_behind_a_busy_worker_are_told_their_own_place_and_move_up(tmp_path: Path) -> None:
    sandbox = fast_sandbox(["novita"], latency=(30.0, 30.0), timeout_seconds=60.0)
    async with running_app(tmp_path, sandbox, workers=1, max_jobs_per_user=20) as app:
        busy = WatchedReply()
        first = await app.engine.submit(MEMBER, ImagineCommand(prompt="the busy one"), busy)
        await busy.until_submitted()  # the only worker is taken
        replies = [WatchedReply() for _ in range(8)]
        for i, reply in enumerate(replies):
            await app.engine.submit(MEMBER, ImagineCommand(prompt=f"waiting {i}"), reply)

        assert [_queued(r)[0] for r in replies] == [
            f"Queued — {n} in line · 10 credits held."
            for n in ("1st", "2nd", "3rd", "4th", "5th", "6th", "7th", "8th")
        ]

        await app.engine.cancel(MEMBER, first.job_id)  # the worker frees up; the queue moves
        await replies[0].until_submitted()
        assert [_queued(r)[-1] for r in replies[1:]] == [
            f"Queued — {n} in line · 10 credits held."
            for n in ("1st", "2nd", "3rd", "4th", "5th", "6th", "7th")
        ]


async def test_a_cancelled_queued_job_moves_the_jobs_behind_it_up(tmp_path: Path) -> None:
    sandbox = fast_sandbox(["novita"], latency=(30.0, 30.0), timeout_seconds=60.0)
    async with running_app(tmp_path, sandbox, workers=1, max_jobs_per_user=20) as app:
        busy = WatchedReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="the busy one"), busy)
        await busy.until_submitted()
        replies = [WatchedReply() for _ in range(3)]
        tickets = [
            await app.engine.submit(MEMBER, ImagineCommand(prompt=f"w{i}"), r) for i, r in enumerate(replies)
        ]

        await app.engine.cancel(MEMBER, tickets[0].job_id)

        assert [_queued(r)[-1] for r in replies[1:]] == [
            "Queued — 1st in line · 10 credits held.",
            "Queued — 2nd in line · 10 credits held.",
        ]


async def test_the_first_status_states_the_credits_held(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox", count=2), reply)
        assert "20 credits held" in reply.progress_updates[0].text
        assert ticket.text == reply.progress_updates[0].text
        await reply.wait()


async def test_a_running_status_shows_the_vendor_percent_and_the_routes_usual_time(tmp_path: Path) -> None:
    sandbox = fast_sandbox(["novita"], latency=(1.0, 1.0))
    async with running_app(tmp_path, sandbox) as app:
        app.engine.route_times.restore({r.key: [0.9] * 20 + [2.6] * 19 for r in app.engine.catalog.routes})
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()

        running = [u for u in reply.progress_updates if u.phase is JobPhase.RUNNING]
        assert running, reply.progress_updates
        assert all(
            re.fullmatch(r"Generating… \d+% \(\d+ s, usually ~1 s\) · 10 credits held", u.text)
            for u in running
        )
        assert any(u.percent for u in running)


async def test_a_route_without_history_promises_no_usual_time(tmp_path: Path) -> None:
    sandbox = fast_sandbox(["novita"], latency=(0.5, 0.5))
    async with running_app(tmp_path, sandbox) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()

        running = [u.text for u in reply.progress_updates if u.phase is JobPhase.RUNNING]
        assert running and not any("usually" in t for t in running)
