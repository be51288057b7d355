"""The confirmation store and `Confirmations` on a real database: thresholds, waiting requests,
compare-and-set answers, expiry and a prompt rebuilt after a restart.

Every test runs on SQLite and on PostgreSQL (the `database_backend` fixture); the last ones race
two replicas (two connection pools) on one PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import messages
from bot.commands import Actor
from bot.confirm import CONFIRM_TTL, Confirmations, ConfirmState, ConfirmStore, PendingRequest
from bot.errors import NotFoundError, UserError
from bot.params import JobSpec, Kind
from bot.reply import ButtonAction
from bot.sql import SqlDatabase, open_database
from tests.support.core import RecordingReply
from tests.support.databases import DatabaseBackend
from tests.support.postgres import fresh_pg_url

NOW = 1_700_000_000.0
MEMBER = Actor(platform="console", tenant_id="t1", user_id="u-member", display_name="Member")
OTHER = Actor(platform="console", tenant_id="t1", user_id="u-other", display_name="Other")
ELSEWHERE = Actor(platform="console", tenant_id="t2", user_id="u-member", display_name="Member")


@pytest.fixture
async def db(database_backend: DatabaseBackend) -> AsyncIterator[SqlDatabase]:
    async with database_backend.fresh_url() as url, database_backend.open(url) as database:
        yield database


@pytest.fixture
def store(db: SqlDatabase) -> ConfirmStore:
    return ConfirmStore(db)


class Clock:
    """A settable clock in unix seconds."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Restorer:
    """Rebuilds a console reply from its saved address, keeping every one it made."""

    def __init__(self) -> None:
        self.made: list[RecordingReply] = []

    def restore(self, ref: dict[str, Any]) -> RecordingReply:
        reply = RecordingReply()
        reply.address = dict(ref)
        self.made.append(reply)
        return reply


def _request(
    request_id: str,
    *,
    actor: Actor = MEMBER,
    created: float = NOW,
    ttl: float = CONFIRM_TTL,
    kind: Kind = Kind.IMAGE,
    parent_id: str | None = None,
    request_key: str | None = None,
) -> PendingRequest:
    return PendingRequest(
        id=request_id,
        created=created,
        expires=created + ttl,
        actor=actor,
        spec=JobSpec(kind=kind, prompt="two foxes", count=2, seed=7),
        reply_ref={"console": True, "where": request_id},
        cost=20,
        parent_id=parent_id,
        request_key=request_key,
    )


async def _count(db: SqlDatabase) -> int:
    return int(await db.fetchval("SELECT COUNT(*) FROM confirmations"))


# --- ConfirmStore ---------------------------------------------------------------------------------


async def test_a_threshold_is_set_changed_and_turned_off_with_who_and_why(
    store: ConfirmStore, db: SqlDatabase
) -> None:
    assert await store.threshold("t1") is None
    await store.set_threshold("t1", 15, actor="console:mod", reason="first")
    await store.set_threshold("t2", 99, actor="console:mod", reason="another server")
    assert await store.threshold("t1") == 15

    await store.set_threshold("t1", 25, actor="console:mod2", reason="pricier models")

    assert await store.threshold("t1") == 25 and await store.threshold("t2") == 99
    row = await db.fetchrow("SELECT updated_by, reason FROM confirm_settings WHERE tenant = $1", "t1")
    assert (row["updated_by"], row["reason"]) == ("console:mod2", "pricier models")
    await store.set_threshold("t1", None, actor="console:mod", reason="off")
    assert await store.threshold("t1") is None


async def test_a_stored_request_reads_back_field_for_field(store: ConfirmStore) -> None:
    request = _request("r1", parent_id="job-0", request_key="slack:cmd:T1:1")

    stored, created = await store.add(request)

    assert created and stored is request
    assert await store.get("r1") == request
    assert await store.get("nope") is None


async def test_a_known_request_key_returns_the_stored_request_and_adds_nothing(
    store: ConfirmStore, db: SqlDatabase
) -> None:
    first, created = await store.add(_request("r1", request_key="slack:cmd:T1:1"))
    again, created_again = await store.add(_request("r2", request_key="slack:cmd:T1:1"))

    assert created and not created_again
    assert again == first and again.id == "r1"
    assert await _count(db) == 1


async def test_requests_without_a_key_never_collide(store: ConfirmStore, db: SqlDatabase) -> None:
    assert (await store.add(_request("r1")))[1]
    assert (await store.add(_request("r2")))[1]
    assert await _count(db) == 2


