"""When each job's next step runs: a FIFO of queued jobs for the workers, and one due-time heap
for every followed job's next poll (or its webhook wake-up) — never one sleeping task per job.

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
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["JobQueue", "Scheduler", "Throttle"]

_log = logging.getLogger(__name__)

Step = Callable[[str], Awaitable[None]]


class JobQueue:
    """Queued job ids, oldest first: append, take the oldest and drop any id in O(1).

    A dropped id stays in the deque as a blank that `popleft` skips, so a Cancel or an ending
    never scans a long queue; `len` counts the live ids only.
    """

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._live: set[str] = set()

    def __len__(self) -> int:
        return len(self._live)

    def __bool__(self) -> bool:
        return bool(self._live)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._live

    def append(self, job_id: str) -> None:
        """Queue `job_id` last (a second append of a live id is ignored)."""
        if job_id not in self._live:
            self._live.add(job_id)
            self._order.append(job_id)

    def popleft(self) -> str:
        """Take the oldest live id; IndexError when none is left."""
        while True:
            job_id = self._order.popleft()
            if job_id in self._live:
                self._live.discard(job_id)
                return job_id

    def remove(self, job_id: str) -> None:
        """Drop `job_id` if queued (the blank it leaves is skipped later)."""
        self._live.discard(job_id)
        if not self._live:
            self._order.clear()

    def index(self, job_id: str) -> int:
        """0-based place among the live ids; ValueError when not queued (a scan: tickets only)."""
        if job_id not in self._live:
            raise ValueError(job_id)
        place = 0
        for queued in self._order:
            if queued == job_id:
                return place
            if queued in self._live:
                place += 1
        raise ValueError(job_id)


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
    """Runs `claim(job_id)` on a worker for queued jobs and `step(job_id)` when a job is due."""

    def __init__(
        self, *, workers: int, steps: int, clock: Callable[[], float], claim: Step, step: Step
    ) -> None:
        self.queue = JobQueue()
        self._workers = workers
        self._clock = clock
        self._claim = claim
        self._step = step
        self._queued = asyncio.Semaphore(0)  # one permit per enqueued id; a removed id leaves a blank
        self._claiming = 0
        self._inflight = asyncio.Semaphore(workers)
        self._held: set[str] = set()  # jobs holding an in-flight slot
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, int]] = {}  # the live entry per job; others are stale
        self._seq = itertools.count()
        # One loop timer for the earliest entry of the heap (no task wakes up to find nothing due).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._slots = asyncio.Semaphore(steps)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._throttles: list[Throttle] = []

    async def run(self) -> None:
        """The workers and the due-time timer, until cancelled (in-flight steps are the caller's)."""
        self._loop = asyncio.get_running_loop()
        self._arm()
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(self._workers):
                    group.create_task(self._worker(), name=f"engine-worker-{i}")
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._loop, self._timer, self._timer_at = None, None, float("inf")

    def throttle(self, fn: Callable[[], Awaitable[None]], every: float) -> Throttle:
        """`fn` behind a `Throttle` on this scheduler's clock, stopped with the scheduler."""
        throttle = Throttle(fn, every, self._clock)
        self._throttles.append(throttle)
        return throttle

    # --- queued jobs -----------------------------------------------------------------------

    def enqueue(self, job_id: str) -> int:
        """Queue a job for a worker; its position (1 = next)."""
        self.queue.append(job_id)
        self._queued.release()
        return len(self.queue)

    def position(self, job_id: str) -> int:
        """1-based place in the queue, 0 when not queued."""
        try:
            return self.queue.index(job_id) + 1
        except ValueError:
            return 0

    async def _worker(self) -> None:
        while True:
            await self._queued.acquire()
            await self._inflight.acquire()
            if not self.queue:
                self._inflight.release()
                continue
            job_id = self.queue.popleft()
            self._held.add(job_id)
            self._claiming += 1
            try:
                # A claim (its transitions and the vendor submit) is a step like any other:
                # with thousands of workers, unbounded claims would queue thousands of
                # transactions at once behind the one database connection.
                async with self._slots:
                    await self._claim(job_id)
            except Exception:  # a bug in one job must not stop the worker
                _log.exception("claiming job %s failed", job_id)
            finally:
                self._claiming -= 1
                if job_id not in self._due and job_id not in self._running:
                    self._free(job_id)  # not followed: ended, lost a race, or never claimed

    def _free(self, job_id: str) -> None:
        if job_id in self._held:
            self._held.discard(job_id)
            self._inflight.release()

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
        """The job ended: drop it from the queue and the heap."""
        self._due.pop(job_id, None)
        self._again.discard(job_id)
        self._free(job_id)
        self.queue.remove(job_id)

    @property
    def followed(self) -> int:
        """Jobs waiting for a step or running one."""
        return len(self._due.keys() | self._running.keys())

    def busy(self) -> bool:
        """Whether anything is queued, being claimed, due or running."""
        return bool(self.queue or self._claiming or self._due or self._running)

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
        async with self._slots:
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
