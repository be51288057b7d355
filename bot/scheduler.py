"""When each job's next step runs: claims of queued jobs while a worker is free, and one
due-time heap for every followed job's next poll (or its webhook wake-up) — never one sleeping
task per job or per idle worker.

The queue itself is the database's (every replica's queued jobs, oldest first): the scheduler
only counts *permits*, one per job it has heard is waiting (admitted here, announced by another
replica, found by the periodic sweep). A permit and a free worker start a short claim task that
asks `take()` for the oldest queued job; a permit that finds nothing (another replica was
quicker) is simply used up.

`workers` bounds the jobs in flight: a worker claims a queued job only while fewer than
`workers` claimed jobs are unfinished (a slot is freed when the job is forgotten), so the
queue position a user is shown means something. Claims and steps together run at most
`steps` at once.

The scheduler knows job ids and times only; what a step does is the runner's. A step runs in a
short task of its own (bounded by `steps` at once); a job has at most one step running, and a
wake-up that lands meanwhile runs it again right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

__all__ = ["Scheduler", "Slots", "Throttle"]

_log = logging.getLogger(__name__)

Step = Callable[[str], Awaitable[None]]
Take = Callable[[], Awaitable[str | None]]


class Slots:
    """`n` slots shared by the steps of followed jobs and the claims of new ones. A freed slot
    goes to a waiting step before a waiting claim: in a burst the polls and downloads of jobs
    the vendors are already working on go first, and new submits fill what is left (a job not
    yet submitted keeps no one waiting for a result that exists)."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._steps: deque[asyncio.Future[None]] = deque()
        self._claims: deque[asyncio.Future[None]] = deque()

    @contextlib.asynccontextmanager
    async def __call__(self, *, step: bool) -> AsyncIterator[None]:
        """Hold one slot for the block (`step`: a followed job's step, else a claim)."""
        await self._acquire(step)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, step: bool) -> None:
        if self._free > 0 and not self._steps and (step or not self._claims):
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._steps if step else self._claims).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot in the same moment it was cancelled: pass it on
            raise  # a cancelled waiter left in the line is skipped by `_release`

    def _release(self) -> None:
        for line in (self._steps, self._claims):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


class Throttle:
    """Runs `fn` at most once per `every` seconds: at once when it is due, else once at the end
    of the interval for every call that came in between (a burst of calls costs one run).

    `every` is counted from the end of the previous run, so what that run stamped (a status
    edit's time, for the progress throttle) is `every` old when the next one starts.
    """

    def __init__(
        self,
        fn: Callable[[], Awaitable[None]],
        every: float,
        clock: Callable[[], float],
    ) -> None:
        self._fn = fn
        self._every = every
        self._clock = clock
        self._last: float | None = None
        self._running = False
        self._idle = asyncio.Event()
        self._later: asyncio.Task[None] | None = None

    async def __call__(self) -> None:
        """Run now if due and idle, else make sure one run follows."""
        if self._later is not None:
            return  # a run is already planned: it sees this call's change too
        if not self._running and self._left() <= 0:
            await self._run()
            return
        self._later = asyncio.get_running_loop().create_task(self._run_later(), name="throttled")

    def _left(self) -> float:
        return 0.0 if self._last is None else self._last + self._every - self._clock()

    async def _run(self) -> None:
        self._running = True
        self._idle.clear()
        try:
            await self._fn()
        except Exception:  # a status refresh must never break the step that asked for it
            _log.exception("throttled call failed")
        finally:
            self._running = False
            self._last = self._clock()
            self._idle.set()

    async def _run_later(self) -> None:
        while self._running or self._left() > 0:
            if self._running:
                await self._idle.wait()
            else:
                await asyncio.sleep(self._left())
        self._later = None
        await self._run()

    async def stop(self) -> None:
        """Cancel a planned run (shutdown)."""
        if self._later is not None:
            self._later.cancel()
            await asyncio.gather(self._later, return_exceptions=True)
            self._later = None


