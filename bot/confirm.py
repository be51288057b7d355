"""Expensive jobs ask first: a per-server threshold, and the requests waiting for Confirm.

Above a server's threshold (`/quota confirm-above N`), admission holds nothing and starts no
job: it stores the request here — its validated spec, the reply's address, the cost shown —
and shows the cost with Confirm / Cancel buttons. Confirm sends the stored request through
admission again (policy, balance, caps, hold + insert in one transaction), under the request
key `confirm:<id>`, so a double click starts one job; the job takes the request's id, so
`/cancel <id>` works before and after. Requests survive a restart (the row and the reply's
address are in the database) and expire after `CONFIRM_TTL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot import messages
from bot.commands import Actor
from bot.errors import NotFoundError, UserError
from bot.jobs import Ticket, restore_reply
from bot.jobstore import new_job_id
from bot.keyedlock import KeyedLock
from bot.params import JobSpec
from bot.policy import check_job_id
from bot.reply import Button, ButtonAction, Failure, JobPhase, Progress, Reply, ReplyRestorer
from bot.sql import Row, SqlDatabase, Tx

__all__ = [
    "CONFIRM_TTL",
    "EXPIRE_EVERY",
    "ConfirmState",
    "ConfirmStore",
    "Confirmations",
    "PendingRequest",
    "confirm_request_key",
]

_log = logging.getLogger(__name__)

#: seconds a request waits for Confirm. Under Discord's 15-minute interaction token (less its
#: one-minute margin), so the prompt itself turns into the job's status message.
CONFIRM_TTL = 10 * 60.0
#: how often unanswered prompts past their expiry lose their buttons
EXPIRE_EVERY = 30.0


def confirm_request_key(request_id: str) -> str:
    """The admission request key of a confirmed request: one job per request, however many clicks."""
    return f"confirm:{request_id}"


class ConfirmState(StrEnum):
    """Where a waiting request is: only `pending` ones can be confirmed or cancelled."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(slots=True)
class PendingRequest:
    """A request waiting for its requester's Confirm (a row of `confirmations`)."""

    id: str
    created: float
    expires: float
    actor: Actor
    spec: JobSpec
    reply_ref: dict[str, Any]
    cost: int
    state: ConfirmState = ConfirmState.PENDING
    parent_id: str | None = None
    request_key: str | None = None

    @property
    def tenant(self) -> str:
        """The ledger tenant it would be charged to."""
        return self.actor.tenant


_COLUMNS = "id, created, expires, actor, spec, reply_ref, cost, state, parent_id, request_key"
_SELECT = f"SELECT {_COLUMNS} FROM confirmations"
#: every column of a new row, in the order `_INSERT` numbers its parameters
_INSERT_COLUMNS = (
    "id, created, expires, tenant, user_id, kind, actor, spec, reply_ref, cost, state, parent_id, request_key"
)
# A request key already stored wins: the row stays as it was and the statement changes nothing.
_INSERT = (
    f"INSERT INTO confirmations ({_INSERT_COLUMNS})"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    " ON CONFLICT (request_key) DO NOTHING"
)


def _decode(row: Row) -> PendingRequest:
    return PendingRequest(
        id=row["id"],
        created=row["created"],
        expires=row["expires"],
        actor=Actor.model_validate_json(row["actor"]),
        spec=JobSpec.model_validate_json(row["spec"]),
        reply_ref=json.loads(row["reply_ref"]),
        cost=int(row["cost"]),
        state=ConfirmState(row["state"]),
        parent_id=row["parent_id"],
        request_key=row["request_key"],
    )


