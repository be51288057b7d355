"""Two replicas in one test process on one PostgreSQL database and one set of vendors: a job
is followed by the replica holding its lease, a dead replica's jobs are taken over after the
lease, and a Cancel, a webhook or a new job that one replica receives reaches the other."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.app import BotApp
from bot.commands import Actor, ImagineCommand
from bot.ledger import CreditLedger
from bot.reply import JobPhase
from providers.sandbox.server import Sandbox
from tests.support.core import MEMBER, RecordingReply, RecordingRestorer, fast_sandbox, running_app
from tests.support.postgres import fresh_pg_url

LEASE = 1.0  # seconds: a dead replica's jobs are taken over within about this


@pytest.fixture
async def pg_url(pg_server: str) -> AsyncIterator[str]:
    async with fresh_pg_url(pg_server) as url:
        yield url


class _Shared:
    """The test's running vendors, handed to each replica without a second start or stop."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def __aenter__(self) -> Sandbox:
        return self.sandbox

    async def __aexit__(self, *exc: object) -> None:
        return None


@asynccontextmanager
async def _replica(tmp_path: Path, url: str, sandbox: Sandbox, **overrides: Any) -> AsyncIterator[BotApp]:
    shared: Any = _Shared(sandbox)
    overrides.setdefault("lease_seconds", LEASE)
    async with running_app(tmp_path, sandbox=shared, database_url=url, **overrides) as app:
        yield app


def _with_restorer(app: BotApp) -> RecordingRestorer:
    restorer = RecordingRestorer()
    app.engine.register_restorer(MEMBER.platform, restorer)
    return restorer


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    async def wait() -> None:
        while not await check():  # noqa: ASYNC110 - the state is in the database: poll it
            await asyncio.sleep(0.05)

    await asyncio.wait_for(wait(), timeout)


async def _state(app: BotApp, job_id: str) -> JobPhase | None:
    job = await app.engine.store.get(job_id)
    return job.state if job else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_replicas_running_job_is_taken_over_after_its_lease_and_delivered_once(
    tmp_path: Path, pg_url: str
) -> None:
    async with fast_sandbox(latency=(2.5, 2.5)) as sandbox, AsyncExitStack() as stack:
        a = await stack.enter_async_context(_replica(tmp_path / "a", pg_url, sandbox, route_order="apiinone"))
        b = await stack.enter_async_context(_replica(tmp_path / "b", pg_url, sandbox, route_order="apiinone"))
        told_by_b = _with_restorer(b)
        # B cannot claim: the job is A's from the start.
        b.engine.scheduler.enqueue = lambda: None  # type: ignore[method-assign]
        reply = RecordingReply()
        ticket = await a.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await _until(lambda: _running_on(a, ticket.job_id))
        # A dies: its steps stop, its leases are neither renewed nor released.
        a.engine.store.release_leases = _nothing  # type: ignore[method-assign]
        await _crash(a)
        await _until(lambda: _done(b, ticket.job_id))
        await _until(lambda: _async(told_by_b.results() == 1))
        assert reply.results == []  # the dead replica told no one
        job = await b.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.DONE
        assert await b.ledger.hold_state(ticket.job_id) == "settled"
        assert await b.ledger.check_invariants() == []


async def _running_on(app: BotApp, job_id: str) -> bool:
    return app.engine.runner.follows(job_id) and await _state(app, job_id) is JobPhase.RUNNING


async def _done(app: BotApp, job_id: str) -> bool:
    return await _state(app, job_id) is JobPhase.DONE


async def _async(value: bool) -> bool:
    return value


async def _nothing() -> None:
    return None


async def _crash(app: BotApp) -> None:
    """Stop a replica the way a SIGKILL would, as far as the others can tell: its steps and
    loops stop, nothing is released (the database and its leases stay as they were)."""
    await app.__aexit__(None, None, None)


async def test_a_cancel_on_one_replica_stops_the_replica_following_the_job(
    tmp_path: Path, pg_url: str
) -> None:
    # Polls 20 s apart and leases renewed every 10 s: neither a poll (which would find the job
    # cancelled at the vendor) nor a renewal (which would find it ended) stops the holder in
    # time, only the Cancel's event does.
    slow_polls: dict[str, Any] = {
        "route_order": "apiinone",
        "poll_initial": 20.0,
        "poll_max": 20.0,
        "lease_seconds": 30.0,
    }
    async with fast_sandbox(latency=(5.0, 5.0)) as sandbox, AsyncExitStack() as stack:
        a = await stack.enter_async_context(_replica(tmp_path / "a", pg_url, sandbox, **slow_polls))
        b = await stack.enter_async_context(_replica(tmp_path / "b", pg_url, sandbox, **slow_polls))
        told_by_b = _with_restorer(b)
        b.engine.scheduler.enqueue = lambda: None  # type: ignore[method-assign]
        reply = RecordingReply()
        ticket = await a.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await _until(lambda: _running_on(a, ticket.job_id))
        answer = await b.engine.cancel(MEMBER, ticket.job_id)
        assert answer.startswith("Cancelled")
        # The holder hears it at once (not at its next poll or lease renewal) and stops.
        await _until(lambda: _async(not a.engine.runner.follows(ticket.job_id)), timeout=3.0)
        assert await b.ledger.hold_state(ticket.job_id) == "released"
        await _until(lambda: _async(any(r.failures for r in told_by_b.replies)))
        assert reply.results == [] and reply.failures == []  # one message, from the canceller


