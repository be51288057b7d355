"""Ledger properties under random interleavings of holds, settles, releases, grants and days.

Each example runs a few random operation sequences concurrently (asyncio.gather), sometimes
through two connections on one database as two processes would, on a fresh database; then the
books must balance, whatever order the operations happened to commit in. Every property runs
on SQLite and on PostgreSQL (the `database_backend` fixture).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.errors import InsufficientCreditsError, TenantBudgetError
from bot.ledger import CreditLedger
from bot.sql import SqlDatabase
from tests.support.databases import DatabaseBackend

T = "discord:guild"
USERS = ("u0", "u1", "u2")
JOBS = 6
DAY = 86_400
START = 19_675 * DAY + 6 * 3600

Op = tuple[str, int]  # (operation, job index or user index)

op_strategy = st.one_of(
    st.tuples(st.just("hold"), st.integers(0, JOBS - 1)),
    st.tuples(st.just("settle"), st.integers(0, JOBS - 1)),
    st.tuples(st.just("release"), st.integers(0, JOBS - 1)),
    st.tuples(st.just("grant"), st.integers(0, len(USERS) - 1)),
)
sequences = st.lists(st.lists(op_strategy, max_size=12), min_size=1, max_size=4)
# Each job belongs to one member and costs a fixed amount (a retried hold repeats both).
job_specs = st.lists(
    st.tuples(st.integers(0, len(USERS) - 1), st.integers(0, 40)), min_size=JOBS, max_size=JOBS
)


class Clock:
    """A clock the day-changing property moves forward."""

    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


@dataclass
class Observed:
    """What the callers saw: successful grants and which calls won each job's resolution."""

    granted: Counter[str] = field(default_factory=Counter)
    settled: Counter[int] = field(default_factory=Counter)
    released: Counter[int] = field(default_factory=Counter)


async def run_sequence(
    ledger: CreditLedger,
    ops: list[Op],
    jobs: list[tuple[int, int]],
    seen: Observed,
    clock: Clock | None = None,
    grant: int = 7,
) -> None:
    for name, index in ops:
        match name:
            case "hold":
                user, amount = jobs[index]
                try:
                    await ledger.hold(T, USERS[user], f"j{index}", amount, kind="image")
                except (InsufficientCreditsError, TenantBudgetError):
                    pass
            case "settle":
                won = await ledger.settle(f"j{index}")
                seen.settled[index] += won  # counted after the await, not across it
            case "release":
                won = await ledger.release(f"j{index}", reason="failed")
                seen.released[index] += won
            case "grant":
                await ledger.grant(T, USERS[index], grant, actor="mod", reason="prop")
                seen.granted[USERS[index]] += grant
            case "tick":
                assert clock is not None
                clock.now += DAY / 3


async def check_books(db: SqlDatabase, ledger: CreditLedger, seen: Observed) -> dict[str, int]:
    """The properties every run must end with; returns each member's balance."""
    assert await ledger.check_invariants() == []
    accounts = await db.fetch("SELECT user_id, balance FROM accounts WHERE tenant = $1", T)
    balances = {r["user_id"]: r["balance"] for r in accounts}
    assert all(b >= 0 for b in balances.values())
    for user, bal in balances.items():
        total = await db.fetchval(
            "SELECT COALESCE(SUM(delta), 0) FROM entries WHERE tenant = $1 AND user_id = $2", T, user
        )
        assert total == bal
    for job in range(JOBS):
        state = await ledger.hold_state(f"j{job}")
        wins = seen.settled[job] + seen.released[job]
        assert wins <= 1, f"j{job} resolved {wins} times"
        assert (state == "settled") == (seen.settled[job] == 1)
        assert (state == "released") == (seen.released[job] == 1)
        resolutions = await db.fetchval(
            "SELECT COUNT(*) FROM entries WHERE job_id = $1 AND kind IN ('settle', 'release')", f"j{job}"
        )
        assert resolutions == wins
        if state == "released":
            net = await db.fetchval("SELECT SUM(delta) FROM entries WHERE job_id = $1", f"j{job}")
            assert net == 0, f"released j{job} cost {-net}"
    return balances


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=sequences,
    jobs=job_specs,
    allowance=st.integers(0, 60),
    budget=st.one_of(st.none(), st.integers(1, 120)),
    two_connections=st.booleans(),
)
def test_interleaved_operations_keep_the_books_balanced(
    database_backend: DatabaseBackend,
    plans: list[list[Op]],
    jobs: list[tuple[int, int]],
    allowance: int,
    budget: int | None,
    two_connections: bool,
) -> None:
    backend = database_backend

    async def scenario() -> None:
        clock = Clock()
        async with (
            backend.fresh_url() as url,
            backend.open(url) as first,
            backend.open(url) as second,
        ):
            dbs = [first, second] if two_connections else [first]
            ledgers = [CreditLedger(d, default_allowance=allowance, clock=clock) for d in dbs]
            if budget is not None:
                await ledgers[0].set_budget(T, budget, actor="mod", reason="prop")
            seen = Observed()
            await asyncio.gather(
                *(run_sequence(ledgers[i % len(ledgers)], ops, jobs, seen) for i, ops in enumerate(plans))
            )
            balances = await check_books(first, ledgers[0], seen)
            if budget is not None:
                used = await first.fetchval(
                    "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE state != 'released'"
                )
                assert used <= budget
            # Independently of the entries: allowance + grants − every hold still standing.
            for u, user in enumerate(USERS):
                if user not in balances:
                    continue
                charged = 0
                for j, (owner, amount) in enumerate(jobs):
                    if owner == u and await ledgers[0].hold_state(f"j{j}") in ("held", "settled"):
                        charged += amount
                assert balances[user] == allowance + seen.granted[user] - charged

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=st.lists(
        st.lists(st.one_of(op_strategy, st.tuples(st.just("tick"), st.just(0))), max_size=12),
        min_size=1,
        max_size=4,
    ),
    jobs=job_specs,
    allowance=st.integers(0, 60),
)
def test_daily_refills_amid_interleaved_operations_keep_the_books_balanced(
    database_backend: DatabaseBackend,
    plans: list[list[Op]],
    jobs: list[tuple[int, int]],
    allowance: int,
) -> None:
    backend = database_backend

    async def scenario() -> None:
        clock = Clock()
        async with backend.fresh_url() as url, backend.open(url) as db:
            ledger = CreditLedger(db, default_allowance=allowance, clock=clock)
            seen = Observed()
            await asyncio.gather(*(run_sequence(ledger, ops, jobs, seen, clock) for ops in plans))
            await check_books(db, ledger, seen)
            refills = await db.fetch(
                "SELECT user_id, delta, balance_after, ts FROM entries WHERE kind = 'allowance'"
            )
            for r in refills:
                # A top-up only ever raises a balance, and only as far as the allowance.
                assert r["delta"] > 0 and r["balance_after"] == allowance
            per_day = Counter((r["user_id"], int(r["ts"] // DAY)) for r in refills)
            assert all(n == 1 for n in per_day.values())

    asyncio.run(scenario())