class ConfirmStore:
    """The thresholds and the waiting requests, on the bot's one database (SQLite or
    PostgreSQL, schema 4); every statement is written once, with `$n` parameters."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db

    async def threshold(self, tenant: str) -> int | None:
        """Credits above which the tenant's jobs ask first; None when they never do."""
        above = await self.db.fetchval("SELECT above FROM confirm_settings WHERE tenant = $1", tenant)
        return int(above) if above is not None else None

    async def set_threshold(self, tenant: str, above: int | None, *, actor: str, reason: str) -> None:
        """Set (or with None, turn off) the tenant's threshold; who and why are kept with it."""
        now = time.time()
        await self.db.transact(
            lambda tx: tx.execute(
                "INSERT INTO confirm_settings (tenant, above, updated, updated_by, reason)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant) DO UPDATE SET"
                " above = excluded.above, updated = excluded.updated,"
                " updated_by = excluded.updated_by, reason = excluded.reason",
                tenant,
                above,
                now,
                actor,
                reason,
            )
        )

    async def add(self, request: PendingRequest) -> tuple[PendingRequest, bool]:
        """Store a new request; (the stored one, False) when its request key is known already."""
        values = (
            request.id,
            request.created,
            request.expires,
            request.tenant,
            request.actor.user_id,
            request.spec.kind.value,
            request.actor.model_dump_json(),
            request.spec.model_dump_json(),
            json.dumps(request.reply_ref),
            request.cost,
            request.state.value,
            request.parent_id,
            request.request_key,
        )

        async def step(tx: Tx) -> tuple[PendingRequest, bool]:
            # Insert first, then read on a conflict (no lock needed): two replicas storing the
            # same request key at once both reach the unique index, PostgreSQL makes the second
            # wait for the first's commit and then do nothing, and the read that follows (a new
            # snapshot under read committed) finds the winner's row. A NULL key never conflicts.
            while True:
                if await tx.execute(_INSERT, *values):
                    return request, True
                found = await tx.fetchrow(_SELECT + " WHERE request_key = $1", request.request_key)
                if found is not None:
                    return _decode(found), False
                # The row it conflicted with was deleted since (`forget_before`): insert again.

        return await self.db.transact(step)

    async def get(self, request_id: str) -> PendingRequest | None:
        """The request with this id, in whatever state."""
        row = await self.db.fetchrow(_SELECT + " WHERE id = $1", request_id)
        return _decode(row) if row is not None else None

    async def open_child(self, parent_id: str, user_id: str, kind: str, now: float) -> PendingRequest | None:
        """A request from the same result button still waiting (a second click asks nothing new)."""
        row = await self.db.fetchrow(
            _SELECT + " WHERE parent_id = $1 AND user_id = $2 AND kind = $3"
            " AND state = 'pending' AND expires > $4 ORDER BY created DESC LIMIT 1",
            parent_id,
            user_id,
            kind,
            now,
        )
        return _decode(row) if row is not None else None

    async def latest_open(self, tenant: str, user_id: str, now: float) -> PendingRequest | None:
        """The member's newest request still waiting (a bare `/confirm` in the console)."""
        row = await self.db.fetchrow(
            _SELECT + " WHERE tenant = $1 AND user_id = $2"
            " AND state = 'pending' AND expires > $3 ORDER BY created DESC LIMIT 1",
            tenant,
            user_id,
            now,
        )
        return _decode(row) if row is not None else None

    async def open_requests(self, tenant: str, user_id: str, now: float, limit: int) -> list[PendingRequest]:
        """The member's requests still waiting and not expired by `now`, newest first."""
        rows = await self.db.fetch(
            _SELECT + " WHERE tenant = $1 AND user_id = $2"
            " AND state = 'pending' AND expires > $3 ORDER BY created DESC LIMIT $4",
            tenant,
            user_id,
            now,
            limit,
        )
        return [_decode(r) for r in rows]

    async def due(self, now: float, limit: int = 100) -> list[PendingRequest]:
        """Requests still waiting whose offer ran out by `now`, oldest first."""
        rows = await self.db.fetch(
            _SELECT + " WHERE state = 'pending' AND expires <= $1 ORDER BY expires LIMIT $2",
            now,
            limit,
        )
        return [_decode(r) for r in rows]

    async def move(self, request_id: str, to: ConfirmState) -> bool:
        """pending → `to`, compare-and-set: False when the request was no longer pending."""
        # One conditional UPDATE: of two replicas answering the same request, one changes the
        # row and the other (after waiting for its commit, on PostgreSQL) changes nothing.
        changed = await self.db.transact(
            lambda tx: tx.execute(
                "UPDATE confirmations SET state = $1 WHERE id = $2 AND state = 'pending'",
                to.value,
                request_id,
            )
        )
        return changed == 1

    async def save_reply_ref(self, request_id: str, ref: dict[str, Any]) -> None:
        """Where the prompt was shown, for the Confirm that may come after a restart."""
        text = json.dumps(ref)
        await self.db.transact(
            lambda tx: tx.execute("UPDATE confirmations SET reply_ref = $1 WHERE id = $2", text, request_id)
        )

    async def forget_before(self, when: float) -> int:
        """Delete requests that ended or expired before `when` (they only answer late clicks)."""
        deleted: int = await self.db.transact(
            lambda tx: tx.execute("DELETE FROM confirmations WHERE expires < $1", when)
        )
        return deleted


