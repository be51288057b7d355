"""The credit ledger: integer credits in SQLite, every change an append-only, audited entry.

A job *holds* its cost before it is submitted (the balance drops at once), then *settles* on
success or *releases* on failure, timeout or cancel (the credits come back). Each step runs in
one `BEGIN IMMEDIATE` transaction and happens exactly once per job id, so retries and races
(two coroutines, two processes on one file) can neither charge nor refund twice.

Daily allowances are lazy: the first touch of an account on a new UTC day tops its balance up
to the tenant's allowance, inside the transaction of whatever touched it. Tenants may cap the
credits held per UTC day (budget), price each command kind per model and block words.
The ledger does not decide who is a moderator; it records the `actor` and `reason` it is given.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bot import messages
from bot.db import Database
from bot.errors import (
    BannedError,
    FrozenError,
    InsufficientCreditsError,
    InvalidInputError,
    TenantBudgetError,
)

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

    Every public method is a coroutine that runs in one transaction of `db`; `clock` (unix
    seconds) decides the UTC day for allowances and budgets, so tests can move days.
    """

    def __init__(
        self,
        db: Database,
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

    def hold_in(
        self, conn: sqlite3.Connection, tenant: str, user: str, job_id: str, amount: int, *, kind: str
    ) -> int:
        """`hold` inside the caller's transaction on `conn` (the job store's admission)."""
        _check_hold_amount(amount)
        now = self._clock()
        day = _utc_day(now)
        existing = _one(conn, "SELECT * FROM holds WHERE job_id = ?", (job_id,))
        if existing is not None:
            if (existing["tenant"], existing["user_id"], existing["amount"]) != (tenant, user, amount):
                raise ValueError(f"job {job_id} already holds credits for another account or amount")
            return _balance(conn, tenant, user)
        account = self._touch(conn, tenant, user, now)
        if account["banned"]:
            raise BannedError(messages.banned())
        if account["frozen"]:
            raise FrozenError(messages.frozen())
        # The debit is one conditional statement: whoever commits first wins the credits.
        debited = _one(
            conn,
            "UPDATE accounts SET balance = balance - :cost WHERE tenant = :t AND user_id = :u"
            " AND balance >= :cost AND frozen = 0 AND banned = 0 RETURNING balance",
            {"cost": amount, "t": tenant, "u": user},
        )
        if debited is None:
            balance = account["balance"]
            raise InsufficientCreditsError(
                messages.insufficient_credits(balance, amount), balance=balance, cost=amount
            )
        balance = int(debited["balance"])
        # The day's use is one counter row, so a budget check never scans the day's holds; an
        # over-budget hold raises and the caller's transaction (or savepoint) undoes it all.
        used = _one(
            conn,
            "INSERT INTO budget_used (tenant, day, used) VALUES (?, ?, ?)"
            " ON CONFLICT (tenant, day) DO UPDATE SET used = used + excluded.used RETURNING used",
            (tenant, day, amount),
        )
        settings = _one(conn, "SELECT budget FROM tenant_settings WHERE tenant = ?", (tenant,))
        budget = settings["budget"] if settings else None
        if budget is not None and used is not None and used["used"] > budget:
            raise TenantBudgetError(messages.budget_exhausted(budget, float((day + 1) * _DAY)))
        conn.execute(
            "INSERT INTO holds (job_id, tenant, user_id, amount, kind, state, created, day)"
            " VALUES (?, ?, ?, ?, ?, 'held', ?, ?)",
            (job_id, tenant, user, amount, kind, now, day),
        )
        _entry(conn, now, tenant, user, -amount, "hold", balance, job_id=job_id, reason=kind)
        return balance

    def settle_in(self, conn: sqlite3.Connection, job_id: str) -> bool:
        """`settle` inside the caller's transaction; True only for the call that settled."""
        now = self._clock()
        hold = _resolve(conn, job_id, "settled", now)
        if hold is None:
            return False
        balance = _balance(conn, hold["tenant"], hold["user_id"])
        _entry(conn, now, hold["tenant"], hold["user_id"], 0, "settle", balance, job_id=job_id)
        return True

    def release_in(self, conn: sqlite3.Connection, job_id: str, *, reason: str) -> bool:
        """`release` inside the caller's transaction; True only for the call that released."""
        now = self._clock()
        hold = _resolve(conn, job_id, "released", now)
        if hold is None:
            return False
        conn.execute(
            "UPDATE budget_used SET used = MAX(0, used - ?) WHERE tenant = ? AND day = ?",
            (hold["amount"], hold["tenant"], hold["day"]),
        )
        balance = _add(conn, hold["tenant"], hold["user_id"], hold["amount"])
        _entry(
            conn,
            now,
            hold["tenant"],
            hold["user_id"],
            hold["amount"],
            "release",
            balance,
            job_id=job_id,
            reason=_text(reason),
        )
        return True

    async def hold(self, tenant: str, user: str, job_id: str, amount: int, *, kind: str) -> int:
        """Reserve `amount` credits for `job_id` and return the new balance.

        Idempotent by job id: a second call with the same id charges nothing and returns the
        current balance. Raises BannedError, FrozenError, InsufficientCreditsError or
        TenantBudgetError; a refused hold changes nothing.
        """
        balance = await self._db.run(lambda c: self.hold_in(c, tenant, user, job_id, amount, kind=kind))
        _log.debug("hold job=%s tenant=%s user=%s amount=%d", job_id, tenant, user, amount)
        return balance

    async def settle(self, job_id: str) -> bool:
        """The job succeeded: keep its credits. True only for the call that settled it."""
        return await self._db.run(lambda c: self.settle_in(c, job_id))

    async def release(self, job_id: str, *, reason: str) -> bool:
        """The job failed or was cancelled: give its credits back. True only for the call that did."""
        return await self._db.run(lambda c: self.release_in(c, job_id, reason=reason))

    async def hold_state(self, job_id: str) -> HoldState | None:
        """'held', 'settled', 'released', or None when the job never held credits."""
        row = await self._db.fetchone("SELECT state FROM holds WHERE job_id = ?", (job_id,))
        return None if row is None else row["state"]

    async def open_holds(self) -> list[Hold]:
        """Every hold still waiting to be settled or released, oldest first."""
        rows = await self._db.fetchall("SELECT * FROM holds WHERE state = 'held' ORDER BY created, job_id")
        return [_hold(r) for r in rows]

    # --- reading ---------------------------------------------------------------------------

    async def account(self, tenant: str, user: str) -> Account:
        """The member's account, created and topped up to today's allowance if due."""
        now = self._clock()

        def read(conn: sqlite3.Connection) -> Account:
            row = self._touch(conn, tenant, user, now)
            held = _one(
                conn,
                "SELECT COALESCE(SUM(amount), 0) AS held FROM holds"
                " WHERE tenant = ? AND user_id = ? AND state = 'held'",
                (tenant, user),
            )
            return Account(
                tenant=tenant,
                user=user,
                balance=row["balance"],
                held=held["held"] if held else 0,
                frozen=bool(row["frozen"]),
                banned=bool(row["banned"]),
                allowance=self._allowance(conn, tenant),
                next_refill=float((row["refill_day"] + 1) * _DAY),
            )

        return await self._db.run(read)

    async def cost_for(self, tenant: str, kind: str, model: str | None = None) -> int:
        """Credits per unit of `kind` on `model`: the tenant's model price, its '*' price, or the default."""
        if kind not in self.default_costs:
            raise ValueError(f"unknown command kind {kind!r}")
        rows = await self._db.fetchall(
            "SELECT model, amount FROM costs WHERE tenant = ? AND kind = ? AND model IN (?, ?)",
            (tenant, kind, model or ANY_MODEL, ANY_MODEL),
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

        def read(conn: sqlite3.Connection) -> TenantSettings:
            settings = _one(conn, "SELECT budget FROM tenant_settings WHERE tenant = ?", (tenant,))
            used = _one(conn, "SELECT used FROM budget_used WHERE tenant = ? AND day = ?", (tenant, day))
            costs = conn.execute(
                "SELECT kind, model, amount FROM costs WHERE tenant = ? ORDER BY kind, model", (tenant,)
            ).fetchall()
            return TenantSettings(
                tenant=tenant,
                daily_allowance=self._allowance(conn, tenant),
                budget=settings["budget"] if settings else None,
                budget_used_today=used["used"] if used else 0,
                costs={(r["kind"], r["model"]): r["amount"] for r in costs},
                blocklist=_blocklist(conn, tenant),
            )

        return await self._db.run(read)

    async def blocklist(self, tenant: str) -> tuple[str, ...]:
        """The tenant's blocked words and phrases, sorted."""
        rows = await self._db.fetchall("SELECT word FROM blocklist WHERE tenant = ? ORDER BY word", (tenant,))
        return tuple(r["word"] for r in rows)

    async def history(self, tenant: str, user: str, limit: int = 20) -> list[Entry]:
        """The member's entries, newest first."""
        rows = await self._db.fetchall(
            "SELECT * FROM entries WHERE tenant = ? AND user_id = ? ORDER BY id DESC LIMIT ?",
            (tenant, user, max(1, min(limit, 1000))),
        )
        return [_entry_of(r) for r in rows]

    async def top_spenders(
        self, tenant: str, limit: int = 10, since: float | None = None
    ) -> list[tuple[str, int]]:
        """(user, credits spent) by settled holds resolved at or after `since`, biggest first."""
        rows = await self._db.fetchall(
            "SELECT user_id, SUM(amount) AS spent FROM holds"
            " WHERE tenant = :t AND state = 'settled' AND (:since IS NULL OR resolved >= :since)"
            " GROUP BY user_id HAVING spent > 0 ORDER BY spent DESC, user_id LIMIT :limit",
            {"t": tenant, "since": since, "limit": max(1, min(limit, 1000))},
        )
        return [(r["user_id"], int(r["spent"])) for r in rows]

    # --- moderator operations on one member -------------------------------------------------

    async def grant(self, tenant: str, user: str, amount: int, *, actor: str, reason: str) -> int:
        """Add 1..max_amount credits; returns the new balance."""
        self._check_amount(amount, low=1)
        now = self._clock()

        def write(conn: sqlite3.Connection) -> int:
            self._touch(conn, tenant, user, now)
            balance = _add(conn, tenant, user, amount)
            _entry(conn, now, tenant, user, amount, "grant", balance, actor=actor, reason=reason)
            return balance

        balance = await self._db.run(write)
        _log.info("grant tenant=%s user=%s amount=%d actor=%s", tenant, user, amount, actor)
        return balance

    async def take(self, tenant: str, user: str, amount: int, *, actor: str, reason: str) -> int:
        """Remove 1..max_amount credits; refused (InvalidInputError naming the balance) below zero."""
        self._check_amount(amount, low=1)
        now = self._clock()

        def write(conn: sqlite3.Connection) -> int:
            account = self._touch(conn, tenant, user, now)
            cursor = conn.execute(
                "UPDATE accounts SET balance = balance - :n"
                " WHERE tenant = :t AND user_id = :u AND balance >= :n",
                {"n": amount, "t": tenant, "u": user},
            )
            if cursor.rowcount != 1:
                have = account["balance"]
                raise InvalidInputError(
                    messages.invalid(
                        f"{messages.mention(user)} has only {messages.credits_word(have)}, so you can't take {amount}.",
                        f"Take at most {have}.",
                    )
                )
            balance = _balance(conn, tenant, user)
            _entry(conn, now, tenant, user, -amount, "take", balance, actor=actor, reason=reason)
            return balance

        balance = await self._db.run(write)
        _log.info("take tenant=%s user=%s amount=%d actor=%s", tenant, user, amount, actor)
        return balance

    async def set_balance(self, tenant: str, user: str, amount: int, *, actor: str, reason: str) -> int:
        """Set the balance to 0..max_amount; the entry's delta is the difference."""
        self._check_amount(amount, low=0)
        now = self._clock()

        def write(conn: sqlite3.Connection) -> None:
            before = self._touch(conn, tenant, user, now)["balance"]
            conn.execute(
                "UPDATE accounts SET balance = ? WHERE tenant = ? AND user_id = ?", (amount, tenant, user)
            )
            _entry(conn, now, tenant, user, amount - before, "set", amount, actor=actor, reason=reason)

        await self._db.run(write)
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
            "INSERT INTO tenant_settings (tenant, daily_allowance) VALUES (:t, :v)"
            " ON CONFLICT (tenant) DO UPDATE SET daily_allowance = :v",
            {"v": amount},
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
            "INSERT INTO costs (tenant, kind, model, amount) VALUES (:t, :k, :m, :v)"
            " ON CONFLICT (tenant, kind, model) DO UPDATE SET amount = :v",
            {"k": kind, "m": model, "v": amount},
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
            "INSERT INTO tenant_settings (tenant, budget) VALUES (:t, :v)"
            " ON CONFLICT (tenant) DO UPDATE SET budget = :v",
            {"v": amount},
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
            "INSERT OR IGNORE INTO blocklist (tenant, word) VALUES (:t, :w)",
            {"w": word},
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
            "DELETE FROM blocklist WHERE tenant = :t AND word = :w",
            {"w": word},
            "block_remove",
            word,
            actor=actor,
            reason=reason,
        )

    # --- audit -----------------------------------------------------------------------------

    async def check_invariants(self) -> list[str]:
        """Every broken ledger rule as one line; empty when the books balance."""
        problems: list[str] = []
        async with self._db.transaction() as conn:
            for r in await conn.execute_fetchall(
                "SELECT a.tenant, a.user_id, a.balance, COALESCE(SUM(e.delta), 0) AS total"
                " FROM accounts a LEFT JOIN entries e ON e.tenant = a.tenant AND e.user_id = a.user_id"
                " GROUP BY a.tenant, a.user_id HAVING a.balance != total OR a.balance < 0"
            ):
                problems.append(
                    f"account {r['tenant']}/{r['user_id']}: balance {r['balance']} but entries sum to {r['total']}"
                )
            for r in await conn.execute_fetchall(
                "SELECT DISTINCT e.tenant, e.user_id FROM entries e LEFT JOIN accounts a"
                " ON a.tenant = e.tenant AND a.user_id = e.user_id"
                " WHERE e.user_id IS NOT NULL AND a.user_id IS NULL"
            ):
                problems.append(f"entries for {r['tenant']}/{r['user_id']} without an account")
            for r in await conn.execute_fetchall(
                "SELECT id, tenant, user_id, balance_after, running FROM ("
                "  SELECT id, tenant, user_id, balance_after, SUM(delta) OVER"
                "    (PARTITION BY tenant, user_id ORDER BY id) AS running"
                "  FROM entries WHERE user_id IS NOT NULL)"
                " WHERE balance_after IS NOT running OR running < 0"
            ):
                problems.append(
                    f"entry {r['id']} ({r['tenant']}/{r['user_id']}): balance_after {r['balance_after']}"
                    f" but the running sum is {r['running']}"
                )
            for r in await conn.execute_fetchall(
                "SELECT h.job_id, h.state, h.amount,"
                " SUM(e.kind = 'hold') AS holds, SUM(e.kind = 'settle') AS settles,"
                " SUM(e.kind = 'release') AS releases, COALESCE(SUM(e.delta), 0) AS net,"
                " SUM(CASE WHEN e.kind = 'hold' THEN e.delta END) AS held,"
                " SUM(e.tenant != h.tenant OR e.user_id != h.user_id) AS foreign_entries"
                " FROM holds h LEFT JOIN entries e ON e.job_id = h.job_id GROUP BY h.job_id"
            ):
                problems.extend(_hold_problems(r))
            for r in await conn.execute_fetchall(
                "SELECT e.id, e.job_id FROM entries e LEFT JOIN holds h ON h.job_id = e.job_id"
                " WHERE e.job_id IS NOT NULL AND h.job_id IS NULL"
            ):
                problems.append(f"entry {r['id']} names job {r['job_id']}, which never held credits")
        return problems

    # --- internals -------------------------------------------------------------------------

    def _check_amount(self, amount: int, *, low: int) -> None:
        if type(amount) is not int or not low <= amount <= self.max_amount:
            raise InvalidInputError(messages.invalid_amount(amount, self.max_amount))

    def _allowance(self, conn: sqlite3.Connection, tenant: str) -> int:
        row = _one(conn, "SELECT daily_allowance FROM tenant_settings WHERE tenant = ?", (tenant,))
        value = row["daily_allowance"] if row else None
        return self.default_allowance if value is None else int(value)

    def _touch(self, conn: sqlite3.Connection, tenant: str, user: str, now: float) -> sqlite3.Row:
        """Create the account if new and top it up to the allowance on a new UTC day; the row after."""
        if not tenant or not user:
            raise ValueError("tenant and user must not be empty")
        day = _utc_day(now)
        row = _one(conn, "SELECT * FROM accounts WHERE tenant = ? AND user_id = ?", (tenant, user))
        if row is None:
            conn.execute("INSERT INTO accounts (tenant, user_id, balance) VALUES (?, ?, 0)", (tenant, user))
            row = _account_row(conn, tenant, user)
        # Reading then writing is safe here: the caller's BEGIN IMMEDIATE holds the write lock.
        if row["refill_day"] is not None and row["refill_day"] >= day:
            return row
        top_up = max(0, self._allowance(conn, tenant) - row["balance"])
        conn.execute(
            "UPDATE accounts SET balance = balance + ?, refill_day = ? WHERE tenant = ? AND user_id = ?",
            (top_up, day, tenant, user),
        )
        if top_up:
            _entry(
                conn,
                now,
                tenant,
                user,
                top_up,
                "allowance",
                row["balance"] + top_up,
                reason="daily allowance",
            )
        return _account_row(conn, tenant, user)

    async def _flag(
        self, tenant: str, user: str, column: str, on: bool, kind: str, *, actor: str, reason: str
    ) -> None:
        now = self._clock()

        def write(conn: sqlite3.Connection) -> None:
            self._touch(conn, tenant, user, now)
            # `column` is one of two literals from the methods above, never user input.
            conn.execute(
                f"UPDATE accounts SET {column} = ? WHERE tenant = ? AND user_id = ?", (int(on), tenant, user)
            )
            balance = _balance(conn, tenant, user)
            _entry(conn, now, tenant, user, 0, kind, balance, actor=actor, reason=reason)

        await self._db.run(write)
        _log.info("%s tenant=%s user=%s actor=%s", kind, tenant, user, actor)

    async def _setting(
        self,
        tenant: str,
        sql: str,
        params: dict[str, Any],
        kind: str,
        detail: str,
        *,
        actor: str,
        reason: str,
    ) -> bool:
        if not tenant:
            raise ValueError("tenant must not be empty")
        now = self._clock()

        def write(conn: sqlite3.Connection) -> bool:
            changed = conn.execute(sql, {"t": tenant, **params}).rowcount > 0
            _entry(conn, now, tenant, None, 0, kind, None, actor=actor, reason=reason, detail=detail)
            return changed

        changed = await self._db.run(write)
        _log.info("%s tenant=%s detail=%s actor=%s", kind, tenant, detail, actor)
        return changed

    async def known(self, tenant: str, user: str | None = None) -> bool:
        """Whether the ledger has seen `tenant` (and `user` there); reads only, unlike `account`."""
        if user is not None:
            sql, params = "SELECT 1 FROM accounts WHERE tenant = ? AND user_id = ?", (tenant, user)
        else:
            sql = "SELECT 1 FROM accounts WHERE tenant = ? UNION ALL SELECT 1 FROM entries WHERE tenant = ?"
            params = (tenant, tenant)
        return await self._db.fetchone(sql + " LIMIT 1", params) is not None


# --- helpers ---------------------------------------------------------------------------------


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


def _one(conn: sqlite3.Connection, sql: str, params: Any = ()) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    return row


def _account_row(conn: sqlite3.Connection, tenant: str, user: str) -> sqlite3.Row:
    row = _one(conn, "SELECT * FROM accounts WHERE tenant = ? AND user_id = ?", (tenant, user))
    if row is None:
        raise LookupError(f"no account {tenant}/{user}")
    return row


def _balance(conn: sqlite3.Connection, tenant: str, user: str) -> int:
    return int(_account_row(conn, tenant, user)["balance"])


def _add(conn: sqlite3.Connection, tenant: str, user: str, amount: int) -> int:
    row = _one(
        conn,
        "UPDATE accounts SET balance = balance + ? WHERE tenant = ? AND user_id = ? RETURNING balance",
        (amount, tenant, user),
    )
    if row is None:
        raise LookupError(f"no account {tenant}/{user}")
    return int(row["balance"])


def _resolve(conn: sqlite3.Connection, job_id: str, state: HoldState, now: float) -> sqlite3.Row | None:
    # Only an open hold moves, so of any number of settle/release calls exactly one wins.
    return _one(
        conn,
        "UPDATE holds SET state = ?, resolved = ? WHERE job_id = ? AND state = 'held'"
        " RETURNING tenant, user_id, amount, day",
        (state, now, job_id),
    )


def _blocklist(conn: sqlite3.Connection, tenant: str) -> tuple[str, ...]:
    rows = conn.execute("SELECT word FROM blocklist WHERE tenant = ? ORDER BY word", (tenant,)).fetchall()
    return tuple(r["word"] for r in rows)


def _entry(
    conn: sqlite3.Connection,
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
    conn.execute(
        "INSERT INTO entries (ts, tenant, user_id, delta, kind, job_id, actor, reason, balance_after, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ts, tenant, user, delta, kind, job_id, actor, _text(reason), balance_after, detail),
    )


def _entry_of(r: sqlite3.Row) -> Entry:
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


def _hold(r: sqlite3.Row) -> Hold:
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


def _hold_problems(r: sqlite3.Row) -> list[str]:
    job, state = r["job_id"], r["state"]
    holds, settles, releases = r["holds"] or 0, r["settles"] or 0, r["releases"] or 0
    out: list[str] = []
    if holds != 1:
        out.append(f"hold {job}: {holds} hold entries, expected 1")
    elif r["held"] != -r["amount"]:
        out.append(f"hold {job}: hold entry took {-r['held']}, the hold is for {r['amount']}")
    expected = {"held": (0, 0), "settled": (1, 0), "released": (0, 1)}[state]
    if (settles, releases) != expected:
        out.append(f"hold {job} is {state} but has {settles} settle and {releases} release entries")
    if state == "released" and r["net"] != 0:
        out.append(f"hold {job} was released but its entries net {r['net']:+d}")
    if state != "released" and r["net"] != -r["amount"]:
        out.append(f"hold {job} is {state} but its entries net {r['net']:+d}, not {-r['amount']:+d}")
    if r["foreign_entries"]:
        out.append(f"hold {job} has entries on another account")
    return out
