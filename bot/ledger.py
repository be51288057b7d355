"""The credit ledger: integer credits, every change an append-only, audited entry.

A job *holds* its cost before it is submitted (the balance drops at once), then *settles* on
success or *releases* on failure, timeout or cancel (the credits come back). Each step runs in
one transaction and happens exactly once per job id, so retries and races (two coroutines, two
processes or replicas on one database) can neither charge nor refund twice.

The rules are written once, as steps on a `bot.sql.Tx`, and run on SQLite (`bot.db`) or
PostgreSQL (`bot.pg`). On PostgreSQL several transactions run at once, so a step locks the
account row before it reads a balance it writes back; the lock order is always hold, account,
budget counter, which keeps two transactions from waiting on each other.

Daily allowances are lazy: the first touch of an account on a new UTC day tops its balance up
to the tenant's allowance, inside the transaction of whatever touched it. Tenants may cap the
credits held per UTC day (budget), price each command kind per model and block words.
The ledger does not decide who is a moderator; it records the `actor` and `reason` it is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bot import messages
from bot.errors import (
    BannedError,
    FrozenError,
    InsufficientCreditsError,
    InvalidInputError,
    TenantBudgetError,
)
from bot.sql import Row, SqlDatabase, Tx

__all__ = [
    "DEFAULT_COSTS",
    "Account",
    "CreditLedger",
    "Entry",
    "Hold",
    "HoldState",
    "TenantSettings",
]

_log = logging.getLogger(__name__)

DEFAULT_COSTS: Mapping[str, int] = {"image": 10, "edit": 10, "model3d": 30}
ANY_MODEL = "*"
_DAY = 86_400
_MAX_TEXT = 500
_MAX_WORD = 100

HoldState = Literal["held", "settled", "released"]


@dataclass(frozen=True, slots=True)
class Account:
    """One member's credits in one tenant, after the lazy daily top-up."""

    tenant: str
    user: str
    balance: int  # available: credits of open holds are already taken off
    held: int  # sum of this member's open holds
    frozen: bool
    banned: bool
    allowance: int  # the tenant's daily allowance
    next_refill: float  # unix time of the next UTC midnight the allowance applies


@dataclass(frozen=True, slots=True)
class Entry:
    """One append-only ledger entry; `user` and `balance_after` are None for tenant settings."""

    id: int
    ts: float
    tenant: str
    user: str | None
    delta: int
    kind: str
    job_id: str | None
    actor: str | None
    reason: str
    balance_after: int | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class Hold:
    """Credits reserved for one job."""

    job_id: str
    tenant: str
    user: str
    amount: int
    kind: str
    state: HoldState
    created: float
    resolved: float | None


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """A tenant's effective ledger settings; `costs` holds only its own overrides."""

    tenant: str
    daily_allowance: int
    budget: int | None
    budget_used_today: int
    costs: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (kind, model) → credits
    blocklist: tuple[str, ...] = ()