class Confirmations:
    """Asking, and what Confirm / Cancel find: ownership, expiry, the prompt's reply.

    Admission calls `ask` when a request costs more than the threshold, and `find`,
    `check_open` and `confirmed` around the admission when its Confirm arrives; the engine calls
    `decline` for a Cancel on a waiting request, and `expire_due` now and then.
    """

    def __init__(
        self,
        *,
        store: ConfirmStore,
        restorers: dict[str, ReplyRestorer],
        clock: Callable[[], float] = time.time,
        ttl: float = CONFIRM_TTL,
    ) -> None:
        self.store = store
        self.restorers = restorers  # the delivery's: the same replies a restarted job gets
        self.clock = clock
        self.ttl = ttl
        self._replies: dict[str, Reply] = {}  # prompts shown by this process
        self._locks: KeyedLock[str] = KeyedLock()  # by request id

    @contextlib.asynccontextmanager
    async def guard(self, request_id: str) -> AsyncIterator[None]:
        """Confirm and Cancel of one request, one at a time in this process."""
        async with self._locks(request_id):
            yield

    async def ask(
        self,
        actor: Actor,
        spec: JobSpec,
        reply: Reply,
        *,
        cost: int,
        balance: int,
        threshold: int,
        request_key: str | None,
        parent_id: str | None,
    ) -> Ticket:
        """Store the request and show its cost with Confirm / Cancel; nothing is held."""
        now = self.clock()
        if parent_id and await self.store.open_child(parent_id, actor.user_id, spec.kind.value, now):
            raise UserError(messages.confirm_already_waiting())
        request = PendingRequest(
            id=new_job_id(),
            created=now,
            expires=now + self.ttl,
            actor=actor,
            spec=spec,
            reply_ref=reply.ref(),
            cost=cost,
            parent_id=parent_id,
            request_key=request_key,
        )
        request, created = await self.store.add(request)
        text = messages.confirm_prompt(
            cost, balance, threshold, request.id, actor.platform, minutes=round(self.ttl / 60)
        )
        ticket = Ticket(job_id=request.id, position=0, cost=cost, text=text, awaiting_confirmation=True)
        if not created:
            return ticket  # a retried delivery of the same platform request: asked already
        _log.info(
            "confirmation asked request=%s kind=%s tenant=%s user=%s cost=%d threshold=%d",
            request.id,
            spec.kind,
            actor.tenant,
            actor.user_id,
            cost,
            threshold,
        )
        self._replies[request.id] = reply
        buttons = (
            Button(ButtonAction.CONFIRM, request.id, messages.confirm_button()),
            Button(ButtonAction.CANCEL, request.id, messages.confirm_cancel_button()),
        )
        await self._show(request, reply, Progress(request.id, JobPhase.QUEUED, text, buttons=buttons))
        # Old rows only answer late clicks ("expired"); a day of them is plenty.
        await self.store.forget_before(now - 86_400.0)
        return ticket

    async def _show(self, request: PendingRequest, reply: Reply, update: Progress | Failure) -> None:
        try:
            if isinstance(update, Progress):
                await reply.progress(update)
            else:
                await reply.failure(update)
        except asyncio.CancelledError:
            raise
        except Exception:  # a platform hiccup: the request stays valid, /confirm still works
            _log.exception("showing the confirmation failed request=%s", request.id)
        ref = reply.ref()
        if ref != request.reply_ref:
            request.reply_ref = ref
            await self.store.save_reply_ref(request.id, ref)

    def reply_for(self, request: PendingRequest) -> Reply:
        """The prompt's reply: the live one, or rebuilt from its saved address after a restart."""
        reply = self._replies.get(request.id)
        if reply is None:
            reply = self._replies[request.id] = restore_reply(
                self.restorers, request.actor.platform, request.reply_ref
            )
        return reply

    def forget(self, request_id: str) -> None:
        """The request is answered: drop its live reply."""
        self._replies.pop(request_id, None)

    async def find(self, actor: Actor, request_id: str | None) -> PendingRequest | None:
        """The request `request_id` (or the actor's newest waiting one), if it is the actor's.

        None when no such request exists (the id may be a job's); a request of another member
        is refused politely.
        """
        if request_id is None:
            request = await self.store.latest_open(actor.tenant, actor.user_id, self.clock())
            if request is None:
                raise NotFoundError(messages.confirm_nothing_waiting())
        else:
            request = await self.store.get(check_job_id(request_id))
        if request is None or request.tenant != actor.tenant:
            return None
        if request.actor.user_id != actor.user_id:
            raise UserError(messages.confirm_not_yours())
        return request

    async def waiting(self, actor: Actor, limit: int = 25) -> list[PendingRequest]:
        """The actor's requests that can still be confirmed or cancelled, newest first."""
        return await self.store.open_requests(actor.tenant, actor.user_id, self.clock(), limit)

    async def check_open(self, request: PendingRequest) -> None:
        """Raise a UserError unless the request can still be answered: an expired one says so
        on its prompt (buttons removed) and to the member; a cancelled one says it was."""
        if request.state is ConfirmState.PENDING and self.clock() >= request.expires:
            if await self.store.move(request.id, ConfirmState.EXPIRED):
                request.state = ConfirmState.EXPIRED
                reply = self.reply_for(request)
                await self._show(request, reply, Failure(request.id, messages.confirm_expired()))
                self.forget(request.id)
            else:
                refreshed = await self.store.get(request.id)
                request.state = refreshed.state if refreshed else ConfirmState.EXPIRED
        match request.state:
            case ConfirmState.EXPIRED:
                raise UserError(messages.confirm_expired())
            case ConfirmState.CANCELLED:
                raise UserError(messages.confirm_declined())
            case ConfirmState.PENDING | ConfirmState.CONFIRMED:
                return

    async def expire_due(self) -> int:
        """Expire the waiting requests whose offer ran out and take the buttons off their
        prompts (a prompt nobody answered must not look clickable forever); how many."""
        expired = 0
        for request in await self.store.due(self.clock()):
            async with self.guard(request.id):
                if not await self.store.move(request.id, ConfirmState.EXPIRED):
                    continue  # answered meanwhile
                expired += 1
                await self._show(
                    request, self.reply_for(request), Failure(request.id, messages.confirm_expired())
                )
                self.forget(request.id)
        if expired:
            _log.info("confirmations expired count=%d", expired)
        return expired

    async def confirmed(self, request: PendingRequest) -> bool:
        """Record the Confirm after the job was admitted; False if a Cancel won meanwhile."""
        won = await self.store.move(request.id, ConfirmState.CONFIRMED)
        self.forget(request.id)
        return won

    async def decline(self, actor: Actor, request_id: str) -> str | None:
        """Cancel on a waiting request: nothing was held, the prompt says so; the answer.

        None when `request_id` is no waiting request (a job: cancel that instead).
        """
        request = await self.find(actor, request_id)
        if request is None or request.state is ConfirmState.CONFIRMED:
            return None
        async with self.guard(request.id):
            request = await self.store.get(request.id) or request  # a Confirm may have just won
            await self.check_open(request)
            if request.state is ConfirmState.CONFIRMED or not await self.store.move(
                request.id, ConfirmState.CANCELLED
            ):
                return None  # confirmed meanwhile: the job exists, cancel that
            _log.info("confirmation declined request=%s", request.id)
            text = messages.confirm_declined()
            await self._show(request, self.reply_for(request), Failure(request.id, text))
            self.forget(request.id)
            return text
