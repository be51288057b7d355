"""The job state machine in the store: each transition one transaction with its ledger effect
and outbox row, guarded by compare-and-set so that of two racing actors exactly one wins.

Every test runs on SQLite and on PostgreSQL; the lease tests play two replicas as two stores
with their own owner on one database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from bot.commands import Actor
from bot.confirm import ConfirmState, ConfirmStore, PendingRequest
from bot.db import Database
from bot.errors import BusyError, InsufficientCreditsError, QueueFullError
from bot.ledger import CreditLedger
from bot.params import JobSpec
from bot.reply import JobPhase
from bot.store import ConfirmationClosedError, JobRecord, JobStore, LostRaceError, StoredResult, new_job_id
from providers.base import JobHandle, Kind
from tests.support.databases import DatabaseBackend

ALICE = Actor(platform="console", tenant_id="t", user_id="alice")


@pytest.fixture
async def store(database_backend: DatabaseBackend) -> AsyncIterator[JobStore]:
    async with database_backend.fresh_url() as url, database_backend.open(url) as db:
        yield JobStore(db, ledger=CreditLedger(db, default_allowance=100), owner="a")


def _replica(store: JobStore, owner: str, *, later: float = 0.0) -> JobStore:
    """A second replica on the same database, its clock `later` seconds ahead."""
    return JobStore(
        store.db, ledger=store.ledger, owner=owner, lease=store.lease, clock=lambda: time.time() + later
    )


def _job(cost: int = 10, request_key: str | None = None, actor: Actor = ALICE) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=new_job_id(),
        created=now,
        updated=now,
        _actor=actor,
        _spec=JobSpec(kind=Kind.IMAGE, prompt="a fox"),
        state=JobPhase.QUEUED,
        reply_ref={},
        cost=cost,
        request_key=request_key,
    )


def _ledger(store: JobStore) -> CreditLedger:
    assert isinstance(store.ledger, CreditLedger)
    return store.ledger


async def _balance(store: JobStore) -> int:
    return (await _ledger(store).account("console:t", "alice")).balance


async def _running(store: JobStore) -> JobRecord:
    await store.admit(_job())
    claimed = await store.claim_next(time.time() + 60, ["console"])
    assert claimed is not None
    claimed.route, claimed.handle = "v:m", JobHandle(vendor="v", model="m", job_id="x")
    await store.accepted(claimed)
    return claimed


async def test_admission_holds_and_inserts_together(store: JobStore) -> None:
    admitted = await store.admit(_job(cost=30))
    job = admitted.job
    assert admitted.created and admitted.position == 1 and await _balance(store) == 70
    assert (await store.get(job.id)) is not None
    assert await _ledger(store).hold_state(job.id) == "held"


async def test_a_refused_hold_leaves_no_job(store: JobStore) -> None:
    with pytest.raises(InsufficientCreditsError):
        await store.admit(_job(cost=500))
    assert await store.unfinished() == []
    assert await _ledger(store).open_holds() == []


async def test_a_retried_request_key_returns_the_first_job_and_holds_once(store: JobStore) -> None:
    first = await store.admit(_job(request_key="evt-1"))
    again = await store.admit(_job(request_key="evt-1"))
    assert first.created and not again.created and again.job.id == first.job.id
    assert await _balance(store) == 90


async def test_the_per_user_cap_is_counted_in_the_admission_transaction(store: JobStore) -> None:
    results = await asyncio.gather(
        *(store.admit(_job(), max_open=2) for _ in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) and r.created for r in results) == 2
    assert sum(isinstance(r, BusyError) for r in results) == 3
    assert await _balance(store) == 80


async def test_two_workers_claiming_one_job_one_wins(store: JobStore) -> None:
    job = (await store.admit(_job())).job
    replicas = [_replica(store, f"w{i}") for i in range(4)]
    claims = await asyncio.gather(*(r.claim_next(0, ["console"]) for r in replicas))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1 and winners[0].id == job.id
    assert winners[0].state is JobPhase.SUBMITTING and winners[0].attempts == 1


async def test_a_worker_that_lost_to_cancel_cannot_mark_the_job_running(store: JobStore) -> None:
    job = (await store.admit(_job())).job
    claimed = await store.claim_next(0, ["console"])
    assert claimed is not None
    assert await store.cancel(job.id, "Cancelled.") is JobPhase.CANCELLED
    claimed.route, claimed.handle = "v:m", JobHandle(vendor="v", model="m", job_id="x")
    with pytest.raises(LostRaceError) as lost:
        await store.accepted(claimed)
    assert lost.value.state is JobPhase.CANCELLED
    assert await _balance(store) == 100


async def test_done_settles_and_writes_the_result_message(store: JobStore) -> None:
    job = await _running(store)
    assert await store.done(job.id, StoredResult(size=(64, 64)))
    assert await _ledger(store).hold_state(job.id) == "settled"
    (row,) = await store.unsent(job.id)
    assert row.kind == "result"
    stored = await store.get(job.id)
    assert (
        stored is not None and stored.state is JobPhase.DONE and stored.result == StoredResult(size=(64, 64))
    )


async def test_a_cancel_after_done_changes_nothing(store: JobStore) -> None:
    job = await _running(store)
    await store.done(job.id, StoredResult())
    assert await store.cancel(job.id, "Cancelled.") is JobPhase.DONE
    assert not await store.failed(job.id, "failed", "late failure")
    assert await _ledger(store).hold_state(job.id) == "settled"
    assert [r.kind for r in await store.unsent(job.id)] == ["result"]


async def test_done_racing_cancel_has_exactly_one_winner(store: JobStore) -> None:
    winners = []
    for i in range(8):  # each round's hold is 10 of the allowance of 100; both orders of arrival
        job = await _running(store)
        done_call, cancel_call = store.done(job.id, StoredResult()), store.cancel(job.id, "C.")
        if i % 2:
            cancelled, done = await asyncio.gather(cancel_call, done_call)
        else:
            done, cancelled = await asyncio.gather(done_call, cancel_call)
        assert done != (cancelled is JobPhase.CANCELLED)
        assert len(await store.unsent(job.id)) == 1
        winners.append("done" if done else "cancel")
    assert set(winners) == {"done", "cancel"}
    assert await _ledger(store).check_invariants() == []
    assert await _ledger(store).open_holds() == []


async def test_failed_releases_once_and_tells_the_user(store: JobStore) -> None:
    job = await _running(store)
    assert await store.failed(job.id, "It failed. You weren't charged.", "vendor said no")
    assert not await store.failed(job.id, "again", "again")
    assert await _balance(store) == 100
    (row,) = await store.unsent(job.id)
    assert (row.kind, row.payload["text"]) == ("failure", "It failed. You weren't charged.")


async def test_a_sent_message_is_not_sent_again(store: JobStore) -> None:
    job = await _running(store)
    await store.failed(job.id, "no", "no")
    (row,) = await store.unsent()
    await store.mark_attempt(row.id)
    assert [r.attempts for r in await store.unsent()] == [1]
    await store.mark_sent(row.id)
    assert await store.unsent() == []


async def test_an_unbilled_vendor_failure_goes_back_to_submitting(store: JobStore) -> None:
    job = await _running(store)
    await store.resubmit(job)
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobPhase.SUBMITTING and stored.handle is None
    assert stored.attempts == 2


async def test_orphan_holds_are_released_and_job_holds_are_not(store: JobStore) -> None:
    job = (await store.admit(_job())).job
    await _ledger(store).hold("console:t", "alice", "lost-job", 5, kind="image")
    assert await store.release_orphan_holds() == ["lost-job"]
    assert await _ledger(store).hold_state(job.id) == "held"
    assert await _balance(store) == 90


async def test_route_times_round_trip(store: JobStore) -> None:
    await store.save_route_times({"v:m": [1.0, 2.5]})
    await store.save_route_times({"v:m": [3.0], "w:n": [4.0]})
    assert await store.load_route_times() == {"v:m": [3.0], "w:n": [4.0]}


async def test_places_in_line_count_queued_jobs_in_admission_order_and_skip_every_other(
    store: JobStore,
) -> None:
    users = [Actor(platform="console", tenant_id="t", user_id=f"u{i}") for i in range(6)]
    jobs = [(await store.admit(_job(actor=u))).job for u in users]
    claimed = await store.claim_next(0, ["console"])  # the oldest left the queue
    assert claimed is not None and claimed.id == jobs[0].id
    await store.cancel(jobs[2].id, "Cancelled.")  # ended
    assert [await store.queue_position(j.id) for j in jobs] == [0, 1, 0, 2, 3, 4]
    assert await store.queue_positions() == {jobs[1].id: 1, jobs[3].id: 2, jobs[4].id: 3, jobs[5].id: 4}
    assert await store.queue_position("no-such-job") == 0


async def test_the_place_in_line_is_counted_from_the_open_jobs_index_alone(store: JobStore) -> None:
    # A long-lived bot has many finished jobs: counting a place must never read their rows.
    if store.db.dialect != "sqlite":
        pytest.skip("reads SQLite's query plan")
    db = store.db
    assert isinstance(db, Database)
    job = (await store.admit(_job())).job
    seen: list[str] = []
    await db.run(lambda conn: conn.set_trace_callback(seen.append))
    try:
        assert await store.queue_position(job.id) == 1
    finally:
        await db.run(lambda conn: conn.set_trace_callback(None))
    (count,) = [sql for sql in seen if "COUNT(*)" in sql]
    plan = await db.run(lambda conn: [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + count)])
    assert any("COVERING INDEX jobs_open" in step for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


async def test_admission_refuses_beyond_the_queue_bound_and_takes_nothing(store: JobStore) -> None:
    for _ in range(2):
        await store.admit(
            _job(actor=Actor(platform="console", tenant_id="t", user_id=new_job_id())), max_queued=2
        )
    with pytest.raises(QueueFullError):
        await store.admit(_job(), max_queued=2)
    assert await _balance(store) == 100 and len(await store.unfinished()) == 2


async def test_the_per_user_cap_holds_across_replicas_admitting_at_once(store: JobStore) -> None:
    replicas = [store, _replica(store, "b"), _replica(store, "c")]
    results = await asyncio.gather(
        *(replicas[i % 3].admit(_job(), max_open=2) for i in range(9)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results].count("BusyError") == 7, results
    assert len(await store.unfinished()) == 2 and await _balance(store) == 80


async def test_one_request_key_admitted_by_two_replicas_at_once_makes_one_job(store: JobStore) -> None:
    other = _replica(store, "b")
    results = await asyncio.gather(
        *(r.admit(_job(request_key="evt-9")) for r in (store, other, store, other))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.job.id for r in results}) == 1 and await _balance(store) == 90


async def test_replicas_claiming_at_once_each_get_a_different_job_oldest_first(store: JobStore) -> None:
    jobs = [
        (await store.admit(_job(actor=Actor(platform="console", tenant_id="t", user_id=f"u{i}")))).job
        for i in range(6)
    ]
    replicas = [_replica(store, f"r{i}") for i in range(6)]
    claims = await asyncio.gather(*(r.claim_next(0, ["console"]) for r in replicas))
    assert sorted(c.id for c in claims if c is not None) == sorted(j.id for j in jobs)
    assert await store.claim_next(0, ["console"]) is None


async def test_a_replica_cannot_finish_a_job_another_took_over_after_its_lease_expired(
    store: JobStore,
) -> None:
    job = await _running(store)
    assert await _replica(store, "b").take_over(["console"]) == []  # the lease is fresh
    later = _replica(store, "b", later=store.lease + 1)
    (taken,) = await later.take_over(["console"])
    assert taken.id == job.id and taken.state is JobPhase.RUNNING
    assert job.id not in await store.renew()  # the old owner learns it lost the job
    assert await store.done(job.id, StoredResult()) is None  # and cannot charge for it
    with pytest.raises(LostRaceError):
        await store.resubmit(job)
    assert await later.done(job.id, StoredResult()) is not None
    assert await _ledger(store).hold_state(job.id) == "settled"


async def test_a_renewed_lease_is_not_taken_over(store: JobStore) -> None:
    job = await _running(store)
    assert await store.renew() == {job.id}
    soon = _replica(store, "b", later=store.lease / 2)
    assert await soon.take_over(["console"]) == []


async def test_take_over_skips_platforms_this_replica_cannot_reach(store: JobStore) -> None:
    await _running(store)
    assert await _replica(store, "b", later=store.lease + 1).take_over(["discord"]) == []


async def test_a_start_on_sqlite_takes_every_lease_at_once(store: JobStore) -> None:
    job = await _running(store)
    (taken,) = await _replica(store, "b").take_over(["console"], every=True)
    assert taken.id == job.id


async def test_an_unsent_message_is_taken_over_only_once_its_lease_expired(store: JobStore) -> None:
    job = await _running(store)
    await store.failed(job.id, "no", "no")
    assert await _replica(store, "b").take_unsent(["console"]) == []  # its ender sends it
    later = _replica(store, "b", later=store.lease + 1)
    (row,) = await later.take_unsent(["console"])
    assert row.job_id == job.id and row.kind == "failure"
    assert await _replica(store, "c", later=store.lease + 1).take_unsent(["console"]) == []


async def test_released_leases_are_taken_over_at_once(store: JobStore) -> None:
    job = await _running(store)
    await store.release_leases()  # a clean shutdown
    (taken,) = await _replica(store, "b").take_over(["console"])
    assert taken.id == job.id


async def test_a_worker_claims_only_jobs_whose_users_its_process_can_tell(store: JobStore) -> None:
    discord = Actor(platform="discord", tenant_id="g", user_id="d1")
    theirs = (await store.admit(_job(actor=discord))).job
    ours = (await store.admit(_job())).job  # console, admitted later
    claimed = await store.claim_next(0, ["console"])
    assert claimed is not None and claimed.id == ours.id
    assert await store.claim_next(0, ["console"]) is None
    assert await store.count_queued(["console"]) == 0 and await store.count_queued(["discord"]) == 1
    assert await store.queue_position(theirs.id) == 1


async def _waiting_request(store: JobStore, state: str) -> str:
    """A request waiting for Confirm (as bot.confirm stores it), in `state`."""
    request = ConfirmStore(store.db)
    job = _job()
    await request.add(
        PendingRequest(
            id=job.id,
            created=job.created,
            expires=job.created + 600,
            actor=job.actor,
            spec=job.spec,
            reply_ref={},
            cost=job.cost,
        )
    )
    if state != "pending":
        assert await request.move(job.id, ConfirmState(state))
    return job.id


async def test_a_confirm_marks_its_request_confirmed_in_the_admission_transaction(store: JobStore) -> None:
    request_id = await _waiting_request(store, "pending")
    job = _job()
    job.id = request_id
    assert (await store.admit(job, confirming=True)).created
    found = await ConfirmStore(store.db).get(request_id)
    assert found is not None and found.state is ConfirmState.CONFIRMED


async def test_a_confirm_after_a_cancel_on_another_replica_holds_nothing(store: JobStore) -> None:
    request_id = await _waiting_request(store, "cancelled")  # the other replica's Cancel won
    job = _job()
    job.id = request_id
    with pytest.raises(ConfirmationClosedError):
        await store.admit(job, confirming=True)
    assert await _balance(store) == 100 and await store.get(request_id) is None


def test_a_compacted_record_holds_json_and_gives_back_the_same_actor_and_spec() -> None:
    job = _job()
    actor, spec = job.actor, job.spec
    job.compact()
    assert isinstance(job._actor, str) and isinstance(job._spec, str)
    assert job.actor == actor and job.spec == spec
