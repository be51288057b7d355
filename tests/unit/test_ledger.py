"""The credit ledger: holds settle or release exactly once, allowances refill lazily, budgets and
costs per tenant, audited moderator operations, and no overdraft under concurrency.

Every test runs on SQLite and on PostgreSQL (the `database_backend` fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.errors import (
    BannedError,
    FrozenError,
    InsufficientCreditsError,
    InvalidInputError,
    TenantBudgetError,
)
from bot.ledger import CreditLedger
from bot.sql import SqlDatabase, Tx
from tests.support.databases import DatabaseBackend

DAY = 86_400
NOON = 19_675 * DAY + 12 * 3600  # 2023-11-14 12:00 UTC
T, U, V = "discord:guild", "alice", "bob"
MOD = {"actor": "discord:mod", "reason": "because"}


class Clock:
    """A settable clock in unix seconds."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def next_day(self) -> None:
        self.now += DAY


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def db_url(database_backend: DatabaseBackend) -> AsyncIterator[str]:
    async with database_backend.fresh_url() as url:
        yield url


@pytest.fixture
async def db(database_backend: DatabaseBackend, db_url: str) -> AsyncIterator[SqlDatabase]:
    async with database_backend.open(db_url) as database:
        yield database


@pytest.fixture
def ledger(db: SqlDatabase, clock: Clock) -> CreditLedger:
    return CreditLedger(db, default_allowance=100, clock=clock)


async def balance(ledger: CreditLedger, user: str = U, tenant: str = T) -> int:
    return (await ledger.account(tenant, user)).balance


async def entry_kinds(ledger: CreditLedger, user: str = U) -> list[str]:
    return [e.kind for e in reversed(await ledger.history(T, user, limit=100))]


# --- hold, settle, release -------------------------------------------------------------------


async def test_a_new_member_starts_with_the_daily_allowance(ledger: CreditLedger) -> None:
    account = await ledger.account(T, U)
    assert (account.balance, account.held, account.allowance) == (100, 0, 100)
    assert await entry_kinds(ledger) == ["allowance"]
    assert await ledger.check_invariants() == []


async def test_a_hold_takes_the_cost_at_once_and_settling_keeps_it(ledger: CreditLedger) -> None:
    assert await ledger.hold(T, U, "j1", 10, kind="image") == 90
    assert (await ledger.account(T, U)).held == 10
    assert await ledger.settle("j1") is True
    account = await ledger.account(T, U)
    assert (account.balance, account.held) == (90, 0)
    assert await ledger.hold_state("j1") == "settled"
    assert await entry_kinds(ledger) == ["allowance", "hold", "settle"]
    assert await ledger.check_invariants() == []


async def test_a_release_gives_every_credit_back(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "j1", 30, kind="model3d")
    assert await ledger.release("j1", reason="vendor error") is True
    assert await balance(ledger) == 100
    assert await ledger.hold_state("j1") == "released"
    newest = (await ledger.history(T, U, limit=1))[0]
    assert (newest.kind, newest.delta, newest.reason, newest.job_id) == ("release", 30, "vendor error", "j1")
    assert await ledger.check_invariants() == []


async def test_settle_and_release_each_happen_at_most_once(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "settled", 10, kind="image")
    await ledger.hold(T, U, "released", 10, kind="image")
    assert await ledger.settle("settled") is True
    assert await ledger.settle("settled") is False
    assert await ledger.release("settled", reason="late failure") is False
    assert await ledger.release("released", reason="failed") is True
    assert await ledger.release("released", reason="failed again") is False
    assert await ledger.settle("released") is False
    assert await balance(ledger) == 90
    assert await ledger.check_invariants() == []


async def test_settling_or_releasing_an_unknown_job_does_nothing(ledger: CreditLedger) -> None:
    assert await ledger.settle("nope") is False
    assert await ledger.release("nope", reason="x") is False
    assert await ledger.hold_state("nope") is None


