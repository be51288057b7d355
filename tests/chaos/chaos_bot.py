"""The bot process of the chaos tests: admits N jobs from many users (idempotent by request key,
so a restarted process admits only the ones its killed predecessor did not), cancels a few at
random moments, and drains. Every message a user is told is appended to `told.jsonl`.

Run as `python -m tests.chaos.chaos_bot N SEED` with the bot's settings in the environment.

With `CHAOS_REPLICA=K/R` it is replica K of R on one shared database (tests/chaos/
test_two_replicas.py): it admits its share first — jobs i with (i // USERS) % R == K, so every
user has jobs admitted by every replica — and then every other job (idempotent: a live replica's
job comes back as it is, a dead replica's never-admitted one is admitted here), user by user and
`ADMITTERS` at once, so both replicas press one user's cap together; its cancels pick from the
pool of all jobs (looked up by request key), so some land on jobs another replica holds. It writes `trace.jsonl` (below) and ends when the *database* says all N jobs are over
and every message is sent — a dead replica's jobs are finished here once their leases expire.

`trace.jsonl`, one JSON object a line, written with one unbuffered `write` so a SIGKILL cannot
take a line back: `{"pid", "job", "op", "ev", "t", "n"}` where `ev` is "begin" or "end" of one
call on the job (`n` pairs them) or "at" (a claim or take-over returned the job at `t`). The ops
are the store transitions this process made on the job (`claim`, `claim_next`, `take_over`,
`accepted`, `resubmit`, `done`, `failed`), the runner's `step` of a job it follows, and `cancel`
(with `"answer"` on its end), which is not following.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from bot.app import BotApp
from bot.commands import Actor, ImagineCommand
from bot.config import Settings
from bot.errors import BusyError, QueueFullError, UserError
from bot.reply import Failure, JobResult, Progress, Reply
from bot.sql import open_database

USERS = 120
CANCEL_SHARE = 0.03
ADMITTERS = 16  # admissions at once per replica
TERMINAL = ("done", "failed", "cancelled")

# Store methods that return the job(s) they leased to this process, and those called on one job.
_CLAIMS = ("claim", "claim_next", "take_over")
_TRANSITIONS = ("accepted", "resubmit", "done", "failed")


class ToldReply:
    """A user's chat: appends every final message (result or failure) to the shared log."""

    def __init__(self, log: TextIO, ref: dict[str, Any]) -> None:
        self._log = log
        self._ref = ref

    def ref(self) -> dict[str, Any]:
        return dict(self._ref)

    async def progress(self, update: Progress) -> None:
        pass

    async def result(self, result: JobResult) -> None:
        self._told(result.job_id, "result", result.text)

    async def failure(self, failure: Failure) -> None:
        self._told(failure.job_id, "failure", failure.text)

    def _told(self, job_id: str, kind: str, text: str) -> None:
        # One write per line and a flush: a SIGKILL after it cannot take the line back.
        line = {"job": job_id, "kind": kind, "text": text, "pid": os.getpid(), "t": time.time()}
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()


class ToldRestorer:
    def __init__(self, log: TextIO) -> None:
        self._log = log

    def restore(self, ref: dict[str, Any]) -> Reply:
        return ToldReply(self._log, ref)


