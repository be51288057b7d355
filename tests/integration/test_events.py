"""Cross-replica events (bot/events.py): two buses on one real PostgreSQL stand for two replicas;
the local bus on real SQLite for the one-process mode. Every wait is on an event arriving, with
a generous timeout; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.db import Database
from bot.events import (
    CHANNEL,
    Event,
    EventBusError,
    JobNudged,
    LocalEventBus,
    PgEventBus,
    Resync,
    decode,
    encode,
    event_bus_for,
)
from bot.pg import PgDatabase
from bot.sql import Tx, open_database
from tests.support.postgres import fresh_pg_url

WAIT = 30.0


class Inbox:
    """What one subscriber received, with a wait for a condition on it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Condition()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, pred: Callable[[list[Event]], bool]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: pred(self.events))

    async def has(self, event: Event) -> None:
        await self.until(lambda events: event in events)


class LogCount(logging.Handler):
    """Counts the log records whose message contains `text`; a wait for a number of them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.count = 0
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self._changed.set()  # records of bot.events are emitted on the loop's thread

    async def reached(self, n: int) -> None:
        while self.count < n:
            self._changed.clear()
            await self._changed.wait()


class BlackHoleProxy:
    """A loopback TCP proxy to the server whose `cut()` silently stops forwarding on the
    connections open so far (no FIN, no RST: a network cut), while new ones pass again."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._open: list[dict[str, bool]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        for flow in self._open:
            flow["live"] = False

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        flow = {"live": True}
        self._open.append(flow)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pipe(src, dst, flow))
            self._tasks.add(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flow: dict[str, bool]) -> None:
        while data := await src.read(65536):
            if flow["live"]:
                dst.write(data)
                await dst.drain()


@asynccontextmanager
async def replica(url: str, **options: Any) -> AsyncIterator[tuple[PgDatabase, PgEventBus, Inbox]]:
    """One "replica": its own pool, its own bus listening, one subscriber."""
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(PgDatabase(url, max_size=4))
        bus = event_bus_for(db, **options)
        assert isinstance(bus, PgEventBus)
        await stack.enter_async_context(bus)
        inbox = Inbox()
        await stack.enter_async_context(bus.subscribe(inbox))
        yield db, bus, inbox


async def listeners(url: str) -> list[int]:
    """Server pids of the sessions listening right now (their last statement was LISTEN)."""
    admin = await asyncpg.connect(url)
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    finally:
        await admin.close()
    return [row["pid"] for row in rows]


# --- the payload -------------------------------------------------------------------------


def test_an_event_round_trips_through_its_payload() -> None:
    event = JobNudged("j_abc123", "cancel")
    assert decode(encode(event)) == event


def test_an_event_carries_the_replica_that_sent_it() -> None:
    event = JobNudged("j_abc123", "due", origin="3f9a1c02de")
    assert decode(encode(event)) == event


def test_an_event_too_large_for_notify_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="too large"):
        encode(JobNudged("x" * 9000, "webhook"))


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "garbage",
        "[1]",
        '{"t":"other"}',
        '{"t":"nudge","job":"","why":"webhook"}',
        '{"t":"nudge","job":"j1","why":"why not"}',
    ],
)
def test_a_payload_we_did_not_send_is_a_value_error(payload: str) -> None:
    with pytest.raises(ValueError):
        decode(payload)


# --- PostgreSQL: two replicas ------------------------------------------------------------


async def test_an_event_published_by_one_replica_reaches_the_others_handler(pg_server: str) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        replica(url) as (_, a, a_inbox),
        replica(url) as (_, _b, b_inbox),
    ):
        event = JobNudged("j_webhook", "webhook")
        await a.publish(event)
        await b_inbox.has(event)
        await a_inbox.has(event)  # the publisher's own listener hears it too
        assert b_inbox.events == [event]