async def test_racing_settle_and_release_resolve_a_job_exactly_once(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "j1", 10, kind="image")
    results = await asyncio.gather(
        *(ledger.settle("j1") if i % 2 else ledger.release("j1", reason="race") for i in range(20))
    )
    assert results.count(True) == 1
    state = await ledger.hold_state("j1")
    assert await balance(ledger) == (90 if state == "settled" else 100)
    assert await ledger.check_invariants() == []


async def test_holding_the_same_job_twice_charges_once(ledger: CreditLedger) -> None:
    assert await ledger.hold(T, U, "j1", 10, kind="image") == 90
    assert await ledger.hold(T, U, "j1", 10, kind="image") == 90
    await ledger.settle("j1")
    assert await ledger.hold(T, U, "j1", 10, kind="image") == 90
    assert (await entry_kinds(ledger)).count("hold") == 1


async def test_reusing_a_job_id_for_another_member_is_refused_as_a_bug(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "j1", 10, kind="image")
    with pytest.raises(ValueError):
        await ledger.hold(T, V, "j1", 10, kind="image")
    assert await balance(ledger, V) == 100


async def test_a_hold_amount_must_be_a_non_negative_integer(ledger: CreditLedger) -> None:
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError):
            await ledger.hold(T, U, "j1", bad, kind="image")  # type: ignore[arg-type]
    assert await ledger.hold_state("j1") is None


async def test_a_free_job_holds_zero_credits(ledger: CreditLedger) -> None:
    assert await ledger.hold(T, U, "j1", 0, kind="image") == 100
    assert await ledger.settle("j1") is True
    assert await ledger.check_invariants() == []


async def test_open_holds_lists_only_unresolved_holds(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "a", 10, kind="image")
    await ledger.hold(T, V, "b", 30, kind="model3d")
    await ledger.hold(T, U, "c", 10, kind="edit")
    await ledger.settle("a")
    held = await ledger.open_holds()
    assert [(h.job_id, h.user, h.amount, h.kind, h.state) for h in held] == [
        ("b", V, 30, "model3d", "held"),
        ("c", U, 10, "edit", "held"),
    ]


# --- refusals --------------------------------------------------------------------------------


async def test_insufficient_credits_names_the_balance_and_the_cost_and_charges_nothing(
    ledger: CreditLedger,
) -> None:
    await ledger.hold(T, U, "j1", 95, kind="image")
    with pytest.raises(InsufficientCreditsError) as info:
        await ledger.hold(T, U, "j2", 10, kind="image")
    assert (info.value.balance, info.value.cost) == (5, 10)
    assert "10 credits" in info.value.message and "5 credits" in info.value.message
    assert await balance(ledger) == 5
    assert await ledger.hold_state("j2") is None
    assert await ledger.check_invariants() == []


async def test_a_banned_member_is_refused_and_charged_nothing(ledger: CreditLedger) -> None:
    await ledger.ban(T, U, **MOD)
    with pytest.raises(BannedError, match="not allowed"):
        await ledger.hold(T, U, "j1", 10, kind="image")
    account = await ledger.account(T, U)
    assert (account.balance, account.held, account.banned) == (100, 0, True)
    await ledger.unban(T, U, **MOD)
    assert await ledger.hold(T, U, "j1", 10, kind="image") == 90


async def test_a_frozen_member_is_refused_and_charged_nothing(ledger: CreditLedger) -> None:
    await ledger.freeze(T, U, **MOD)
    with pytest.raises(FrozenError, match="frozen"):
        await ledger.hold(T, U, "j1", 10, kind="image")
    account = await ledger.account(T, U)
    assert (account.balance, account.frozen) == (100, True)
    await ledger.unfreeze(T, U, **MOD)
    assert await ledger.hold(T, U, "j1", 10, kind="image") == 90


# --- allowance -------------------------------------------------------------------------------