async def test_open_requests_are_the_members_pending_unexpired_ones_newest_first(store: ConfirmStore) -> None:
    for i, request in enumerate(
        [
            _request("old", created=NOW),
            _request("new", created=NOW + 10),
            _request("short", created=NOW + 20, ttl=5),  # expired by NOW + 100
            _request("theirs", created=NOW + 30, actor=OTHER),
            _request("there", created=NOW + 40, actor=ELSEWHERE),
            _request("answered", created=NOW + 50),
        ]
    ):
        assert (await store.add(request))[1], i
    assert await store.move("answered", ConfirmState.CONFIRMED)
    later = NOW + 100

    tenant, user = MEMBER.tenant, MEMBER.user_id
    assert [r.id for r in await store.open_requests(tenant, user, later, 10)] == ["new", "old"]
    assert [r.id for r in await store.open_requests(tenant, user, later, 1)] == ["new"]
    latest = await store.latest_open(tenant, user, later)
    assert latest is not None and latest.id == "new"
    assert await store.latest_open(tenant, user, NOW + CONFIRM_TTL + 60) is None
    assert [r.id for r in await store.due(NOW + 100)] == ["short"]
    assert [r.id for r in await store.due(NOW + CONFIRM_TTL + 15, limit=2)] == ["short", "old"]


async def test_an_open_child_is_found_by_parent_member_and_kind(store: ConfirmStore) -> None:
    await store.add(_request("c1", parent_id="job-1"))
    await store.add(_request("c3d", parent_id="job-1", kind=Kind.MODEL3D, created=NOW + 1))

    child = await store.open_child("job-1", MEMBER.user_id, "image", NOW + 1)
    assert child is not None and child.id == "c1"
    model = await store.open_child("job-1", MEMBER.user_id, "model3d", NOW + 1)
    assert model is not None and model.id == "c3d"
    assert await store.open_child("job-1", OTHER.user_id, "image", NOW + 1) is None
    assert await store.open_child("job-2", MEMBER.user_id, "image", NOW + 1) is None
    assert await store.open_child("job-1", MEMBER.user_id, "image", NOW + CONFIRM_TTL) is None
    await store.move("c1", ConfirmState.CANCELLED)
    assert await store.open_child("job-1", MEMBER.user_id, "image", NOW + 1) is None


async def test_an_answer_moves_a_pending_request_once(store: ConfirmStore) -> None:
    await store.add(_request("r1"))

    assert await store.move("r1", ConfirmState.CONFIRMED)
    assert not await store.move("r1", ConfirmState.CANCELLED)
    assert not await store.move("missing", ConfirmState.CANCELLED)
    stored = await store.get("r1")
    assert stored is not None and stored.state is ConfirmState.CONFIRMED


async def test_the_prompts_address_is_saved(store: ConfirmStore) -> None:
    await store.add(_request("r1"))
    await store.save_reply_ref("r1", {"console": True, "message": 42})
    stored = await store.get("r1")
    assert stored is not None and stored.reply_ref == {"console": True, "message": 42}


async def test_forget_before_deletes_only_requests_that_expired_earlier(
    store: ConfirmStore, db: SqlDatabase
) -> None:
    await store.add(_request("old", created=NOW - 3 * CONFIRM_TTL))
    await store.add(_request("fresh"))

    assert await store.forget_before(NOW) == 1

    assert await store.get("old") is None and await store.get("fresh") is not None
    assert await store.forget_before(NOW) == 0 and await _count(db) == 1


# --- Confirmations on the store -------------------------------------------------------------------


def _confirmations(store: ConfirmStore, clock: Clock, restorer: Restorer | None = None) -> Confirmations:
    return Confirmations(store=store, restorers={"console": restorer or Restorer()}, clock=clock)


async def _ask(confirmations: Confirmations, reply: RecordingReply, **options: Any) -> str:
    options.setdefault("request_key", None)
    options.setdefault("parent_id", None)
    spec = JobSpec(kind=Kind.IMAGE, prompt="two foxes", count=2)
    ticket = await confirmations.ask(MEMBER, spec, reply, cost=20, balance=100, threshold=15, **options)
    assert ticket.awaiting_confirmation and ticket.cost == 20
    return ticket.job_id


async def test_asking_stores_the_request_and_shows_confirm_and_cancel(store: ConfirmStore) -> None:
    confirmations = _confirmations(store, Clock())
    reply = RecordingReply()

    request_id = await _ask(confirmations, reply)

    [prompt] = reply.progress_updates
    assert prompt.text == messages.confirm_prompt(20, 100, 15, request_id, "console")
    assert [(b.action, b.job_id) for b in prompt.buttons] == [
        (ButtonAction.CONFIRM, request_id),
        (ButtonAction.CANCEL, request_id),
    ]
    found = await confirmations.find(MEMBER, request_id)
    assert found is not None and found.state is ConfirmState.PENDING and found.cost == 20
    assert await confirmations.find(MEMBER, None) == found
    assert [r.id for r in await confirmations.waiting(MEMBER)] == [request_id]
    with pytest.raises(UserError) as refused:
        await confirmations.find(OTHER, request_id)
    assert str(refused.value) == messages.confirm_not_yours()
    assert await confirmations.find(ELSEWHERE, request_id) is None  # another server's id space
    with pytest.raises(NotFoundError):
        await confirmations.find(OTHER, None)