async def test_a_webhook_received_by_another_replica_makes_the_holder_poll_now(
    tmp_path: Path, pg_url: str
) -> None:
    port = _free_port()
    public = f"http://127.0.0.1:{port}"
    async with fast_sandbox(latency=(0.3, 0.3)) as sandbox, AsyncExitStack() as stack:
        # Every vendor callback reaches A (the load balancer's pick); B follows the job.
        a = await stack.enter_async_context(
            _replica(
                tmp_path / "a",
                pg_url,
                sandbox,
                route_order="pixazo:hunyuan-image",
                http_port=port,
                public_base_url=public,
            )
        )
        b = await stack.enter_async_context(
            _replica(
                tmp_path / "b", pg_url, sandbox, route_order="pixazo:hunyuan-image", public_base_url=public
            )
        )
        a.engine.scheduler.enqueue = lambda: None  # type: ignore[method-assign]
        reply = RecordingReply()
        ticket = await b.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        # With a webhook asked for, B's fallback poll is 30 s away: only the nudge is sooner.
        await reply.wait(timeout=10)
        assert reply.results and sandbox["pixazo"].webhooks_sent
        assert not a.engine.runner.follows(ticket.job_id)
        assert await _state(b, ticket.job_id) is JobPhase.DONE


async def test_a_busy_replicas_queued_jobs_are_claimed_by_an_idle_one(tmp_path: Path, pg_url: str) -> None:
    users = [Actor(platform=MEMBER.platform, tenant_id="t1", user_id=f"u{i}") for i in range(6)]
    async with fast_sandbox(latency=(0.8, 0.8)) as sandbox, AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            _replica(tmp_path / "a", pg_url, sandbox, route_order="apiinone", workers=1)
        )
        b = await stack.enter_async_context(
            _replica(tmp_path / "b", pg_url, sandbox, route_order="apiinone", workers=4)
        )
        told_by_a, told_by_b = _with_restorer(a), _with_restorer(b)
        replies = [RecordingReply() for _ in users]
        tickets = [
            await a.engine.submit(u, ImagineCommand(prompt=f"job {i}"), r)
            for i, (u, r) in enumerate(zip(users, replies, strict=True))
        ]
        ids = [t.job_id for t in tickets]

        async def all_done() -> bool:
            return all([await _done(a, job_id) for job_id in ids])

        await _until(all_done, timeout=30)
        owners = {r["lease_owner"] for r in await a.db.fetch("SELECT lease_owner FROM jobs")}
        assert b.engine.store.owner in owners  # the idle replica did claim some

        def told() -> int:
            return sum(len(r.results) for r in replies) + told_by_a.results() + told_by_b.results()

        await _until(lambda: _async(told() == len(ids)))  # every user told, once
        ledger = CreditLedger(a.db)
        assert await ledger.check_invariants() == [] and await ledger.open_holds() == []


async def test_a_replica_started_after_one_crashed_takes_the_dead_ones_jobs_over_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    # Leases of 30 s: only the dead replica's liveness lock, gone with its session, lets the
    # new one go on with the job within the 10 s the test waits.
    long_lease: dict[str, Any] = {"route_order": "apiinone", "lease_seconds": 30.0}
    async with fast_sandbox(latency=(2.5, 2.5)) as sandbox, AsyncExitStack() as stack:
        a = await stack.enter_async_context(_replica(tmp_path / "a", pg_url, sandbox, **long_lease))
        reply = RecordingReply()
        ticket = await a.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await _until(lambda: _running_on(a, ticket.job_id))
        a.engine.store.release_leases = _nothing  # type: ignore[method-assign]
        await _crash(a)
        b = await stack.enter_async_context(_replica(tmp_path / "b", pg_url, sandbox, **long_lease))
        told_by_b = _with_restorer(b)
        assert await b.engine.resume() == 1
        await _until(lambda: _done(b, ticket.job_id), timeout=10)
        await _until(lambda: _async(told_by_b.results() == 1), timeout=10)
        assert reply.results == []
        assert await b.ledger.hold_state(ticket.job_id) == "settled"
        assert await b.ledger.check_invariants() == []


async def test_a_live_replicas_jobs_stay_with_it_when_another_replica_starts(
    tmp_path: Path, pg_url: str
) -> None:
    long_lease: dict[str, Any] = {"route_order": "apiinone", "lease_seconds": 30.0}
    async with fast_sandbox(latency=(2.0, 2.0)) as sandbox, AsyncExitStack() as stack:
        a = await stack.enter_async_context(_replica(tmp_path / "a", pg_url, sandbox, **long_lease))
        reply = RecordingReply()
        ticket = await a.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await _until(lambda: _running_on(a, ticket.job_id))
        b = await stack.enter_async_context(_replica(tmp_path / "b", pg_url, sandbox, **long_lease))
        told_by_b = _with_restorer(b)
        assert await b.engine.resume() == 0
        await reply.wait()
        assert [r.job_id for r in reply.results] == [ticket.job_id]
        assert told_by_b.results() == 0


async def test_a_replica_whose_liveness_session_ended_takes_its_lock_again_when_it_renews(
    tmp_path: Path, pg_url: str
) -> None:
    async with _replica(tmp_path / "a", pg_url, fast_sandbox(), route_order="apiinone") as a:
        liveness = a.engine.store.liveness
        assert liveness is not None and liveness.held
        admin = await asyncpg.connect(pg_url)
        try:  # the server ends the session holding the lock (a restart, a network cut)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND ((classid::bigint << 32) | objid::bigint) = $1",
                liveness.key,
            )
        finally:
            await admin.close()
        await _until(lambda: _async(not liveness.held), timeout=5)
        await a.engine.store.renew()
        assert liveness.held