class CreditLedger:
    """Holds, settles and releases job credits; grants, takes and settings for moderators.

    Every public method is a coroutine that runs in one transaction of `db` (SQLite or
    PostgreSQL); `clock` (unix seconds) decides the UTC day for allowances and budgets, so
    tests can move days. `hold_tx`, `settle_tx` and `release_tx` are the job steps a store
    composes into its own transaction (on either database).
    """

    def __init__(
        self,
        db: SqlDatabase,
        *,
        default_allowance: int = 100,
        default_costs: Mapping[str, int] | None = None,
        max_amount: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        costs = dict(DEFAULT_COSTS if default_costs is None else default_costs)
        if default_allowance < 0 or any(v < 0 for v in costs.values()) or max_amount < 1:
            raise ValueError("allowance, costs and max_amount must not be negative")
        self._db = db
        self.default_allowance = default_allowance
        self.default_costs: Mapping[str, int] = costs
        self.max_amount = max_amount
        self._clock = clock

    # --- jobs: the steps a job transition composes into its own transaction -------------------

    async def hold_tx(self, tx: Tx, tenant: str, user: str, job_id: str, amount: int, *, kind: str) -> int:
        """`hold` as a step inside the caller's transaction; the balance after it."""
        _check_hold_amount(amount)
        now = self._clock()
        day = _utc_day(now)
        # The job id is the idempotency key: the hold row goes in first, or is found.
        if not await tx.execute(
            "INSERT INTO holds (job_id, tenant, user_id, amount, kind, state, created, day)"
            " VALUES ($1, $2, $3, $4, $5, 'held', $6, $7) ON CONFLICT (job_id) DO NOTHING",
            job_id,
            tenant,
            user,
            amount,
            kind,
            now,
            day,
        ):
            return await self._held_already(tx, tenant, user, job_id, amount)
        # The common case is one conditional statement: the account exists, is topped up
        # today, may hold and has the credits. Whoever commits first wins the credits.
        balance = await tx.fetchval(
            _DEBIT + " AND refill_day >= $4 RETURNING balance", tenant, user, amount, day
        )
        if balance is None:
            account = await self._touch(tx, tenant, user, now)
            if account["banned"]:
                raise BannedError(messages.banned())
            if account["frozen"]:
                raise FrozenError(messages.frozen())
            balance = await tx.fetchval(_DEBIT + " RETURNING balance", tenant, user, amount)
            if balance is None:
                have = int(account["balance"])
                raise InsufficientCreditsError(
                    messages.insufficient_credits(have, amount), balance=have, cost=amount
                )
        # The day's use is one counter row, so a budget check never scans the day's holds;
        # the counter moves only while it stays within the tenant's budget (if any).
        if not await tx.execute(_BUDGET, tenant, day, amount):
            budget = await tx.fetchval("SELECT budget FROM tenant_settings WHERE tenant = $1", tenant)
            raise TenantBudgetError(messages.budget_exhausted(int(budget), float((day + 1) * _DAY)))
        await _entry(tx, now, tenant, user, -amount, "hold", balance, job_id=job_id, reason=kind)
        return int(balance)

    async def settle_tx(self, tx: Tx, job_id: str) -> bool:
        """`settle` as a step inside the caller's transaction; True only for the call that settled."""
        now = self._clock()
        # Only an open hold moves, so of any number of settle/release calls exactly one wins.
        hold = await tx.fetchrow(
            "UPDATE holds SET state = 'settled', resolved = $2 WHERE job_id = $1 AND state = 'held'"
            " RETURNING tenant, user_id",
            job_id,
            now,
        )
        if hold is None:
            return False
        # The entry carries the balance as it stands (a settle moves no credits).
        await tx.execute(
            "INSERT INTO entries (ts, tenant, user_id, delta, kind, job_id, reason, balance_after)"
            " SELECT $1, tenant, user_id, 0, 'settle', $4, '', balance FROM accounts"
            " WHERE tenant = $2 AND user_id = $3" + tx.for_update,
            now,
            hold["tenant"],
            hold["user_id"],
            job_id,
        )
        return True

    async def release_tx(self, tx: Tx, job_id: str, *, reason: str) -> bool:
        """`release` as a step inside the caller's transaction; True only for the call that released."""
        now = self._clock()
        hold = await tx.fetchrow(
            "UPDATE holds SET state = 'released', resolved = $2 WHERE job_id = $1 AND state = 'held'"
            " RETURNING tenant, user_id, amount, day",
            job_id,
            now,
        )
        if hold is None:
            return False
        tenant, user, amount = hold["tenant"], hold["user_id"], int(hold["amount"])
        balance = await _add(tx, tenant, user, amount)
        await tx.execute(
            "UPDATE budget_used SET used = CASE WHEN used > $1 THEN used - $1 ELSE 0 END"
            " WHERE tenant = $2 AND day = $3",
            amount,
            tenant,
            hold["day"],
        )
        await _entry(tx, now, tenant, user, amount, "release", balance, job_id=job_id, reason=_text(reason))
        return True

    async def hold(self, tenant: str, user: str, job_id: str, amount: int, *, kind: str) -> int:
        """Reserve `amount` credits for `job_id` and return the new balance.

        Idempotent by job id: a second call with the same id charges nothing and returns the
        current balance. Raises BannedError, FrozenError, InsufficientCreditsError or
        TenantBudgetError; a refused hold changes nothing.
        """
        balance = await self._db.transact(
            lambda tx: self.hold_tx(tx, tenant, user, job_id, amount, kind=kind)
        )
        _log.debug("hold job=%s tenant=%s user=%s amount=%d", job_id, tenant, user, amount)
        return balance

    async def settle(self, job_id: str) -> bool:
        """The job succeeded: keep its credits. True only for the call that settled it."""
        return await self._db.transact(lambda tx: self.settle_tx(tx, job_id))

    async def release(self, job_id: str, *, reason: str) -> bool:
        """The job failed or was cancelled: give its credits back. True only for the call that did."""
        return await self._db.transact(lambda tx: self.release_tx(tx, job_id, reason=reason))

    async def hold_state(self, job_id: str) -> HoldState | None:
        """'held', 'settled', 'released', or None when the job never held credits."""
        state: HoldState | None = await self._db.fetchval("SELECT state FROM holds WHERE job_id = $1", job_id)
        return state

    async def open_holds(self) -> list[Hold]:
        """Every hold still waiting to be settled or released, oldest first."""
        rows = await self._db.fetch("SELECT * FROM holds WHERE state = 'held' ORDER BY created, job_id")
        return [_hold(r) for r in rows]

    # --- reading ---------------------------------------------------------------------------

    async def account(self, tenant: str, user: str) -> Account:
        """The member's account, created and topped up to today's allowance if due."""
        now = self._clock()

        async def read(tx: Tx) -> Account:
            row = await self._touch(tx, tenant, user, now)
            held = await tx.fetchval(
                "SELECT COALESCE(SUM(amount), 0) FROM holds WHERE tenant = $1 AND user_id = $2 AND state = 'held'",
                tenant,
                user,
            )
            return Account(
                tenant=tenant,
                user=user,
                balance=int(row["balance"]),
                held=int(held or 0),
                frozen=bool(row["frozen"]),
                banned=bool(row["banned"]),
                allowance=await self._allowance(tx, tenant),
                next_refill=float((row["refill_day"] + 1) * _DAY),
            )

        return await self._db.transact(read)

    async def cost_for(self, tenant: str, kind: str, model: str | None = None) -> int:
        """Credits per unit of `kind` on `model`: the tenant's model price, its '*' price, or the default."""
        if kind not in self.default_costs:
            raise ValueError(f"unknown command kind {kind!r}")
        rows = await self._db.fetch(
            "SELECT model, amount FROM costs WHERE tenant = $1 AND kind = $2 AND model IN ($3, $4)",
            tenant,
            kind,
            model or ANY_MODEL,
            ANY_MODEL,
        )
        prices = {r["model"]: r["amount"] for r in rows}
        if model and model in prices:
            return int(prices[model])
        if ANY_MODEL in prices:
            return int(prices[ANY_MODEL])
        return self.default_costs[kind]

    async def tenant_settings(self, tenant: str) -> TenantSettings:
        """Allowance, budget (and what today's holds used of it), cost overrides and blocklist."""
        day = _utc_day(self._clock())

        async def read(tx: Tx) -> TenantSettings:
            budget = await tx.fetchval("SELECT budget FROM tenant_settings WHERE tenant = $1", tenant)
            used = await tx.fetchval(
                "SELECT used FROM budget_used WHERE tenant = $1 AND day = $2", tenant, day
            )
            costs = await tx.fetch(
                "SELECT kind, model, amount FROM costs WHERE tenant = $1 ORDER BY kind, model", tenant
            )
            return TenantSettings(
                tenant=tenant,
                daily_allowance=await self._allowance(tx, tenant),
                budget=None if budget is None else int(budget),
                budget_used_today=int(used or 0),
                costs={(r["kind"], r["model"]): int(r["amount"]) for r in costs},
                blocklist=await _blocklist(tx, tenant),
            )

        return await self._db.transact(read, snapshot=True)

    async def blocklist(self, tenant: str) -> tuple[str, ...]:
        """The tenant's blocked words and phrases, sorted."""
        rows = await self._db.fetch("SELECT word FROM blocklist WHERE tenant = $1 ORDER BY word", tenant)
        return tuple(r["word"] for r in rows)

    async def history(self, tenant: str, user: str, limit: int = 20) -> list[Entry]:
        """The member's entries, newest first."""
        rows = await self._db.fetch(
            "SELECT * FROM entries WHERE tenant = $1 AND user_id = $2 ORDER BY id DESC LIMIT $3",
            tenant,
            user,
            max(1, min(limit, 1000)),
        )
        return [_entry_of(r) for r in rows]

    async def top_spenders(
        self, tenant: str, limit: int = 10, since: float | None = None
    ) -> list[tuple[str, int]]:
        """(user, credits spent) by settled holds resolved at or after `since`, biggest first."""
        rows = await self._db.fetch(
            "SELECT user_id, SUM(amount) AS spent FROM holds"
            " WHERE tenant = $1 AND state = 'settled' AND resolved >= $2"
            " GROUP BY user_id HAVING SUM(amount) > 0 ORDER BY spent DESC, user_id LIMIT $3",
            tenant,
            float("-inf") if since is None else float(since),
            max(1, min(limit, 1000)),
        )
        return [(r["user_id"], int(r["spent"])) for r in rows]

    # --- moderator operations on one member -------------------------------------------------

    async def grant(self, tenant: str, user: str, amount: int, *, actor: str, reason: str) -> int:
        """Add 1..max_amount credits; returns the new balance."""
        self._check_amount(amount, low=1)
        now = self._clock()

        async def write(tx: Tx) -> int:
            await self._touch(tx, tenant, user, now)
            balance = await _add(tx, tenant, user, amount)
            await _entry(tx, now, tenant, user, amount, "grant", balance, actor=actor, reason=reason)
            return balance

        balance = await self._db.transact(write)
        _log.info("grant tenant=%s user=%s amount=%d actor=%s", tenant, user, amount, actor)
        return balance

    async def take(self, tenant: str, user: str, amount: int, *, actor: str, reason: str) -> int:
        """Remove 1..max_amount credits; refused (InvalidInputError naming the balance) below zero."""
        self._check_amount(amount, low=1)
        now = self._clock()

        async def write(tx: Tx) -> int:
            account = await self._touch(tx, tenant, user, now)
            balance = await tx.fetchval(
                "UPDATE accounts SET balance = balance - $3"
                " WHERE tenant = $1 AND user_id = $2 AND balance >= $3 RETURNING balance",
                tenant,
                user,
                amount,
            )
            if balance is None:
                have = int(account["balance"])
                raise InvalidInputError(
                    messages.invalid(
                        f"{messages.mention(user)} has only {messages.credits_word(have)}, so you can't take {amount}.",
                        f"Take at most {have}.",
                    )
                )
            await _entry(tx, now, tenant, user, -amount, "take", balance, actor=actor, reason=reason)
            return int(balance)

        balance = await self._db.transact(write)
        _log.info("take tenant=%s user=%s amount=%d actor=%s", tenant, user, amount, actor)
        return balance

    async def set_balance(self, tenant: str, user: str, amount: int, *, actor: str, reason: str) -> int:
        """Set the balance to 0..max_amount; the entry's delta is the difference."""
        self._check_amount(amount, low=0)
        now = self._clock()

        async def write(tx: Tx) -> None:
            before = int((await self._touch(tx, tenant, user, now))["balance"])
            await tx.execute(
                "UPDATE accounts SET balance = $3 WHERE tenant = $1 AND user_id = $2", tenant, user, amount
            )
            await _entry(tx, now, tenant, user, amount - before, "set", amount, actor=actor, reason=reason)

        await self._db.transact(write)
        _log.info("set tenant=%s user=%s amount=%d actor=%s", tenant, user, amount, actor)
        return amount

    async def freeze(self, tenant: str, user: str, *, actor: str, reason: str) -> None:
        """Stop the member from holding credits until unfrozen."""
        await self._flag(tenant, user, "frozen", True, "freeze", actor=actor, reason=reason)

    async def unfreeze(self, tenant: str, user: str, *, actor: str, reason: str) -> None:
        """Let a frozen member hold credits again."""
        await self._flag(tenant, user, "frozen", False, "unfreeze", actor=actor, reason=reason)

    async def ban(self, tenant: str, user: str, *, actor: str, reason: str) -> None:
        """Bar the member from generating in this tenant."""
        await self._flag(tenant, user, "banned", True, "ban", actor=actor, reason=reason)

    async def unban(self, tenant: str, user: str, *, actor: str, reason: str) -> None:
        """Lift a ban."""
        await self._flag(tenant, user, "banned", False, "unban", actor=actor, reason=reason)

    # --- moderator operations on the tenant -------------------------------------------------

    async def set_allowance(self, tenant: str, amount: int, *, actor: str, reason: str) -> None:
        """Set the daily allowance (0..max_amount); it applies at each member's next top-up."""
        self._check_amount(amount, low=0)
        await self._setting(
            tenant,
            "INSERT INTO tenant_settings (tenant, daily_allowance) VALUES ($1, $2)"
            " ON CONFLICT (tenant) DO UPDATE SET daily_allowance = excluded.daily_allowance",
            (amount,),
            "allowance_set",
            str(amount),
            actor=actor,
            reason=reason,
        )

    async def set_cost(
        self, tenant: str, kind: str, amount: int, *, model: str = ANY_MODEL, actor: str, reason: str
    ) -> None:
        """Price `kind` (per image or per job) at 0..max_amount credits on `model` ('*': any model)."""
        if kind not in self.default_costs:
            raise InvalidInputError(
                messages.invalid(
                    f"`{kind}` isn't a command kind.", "Use " + ", ".join(self.default_costs) + "."
                )
            )
        self._check_amount(amount, low=0)
        model = model.strip() or ANY_MODEL
        await self._setting(
            tenant,
            "INSERT INTO costs (tenant, kind, model, amount) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant, kind, model) DO UPDATE SET amount = excluded.amount",
            (kind, model, amount),
            "cost_set",
            f"{kind}:{model} = {amount}",
            actor=actor,
            reason=reason,
        )

    async def set_budget(self, tenant: str, amount: int | None, *, actor: str, reason: str) -> None:
        """Cap the credits the tenant's holds may take per UTC day (1..max_amount); None removes the cap."""
        if amount is not None:
            self._check_amount(amount, low=1)
        await self._setting(
            tenant,
            "INSERT INTO tenant_settings (tenant, budget) VALUES ($1, CAST($2 AS BIGINT))"
            " ON CONFLICT (tenant) DO UPDATE SET budget = excluded.budget",
            (amount,),
            "budget_set",
            "none" if amount is None else str(amount),
            actor=actor,
            reason=reason,
        )

    async def block_add(self, tenant: str, word: str, *, actor: str, reason: str) -> bool:
        """Block a word or phrase (stored lower-case); False when it was already blocked."""
        word = _word(word)
        return await self._setting(
            tenant,
            "INSERT INTO blocklist (tenant, word) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            (word,),
            "block_add",
            word,
            actor=actor,
            reason=reason,
        )

    async def block_remove(self, tenant: str, word: str, *, actor: str, reason: str) -> bool:
        """Unblock a word or phrase; False when it was not blocked."""
        word = _word(word)
        return await self._setting(
            tenant,
            "DELETE FROM blocklist WHERE tenant = $1 AND word = $2",
            (word,),
            "block_remove",
            word,
            actor=actor,
            reason=reason,
        )

    # --- audit -----------------------------------------------------------------------------

    async def check_invariants(self) -> list[str]:
        """Every broken ledger rule as one line; empty when the books balance."""

        async def audit(tx: Tx) -> list[str]:
            problems: list[str] = []
            for r in await tx.fetch(
                "SELECT tenant, user_id, balance, total FROM ("
                "  SELECT a.tenant, a.user_id, a.balance, COALESCE(SUM(e.delta), 0) AS total"
                "  FROM accounts a LEFT JOIN entries e ON e.tenant = a.tenant AND e.user_id = a.user_id"
                "  GROUP BY a.tenant, a.user_id, a.balance) AS sums"
                " WHERE balance != total OR balance < 0"
            ):
                problems.append(
                    f"account {r['tenant']}/{r['user_id']}: balance {r['balance']} but entries sum to {int(r['total'])}"
                )
            for r in await tx.fetch(
                "SELECT DISTINCT e.tenant, e.user_id FROM entries e LEFT JOIN accounts a"
                " ON a.tenant = e.tenant AND a.user_id = e.user_id"
                " WHERE e.user_id IS NOT NULL AND a.user_id IS NULL"
            ):
                problems.append(f"entries for {r['tenant']}/{r['user_id']} without an account")
            for r in await tx.fetch(
                "SELECT id, tenant, user_id, balance_after, running FROM ("
                "  SELECT id, tenant, user_id, balance_after, SUM(delta) OVER"
                "    (PARTITION BY tenant, user_id ORDER BY id) AS running"
                "  FROM entries WHERE user_id IS NOT NULL) AS runs"
                " WHERE balance_after IS DISTINCT FROM running OR running < 0"
            ):
                problems.append(
                    f"entry {r['id']} ({r['tenant']}/{r['user_id']}): balance_after {r['balance_after']}"
                    f" but the running sum is {int(r['running'])}"
                )
            for r in await tx.fetch(
                "SELECT h.job_id, h.state, h.amount,"
                " SUM(CASE WHEN e.kind = 'hold' THEN 1 ELSE 0 END) AS holds,"
                " SUM(CASE WHEN e.kind = 'settle' THEN 1 ELSE 0 END) AS settles,"
                " SUM(CASE WHEN e.kind = 'release' THEN 1 ELSE 0 END) AS releases,"
                " COALESCE(SUM(e.delta), 0) AS net,"
                " SUM(CASE WHEN e.kind = 'hold' THEN e.delta END) AS held,"
                " SUM(CASE WHEN e.tenant != h.tenant OR e.user_id != h.user_id THEN 1 ELSE 0 END)"
                "   AS foreign_entries"
                " FROM holds h LEFT JOIN entries e ON e.job_id = h.job_id"
                " GROUP BY h.job_id, h.state, h.amount"
            ):
                problems.extend(_hold_problems(r))
            for r in await tx.fetch(
                "SELECT e.id, e.job_id FROM entries e LEFT JOIN holds h ON h.job_id = e.job_id"
                " WHERE e.job_id IS NOT NULL AND h.job_id IS NULL"
            ):
                problems.append(f"entry {r['id']} names job {r['job_id']}, which never held credits")
            return problems

        return await self._db.transact(audit, snapshot=True)

    # --- internals -------------------------------------------------------------------------

    def _check_amount(self, amount: int, *, low: int) -> None:
        if type(amount) is not int or not low <= amount <= self.max_amount:
            raise InvalidInputError(messages.invalid_amount(amount, self.max_amount))

    async def _allowance(self, tx: Tx, tenant: str) -> int:
        value = await tx.fetchval("SELECT daily_allowance FROM tenant_settings WHERE tenant = $1", tenant)
        return self.default_allowance if value is None else int(value)

    async def _held_already(self, tx: Tx, tenant: str, user: str, job_id: str, amount: int) -> int:
        """A retried hold: same account and amount charges nothing; anything else is a bug."""
        existing = await tx.fetchrow("SELECT tenant, user_id, amount FROM holds WHERE job_id = $1", job_id)
        if existing is None or (existing["tenant"], existing["user_id"], existing["amount"]) != (
            tenant,
            user,
            amount,
        ):
            raise ValueError(f"job {job_id} already holds credits for another account or amount")
        balance = await tx.fetchval(
            "SELECT balance FROM accounts WHERE tenant = $1 AND user_id = $2", tenant, user
        )
        if balance is None:
            raise LookupError(f"no account {tenant}/{user}")
        return int(balance)

    async def _touch(self, tx: Tx, tenant: str, user: str, now: float) -> Row:
        """Create the account if new and top it up to the allowance on a new UTC day; the row
        after, locked until the transaction ends."""
        if not tenant or not user:
            raise ValueError("tenant and user must not be empty")
        day = _utc_day(now)
        row = await tx.fetchrow(_ACCOUNT + tx.for_update, tenant, user)
        if row is None:
            await tx.execute(
                "INSERT INTO accounts (tenant, user_id, balance) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
                tenant,
                user,
            )
            row = await tx.fetchrow(_ACCOUNT + tx.for_update, tenant, user)
            if row is None:
                raise LookupError(f"no account {tenant}/{user}")
        # Reading then writing is safe: the row is locked (PostgreSQL) or the transaction
        # holds the write lock (SQLite's BEGIN IMMEDIATE).
        if row["refill_day"] is not None and row["refill_day"] >= day:
            return row
        top_up = max(0, await self._allowance(tx, tenant) - int(row["balance"]))
        row = await tx.fetchrow(
            "UPDATE accounts SET balance = balance + $3, refill_day = $4 WHERE tenant = $1 AND user_id = $2"
            " RETURNING balance, frozen, banned, refill_day",
            tenant,
            user,
            top_up,
            day,
        )
        if row is None:
            raise LookupError(f"no account {tenant}/{user}")
        if top_up:
            await _entry(
                tx, now, tenant, user, top_up, "allowance", int(row["balance"]), reason="daily allowance"
            )
        return row

    async def _flag(
        self, tenant: str, user: str, column: str, on: bool, kind: str, *, actor: str, reason: str
    ) -> None:
        now = self._clock()

        async def write(tx: Tx) -> None:
            await self._touch(tx, tenant, user, now)
            # `column` is one of two literals from the methods above, never user input.
            balance = await tx.fetchval(
                f"UPDATE accounts SET {column} = $3 WHERE tenant = $1 AND user_id = $2 RETURNING balance",
                tenant,
                user,
                int(on),
            )
            await _entry(tx, now, tenant, user, 0, kind, balance, actor=actor, reason=reason)

        await self._db.transact(write)
        _log.info("%s tenant=%s user=%s actor=%s", kind, tenant, user, actor)

    async def _setting(
        self,
        tenant: str,
        sql: str,
        params: tuple[Any, ...],
        kind: str,
        detail: str,
        *,
        actor: str,
        reason: str,
    ) -> bool:
        """Run `sql` (tenant is $1, `params` follow) and audit it as a tenant-wide entry."""
        if not tenant:
            raise ValueError("tenant must not be empty")
        now = self._clock()

        async def write(tx: Tx) -> bool:
            changed = await tx.execute(sql, tenant, *params) > 0
            await _entry(tx, now, tenant, None, 0, kind, None, actor=actor, reason=reason, detail=detail)
            return changed

        changed = await self._db.transact(write)
        _log.info("%s tenant=%s detail=%s actor=%s", kind, tenant, detail, actor)
        return changed

    async def known(self, tenant: str, user: str | None = None) -> bool:
        """Whether the ledger has seen `tenant` (and `user` there); reads only, unlike `account`."""
        if user is not None:
            found = await self._db.fetchval(
                "SELECT 1 FROM accounts WHERE tenant = $1 AND user_id = $2", tenant, user
            )
        else:
            found = await self._db.fetchval(
                "SELECT 1 FROM accounts WHERE tenant = $1 UNION ALL SELECT 1 FROM entries WHERE tenant = $1 LIMIT 1",
                tenant,
            )
        return found is not None


# --- helpers ---------------------------------------------------------------------------------

_ACCOUNT = "SELECT balance, frozen, banned, refill_day FROM accounts WHERE tenant = $1 AND user_id = $2"

#: The debit: one conditional statement ($1 tenant, $2 user, $3 amount); callers add conditions.
_DEBIT = (
    "UPDATE accounts SET balance = balance - $3 WHERE tenant = $1 AND user_id = $2"
    " AND balance >= $3 AND frozen = 0 AND banned = 0"
)

#: Add $3 to the tenant's ($1) counter for day $2, only while it stays within the budget (no
#: budget: always). No row changed means the hold would exceed the budget.
_BUDGET = (
    "INSERT INTO budget_used (tenant, day, used)"
    " SELECT $1, CAST($2 AS BIGINT), CAST($3 AS BIGINT)"
    " WHERE $3 <= COALESCE((SELECT budget FROM tenant_settings WHERE tenant = $1), $3)"
    " ON CONFLICT (tenant, day) DO UPDATE SET used = budget_used.used + excluded.used"
    " WHERE budget_used.used + excluded.used <= COALESCE("
    "   (SELECT budget FROM tenant_settings WHERE tenant = excluded.tenant),"
    "   budget_used.used + excluded.used)"
)


def _utc_day(ts: float) -> int:
    return int(ts // _DAY)


def _text(value: str) -> str:
    return (value or "")[:_MAX_TEXT]


def _word(word: str) -> str:
    normal = " ".join(word.lower().split())
    if not normal or len(normal) > _MAX_WORD:
        raise InvalidInputError(
            messages.invalid(
                "A blocked word must be 1 to 100 characters.", "For example `/quota blocklist add gore`."
            )
        )
    return normal


def _check_hold_amount(amount: int) -> None:
    # The engine computes hold amounts; a bad one is a bug, not user input.
    if type(amount) is not int or amount < 0:
        raise ValueError(f"hold amount must be a non-negative int, not {amount!r}")


async def _add(tx: Tx, tenant: str, user: str, amount: int) -> int:
    balance = await tx.fetchval(
        "UPDATE accounts SET balance = balance + $3 WHERE tenant = $1 AND user_id = $2 RETURNING balance",
        tenant,
        user,
        amount,
    )
    if balance is None:
        raise LookupError(f"no account {tenant}/{user}")
    return int(balance)


async def _blocklist(tx: Tx, tenant: str) -> tuple[str, ...]:
    rows = await tx.fetch("SELECT word FROM blocklist WHERE tenant = $1 ORDER BY word", tenant)
    return tuple(r["word"] for r in rows)


async def _entry(
    tx: Tx,
    ts: float,
    tenant: str,
    user: str | None,
    delta: int,
    kind: str,
    balance_after: int | None,
    *,
    job_id: str | None = None,
    actor: str | None = None,
    reason: str = "",
    detail: str | None = None,
) -> None:
    await tx.execute(
        "INSERT INTO entries (ts, tenant, user_id, delta, kind, job_id, actor, reason, balance_after, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        ts,
        tenant,
        user,
        delta,
        kind,
        job_id,
        actor,
        _text(reason),
        balance_after,
        detail,
    )


def _entry_of(r: Row) -> Entry:
    return Entry(
        id=r["id"],
        ts=r["ts"],
        tenant=r["tenant"],
        user=r["user_id"],
        delta=r["delta"],
        kind=r["kind"],
        job_id=r["job_id"],
        actor=r["actor"],
        reason=r["reason"],
        balance_after=r["balance_after"],
        detail=r["detail"],
    )


def _hold(r: Row) -> Hold:
    return Hold(
        job_id=r["job_id"],
        tenant=r["tenant"],
        user=r["user_id"],
        amount=r["amount"],
        kind=r["kind"],
        state=r["state"],
        created=r["created"],
        resolved=r["resolved"],
    )


def _hold_problems(r: Row) -> list[str]:
    job, state, amount = r["job_id"], r["state"], int(r["amount"])
    holds, settles, releases = int(r["holds"] or 0), int(r["settles"] or 0), int(r["releases"] or 0)
    net = int(r["net"])
    out: list[str] = []
    if holds != 1:
        out.append(f"hold {job}: {holds} hold entries, expected 1")
    elif int(r["held"]) != -amount:
        out.append(f"hold {job}: hold entry took {-int(r['held'])}, the hold is for {amount}")
    expected = {"held": (0, 0), "settled": (1, 0), "released": (0, 1)}[state]
    if (settles, releases) != expected:
        out.append(f"hold {job} is {state} but has {settles} settle and {releases} release entries")
    if state == "released" and net != 0:
        out.append(f"hold {job} was released but its entries net {net:+d}")
    if state != "released" and net != -amount:
        out.append(f"hold {job} is {state} but its entries net {net:+d}, not {-amount:+d}")
    if r["foreign_entries"]:
        out.append(f"hold {job} has entries on another account")
    return out
