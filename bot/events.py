"""Cross-replica events: "look at job X now", sent by whichever process learned something.

Polling stays the fallback: an event only makes a job due sooner. Events are at most once — a
replica that is down, or whose listening connection is being re-made, misses them — so every
subscriber also gets `Resync` after a gap and then re-checks the jobs it holds.

Two buses behind one `EventBus` interface, chosen by `event_bus_for(db)`:

- `LocalEventBus` (SQLite: one process owns the database): in-process delivery on the loop.
- `PgEventBus` (PostgreSQL, several replicas): `NOTIFY` on one channel, `LISTEN` on one
  dedicated connection per replica (never a pooled one: a pooled connection would lose the
  LISTEN when released). A dropped listening connection is re-made with backoff, then
  subscribers get `Resync`. Payloads are tiny JSON (a job id and a reason; PostgreSQL caps a
  payload below 8000 bytes). A malformed payload on the channel is logged and dropped.

Every subscriber receives every event, the publisher's own included (its NOTIFY reaches its own
listening connection too); a handler ignores jobs it does not hold. A handler is a plain
callable run on the loop (it must not block); if it returns an awaitable, that runs as a task
of the bus (its failure is logged, it never stops delivery).

Sending on commit only: a transaction step calls `bus.notify_in(tx, event)`, and the step is
run with `bus.transact(db, step)`. On PostgreSQL that is `db.transact` and the NOTIFY is part
of the transaction (PostgreSQL delivers it on COMMIT, drops it on ROLLBACK); on SQLite the bus
stages the event and delivers it once the transaction committed. `publish(event)` sends at
once (after a commit the caller already saw).

How the engine uses it (bot/engine.py, bot/admission.py; nothing here imports them):

1. `bot/app.py` opens the bus next to the database (`async with event_bus_for(db) as bus`) and
   hands it to the engine, which subscribes `Engine._on_event` for its lifetime.
2. Webhook received (`Engine.handle_webhook`, any replica, after the token check and parse): a
   replica that does not follow the job publishes `JobNudged(job_id, "webhook")`; the holder
   makes the job due now, and that step polls the vendor, which reports the same terminal state
   the webhook carried (events carry ids, never vendor bodies).
3. Cancel (`Engine.cancel`, any replica): the store's cancel moves the job to `cancelled`,
   releases the hold and writes the user's message in one transaction; then, unless this
   replica followed the job itself, it publishes `JobNudged(job_id, "cancel")`. The holder
   re-reads the row and, finding it ended, stops following it.
4. A job admitted (queued): the admitting replica wakes its own workers at once and, with a
   shared bus, publishes `JobNudged(job_id, "due", origin=<its lease owner>)`; every other
   replica gets one permit (the sender skips its own echo) and the first idle worker claims
   the job with `FOR UPDATE SKIP LOCKED`.
5. `Resync` (after a gap): every followed job is polled now and the lease sweep runs, since
   nudges may have been lost while disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, TypeVar, get_args

from bot.errors import BotError
from bot.sql import SqlDatabase, Step, Tx

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "CHANNEL",
    "MAX_PAYLOAD",
    "Event",
    "EventBus",
    "EventBusError",
    "Handler",
    "JobNudged",
    "LocalEventBus",
    "NudgeReason",
    "PgEventBus",
    "Resync",
    "decode",
    "encode",
    "event_bus_for",
]

T = TypeVar("T")

_log = logging.getLogger(__name__)

#: the NOTIFY channel every replica of one database listens on
CHANNEL = "imagine_bot_jobs"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
MAX_PAYLOAD = 7999

#: why a job should be looked at now
NudgeReason = Literal["webhook", "cancel", "due"]
_REASONS: frozenset[str] = frozenset(get_args(NudgeReason))
_MAX_JOB_ID = 200


class EventBusError(BotError):
    """The event bus cannot start (its listening connection could not be made)."""


@dataclass(frozen=True, slots=True)
class JobNudged:
    """Look at job `job_id` now (its holder makes it due at once)."""

    job_id: str
    reason: NudgeReason
    #: the replica that sent it (its lease owner name), so it can skip its own echo; "" unknown
    origin: str = ""


@dataclass(frozen=True, slots=True)
class Resync:
    """Events may have been missed (the listener was disconnected): re-check every held job."""


Event = JobNudged | Resync
#: a subscriber: called on the loop with each event; may return an awaitable (run as a task)
Handler = Callable[[Event], Awaitable[None] | None]


def encode(event: JobNudged) -> str:
    """The NOTIFY payload of `event` (compact JSON); ValueError if it would not fit."""
    data = {"t": "nudge", "job": event.job_id, "why": event.reason}
    if event.origin:
        data["from"] = event.origin
    text = json.dumps(data, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        raise ValueError(f"event payload too large ({len(text.encode())} bytes)")
    return text


def decode(payload: str) -> JobNudged:
    """The event in a NOTIFY payload; ValueError for anything this version did not send."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(data, dict) or data.get("t") != "nudge":
        raise ValueError("not a nudge")
    job, why = data.get("job"), data.get("why")
    if not isinstance(job, str) or not job or len(job) > _MAX_JOB_ID:
        raise ValueError("bad job id")
    if why not in _REASONS:
        raise ValueError("unknown reason")
    origin = data.get("from", "")
    if not isinstance(origin, str) or len(origin) > _MAX_JOB_ID:
        raise ValueError("bad origin")
    return JobNudged(job, why, origin)


