"""The scheduler: one due-time heap for every followed job, no sleeping task per job."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable

from bot.scheduler import Scheduler, Slots, Throttle


async def _nothing(_job_id: str) -> None:
    return None


async def _none() -> str | None:
    return None


def _queue(*ids: str) -> tuple[deque[str], Callable[[], Awaitable[str | None]]]:
    """A stand-in for the database's queue: `take` pops the oldest id."""
    waiting = deque(ids)

    async def take() -> str | None:
        return waiting.popleft() if waiting else None

    return waiting, take


async def test_a_thousand_waiting_jobs_cost_no_task_each_and_each_step_runs_once() -> None:
    loop = asyncio.get_running_loop()
    ran: Counter[str] = Counter()

    async def step(job_id: str) -> None:
        ran[job_id] += 1

    scheduler = Scheduler(workers=4, steps=16, clock=loop.time, take=_none, claim=_nothing, step=step)
    runner = asyncio.create_task(scheduler.run())
    try:
        for i in range(1000):
            scheduler.schedule(f"j{i}", 0.2 + (i % 10) / 100)
        await asyncio.sleep(0.05)
        assert scheduler.followed == 1000
        assert len(asyncio.all_tasks()) < 4  # the scheduler, this test
        await scheduler.drain()
        assert ran == Counter({f"j{i}": 1 for i in range(1000)})
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_idle_workers_cost_no_task_each() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(
        workers=10_000, steps=16, clock=loop.time, take=_none, claim=_nothing, step=_nothing
    )
    runner = asyncio.create_task(scheduler.run())
    try:
        await asyncio.sleep(0.01)
        assert len(asyncio.all_tasks()) == 2  # the scheduler, this test
        assert scheduler.free_workers == 10_000
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_burst_of_queued_jobs_starts_no_more_claims_than_there_are_step_slots() -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    claimed: list[str] = []

    async def claim(job_id: str) -> None:
        await gate.wait()  # every claim is busy at the vendor
        claimed.append(job_id)

    waiting, take = _queue(*(f"j{i}" for i in range(10_000)))
    scheduler = Scheduler(workers=10_000, steps=16, clock=loop.time, take=take, claim=claim, step=_nothing)
    runner = asyncio.create_task(scheduler.run())
    try:
        for _ in range(10_000):
            scheduler.enqueue()
        await asyncio.sleep(0.05)
        # A claim past the slots could only wait for one: it stays a permit, not a task.
        assert len(asyncio.all_tasks()) == 2 + 16
        assert scheduler.pending == 10_000 - 16
        gate.set()
        await asyncio.wait_for(scheduler.drain(), 30)
        assert len(claimed) == 10_000 and not waiting
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_wake_replaces_the_schedule_and_forget_drops_it() -> None:
    loop = asyncio.get_running_loop()
    ran: list[tuple[str, float]] = []

    async def step(job_id: str) -> None:
        ran.append((job_id, loop.time()))

    scheduler = Scheduler(workers=1, steps=4, clock=loop.time, take=_none, claim=_nothing, step=step)
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

    waiting, take = _queue(*(f"j{i}" for i in range(4)))
    scheduler = Scheduler(workers=2, steps=4, clock=loop.time, take=take, claim=claim, step=_nothing)
    runner = asyncio.create_task(scheduler.run())
    try:
        for _ in range(4):
            scheduler.enqueue()
        await asyncio.sleep(0.05)
        assert claimed == ["j0", "j1"] and list(waiting) == ["j2", "j3"]
        scheduler.forget("j0")  # it ended: its slot goes to the next queued job
        await asyncio.sleep(0.05)
        assert claimed == ["j0", "j1", "j2"]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_a_permit_that_finds_no_queued_job_frees_its_worker_and_lets_drain_end() -> None:
    loop = asyncio.get_running_loop()
    claimed: list[str] = []

    async def claim(job_id: str) -> None:
        claimed.append(job_id)

    # Three permits, one job: another replica took the other two first.
    _, take = _queue("j0")
    scheduler = Scheduler(workers=1, steps=4, clock=loop.time, take=take, claim=claim, step=_nothing)
    runner = asyncio.create_task(scheduler.run())
    try:
        for _ in range(3):
            scheduler.enqueue()
        await asyncio.wait_for(scheduler.drain(), 5)
        assert claimed == ["j0"] and scheduler.pending == 0 and not scheduler.busy()
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def test_want_tops_the_permits_up_to_what_the_database_counts() -> None:
    scheduler = Scheduler(workers=1, steps=1, clock=lambda: 0.0, take=_none, claim=_nothing, step=_nothing)
    scheduler.enqueue()
    scheduler.want(3)
    assert scheduler.pending == 3
    scheduler.want(1)  # fewer than are out: nothing taken back
    assert scheduler.pending == 3


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

    _, take = _queue(*(f"j{i}" for i in range(100)))
    scheduler = Scheduler(workers=100, steps=8, clock=loop.time, take=take, claim=claim, step=_nothing)
    task = asyncio.create_task(scheduler.run())
    try:
        for _ in range(100):
            scheduler.enqueue()
        await scheduler.drain()
        assert peak == 8
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_freed_slot_goes_to_a_waiting_step_before_a_waiting_claim() -> None:
    slots = Slots(1)
    order: list[str] = []
    held = asyncio.Event()

    async def use(name: str, *, step: bool) -> None:
        async with slots(step=step):
            order.append(name)
            if name == "first":
                await held.wait()

    first = asyncio.create_task(use("first", step=False))
    await asyncio.sleep(0)
    claim = asyncio.create_task(use("claim", step=False))  # waiting since before the step
    await asyncio.sleep(0)
    gone = asyncio.create_task(use("cancelled step", step=True))
    await asyncio.sleep(0)
    gone.cancel()
    poll = asyncio.create_task(use("poll", step=True))
    await asyncio.sleep(0)
    held.set()
    await asyncio.gather(first, claim, poll)
    assert order == ["first", "poll", "claim"]

    async def again() -> None:
        async with slots(step=False):
            pass

    await asyncio.wait_for(again(), 1.0)  # the one slot came back (a leak would hang here)