async def test_many_events_from_two_publishers_all_arrive_each_publishers_in_order(pg_server: str) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        replica(url) as (_, a, _),
        replica(url) as (_, b, _),
        replica(url) as (
            _,
            _c,
            c_inbox,
        ),
    ):

        async def send(bus: PgEventBus, name: str) -> None:
            for i in range(150):
                await bus.publish(JobNudged(f"{name}{i}", "webhook"))

        await asyncio.gather(send(a, "a"), send(b, "b"))
        await c_inbox.until(lambda events: len(events) >= 300)
        ids = [e.job_id for e in c_inbox.events if isinstance(e, JobNudged)]
        assert len(ids) == 300
        for name in "ab":
            assert [i for i in ids if i.startswith(name)] == [f"{name}{i}" for i in range(150)]


async def test_a_notify_in_a_rolled_back_transaction_is_never_delivered(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url, replica(url) as (db_a, a, _), replica(url) as (_, _b, b_inbox):
        lost = JobNudged("j_rolled_back", "cancel")

        async def step(tx: Tx) -> None:
            await a.notify_in(tx, lost)
            raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            await a.transact(db_a, step)
        # Notifications arrive in commit order: once a later one is in, the first never will be.
        later = JobNudged("j_later", "cancel")
        await a.publish(later)
        await b_inbox.has(later)
        assert lost not in b_inbox.events


async def test_a_notify_in_a_committed_transaction_arrives_only_after_commit(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url, replica(url) as (db_a, a, _), replica(url) as (_, _b, b_inbox):
        event = JobNudged("j_cancelled", "cancel")
        marker = JobNudged("j_marker", "due")

        async def step(tx: Tx) -> str:
            await tx.execute("CREATE TABLE t (x INT)")  # some work of the transaction
            await a.notify_in(tx, event)
            # Sent and committed on another connection while this transaction is still open:
            # once it is in, the listener has seen everything committed so far.
            await a.publish(marker)
            await b_inbox.has(marker)
            assert event not in b_inbox.events
            return "done"

        assert await a.transact(db_a, step) == "done"
        await b_inbox.has(event)
        assert b_inbox.events == [marker, event]


async def test_a_notify_through_the_plain_database_transaction_is_sent_on_commit(pg_server: str) -> None:
    # A store step run by db.transact directly (not bus.transact) may notify too on PostgreSQL.
    async with fresh_pg_url(pg_server) as url, replica(url) as (db_a, a, _), replica(url) as (_, _b, b_inbox):
        event = JobNudged("j_store_step", "cancel")

        async def step(tx: Tx) -> None:
            await a.notify_in(tx, event)

        await db_a.transact(step)
        await b_inbox.has(event)


async def test_a_killed_listener_reconnects_resyncs_and_hears_later_events(pg_server: str) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        replica(url, backoff=(0.05, 0.5)) as (_, a, _),
        replica(url) as (
            _,
            b,
            b_inbox,
        ),
    ):
        before = await listeners(url)
        assert len(before) == 2
        victim = b._conn.get_server_pid() if b._conn is not None else -1
        assert victim in before
        admin = await asyncpg.connect(url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", victim)
        finally:
            await admin.close()
        await b_inbox.has(Resync())
        assert b.reconnects == 1 and b.connected
        event = JobNudged("j_after_reconnect", "webhook")
        await a.publish(event)
        await b_inbox.has(event)
        after = await listeners(url)
        assert victim not in after and len(after) == 2


async def test_a_silently_dead_listener_is_found_by_its_keepalive_and_remade(pg_server: str) -> None:
    # A network cut sends no FIN: only asking the connection shows it is gone.
    async with fresh_pg_url(pg_server) as url, replica(url) as (_, a, _), PgDatabase(url) as db:
        hostport = url.partition("@")[2].partition("/")[0]
        host, _, port = hostport.rpartition(":")
        async with BlackHoleProxy(host, int(port)) as proxy:
            proxied = url.replace(f"@{hostport}/", f"@127.0.0.1:{proxy.port}/")
            async with PgEventBus(db, proxied, keepalive=0.2, connect_timeout=2.0) as bus:
                inbox = Inbox()
                async with bus.subscribe(inbox):
                    proxy.cut()
                    lost = JobNudged("j_into_the_void", "webhook")
                    await a.publish(lost)
                    await inbox.has(Resync())
                    assert bus.reconnects == 1
                    event = JobNudged("j_after_the_cut", "webhook")
                    await a.publish(event)
                    await inbox.has(event)
                    assert lost not in inbox.events  # at most once: the Resync stands for it


async def test_reconnect_keeps_trying_while_the_server_refuses_and_never_logs_the_dsn(
    pg_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.events")
    async with fresh_pg_url(pg_server) as plain:
        # The test cluster trusts loopback, so a password in the URL is accepted and ignored.
        scheme, _, rest = plain.partition("://")
        user, _, host = rest.partition("@")
        secret = "s3cret-Pa55word"
        url = f"{scheme}://{user}:{secret}@{host}"
        name = url.rpartition("/")[2]
        failures = LogCount("reconnect attempt")
        logging.getLogger("bot.events").addHandler(failures)
        async with AsyncExitStack() as stack:
            stack.callback(logging.getLogger("bot.events").removeHandler, failures)
            _, bus, inbox = await stack.enter_async_context(replica(url, backoff=(0.05, 0.2)))
            admin = await asyncpg.connect(plain.rpartition("/")[0] + "/postgres")
            try:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await admin.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND query LIKE 'LISTEN%'",
                    name,
                )

                async with asyncio.timeout(WAIT):
                    await failures.reached(2)
                assert Resync() not in inbox.events
                assert not bus.connected
            finally:
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await admin.close()
            await inbox.has(Resync())
            event = JobNudged("j_back", "due")
            await bus.publish(event)
            await inbox.has(event)
        assert failures.count >= 2
        assert secret not in caplog.text and host not in caplog.text


async def test_malformed_payloads_on_the_channel_are_logged_and_ignored(
    pg_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.events")
    async with fresh_pg_url(pg_server) as url, replica(url) as (db, bus, inbox):
        for junk in (
            "garbage",
            '{"t":"nudge","job":"","why":"webhook"}',
            '{"t":"nudge","job":"j","why":"?"}',
        ):
            await db.fetchval("SELECT pg_notify($1, $2)", CHANNEL, junk)
        event = JobNudged("j_fine", "webhook")
        await bus.publish(event)
        await inbox.has(event)
        assert inbox.events == [event]
        assert bus.malformed == 3 and bus.connected
        assert sum("malformed event" in r.getMessage() for r in caplog.records) == 3


async def test_a_failing_handler_does_not_stop_the_others_and_async_handlers_run(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url, replica(url) as (_, bus, inbox):
        ran = asyncio.Event()

        def broken(event: Event) -> None:
            raise RuntimeError("subscriber bug")

        async def slow(event: Event) -> None:
            await asyncio.sleep(0)
            ran.set()

        async with bus.subscribe(broken), bus.subscribe(slow):
            event = JobNudged("j1", "webhook")
            await bus.publish(event)
            await inbox.has(event)
            async with asyncio.timeout(WAIT):
                await ran.wait()


async def test_closing_the_bus_ends_its_listening_session(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url, PgDatabase(url) as db:
        async with event_bus_for(db) as bus:
            assert isinstance(bus, PgEventBus) and bus.connected
            assert len(await listeners(url)) == 1
        assert not bus.connected
        admin = await asyncpg.connect(url)
        try:
            # pg_stat_activity may show a closing backend for a moment: wait for it to go.
            # The server has no event for "that backend is gone": ask until it is.
            async with asyncio.timeout(WAIT):
                while True:
                    if not await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND query LIKE 'LISTEN%'"
                    ):
                        break
                    await asyncio.sleep(0.05)
        finally:
            await admin.close()


async def test_a_bus_that_cannot_listen_fails_start_with_one_line_and_no_dsn(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url, PgDatabase(url) as db:
        bad = url.rpartition("/")[0] + "/no_such_database_here"
        with pytest.raises(EventBusError) as caught:
            async with PgEventBus(db, bad):
                pass
        assert "no_such_database_here" not in str(caught.value)


# --- SQLite: one process -----------------------------------------------------------------


async def test_the_factory_picks_the_local_bus_for_sqlite(tmp_path: Path) -> None:
    async with open_database(tmp_path / "bot.sqlite3") as db:
        assert isinstance(event_bus_for(db), LocalEventBus)


async def test_the_local_bus_delivers_in_process_on_the_loop_not_in_the_publishers_stack(
    tmp_path: Path,
) -> None:
    async with LocalEventBus() as bus:
        first, second = Inbox(), Inbox()
        async with bus.subscribe(first), bus.subscribe(second):
            event = JobNudged("j_local", "cancel")
            await bus.publish(event)
            assert first.events == []  # queued on the loop, not called by publish itself
            await first.has(event)
            await second.has(event)
        await bus.publish(JobNudged("j_unsubscribed", "cancel"))
        await asyncio.sleep(0)
        assert first.events == [event]


async def test_the_local_bus_sends_a_transactions_events_on_commit_only(tmp_path: Path) -> None:
    async with Database(tmp_path / "bot.sqlite3") as db, LocalEventBus() as bus:
        inbox = Inbox()
        async with bus.subscribe(inbox):
            lost, kept = JobNudged("j_rolled_back", "cancel"), JobNudged("j_committed", "cancel")

            async def failing(tx: Tx) -> None:
                await tx.execute("CREATE TABLE t (x INTEGER)")
                await bus.notify_in(tx, lost)
                raise RuntimeError("abort")

            async def committing(tx: Tx) -> int:
                await tx.execute("CREATE TABLE u (x INTEGER)")
                await bus.notify_in(tx, kept)
                return 7

            with pytest.raises(RuntimeError):
                await bus.transact(db, failing)
            assert await bus.transact(db, committing) == 7
            await inbox.has(kept)
            assert inbox.events == [kept]
            assert await db.fetchval("SELECT count(*) FROM sqlite_master WHERE name = 't'") == 0


async def test_the_local_bus_refuses_notify_outside_its_transact(tmp_path: Path) -> None:
    async with Database(tmp_path / "bot.sqlite3") as db, LocalEventBus() as bus:

        async def step(tx: Tx) -> None:
            await bus.notify_in(tx, JobNudged("j", "cancel"))

        with pytest.raises(RuntimeError, match=r"outside bus\.transact"):
            await db.transact(step)


async def test_a_step_run_again_by_sqlites_group_commit_sends_its_events_once(tmp_path: Path) -> None:
    # Calls arriving together share one SQLite transaction; when one fails, the others run
    # again in savepoints: their events must count once, the failed call's never.
    async with Database(tmp_path / "bot.sqlite3") as db, LocalEventBus() as bus:
        inbox = Inbox()
        async with bus.subscribe(inbox):
            await db.transact(_create_table)

            runs: dict[int, int] = {1: 0, 2: 0}

            def committing(n: int) -> Callable[[Tx], Any]:
                async def step(tx: Tx) -> None:
                    runs[n] += 1
                    await tx.execute("INSERT INTO t (x) VALUES ($1)", n)
                    await bus.notify_in(tx, JobNudged(f"j_ok_{n}", "cancel"))

                return step

            async def failing(tx: Tx) -> None:
                await bus.notify_in(tx, JobNudged("j_failed", "cancel"))
                raise RuntimeError("abort")

            results = await asyncio.gather(
                bus.transact(db, committing(1)),
                bus.transact(db, failing),
                bus.transact(db, committing(2)),
                return_exceptions=True,
            )
            assert isinstance(results[1], RuntimeError) and results[0] is None and results[2] is None
            assert runs[1] >= 2  # the group really was run again (else this test shows nothing)
            marker = JobNudged("j_marker", "due")
            await bus.publish(marker)
            await inbox.has(marker)
            assert sorted(e.job_id for e in inbox.events if isinstance(e, JobNudged)) == [
                "j_marker",
                "j_ok_1",
                "j_ok_2",
            ]
            assert await db.fetchval("SELECT count(*) FROM t") == 2


async def _create_table(tx: Tx) -> None:
    await tx.execute("CREATE TABLE t (x INTEGER)")