class EventBus(Protocol):
    """Publish "look at job X now" to every replica; subscribe to what the others publish."""

    #: whether other processes hear this bus (PostgreSQL) or only this one (SQLite)
    shared: bool

    async def publish(self, event: JobNudged) -> None:
        """Send `event` now to every subscriber (of every replica, this one included)."""
        ...

    async def notify_in(self, tx: Tx, event: JobNudged) -> None:
        """Send `event` when the transaction of `tx` commits (never if it rolls back); the step
        must run under `transact`."""
        ...

    async def transact(self, db: SqlDatabase, step: Step[T]) -> T:
        """`db.transact(step)`, delivering what the step passed to `notify_in` once committed."""
        ...

    def subscribe(self, handler: Handler) -> contextlib.AbstractAsyncContextManager[None]:
        """Call `handler` with every event while the block runs."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


class _Dispatch:
    """Subscribers and delivery to them on the loop (shared by both buses)."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: events handed to handlers, for metrics and tests
        self.delivered = 0

    @contextlib.asynccontextmanager
    async def subscribe(self, handler: Handler) -> AsyncIterator[None]:
        """Call `handler` with every event while the block runs."""
        self._handlers.append(handler)
        try:
            yield
        finally:
            self._handlers.remove(handler)

    def _dispatch(self, event: Event) -> None:
        for handler in list(self._handlers):
            self.delivered += 1
            try:
                result = handler(event)
            except Exception:
                # One broken subscriber must not starve the others.
                _log.exception("event handler failed for %s", event)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            _log.error("event handler failed", exc_info=exc)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


class LocalEventBus(_Dispatch):
    """Delivery inside this process (SQLite mode): `publish` queues each handler call on the
    loop, so a publisher never runs subscriber code in its own stack."""

    shared = False

    def __init__(self) -> None:
        super().__init__()
        # Events staged by steps running now, by their Tx (on SQLite a step runs on the
        # database thread; dict get/set are atomic, and each key is used by one step only).
        self._staged: dict[int, list[JobNudged]] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cancel_tasks()

    async def publish(self, event: JobNudged) -> None:
        """Deliver `event` to every subscriber, each call on the loop soon after."""
        encode(event)  # the same limits as PostgreSQL: what works here works there
        asyncio.get_running_loop().call_soon(self._dispatch, event)

    async def notify_in(self, tx: Tx, event: JobNudged) -> None:
        """Stage `event`; `transact` delivers it once the step's transaction committed."""
        staged = self._staged.get(id(tx))
        if staged is None:
            raise RuntimeError("notify_in outside bus.transact: the event would never be sent")
        encode(event)
        staged.append(event)

    async def transact(self, db: SqlDatabase, step: Step[T]) -> T:
        """`db.transact(step)`, then deliver the events of its committed run."""
        committed: list[JobNudged] = []

        async def staged_step(tx: Tx) -> T:
            # A step may run more than once (SQLite's group commit reruns a batch after one
            # call failed): only the events of the run that returned count.
            mine: list[JobNudged] = []
            self._staged[id(tx)] = mine
            try:
                result = await step(tx)
            finally:
                del self._staged[id(tx)]
            committed[:] = mine
            return result

        result = await db.transact(staged_step)
        for event in committed:
            await self.publish(event)
        return result


