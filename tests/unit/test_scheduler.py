"""The scheduler: one due-time heap for every followed job, no sleeping task per job."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bot.scheduler import JobQueue, Scheduler, Throttle


async def _nothing(_job_id: str) -> None:
    return None


async def test_a_thousand_waiting_jobs_cost_no_task_each_and_each_step_runs_once() -> None:
    loop = asyncio.get_running_loop()
    ran: Counter[str] = Counter()

    async def step(job_id: str) -> None:
        ran[job_id] += 1

    scheduler = Scheduler(workers=4, steps=16, clock=loop.time, claim=_nothing, step=step)
    runner = asyncio.create_task(scheduler.run())
    try:
        for i in range(1000):
            scheduler.schedule(f"j{i}", 0.2 + (i % 10) / 100)
        await asyncio.sleep(0.05)
        assert scheduler.followed == 1000
        assert len(asyncio.all_tasks()) < 20  # the workers, the timer loop, this test
        await scheduler.drain()
        assert ran == Counter({f"j{i}": 1 for i in range(1000)})
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_wake_replaces_the_schedule_and_forget_drops_it() -> None:
    loop = asyncio.get_running_loop()
    ran: list[tuple[str, float]] = []

    async def step(job_id: str) -> None:
        ran.append((job_id, loop.time()))

    scheduler = Scheduler(workers=1, steps=4, clock=loop.time, claim=_nothing, step=step)
    runner = asyncio.create_task(scheduler.run())
    try:
        start = loop.time()
        scheduler.schedule("webhooked", 30.0)
        scheduler.schedule("ended", 0.05)
        scheduler.wake("webhooked")
        scheduler.forget("ended")
        await scheduler.drain()
        assert [job for job, _ in ran] == ["webhooked"]
        assert ran[0][1] - start < 1.0
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_workers_bound_the_jobs_in_flight() -> None:
    loop = asyncio.get_running_loop()
    claimed: list[str] = []
    scheduler: Scheduler

    async def claim(job_id: str) -> None:
        claimed.append(job_id)
        scheduler.schedule(job_id, 3600.0)  # followed: it keeps its worker slot

    scheduler = Scheduler(workers=2, steps=4, clock=loop.time, claim=claim, step=_nothing)
    runner = asyncio.create_task(scheduler.run())
    try:
        for i in range(4):
            scheduler.enqueue(f"j{i}")
        await asyncio.sleep(0.05)
        assert claimed == ["j0", "j1"] and scheduler.position("j2") == 1
        scheduler.forget("j0")  # it ended: its slot goes to the next queued job
        await asyncio.sleep(0.05)
        assert claimed == ["j0", "j1", "j2"]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_the_job_queue_drops_ids_without_scanning_and_keeps_order() -> None:
    queue = JobQueue()
    for i in range(5):
        queue.append(f"j{i}")
    queue.remove("j1")
    queue.remove("j3")
    queue.remove("nope")
    assert len(queue) == 3 and "j1" not in queue and "j2" in queue
    assert queue.index("j4") == 2
    with pytest.raises(ValueError):
        queue.index("j1")
    assert [queue.popleft() for _ in range(3)] == ["j0", "j2", "j4"]
    assert not queue
    with pytest.raises(IndexError):
        queue.popleft()


async def test_a_throttle_runs_at_once_when_due_and_once_for_a_burst_of_calls() -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []

    async def refresh() -> None:
        runs.append(loop.time())

    throttle = Throttle(refresh, 0.2, loop.time)
    start = loop.time()
    await throttle()  # due: runs now, inside the call
    assert len(runs) == 1
    for _ in range(100):  # a burst inside the interval: one more run, at its end
        await throttle()
    assert len(runs) == 1
    await asyncio.sleep(0.35)
    assert len(runs) == 2 and runs[1] - start >= 0.2
    await asyncio.sleep(0.3)
    assert len(runs) == 2  # nothing asked meanwhile: nothing ran
    await throttle.stop()


async def test_a_stopped_throttle_runs_nothing_later() -> None:
    loop = asyncio.get_running_loop()
    runs: list[float] = []

    async def refresh() -> None:
        runs.append(loop.time())

    throttle = Throttle(refresh, 0.1, loop.time)
    await throttle()
    await throttle()
    await throttle.stop()
    await asyncio.sleep(0.2)
    assert len(runs) == 1


async def test_claims_run_at_most_steps_at_once_however_many_workers() -> None:
    loop = asyncio.get_running_loop()
    running = peak = 0
    scheduler: Scheduler

    async def claim(job_id: str) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    scheduler = Scheduler(workers=100, steps=8, clock=loop.time, claim=claim, step=_nothing)
    task = asyncio.create_task(scheduler.run())
    try:
        for i in range(100):
            scheduler.enqueue(f"j{i}")
        await scheduler.drain()
        assert peak == 8
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