class Trace:
    """The append-only log of what this process did to which job, and when (wall clock)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._pid = os.getpid()
        self._n = itertools.count()

    def _write(self, **fields: Any) -> None:
        # One unbuffered write per line: the kernel has it before the next statement runs.
        os.write(self._fd, (json.dumps({"pid": self._pid, "t": time.time(), **fields}) + "\n").encode())

    def at(self, job_id: str, op: str) -> None:
        """The process took `job_id` now."""
        self._write(job=job_id, op=op, ev="at")

    def begin(self, job_id: str, op: str) -> int:
        """A call on `job_id` starts; the number its end repeats."""
        n = next(self._n)
        self._write(job=job_id, op=op, ev="begin", n=n)
        return n

    def end(self, job_id: str, op: str, n: int, **extra: Any) -> None:
        """The call numbered `n` returned (or raised)."""
        self._write(job=job_id, op=op, ev="end", n=n, **extra)


def _job_id(arg: Any) -> str:
    return arg if isinstance(arg, str) else str(arg.id)


def _trace_store(store: Any, trace: Trace) -> None:
    """Wrap the store's lease-taking calls and transitions on this instance (every part of the
    engine holds the same object)."""
    for name in _CLAIMS:
        if (method := getattr(store, name, None)) is not None:
            setattr(store, name, _traced_claim(method, name, trace))
    for name in _TRANSITIONS:
        if (method := getattr(store, name, None)) is not None:
            setattr(store, name, _traced_call(method, name, trace))


def _traced_claim(method: Callable[..., Any], op: str, trace: Trace) -> Callable[..., Any]:
    @functools.wraps(method)
    async def claim(*args: Any, **kwargs: Any) -> Any:
        got = await method(*args, **kwargs)
        for job in got if isinstance(got, list) else [got] if got is not None else []:
            trace.at(job.id, op)
        return got

    return claim


def _traced_call(method: Callable[..., Any], op: str, trace: Trace) -> Callable[..., Any]:
    @functools.wraps(method)
    async def call(first: Any, *args: Any, **kwargs: Any) -> Any:
        job_id = _job_id(first)
        n = trace.begin(job_id, op)
        try:
            return await method(first, *args, **kwargs)
        finally:
            trace.end(job_id, op, n)

    return call


def instrument(trace: Trace) -> None:
    """Before the app is built: trace every store the engine is given and every step of a job
    the runner follows."""
    from bot import engine, runner

    init = engine.Engine.__init__

    @functools.wraps(init)
    def traced_init(self: Any, *args: Any, **kwargs: Any) -> None:
        _trace_store(kwargs["store"], trace)
        init(self, *args, **kwargs)

    step = runner.Runner.step

    @functools.wraps(step)
    async def traced_step(self: Any, job_id: str) -> None:
        if not self.follows(job_id):
            await step(self, job_id)  # a stale wake-up: nothing happens to the job
            return
        n = trace.begin(job_id, "step")
        try:
            await step(self, job_id)
        finally:
            trace.end(job_id, "step", n)

    engine.Engine.__init__ = traced_init  # type: ignore[method-assign]
    runner.Runner.step = traced_step  # type: ignore[method-assign]


def actor(i: int) -> Actor:
    user = i % USERS
    return Actor(platform="chaos", tenant_id=f"t{user % 4}", user_id=f"u{user}", display_name=f"user {user}")


async def admit(app: BotApp, log: TextIO, i: int, wait: float = 0.05) -> str | None:
    while True:
        try:
            ticket = await app.engine.submit(
                actor(i),
                ImagineCommand(prompt=f"chaos job {i}"),
                ToldReply(log, {"job": i}),
                request_key=f"chaos-{i}",
            )
            return ticket.job_id
        except (BusyError, QueueFullError):
            await asyncio.sleep(wait)  # the user waits for one of their jobs, then asks again
        except UserError as exc:
            print(f"job {i} refused: {exc}", file=sys.stderr)
            return None


async def cancel_later(app: BotApp, job_id: str, i: int, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        await app.engine.cancel(actor(i), job_id)
    except UserError:
        pass  # already over: nothing to cancel


async def cancel_any(app: BotApp, trace: Trace, i: int, delay: float) -> None:
    """Cancel job `i` after `delay`, whichever replica admitted it (and holds it, if any)."""
    await asyncio.sleep(delay)
    job = await app.engine.store.by_request_key(f"chaos-{i}")
    if job is None:
        return  # not admitted yet anywhere: nothing to cancel
    n = trace.begin(job.id, "cancel")
    answer = "?"
    try:
        answer = await app.engine.cancel(actor(i), job.id)
    except UserError as exc:
        answer = f"refused: {exc}"  # already over
    finally:
        trace.end(job.id, "cancel", n, answer=answer)


async def all_over(url: str, n: int, every: float = 0.25) -> None:
    """Until the database holds `n` jobs, none open, and no message unsent."""
    async with open_database(url) as db:
        while True:
            jobs = await db.fetchval("SELECT COUNT(*) FROM jobs")
            open_ = await db.fetchval("SELECT COUNT(*) FROM jobs WHERE state NOT IN ($1, $2, $3)", *TERMINAL)
            unsent = await db.fetchval("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            if jobs >= n and open_ == 0 and unsent == 0:
                return
            await asyncio.sleep(every)


def _replica() -> tuple[int, int] | None:
    spec = os.environ.get("CHAOS_REPLICA")
    if not spec:
        return None
    k, _, r = spec.partition("/")
    return int(k), int(r)


async def main(n: int, seed: int) -> int:
    settings = Settings()  # type: ignore[call-arg]
    told = Path(settings.data_dir) / "told.jsonl"
    told.parent.mkdir(parents=True, exist_ok=True)
    replica = _replica()
    if replica is not None:
        return await replica_main(settings, told, n, seed, *replica)
    rng = random.Random(seed)
    with told.open("a", encoding="utf-8") as log:
        app = BotApp(settings, platforms=[])
        async with app:
            app.engine.register_restorer("chaos", ToldRestorer(log))
            await app.engine.resume()
            cancels: set[asyncio.Task[None]] = set()
            for i in range(n):
                job_id = await admit(app, log, i)
                if job_id is not None and rng.random() < CANCEL_SHARE:
                    cancels.add(asyncio.create_task(cancel_later(app, job_id, i, rng.uniform(0.0, 1.5))))
            await asyncio.gather(*cancels)
            await app.engine.drain()
    print("chaos bot drained", flush=True)
    return 0


async def replica_main(settings: Settings, told: Path, n: int, seed: int, k: int, r: int) -> int:
    """Replica `k` of `r`: its share, then every other job; done when the database is.

    Jobs go in user by user (each user's jobs back to back, `ADMITTERS` at once), and the other
    replica's share of the same user goes in at the same time: the per-user cap is pressed from
    both replicas at once."""
    trace = Trace(Path(settings.data_dir) / "trace.jsonl")
    instrument(trace)
    rng = random.Random(f"{seed}:{k}")
    by_user = sorted(range(n), key=lambda i: (i % USERS, i))
    mine = [i for i in by_user if (i // USERS) % r == k]
    theirs = [i for i in by_user if (i // USERS) % r != k]
    with told.open("a", encoding="utf-8") as log:
        app = BotApp(settings, platforms=[])
        async with app:
            app.engine.register_restorer("chaos", ToldRestorer(log))
            await app.engine.resume()
            print("chaos bot up", flush=True)
            cancels: set[asyncio.Task[None]] = set()

            async def lane(todo: Iterator[int], cancel: bool) -> None:
                for i in todo:
                    await admit(app, log, i, wait=0.2)
                    if cancel and rng.random() < CANCEL_SHARE * r:  # this replica's part of the cancels
                        # This job or the same user's next or previous one, of the other share.
                        target = min(n - 1, max(0, i + rng.choice((-USERS, 0, USERS))))
                        delay = rng.uniform(0.0, 1.0)
                        cancels.add(asyncio.create_task(cancel_any(app, trace, target, delay)))

            for todo, cancel in ((iter(mine), True), (iter(theirs), False)):
                await asyncio.gather(*(lane(todo, cancel) for _ in range(ADMITTERS)))
            await asyncio.gather(*cancels)
            await all_over(settings.db_url, n)
            await app.engine.drain()
    print("chaos bot drained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]))))