class PgEventBus(_Dispatch):
    """`LISTEN/NOTIFY` on one PostgreSQL database: publish through the database's pool, listen
    on one connection of its own, re-made with backoff when it drops (then `Resync`)."""

    shared = True

    def __init__(
        self,
        db: SqlDatabase,
        url: str,
        *,
        channel: str = CHANNEL,
        keepalive: float = 30.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        if db.dialect != "postgresql":
            raise ValueError("PgEventBus needs a PostgreSQL database")
        if not channel.isidentifier():
            raise ValueError(f"bad channel name {channel!r}")  # it is quoted into LISTEN
        self._db = db
        self._url = url  # may hold a password: never logged
        self.channel = channel
        self._keepalive = keepalive
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        #: listening connections re-made after a drop
        self.reconnects = 0
        #: payloads on the channel that were not an event of ours
        self.malformed = 0

    @property
    def connected(self) -> bool:
        """Whether the listening connection is up now."""
        return self._conn is not None and not self._conn.is_closed()

    async def __aenter__(self) -> Self:
        import asyncpg  # only the PostgreSQL mode needs it

        try:
            await self._listen()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The type only: the URL (which may hold a password) stays out of the message.
            raise EventBusError(f"cannot LISTEN on PostgreSQL: {type(exc).__name__}") from None
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._drop()
        await self._cancel_tasks()

    async def publish(self, event: JobNudged) -> None:
        """NOTIFY now, on a pooled connection (outside any transaction: sent at once)."""
        await self._db.fetchval("SELECT pg_notify($1, $2)", self.channel, encode(event))

    async def notify_in(self, tx: Tx, event: JobNudged) -> None:
        """NOTIFY inside `tx`: PostgreSQL sends it on COMMIT and drops it on ROLLBACK."""
        if tx.dialect != "postgresql":
            raise TypeError("PgEventBus.notify_in needs a PostgreSQL transaction")
        await tx.execute("SELECT pg_notify($1, $2)", self.channel, encode(event))

    async def transact(self, db: SqlDatabase, step: Step[T]) -> T:
        """`db.transact(step)`: the step's `notify_in` calls are already part of it."""
        return await db.transact(step)

    async def _listen(self) -> None:
        import asyncpg  # only the PostgreSQL mode needs it

        conn = await asyncpg.connect(self._url, timeout=self._connect_timeout)
        try:
            self._lost.clear()
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.remove_termination_listener(self._on_terminated)
        if conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), self._connect_timeout)
        except Exception:
            conn.terminate()  # a dead socket: no goodbye

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._lost.set()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            event = decode(payload)
        except ValueError as exc:
            self.malformed += 1
            _log.warning(
                "ignored a malformed event on %s from pid %d: %s (%.80r)", channel, pid, exc, payload
            )
            return
        self._dispatch(event)

    async def _supervise(self) -> None:
        """Watch the listening connection; re-make it when it drops, then tell subscribers."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._keepalive)
            except TimeoutError:
                # A quiet connection may be dead without a FIN (network cut): ask it.
                if await self._alive():
                    continue
            _log.warning("lost the PostgreSQL event listener connection; reconnecting")
            await self._drop()
            await self._reconnect()
            self.reconnects += 1
            _log.info("PostgreSQL event listener reconnected; resyncing held jobs")
            self._dispatch(Resync())

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        except Exception:
            return False
        return True

    async def _reconnect(self) -> None:
        low, high = self._backoff
        delay = low
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._listen()
                return
            except Exception as exc:  # OSError, TimeoutError, asyncpg errors: all mean "not yet"
                # The type only: an error's text may carry parts of the DSN.
                _log.warning("event listener reconnect attempt %d failed: %s", attempt, type(exc).__name__)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: replicas do not stampede
            delay = min(high, delay * 2)


def event_bus_for(db: SqlDatabase, **options: Any) -> EventBus:
    """The bus for `db` (unopened; use `async with`): PostgreSQL → `PgEventBus` on the same
    database, SQLite → `LocalEventBus`. `options` go to `PgEventBus`."""
    if db.dialect == "postgresql":
        url = getattr(db, "url", None)
        if not isinstance(url, str):
            raise TypeError("a PostgreSQL database without a url")
        return PgEventBus(db, url, **options)
    return LocalEventBus()