class Scheduler:
    """Claims that `take()` a queued job and run `claim(job_id)` on it (the submit) while a
    worker is free, and `step(job_id)` when a followed job is due."""

    def __init__(
        self,
        *,
        workers: int,
        steps: int,
        clock: Callable[[], float],
        take: Take,
        claim: Step,
        step: Step,
    ) -> None:
        self._workers = workers
        self._clock = clock
        self._take = take
        self._claim = claim
        self._step = step
        self._pending = 0  # permits (one per job heard to be waiting) no claim has taken yet
        self._starting = 0  # claims that hold a worker but no job yet
        self._claims: set[asyncio.Task[None]] = set()
        self._held: set[str] = set()  # jobs holding a worker until they are forgotten
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, int]] = {}  # the live entry per job; others are stale
        self._seq = itertools.count()
        # One loop timer for the earliest entry of the heap (no task wakes up to find nothing due).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._slots = Slots(steps)
        self._most_claims = steps  # a claim holds a slot: one more could only wait for one
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._throttles: list[Throttle] = []

    async def run(self) -> None:
        """The claims and the due-time timer, until cancelled (in-flight steps are the caller's)."""
        self._loop = asyncio.get_running_loop()
        self._arm()
        self._pump()
        try:
            await self._loop.create_future()  # everything runs from callbacks and short tasks
        finally:
            claims = list(self._claims)
            for task in claims:
                task.cancel()
            await asyncio.gather(*claims, return_exceptions=True)
            if self._timer is not None:
                self._timer.cancel()
            self._loop, self._timer, self._timer_at = None, None, float("inf")

    def throttle(self, fn: Callable[[], Awaitable[None]], every: float) -> Throttle:
        """`fn` behind a `Throttle` on this scheduler's clock, stopped with the scheduler."""
        throttle = Throttle(fn, every, self._clock)
        self._throttles.append(throttle)
        return throttle

    # --- queued jobs -----------------------------------------------------------------------

    def enqueue(self) -> None:
        """One more job waits in the database: a worker will claim one."""
        self._pending += 1
        self._pump()

    def want(self, waiting: int) -> None:
        """`waiting` jobs wait in the database (a sweep counted them): make sure as many
        permits are out, so none waits for an admission this process never heard of."""
        for _ in range(waiting - self._pending):
            self.enqueue()

    @property
    def free_workers(self) -> int:
        """Workers not holding a job: queued jobs they will take at once are not waiting."""
        return max(0, self._workers - len(self._held))

    @property
    def pending(self) -> int:
        """Permits no worker has taken yet (an upper bound of the jobs this process will claim)."""
        return self._pending

    def _pump(self) -> None:
        """Start a claim for every permit while a worker and a step slot are free (a worker is a
        slot, not a task: 10,000 workers cost nothing while they have nothing to do, and a burst
        of 10,000 queued jobs costs permits, not tasks waiting for a slot)."""
        if self._loop is None:
            return  # not running yet: run() pumps
        while (
            self._pending > 0
            and self._starting + len(self._held) < self._workers
            and len(self._claims) < self._most_claims
        ):
            self._pending -= 1
            self._starting += 1
            task = self._loop.create_task(self._claim_one(), name="engine-claim")
            self._claims.add(task)
            task.add_done_callback(self._claimed)

    def _claimed(self, task: asyncio.Task[None]) -> None:
        self._claims.discard(task)
        self._pump()  # its slot (and, when it found nothing or the job ended, its worker) is free

    async def _claim_one(self) -> None:
        job_id: str | None = None
        starting = True
        try:
            # A claim (its transitions and the vendor submit) is a step like any other: with
            # thousands of workers, unbounded claims would queue thousands of transactions at
            # once behind the database.
            async with self._slots(step=False):
                job_id = await self._take()
                starting = False
                self._starting -= 1
                if job_id is not None:
                    self._held.add(job_id)  # no await since the take: nothing forgot it yet
                    await self._claim(job_id)
        except Exception:  # a bug in one job must not stop the others
            _log.exception("claiming job %s failed", job_id)
        finally:
            if starting:
                self._starting -= 1
            if job_id is not None and job_id not in self._due and job_id not in self._running:
                self._free(job_id)  # not followed: ended, lost a race, or never submitted

    def _free(self, job_id: str) -> None:
        if job_id in self._held:
            self._held.discard(job_id)
            self._pump()

    # --- followed jobs ---------------------------------------------------------------------

    def schedule(self, job_id: str, delay: float) -> None:
        """Run the job's next step in `delay` seconds (replacing an earlier schedule)."""
        due = self._clock() + max(0.0, delay)
        entry = (due, next(self._seq))
        self._due[job_id] = entry
        heapq.heappush(self._heap, (entry[0], entry[1], job_id))
        if due < self._timer_at:
            self._arm()

    def wake(self, job_id: str) -> None:
        """Run the job's next step now (a webhook arrived, a synchronous vendor answered)."""
        self.schedule(job_id, 0.0)

    def forget(self, job_id: str) -> None:
        """The job ended: drop it from the heap and free its slot."""
        self._due.pop(job_id, None)
        self._again.discard(job_id)
        self._free(job_id)

    @property
    def followed(self) -> int:
        """Jobs waiting for a step or running one."""
        return len(self._due.keys() | self._running.keys())

    def busy(self) -> bool:
        """Whether any permit is out, or anything is being claimed, due or running."""
        return bool(self._pending or self._claims or self._due or self._running)

    def _arm(self) -> None:
        """Set the loop timer for the earliest heap entry (replacing a later one)."""
        if self._loop is None:
            return  # not running yet: run() arms it
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = self._heap[0][0] if self._heap else float("inf")
        if self._heap:
            self._timer = self._loop.call_later(max(0.0, self._timer_at - self._clock()), self._fire)

    def _fire(self) -> None:
        """The timer: start every step that is due, then arm for the next one."""
        self._timer, self._timer_at = None, float("inf")
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, seq, job_id = heapq.heappop(heap)
            if self._due.get(job_id) != (due, seq):
                continue  # replaced or forgotten
            del self._due[job_id]
            if job_id in self._running:
                self._again.add(job_id)
            else:
                self._start(job_id)
        self._arm()

    def _start(self, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run_step(job_id), name=f"engine-job-{job_id}")
        self._running[job_id] = task

        def done(_task: asyncio.Task[None]) -> None:
            self._running.pop(job_id, None)
            if job_id in self._again:
                self._again.discard(job_id)
                self.wake(job_id)

        task.add_done_callback(done)

    async def _run_step(self, job_id: str) -> None:
        async with self._slots(step=True):
            try:
                await self._step(job_id)
            except Exception:
                _log.exception("step of job %s failed", job_id)

    async def stop(self) -> None:
        """Cancel every running step and wait for it (jobs stay in the database)."""
        for throttle in self._throttles:
            await throttle.stop()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until nothing is queued, due or running."""
        while self.busy():
            tasks = list(self._running.values())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0.02)