async def test_the_allowance_refills_lazily_on_a_new_utc_day(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.hold(T, U, "j1", 30, kind="model3d")
    await ledger.settle("j1")
    assert await balance(ledger) == 70
    clock.now += 11 * 3600  # 23:00 the same UTC day
    assert await balance(ledger) == 70
    clock.now += 2 * 3600  # 01:00 the next day
    assert await balance(ledger) == 100
    newest = (await ledger.history(T, U, limit=1))[0]
    assert (newest.kind, newest.delta, newest.balance_after) == ("allowance", 30, 100)
    assert await ledger.check_invariants() == []


async def test_the_refill_happens_inside_the_hold_that_touches_the_account(
    ledger: CreditLedger, clock: Clock
) -> None:
    await ledger.hold(T, U, "j1", 100, kind="image")
    clock.next_day()
    assert await ledger.hold(T, U, "j2", 100, kind="image") == 0
    assert await entry_kinds(ledger) == ["allowance", "hold", "allowance", "hold"]


async def test_the_allowance_tops_up_only_once_a_day(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.hold(T, U, "j1", 50, kind="image")
    await ledger.release("j1", reason="failed")
    await ledger.hold(T, U, "j2", 50, kind="image")
    assert await balance(ledger) == 50
    assert (await entry_kinds(ledger)).count("allowance") == 1


async def test_the_allowance_never_lowers_a_balance(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.grant(T, U, 50, **MOD)
    clock.next_day()
    assert await balance(ledger) == 150
    assert (await entry_kinds(ledger)).count("allowance") == 1


async def test_a_changed_allowance_applies_at_the_next_refill(ledger: CreditLedger, clock: Clock) -> None:
    assert await balance(ledger) == 100
    await ledger.set_allowance(T, 200, **MOD)
    assert (await ledger.account(T, U)).allowance == 200
    assert await balance(ledger) == 100
    clock.next_day()
    assert await balance(ledger) == 200
    assert await balance(ledger, V) == 200


async def test_the_account_says_when_the_next_refill_is(ledger: CreditLedger) -> None:
    account = await ledger.account(T, U)
    assert account.next_refill == (NOON // DAY + 1) * DAY


async def test_tenants_have_separate_accounts(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "j1", 40, kind="image")
    assert await balance(ledger, U, "slack:team") == 100
    assert await balance(ledger, U) == 60


# --- budget ----------------------------------------------------------------------------------


async def test_a_budget_caps_what_the_whole_tenant_holds_per_day(ledger: CreditLedger) -> None:
    await ledger.set_budget(T, 25, **MOD)
    await ledger.hold(T, U, "j1", 10, kind="image")
    await ledger.hold(T, V, "j2", 10, kind="image")
    with pytest.raises(TenantBudgetError, match="budget"):
        await ledger.hold(T, U, "j3", 10, kind="image")
    assert await balance(ledger) == 90
    assert await ledger.hold_state("j3") is None
    assert (await ledger.tenant_settings(T)).budget_used_today == 20
    assert await ledger.hold(T, U, "j4", 5, kind="image") == 85


async def test_released_holds_give_the_budget_back(ledger: CreditLedger) -> None:
    await ledger.set_budget(T, 10, **MOD)
    await ledger.hold(T, U, "j1", 10, kind="image")
    await ledger.release("j1", reason="failed")
    await ledger.hold(T, U, "j2", 10, kind="image")
    await ledger.settle("j2")
    with pytest.raises(TenantBudgetError):
        await ledger.hold(T, V, "j3", 10, kind="image")


async def test_the_budget_starts_afresh_each_utc_day(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.set_budget(T, 10, **MOD)
    await ledger.hold(T, U, "j1", 10, kind="image")
    clock.next_day()
    assert await ledger.hold(T, U, "j2", 10, kind="image") == 90


async def test_clearing_the_budget_removes_the_cap(ledger: CreditLedger) -> None:
    await ledger.set_budget(T, 10, **MOD)
    await ledger.hold(T, U, "j1", 10, kind="image")
    await ledger.set_budget(T, None, **MOD)
    assert (await ledger.tenant_settings(T)).budget is None
    assert await ledger.hold(T, U, "j2", 10, kind="image") == 80


async def test_one_tenants_budget_does_not_cap_another(ledger: CreditLedger) -> None:
    await ledger.set_budget(T, 10, **MOD)
    await ledger.hold(T, U, "j1", 10, kind="image")
    assert await ledger.hold("slack:team", U, "j2", 10, kind="image") == 90


# --- costs -----------------------------------------------------------------------------------


async def test_costs_fall_back_from_the_model_to_any_model_to_the_default(ledger: CreditLedger) -> None:
    assert await ledger.cost_for(T, "image", "pixazo") == 10
    assert await ledger.cost_for(T, "model3d", None) == 30
    await ledger.set_cost(T, "image", 4, **MOD)
    assert await ledger.cost_for(T, "image", "pixazo") == 4
    await ledger.set_cost(T, "image", 7, model="pixazo", **MOD)
    assert await ledger.cost_for(T, "image", "pixazo") == 7
    assert await ledger.cost_for(T, "image", "runware") == 4
    assert await ledger.cost_for(T, "image", None) == 4
    assert await ledger.cost_for(T, "edit", "pixazo") == 10


async def test_costs_are_per_tenant_and_may_be_zero(ledger: CreditLedger) -> None:
    await ledger.set_cost(T, "edit", 0, **MOD)
    assert await ledger.cost_for(T, "edit") == 0
    assert await ledger.cost_for("slack:team", "edit") == 10
    assert (await ledger.tenant_settings(T)).costs == {("edit", "*"): 0}


async def test_constructor_defaults_set_the_fallback_costs(db: SqlDatabase, clock: Clock) -> None:
    ledger = CreditLedger(db, default_costs={"image": 2, "edit": 3, "model3d": 5}, clock=clock)
    assert [await ledger.cost_for(T, k) for k in ("image", "edit", "model3d")] == [2, 3, 5]


async def test_an_unknown_command_kind_has_no_cost(ledger: CreditLedger) -> None:
    with pytest.raises(ValueError):
        await ledger.cost_for(T, "video")
    with pytest.raises(InvalidInputError, match="video"):
        await ledger.set_cost(T, "video", 5, **MOD)


# --- moderator operations --------------------------------------------------------------------


async def test_grant_take_and_set_move_the_balance_by_what_they_say(ledger: CreditLedger) -> None:
    assert await ledger.grant(T, U, 50, **MOD) == 150
    assert await ledger.take(T, U, 20, **MOD) == 130
    assert await ledger.set_balance(T, U, 7, **MOD) == 7
    assert await ledger.set_balance(T, U, 0, **MOD) == 0
    assert [e.delta for e in reversed(await ledger.history(T, U))] == [100, 50, -20, -123, -7]
    assert await ledger.check_invariants() == []


async def test_member_operations_are_audited_with_actor_and_reason(ledger: CreditLedger) -> None:
    ops = [
        ledger.grant(T, U, 5, actor="m:1", reason="r-grant"),
        ledger.take(T, U, 5, actor="m:2", reason="r-take"),
        ledger.set_balance(T, U, 9, actor="m:3", reason="r-set"),
        ledger.freeze(T, U, actor="m:4", reason="r-freeze"),
        ledger.unfreeze(T, U, actor="m:5", reason="r-unfreeze"),
        ledger.ban(T, U, actor="m:6", reason="r-ban"),
        ledger.unban(T, U, actor="m:7", reason="r-unban"),
    ]
    for op in ops:
        await op
    audited = [(e.kind, e.actor, e.reason, e.balance_after) for e in reversed(await ledger.history(T, U))][1:]
    assert audited == [
        ("grant", "m:1", "r-grant", 105),
        ("take", "m:2", "r-take", 100),
        ("set", "m:3", "r-set", 9),
        ("freeze", "m:4", "r-freeze", 9),
        ("unfreeze", "m:5", "r-unfreeze", 9),
        ("ban", "m:6", "r-ban", 9),
        ("unban", "m:7", "r-unban", 9),
    ]


async def test_tenant_settings_are_audited_with_actor_and_reason(
    ledger: CreditLedger, db: SqlDatabase
) -> None:
    await ledger.set_allowance(T, 50, actor="m:1", reason="r1")
    await ledger.set_cost(T, "image", 3, model="pixazo", actor="m:2", reason="r2")
    await ledger.set_budget(T, 500, actor="m:3", reason="r3")
    await ledger.set_budget(T, None, actor="m:4", reason="r4")
    await ledger.block_add(T, "Gore", actor="m:5", reason="r5")
    await ledger.block_remove(T, "gore", actor="m:6", reason="r6")
    rows = await db.fetch(
        "SELECT kind, actor, reason, detail, delta, user_id FROM entries WHERE tenant = $1 ORDER BY id", T
    )
    assert [tuple(r) for r in rows] == [
        ("allowance_set", "m:1", "r1", "50", 0, None),
        ("cost_set", "m:2", "r2", "image:pixazo = 3", 0, None),
        ("budget_set", "m:3", "r3", "500", 0, None),
        ("budget_set", "m:4", "r4", "none", 0, None),
        ("block_add", "m:5", "r5", "gore", 0, None),
        ("block_remove", "m:6", "r6", "gore", 0, None),
    ]


@pytest.mark.parametrize("amount", [0, -5, 1_000_001, 2.5, True])
async def test_grant_and_take_refuse_amounts_outside_one_to_the_maximum(
    ledger: CreditLedger, amount: int
) -> None:
    for op in (ledger.grant, ledger.take):
        with pytest.raises(InvalidInputError, match="isn't a valid amount") as info:
            await op(T, U, amount, **MOD)
        assert "1,000,000" in info.value.message
    assert await ledger.history(T, U) == []


@pytest.mark.parametrize("amount", [-1, 1_000_001])
async def test_set_allowance_and_cost_refuse_amounts_outside_zero_to_the_maximum(
    ledger: CreditLedger, amount: int
) -> None:
    with pytest.raises(InvalidInputError):
        await ledger.set_balance(T, U, amount, **MOD)
    with pytest.raises(InvalidInputError):
        await ledger.set_allowance(T, amount, **MOD)
    with pytest.raises(InvalidInputError):
        await ledger.set_cost(T, "image", amount, **MOD)
    with pytest.raises(InvalidInputError):
        await ledger.set_budget(T, amount, **MOD)
    assert (await ledger.tenant_settings(T)).daily_allowance == 100
    assert await ledger.cost_for(T, "image") == 10


async def test_the_maximum_amount_is_configurable(db: SqlDatabase, clock: Clock) -> None:
    ledger = CreditLedger(db, max_amount=500, clock=clock)
    assert await ledger.grant(T, U, 500, **MOD) == 600
    with pytest.raises(InvalidInputError, match="500"):
        await ledger.grant(T, U, 501, **MOD)


async def test_take_cannot_go_below_zero_and_says_the_balance(ledger: CreditLedger) -> None:
    await ledger.hold(T, U, "j1", 70, kind="image")
    with pytest.raises(InvalidInputError, match="30 credits") as info:
        await ledger.take(T, U, 31, **MOD)
    assert "at most 30" in info.value.message
    assert await balance(ledger) == 30
    assert await ledger.take(T, U, 30, **MOD) == 0


async def test_the_blocklist_is_per_tenant_lower_case_and_sorted(ledger: CreditLedger) -> None:
    assert await ledger.block_add(T, "Zebra", **MOD) is True
    assert await ledger.block_add(T, "  big   Cat ", **MOD) is True
    assert await ledger.block_add(T, "zebra", **MOD) is False
    assert await ledger.blocklist(T) == ("big cat", "zebra")
    assert await ledger.blocklist("slack:team") == ()
    assert await ledger.block_remove(T, "ZEBRA", **MOD) is True
    assert await ledger.block_remove(T, "zebra", **MOD) is False
    assert (await ledger.tenant_settings(T)).blocklist == ("big cat",)
    with pytest.raises(InvalidInputError):
        await ledger.block_add(T, "   ", **MOD)


async def test_history_is_newest_first_and_limited(ledger: CreditLedger) -> None:
    for i in range(5):
        await ledger.grant(T, U, i + 1, **MOD)
    entries = await ledger.history(T, U, limit=3)
    assert [e.delta for e in entries] == [5, 4, 3]
    assert await ledger.history(T, V) == []


async def test_top_spenders_count_only_settled_holds(ledger: CreditLedger, clock: Clock) -> None:
    await ledger.hold(T, U, "a", 10, kind="image")
    await ledger.hold(T, V, "b", 30, kind="model3d")
    await ledger.hold(T, V, "c", 50, kind="image")
    await ledger.hold(T, "carol", "d", 20, kind="image")
    for job in ("a", "b", "d"):
        await ledger.settle(job)
    await ledger.release("c", reason="failed")
    assert await ledger.top_spenders(T) == [(V, 30), ("carol", 20), (U, 10)]
    assert await ledger.top_spenders(T, limit=1) == [(V, 30)]
    clock.next_day()
    await ledger.hold(T, U, "e", 40, kind="image")
    await ledger.settle("e")
    assert await ledger.top_spenders(T, since=clock.now - 60) == [(U, 40)]


# --- invariants and persistence --------------------------------------------------------------


async def test_check_invariants_catches_a_balance_changed_behind_its_back(
    ledger: CreditLedger, db: SqlDatabase
) -> None:
    await ledger.hold(T, U, "j1", 10, kind="image")
    await db.transact(
        lambda tx: tx.execute("UPDATE accounts SET balance = balance + 5 WHERE user_id = $1", U)
    )
    problems = await ledger.check_invariants()
    assert any("balance 95 but entries sum to 90" in p for p in problems)


async def test_check_invariants_catches_a_refund_without_its_entry(
    ledger: CreditLedger, db: SqlDatabase
) -> None:
    await ledger.hold(T, U, "j1", 10, kind="image")
    await ledger.release("j1", reason="failed")
    await db.transact(lambda tx: tx.execute("DELETE FROM entries WHERE kind = 'release'"))
    problems = await ledger.check_invariants()
    assert any("released but has 0 settle and 0 release" in p for p in problems)
    assert any("was released but its entries net -10" in p for p in problems)


async def test_the_database_refuses_a_second_resolution_entry_for_a_job(
    ledger: CreditLedger, db: SqlDatabase
) -> None:
    await ledger.hold(T, U, "j1", 10, kind="image")
    await ledger.settle("j1")
    # SQLite says "UNIQUE constraint failed", PostgreSQL "duplicate key … unique constraint".
    with pytest.raises(Exception, match=r"(?i)unique"):
        await db.transact(
            lambda tx: tx.execute(
                "INSERT INTO entries (ts, tenant, user_id, delta, kind, job_id) VALUES (0, $1, $2, 10, 'release', 'j1')",
                T,
                U,
            )
        )


async def test_migrations_are_versioned_and_reopening_does_not_rerun_them(
    database_backend: DatabaseBackend, db_url: str, clock: Clock
) -> None:
    async with database_backend.open(db_url) as db:
        await CreditLedger(db, clock=clock).hold(T, U, "j1", 10, kind="image")
    async with database_backend.open(db_url) as db:
        assert await db.schema_version() == len(database_backend.migrations)
        ledger = CreditLedger(db, clock=clock)
        assert await ledger.hold_state("j1") == "held"
        assert await balance(ledger) == 90


_OLD_JOB = (
    "INSERT INTO jobs (id, created, updated, platform, tenant, user_id, kind, state, spec,"
    " actor, reply_ref, cost) VALUES ($1, 0, 0, 'cli', 't', 'u', 'image', $2, '{}', '{}', '{}', 10)"
)


async def test_a_version_1_database_is_upgraded_keeping_its_jobs(
    database_backend: DatabaseBackend, db_url: str
) -> None:
    migrations = database_backend.migrations
    async with database_backend.open(db_url, migrations=migrations[:1]) as db:
        await db.transact(lambda tx: tx.execute(_OLD_JOB, "old", "done"))
    async with database_backend.open(db_url) as db:
        assert await db.schema_version() == len(migrations)
        assert await db.fetchrow("SELECT id FROM jobs") is not None
        assert await db.fetch("SELECT * FROM entries") == []


async def test_a_version_2_database_maps_old_job_states_onto_the_state_machine(
    database_backend: DatabaseBackend, db_url: str
) -> None:
    async with database_backend.open(db_url, migrations=database_backend.migrations[:2]) as db:

        async def insert(tx: Tx) -> None:
            for job, state in (("a", "submitted"), ("b", "delivering"), ("c", "done")):
                await tx.execute(_OLD_JOB, job, state)

        await db.transact(insert)
    async with database_backend.open(db_url) as db:
        rows = await db.fetch("SELECT id, state, version FROM jobs ORDER BY id")
        assert [(r["id"], r["state"], r["version"]) for r in rows] == [
            ("a", "submitting", 0),
            ("b", "running", 0),
            ("c", "done", 0),
        ]


async def test_a_version_5_ledger_is_upgraded_keeping_its_holds_entries_and_rules(
    database_backend: DatabaseBackend, db_url: str, clock: Clock
) -> None:
    # Schema 6 rebuilds `holds` and `entries` on SQLite and merges their indexes on both.
    async with database_backend.open(db_url, migrations=database_backend.migrations[:5]) as db:
        old = CreditLedger(db, clock=clock)
        await old.hold(T, U, "open", 10, kind="image")
        await old.hold(T, U, "done", 20, kind="image")
        await old.settle("done")
        await old.hold(T, V, "failed", 5, kind="image")
        await old.release("failed", reason="vendor error")
        before = [tuple(r) for r in await db.fetch("SELECT * FROM entries ORDER BY id")]
    async with database_backend.open(db_url) as db:
        ledger = CreditLedger(db, clock=clock)
        assert [tuple(r) for r in await db.fetch("SELECT * FROM entries ORDER BY id")] == before
        assert [h.job_id for h in await ledger.open_holds()] == ["open"]
        assert (await ledger.account(T, U)).held == 10
        assert await ledger.check_invariants() == []
        await ledger.settle("open")
        await ledger.hold(T, U, "new", 1, kind="image")
        ids = [r["id"] for r in await db.fetch("SELECT id FROM entries ORDER BY id")]
        assert ids[: len(before)] == [e[0] for e in before] and ids[-1] > before[-1][0]
        assert (await ledger.account(T, U)).held == 1
        assert await ledger.check_invariants() == []
        # The merged unique index still refuses a second hold entry and a second resolution.
        for kind in ("hold", "release"):
            with pytest.raises(Exception, match=r"(?i)unique"):
                await db.transact(
                    lambda tx, kind=kind: tx.execute(
                        "INSERT INTO entries (ts, tenant, user_id, delta, kind, job_id)"
                        " VALUES (0, $1, $2, 0, $3, 'done')",
                        T,
                        U,
                        kind,
                    )
                )


async def test_the_budget_is_checked_against_one_counter_row_per_tenant_and_day(
    db: SqlDatabase, clock: Clock
) -> None:
    ledger = CreditLedger(db, default_allowance=100, clock=clock)
    await ledger.set_budget(T, 25, actor="mod", reason="")
    await ledger.hold(T, U, "j1", 10, kind="image")
    await ledger.hold(T, "other", "j2", 10, kind="image")
    await ledger.release("j1", reason="failed")
    counter = await db.fetch("SELECT tenant, used FROM budget_used")
    assert [(r["tenant"], r["used"]) for r in counter] == [(T, 10)]
    await ledger.hold(T, U, "j3", 15, kind="image")  # 10 + 15 fits the 25 again
    assert (await ledger.tenant_settings(T)).budget_used_today == 25
    with pytest.raises(TenantBudgetError):
        await ledger.hold(T, U, "j4", 1, kind="image")
    assert await ledger.check_invariants() == []


# --- concurrency -----------------------------------------------------------------------------


async def _try_hold(ledger: CreditLedger, job: str, amount: int = 1) -> bool:
    try:
        await ledger.hold(T, U, job, amount, kind="image")
    except InsufficientCreditsError:
        return False
    return True


async def test_fifty_concurrent_holds_never_overdraw_a_balance_of_ten(db: SqlDatabase, clock: Clock) -> None:
    ledger = CreditLedger(db, default_allowance=10, clock=clock)
    results = await asyncio.gather(*(_try_hold(ledger, f"j{i}") for i in range(50)))
    assert results.count(True) == 10
    assert await balance(ledger) == 0
    assert len(await ledger.open_holds()) == 10
    assert await ledger.check_invariants() == []


async def test_two_connections_on_one_database_never_overdraw(
    database_backend: DatabaseBackend, db_url: str, clock: Clock
) -> None:
    # As two processes (or two replicas) on one SQLite file or one PostgreSQL database would.
    async with database_backend.open(db_url) as first, database_backend.open(db_url) as second:
        ledgers = [CreditLedger(d, default_allowance=10, clock=clock) for d in (first, second)]
        results = await asyncio.gather(*(_try_hold(ledgers[i % 2], f"j{i}", 1) for i in range(50)))
        assert results.count(True) == 10
        assert await balance(ledgers[0]) == await balance(ledgers[1]) == 0
        releases = await asyncio.gather(*(ledgers[i % 2].release(f"j{i}", reason="x") for i in range(50)))
        assert releases.count(True) == 10
        assert await balance(ledgers[1]) == 10
        assert await ledgers[0].check_invariants() == []
        assert await ledgers[1].check_invariants() == []


# --- the steps a job store composes into its own transaction ----------------------------------


async def test_a_hold_step_commits_and_rolls_back_with_the_callers_transaction(
    ledger: CreditLedger, db: SqlDatabase
) -> None:
    # What a store's admission does on either database: the hold and the job row in one
    # transaction, so a failure after the hold leaves no hold behind (no orphan).
    async def admit(tx: Tx, job: str, fail: bool) -> int:
        balance = await ledger.hold_tx(tx, T, U, job, 10, kind="image")
        await tx.execute(_OLD_JOB, job, "queued")
        if fail:
            raise RuntimeError("crash after the hold")
        return balance

    assert await db.transact(lambda tx: admit(tx, "kept", False)) == 90
    with pytest.raises(RuntimeError):
        await db.transact(lambda tx: admit(tx, "lost", True))
    assert await ledger.hold_state("lost") is None
    assert await db.fetchval("SELECT COUNT(*) FROM jobs") == 1

    async def finish(tx: Tx) -> tuple[bool, bool]:
        return await ledger.settle_tx(tx, "kept"), await ledger.release_tx(tx, "kept", reason="late")

    assert await db.transact(finish) == (True, False)
    assert await balance(ledger) == 90
    assert await ledger.check_invariants() == []