async def test_a_retried_platform_request_asks_once(store: ConfirmStore, db: SqlDatabase) -> None:
    confirmations = _confirmations(store, Clock())
    first, retry = RecordingReply(), RecordingReply()

    a = await _ask(confirmations, first, request_key="slack:cmd:T1:trigger-1")
    b = await _ask(confirmations, retry, request_key="slack:cmd:T1:trigger-1")

    assert a == b and len(first.progress_updates) == 1 and retry.progress_updates == []
    assert await _count(db) == 1


async def test_a_second_click_on_the_same_button_asks_nothing_new(store: ConfirmStore) -> None:
    confirmations = _confirmations(store, Clock())
    await _ask(confirmations, RecordingReply(), parent_id="job-1")
    with pytest.raises(UserError) as again:
        await _ask(confirmations, RecordingReply(), parent_id="job-1")
    assert str(again.value) == messages.confirm_already_waiting()


async def test_decline_says_so_once_and_a_confirmed_request_cannot_be_declined(store: ConfirmStore) -> None:
    confirmations = _confirmations(store, Clock())
    reply, other_reply = RecordingReply(), RecordingReply()
    declined = await _ask(confirmations, reply)
    confirmed = await _ask(confirmations, other_reply)

    assert await confirmations.decline(MEMBER, declined) == messages.confirm_declined()
    assert [f.text for f in reply.failures] == [messages.confirm_declined()]
    with pytest.raises(UserError) as refused:
        await confirmations.decline(MEMBER, declined)
    assert str(refused.value) == messages.confirm_declined()

    request = await confirmations.find(MEMBER, confirmed)
    assert request is not None and await confirmations.confirmed(request)
    assert await confirmations.decline(MEMBER, confirmed) is None  # a job now: cancel that
    assert not await confirmations.confirmed(request)  # recorded once
    assert other_reply.failures == []


async def test_expiry_takes_the_buttons_off_and_refuses_a_late_answer(store: ConfirmStore) -> None:
    clock = Clock()
    confirmations = _confirmations(store, clock)
    stale_reply, fresh_reply = RecordingReply(), RecordingReply()
    stale = await _ask(confirmations, stale_reply)
    clock.now = NOW + CONFIRM_TTL - 5
    fresh = await _ask(confirmations, fresh_reply)
    clock.now = NOW + CONFIRM_TTL + 1

    assert await confirmations.expire_due() == 1

    assert [f.text for f in stale_reply.failures] == [messages.confirm_expired()]
    assert fresh_reply.failures == []
    assert await confirmations.expire_due() == 0
    request = await store.get(stale)
    assert request is not None and request.state is ConfirmState.EXPIRED
    with pytest.raises(UserError) as refused:
        await confirmations.check_open(request)
    assert str(refused.value) == messages.confirm_expired()
    # An answer that arrives after the offer ran out but before the sweep expires it itself.
    clock.now = NOW + 2 * CONFIRM_TTL
    late = await store.get(fresh)
    assert late is not None
    with pytest.raises(UserError):
        await confirmations.check_open(late)
    assert [f.text for f in fresh_reply.failures] == [messages.confirm_expired()]


async def test_after_a_restart_the_prompt_is_rebuilt_from_its_saved_address(store: ConfirmStore) -> None:
    first = RecordingReply()
    first.address = {"console": True, "prompt": "here"}
    request_id = await _ask(_confirmations(store, Clock()), first)
    restorer = Restorer()
    restarted = _confirmations(ConfirmStore(store.db), Clock(), restorer)

    assert await restarted.decline(MEMBER, request_id) == messages.confirm_declined()

    [rebuilt] = restorer.made
    assert rebuilt.address == {"console": True, "prompt": "here"}
    assert [f.text for f in rebuilt.failures] == [messages.confirm_declined()]


# --- two replicas on one PostgreSQL database ------------------------------------------------------


async def test_two_replicas_storing_one_request_key_at_once_store_one_row(pg_server: str) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        open_database(url, max_size=8) as one,
        open_database(url, max_size=8) as two,
    ):
        stores = [ConfirmStore(one), ConfirmStore(two)]
        for round_ in range(5):
            key = f"slack:cmd:T1:retry-{round_}"
            results = await asyncio.gather(
                *(stores[i % 2].add(_request(f"r{round_}-{i}", request_key=key)) for i in range(16))
            )

            assert sum(created for _, created in results) == 1
            assert len({stored.id for stored, _ in results}) == 1
            rows = await one.fetch("SELECT id FROM confirmations WHERE request_key = $1", key)
            assert [r["id"] for r in rows] == [results[0][0].id]


async def test_two_replicas_answering_one_request_at_once_move_it_once(pg_server: str) -> None:
    async with (
        fresh_pg_url(pg_server) as url,
        open_database(url, max_size=8) as one,
        open_database(url, max_size=8) as two,
    ):
        stores = [ConfirmStore(one), ConfirmStore(two)]
        await stores[0].add(_request("r1"))
        answers = [ConfirmState.CONFIRMED, ConfirmState.CANCELLED] * 4

        won = await asyncio.gather(*(stores[i % 2].move("r1", to) for i, to in enumerate(answers)))

        assert sum(won) == 1
        stored = await stores[1].get("r1")
        assert stored is not None and stored.state is answers[won.index(True)]
