"""Durable jobs: one row per job, moved through the state machine by one transaction per step.

Every transition is one method and one transaction (`SqlDatabase.transact`), written once for
SQLite and PostgreSQL: a compare-and-set on the state (`UPDATE jobs SET state = … WHERE id = …
AND state = …`, checked by the rows it changed) together with its ledger effect and, for
endings, the outbox row that tells the user. Whoever loses a race (a worker against a Cancel, a
webhook against a poll, a replica against the one that took its lease over) learns it from the
result — `LostRaceError`, None, or the state it found — and does nothing.

| from                          | to           | in the same transaction                      |
|-------------------------------|--------------|----------------------------------------------|
| —                             | `queued`     | hold the credits, insert the job (`admit`)   |
| `queued`                      | `submitting` | lease to this process (`claim_next`)         |
| `submitting`                  | `running`    | route, vendor handle (`accepted`)            |
| `running`                     | `submitting` | failover after a vendor FAILED (`resubmit`)  |
| `running`                     | `done`       | settle, the result, outbox "result" (`done`) |
| `queued` `submitting` `running` | `failed`   | release, outbox "failure" (`failed`)         |
| `queued` `submitting` `running` | `cancelled`| release, outbox "cancelled" (`cancel`)       |

Leases: a claimed job carries (`lease_owner`, `lease_until`). Its owner renews the lease while it
follows the job (`renew`), and only the owner's `accepted`, `resubmit` and `done` win; another
replica takes an expired lease over (`take_over`) — so a job is followed by one process at a
time, and a dead replica's jobs are picked up once its leases run out (on PostgreSQL at once,
when its liveness lock is gone: `bot.leader.dead_owners`). An ending hands the lease
to the replica that ended the job until its message is sent, so no other replica sends it
meanwhile (`take_unsent` takes over the messages of expired leases). On SQLite one process owns
the database (the instance lock), so a start takes every lease at once.

This implements `bot.jobstore.JobStorePort`; no SQL lives outside the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from bot import messages
from bot.errors import BusyError, QueueFullError
from bot.jobstore import (
    OPEN,
    Admitted,
    ConfirmationClosedError,
    JobRecord,
    JobStorePort,
    LostRaceError,
    OutboxKind,
    OutboxRow,
    StoredFile,
    StoredResult,
    new_job_id,
)
from bot.leader import ReplicaLiveness, dead_owners
from bot.reply import JobPhase
from bot.sql import Row, SqlDatabase, Tx
from providers.base import JobHandle

__all__ = [
    "OPEN",
    "Admitted",
    "JobLedger",
    "JobRecord",
    "JobStore",
    "JobStorePort",
    "LostRaceError",
    "OutboxKind",
    "OutboxRow",
    "StoredFile",
    "StoredResult",
    "new_job_id",
]

_OPEN_SQL = "('queued', 'submitting', 'running')"
# Spelled exactly as the partial index `jobs_open` is: only then does SQLite use that index.
_TERMINAL_SQL = "('done', 'failed', 'cancelled')"
_QUEUED = f"state NOT IN {_TERMINAL_SQL} AND state = 'queued'"
_LEASED = f"state NOT IN {_TERMINAL_SQL} AND state IN ('submitting', 'running')"
_UNSENT = "id IN (SELECT job_id FROM outbox WHERE sent_at IS NULL)"
# Request keys of concurrent admissions are serialised by this advisory lock class (PostgreSQL's
# two-key form, a key space apart from the single-key locks of migrations and command sync).
_REQUEST_KEY_LOCK = 0x1A0B


class JobLedger(Protocol):
    """The ledger steps a transition composes into its own transaction."""

    async def hold_tx(self, tx: Tx, tenant: str, user: str, job_id: str, amount: int, *, kind: str) -> int:
        """Hold credits (raises the ledger's user errors)."""
        ...

    async def settle_tx(self, tx: Tx, job_id: str) -> bool:
        """Keep the held credits."""
        ...

    async def release_tx(self, tx: Tx, job_id: str, *, reason: str) -> bool:
        """Give the held credits back."""
        ...


_COLUMNS = (
    "id, created, updated, platform, tenant, user_id, kind, state, spec, actor, reply_ref, cost, route, "
    "handle, attempts, routes_tried, vendor_cost_usd, result, error, parent_id, request_key, version, deadline"
)


def _decode(row: Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        created=row["created"],
        updated=row["updated"],
        _actor=row["actor"],
        _spec=row["spec"],
        state=JobPhase(row["state"]),
        reply_ref=json.loads(row["reply_ref"]),
        cost=int(row["cost"]),
        route=row["route"],
        handle=JobHandle.model_validate_json(row["handle"]) if row["handle"] else None,
        attempts=row["attempts"],
        routes_tried=json.loads(row["routes_tried"]),
        vendor_cost_usd=row["vendor_cost_usd"],
        result=StoredResult.model_validate_json(row["result"]) if row["result"] else None,
        error=row["error"],
        parent_id=row["parent_id"],
        request_key=row["request_key"],
        version=row["version"],
        deadline=row["deadline"],
    )


def _order(tx: Tx | SqlDatabase) -> str:
    """The column that orders jobs by admission: SQLite's rowid, PostgreSQL's identity `seq`."""
    return "rowid" if tx.dialect == "sqlite" else "seq"


def _skip_locked(tx: Tx) -> str:
    # PostgreSQL: a row another replica's claim has locked is passed over, not waited for.
    return " FOR UPDATE SKIP LOCKED" if tx.dialect == "postgresql" else ""


def _in_json(tx: Tx, param: str) -> str:
    """A subquery of the strings of a JSON array parameter (one parameter, any length)."""
    if tx.dialect == "postgresql":
        return f"(SELECT json_array_elements_text({param}::json))"
    return f"(SELECT value FROM json_each({param}))"


async def _state_of(tx: Tx, job_id: str) -> JobPhase | None:
    state = await tx.fetchval("SELECT state FROM jobs WHERE id = $1", job_id)
    return JobPhase(state) if state else None


class JobStore:
    """The jobs, the outbox and the learned poll times on one `SqlDatabase`, SQLite or
    PostgreSQL (`bot.jobstore.JobStorePort`).

    `owner` names this process in the leases it takes (a random id by default; the id of
    `liveness`, this replica's liveness lock on PostgreSQL, when given) and `lease` is how long
    a lease lasts unrenewed. `ledger` supplies the credit steps of admission and
    endings; read-only users (the CLI's listings) may leave it out.
    """

    def __init__(
        self,
        db: SqlDatabase,
        *,
        ledger: JobLedger | None = None,
        owner: str | None = None,
        liveness: ReplicaLiveness | None = None,
        lease: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.liveness = liveness
        self.owner = owner or (liveness.owner if liveness is not None else new_job_id())
        self.lease = lease
        self.clock = clock

    @property
    def exclusive(self) -> bool:
        """Whether this process is the database's only user (SQLite: the instance lock), so a
        start may take every lease at once instead of waiting for them to expire."""
        return self.db.dialect == "sqlite"

    def _ledger(self) -> JobLedger:
        if self.ledger is None:
            raise RuntimeError("this JobStore was opened without a ledger: it cannot move jobs")
        return self.ledger

    # --- transitions -----------------------------------------------------------------------

    async def admit(
        self,
        job: JobRecord,
        *,
        max_open: int | None = None,
        max_queued: int | None = None,
        confirming: bool = False,
    ) -> Admitted:
        """Hold the job's credits and insert it, in one transaction, with its place in line.

        Idempotent by request key: when a job with `job.request_key` exists, nothing is held
        and that job comes back with `created` False. Raises BusyError when the user already
        has `max_open` unfinished jobs, QueueFullError when `max_queued` jobs wait, and the
        ledger's refusals (credits, budget, ban); a refusal writes nothing.

        `confirming`: the job is the Confirm of the waiting request with the job's id (see
        `bot.confirm`); the request moves to confirmed in this transaction, so a Cancel of it
        on any replica either comes first (ConfirmationClosedError, nothing held) or finds it
        confirmed (and cancels the job instead).
        """
        ledger = self._ledger()
        row = {
            "id": job.id,
            "created": job.created,
            "updated": job.updated,
            "platform": job.actor.platform,
            "tenant": job.tenant,
            "user_id": job.actor.user_id,
            "kind": job.spec.kind.value,
            "state": JobPhase.QUEUED.value,
            "spec": job.spec.model_dump_json(),
            "actor": job.actor.model_dump_json(),
            "reply_ref": json.dumps(job.reply_ref),
            "cost": job.cost,
            "parent_id": job.parent_id,
            "request_key": job.request_key,
            "deadline": job.deadline,
        }
        insert = f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(f'${i}' for i in range(1, len(row) + 1))})"
        values = tuple(row.values())

        async def step(tx: Tx) -> Admitted:
            if job.request_key:
                if tx.dialect == "postgresql":
                    # Two replicas admitting one platform request: the second waits here, then
                    # finds the first's job instead of failing on the unique key.
                    await tx.execute(
                        "SELECT pg_advisory_xact_lock($1, hashtext($2))", _REQUEST_KEY_LOCK, job.request_key
                    )
                found = await tx.fetchrow(
                    f"SELECT {_COLUMNS} FROM jobs WHERE request_key = $1", job.request_key
                )
                if found is not None:
                    return Admitted(_decode(found), created=False, position=0)
            if confirming and not await tx.execute(
                "UPDATE confirmations SET state = 'confirmed' WHERE id = $1 AND state = 'pending'", job.id
            ):
                raise ConfirmationClosedError(job.id)
            # The hold comes first: it locks the member's account row (PostgreSQL) until the
            # commit, so the count below sees every other admission of the same member that
            # committed before — the cap holds across replicas, not only within one.
            await ledger.hold_tx(
                tx, job.tenant, job.actor.user_id, job.id, job.cost, kind=job.spec.kind.value
            )
            if max_open is not None:
                open_jobs = await tx.fetchval(
                    f"SELECT COUNT(*) FROM jobs WHERE tenant = $1 AND user_id = $2 AND state IN {_OPEN_SQL}",
                    job.tenant,
                    job.actor.user_id,
                )
                if open_jobs >= max_open:
                    raise BusyError(messages.busy(max_open))
            # The newest job is last in line: its place is the count of those waiting, plus one.
            # (Across replicas two admissions at the bound may both pass: the bound is a
            # guard against floods, exact to within the admissions in flight at that moment.)
            position = int(await tx.fetchval(f"SELECT COUNT(*) FROM jobs WHERE {_QUEUED}")) + 1
            if max_queued is not None and position > max_queued:
                raise QueueFullError(messages.queue_full())
            await tx.execute(insert, *values)
            return Admitted(job, created=True, position=position)

        return await self.db.transact(step)

    async def claim_next(self, deadline: float, platforms: Iterable[str]) -> JobRecord | None:
        """queued → submitting for this process: the oldest queued job of every replica's whose
        user this process can tell (`platforms`), with a fresh lease; None when no such job
        waits (or every waiting one is being claimed)."""
        now = self.clock()
        wanted = json.dumps(sorted(platforms))

        async def step(tx: Tx) -> JobRecord | None:
            found = await tx.fetchrow(
                "UPDATE jobs SET state = 'submitting', version = version + 1, attempts = attempts + 1,"
                " lease_owner = $1, lease_until = $2, deadline = COALESCE(deadline, $3), updated = $4"
                f" WHERE id = (SELECT id FROM jobs WHERE {_QUEUED} AND platform IN {_in_json(tx, '$5')}"
                f" ORDER BY {_order(tx)} LIMIT 1{_skip_locked(tx)})"
                f" AND state = 'queued' RETURNING {_COLUMNS}",
                self.owner,
                now + self.lease,
                deadline,
                now,
                wanted,
            )
            return _decode(found) if found else None

        return await self.db.transact(step)

    async def accepted(self, job: JobRecord) -> None:
        """submitting → running: the vendor took the job (route, handle, cost, size saved)."""
        await self._move(
            job,
            JobPhase.SUBMITTING,
            JobPhase.RUNNING,
            route=job.route,
            handle=job.handle.model_dump_json() if job.handle else None,
            routes_tried=json.dumps(job.routes_tried),
            vendor_cost_usd=job.vendor_cost_usd,
            result=job.result.model_dump_json() if job.result else None,
        )

    async def resubmit(self, job: JobRecord) -> None:
        """running → submitting: the vendor's job FAILED unbilled and another route will try."""
        await self._move(job, JobPhase.RUNNING, JobPhase.SUBMITTING, handle=None, attempts=job.attempts + 1)
        job.handle = None
        job.attempts += 1

    async def done(
        self, job_id: str, result: StoredResult, vendor_cost_usd: float | None = None
    ) -> OutboxRow | None:
        """running → done with the settle and the outbox row "result"; that row, or None if the
        job was no longer running under this process's lease (a Cancel won, or another replica
        took the job over: nothing is charged, nothing recorded)."""
        ledger = self._ledger()
        now = self.clock()
        encoded = result.model_dump_json()

        async def step(tx: Tx) -> OutboxRow | None:
            moved = await tx.execute(
                "UPDATE jobs SET state = 'done', version = version + 1, result = $1, updated = $2,"
                " vendor_cost_usd = COALESCE($3, vendor_cost_usd), lease_until = $4"
                " WHERE id = $5 AND state = 'running' AND lease_owner = $6",
                encoded,
                now,
                vendor_cost_usd,
                now + self.lease,
                job_id,
                self.owner,
            )
            if moved != 1:
                return None
            await ledger.settle_tx(tx, job_id)
            return await _outbox(tx, job_id, "result", {}, now)

        return await self.db.transact(step)

    async def failed(self, job_id: str, text: str, why: str) -> OutboxRow | None:
        """An open job this process may end (queued, or leased to it) → failed with the release
        and the outbox row telling the user `text`; that row, or None if it ended already."""
        row, _ = await self._end(job_id, JobPhase.FAILED, "failure", text, why)
        return row

    async def cancel(self, job_id: str, text: str) -> JobPhase | None:
        """Any open state → cancelled with the release and the outbox row `text`, whichever
        replica follows the job. Returns CANCELLED when this call won, else the state found
        (DONE: too late; None: no job)."""
        row, found = await self._end(job_id, JobPhase.CANCELLED, "cancelled", text, "cancelled")
        return JobPhase.CANCELLED if row is not None else found

    async def _end(
        self, job_id: str, to: JobPhase, kind: OutboxKind, text: str, why: str
    ) -> tuple[OutboxRow | None, JobPhase | None]:
        """(the outbox row, `to`) when this call ended the job, else (None, the state found —
        read for a Cancel only, whose answer depends on it)."""
        ledger = self._ledger()
        now = self.clock()
        cancel = to is JobPhase.CANCELLED
        # A Cancel ends the job whichever replica follows it; a failure is for the job's holder.
        whose = "" if cancel else " AND (state = 'queued' OR lease_owner = $6)"

        async def step(tx: Tx) -> tuple[OutboxRow | None, JobPhase | None]:
            # The ending takes the lease for the message it owes: no other replica sends it
            # while this one does.
            moved = await tx.execute(
                "UPDATE jobs SET state = $1, version = version + 1, error = $2, updated = $3,"
                f" lease_owner = $6, lease_until = $4 WHERE id = $5 AND state IN {_OPEN_SQL}{whose}",
                to.value,
                None if cancel else why[:500],
                now,
                now + self.lease,
                job_id,
                self.owner,
            )
            if moved != 1:
                return None, await _state_of(tx, job_id) if cancel else None
            await ledger.release_tx(tx, job_id, reason=why[:200])
            return await _outbox(tx, job_id, kind, {"text": text}, now), to

        return await self.db.transact(step)

    async def _move(self, job: JobRecord, frm: JobPhase, to: JobPhase, **columns: Any) -> None:
        now = self.clock()
        names = list(columns)
        sets = "".join(f", {k} = ${i}" for i, k in enumerate(names, start=6))
        sql = (
            f"UPDATE jobs SET state = $1, version = version + 1, updated = $2{sets}"
            " WHERE id = $3 AND state = $4 AND lease_owner = $5"
        )
        args = (to.value, now, job.id, frm.value, self.owner, *columns.values())

        async def step(tx: Tx) -> JobPhase | None:
            if await tx.execute(sql, *args) == 1:
                return to
            return await _state_of(tx, job.id)

        state = await self.db.transact(step)
        if state is not to:
            raise LostRaceError(job.id, state)
        job.state, job.version, job.updated = to, job.version + 1, now

    async def save_reply_ref(self, job_id: str, ref: dict[str, Any]) -> None:
        """Where the job's reply now lives (a platform moved it, e.g. to a DM)."""
        encoded = json.dumps(ref)

        async def step(tx: Tx) -> None:
            await tx.execute("UPDATE jobs SET reply_ref = $1 WHERE id = $2", encoded, job_id)

        await self.db.transact(step)

    async def release_orphan_holds(self) -> list[str]:
        """Release every open hold whose job row does not exist; their job ids.

        Admission holds and inserts in one transaction, so such a hold can only be left by a
        process that crashed between the two (an older version) or by hand."""
        ledger = self._ledger()

        async def step(tx: Tx) -> list[str]:
            rows = await tx.fetch(
                "SELECT h.job_id FROM holds h LEFT JOIN jobs j ON j.id = h.job_id"
                " WHERE h.state = 'held' AND j.id IS NULL"
            )
            ids = [r[0] for r in rows]
            for job_id in ids:
                await ledger.release_tx(tx, job_id, reason="job lost before it was saved")
            return ids

        return await self.db.transact(step)

    # --- leases ----------------------------------------------------------------------------

    async def renew(self) -> set[str]:
        """Extend every lease this process holds (open jobs, and ended ones whose message is
        unsent); the open jobs still leased to it — a followed job missing from it was taken
        over by another replica (this one stalled past its lease) or ended."""
        if self.liveness is not None:
            await self.liveness.keep()
        return await self._set_leases(self.clock() + self.lease)

    async def release_leases(self) -> None:
        """Let every lease of this process expire now (a clean shutdown): the next start, or
        another replica, goes on with its jobs at once instead of after the lease."""
        await self._set_leases(0.0)

    async def _set_leases(self, until: float) -> set[str]:
        async def step(tx: Tx) -> set[str]:
            rows = await tx.fetch(
                f"UPDATE jobs SET lease_until = $2 WHERE state NOT IN {_TERMINAL_SQL} AND lease_owner = $1"
                " RETURNING id",
                self.owner,
                until,
            )
            await tx.execute(
                f"UPDATE jobs SET lease_until = $2 WHERE {_UNSENT} AND lease_owner = $1",
                self.owner,
                until,
            )
            return {r[0] for r in rows}

        return await self.db.transact(step)

    async def take_over(self, platforms: Iterable[str], *, every: bool = False) -> list[JobRecord]:
        """Lease to this process every submitting or running job of `platforms` whose lease
        expired or whose replica is known dead (it stalled or died), or — `every`, for the
        database's only process at its start — every one not leased to it; those jobs as taken."""
        now = self.clock()
        expired_before = float("inf") if every else now
        wanted = json.dumps(sorted(platforms))

        async def step(tx: Tx) -> list[JobRecord]:
            dead = await self._dead_owners(tx, f"SELECT lease_owner FROM jobs WHERE {_LEASED}")
            rows = await tx.fetch(
                "UPDATE jobs SET lease_owner = $1, lease_until = $2 WHERE id IN ("
                f"SELECT id FROM jobs WHERE {_LEASED} AND COALESCE(lease_owner, '') <> $1"
                " AND (lease_until IS NULL OR lease_until < $3"
                f" OR lease_owner IN {_in_json(tx, '$5')}) AND platform IN {_in_json(tx, '$4')}"
                f"{_skip_locked(tx)}) RETURNING {_COLUMNS}",
                self.owner,
                now + self.lease,
                expired_before,
                wanted,
                dead,
            )
            return sorted((_decode(r) for r in rows), key=lambda j: j.created)

        return await self.db.transact(step)

    async def take_unsent(self, platforms: Iterable[str], *, every: bool = False) -> list[OutboxRow]:
        """The unsent messages of ended jobs of `platforms` whose lease expired or whose replica
        is known dead (or, `every`, all not leased to this process), their leases taken; oldest
        first."""
        now = self.clock()
        expired_before = float("inf") if every else now
        wanted = json.dumps(sorted(platforms))

        async def step(tx: Tx) -> list[OutboxRow]:
            dead = await self._dead_owners(tx, f"SELECT lease_owner FROM jobs WHERE {_UNSENT}")
            ids = await tx.fetch(
                f"UPDATE jobs SET lease_owner = $1, lease_until = $2 WHERE {_UNSENT}"
                " AND COALESCE(lease_owner, '') <> $1 AND (lease_until IS NULL OR lease_until < $3"
                f" OR lease_owner IN {_in_json(tx, '$5')}) AND platform IN {_in_json(tx, '$4')}"
                " RETURNING id",
                self.owner,
                now + self.lease,
                expired_before,
                wanted,
                dead,
            )
            if not ids:
                return []
            rows = await tx.fetch(
                "SELECT id, job_id, kind, payload, attempts FROM outbox"
                f" WHERE sent_at IS NULL AND job_id IN {_in_json(tx, '$1')} ORDER BY id",
                json.dumps([r[0] for r in ids]),
            )
            return [_outbox_row(r) for r in rows]

        return await self.db.transact(step)

    async def _dead_owners(self, tx: Tx, owners_sql: str) -> str:
        """Of the owners `owners_sql` selects, those known dead (`bot.leader.dead_owners`), as
        the JSON array `_in_json` reads; on SQLite none, without a read."""
        if tx.dialect != "postgresql":
            return "[]"
        rows = await tx.fetch(
            f"SELECT DISTINCT o.lease_owner FROM ({owners_sql}) o WHERE o.lease_owner <> $1", self.owner
        )
        return json.dumps(sorted(await dead_owners(tx, {r[0] for r in rows if r[0]})))

    # --- the outbox ------------------------------------------------------------------------

    async def unsent(self, job_id: str | None = None) -> list[OutboxRow]:
        """Messages committed but not yet delivered (of one job, or all), oldest first."""
        sql = "SELECT id, job_id, kind, payload, attempts FROM outbox WHERE sent_at IS NULL"
        rows = (
            await self.db.fetch(sql + " AND job_id = $1", job_id)
            if job_id
            else await self.db.fetch(sql + " ORDER BY id")
        )
        return [_outbox_row(r) for r in rows]

    async def mark_sent(self, row_id: int) -> None:
        """The message reached the user (or the platform took it)."""
        now = self.clock()

        async def step(tx: Tx) -> None:
            await tx.execute(
                "UPDATE outbox SET sent_at = $1, attempts = attempts + 1 WHERE id = $2 AND sent_at IS NULL",
                now,
                row_id,
            )

        await self.db.transact(step)

    async def mark_attempt(self, row_id: int) -> None:
        """A delivery attempt failed; the row stays unsent for the next start."""

        async def step(tx: Tx) -> None:
            await tx.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = $1", row_id)

        await self.db.transact(step)

    # --- the learned poll schedule ---------------------------------------------------------

    async def load_route_times(self) -> dict[str, list[float]]:
        """Each route's saved recent job durations."""
        rows = await self.db.fetch("SELECT route, samples FROM route_times")
        return {r["route"]: [float(x) for x in json.loads(r["samples"])] for r in rows}

    async def save_route_times(self, data: dict[str, list[float]]) -> None:
        """Replace the saved durations of every route in `data`."""
        now = self.clock()

        async def step(tx: Tx) -> None:
            for route, samples in data.items():
                await tx.execute(
                    "INSERT INTO route_times (route, samples, updated) VALUES ($1, $2, $3)"
                    " ON CONFLICT (route) DO UPDATE SET samples = excluded.samples, updated = excluded.updated",
                    route,
                    json.dumps(samples),
                    now,
                )

        await self.db.transact(step)

    # --- reads -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        """A job by id, or None."""
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return _decode(row) if row else None

    async def queue_position(self, job_id: str) -> int:
        """1-based place of a queued job among every queued job (every replica's), in the order
        they were admitted; 0 when not queued. The count reads the open-jobs index alone."""
        order = _order(self.db)
        value = await self.db.fetchval(
            f"SELECT COUNT(*) FROM jobs WHERE {_QUEUED}"
            f" AND {order} <= (SELECT {order} FROM jobs WHERE id = $1 AND state = 'queued')",
            job_id,
        )
        return int(value or 0)

    async def count_queued(self, platforms: Iterable[str]) -> int:
        """How many jobs of `platforms` wait (every replica's)."""

        async def step(tx: Tx) -> int:
            value = await tx.fetchval(
                f"SELECT COUNT(*) FROM jobs WHERE {_QUEUED} AND platform IN {_in_json(tx, '$1')}",
                json.dumps(sorted(platforms)),
            )
            return int(value or 0)

        return await self.db.transact(step)

    async def queue_positions(self) -> dict[str, int]:
        """Every queued job's 1-based place in line (one read for a whole queue's refresh)."""
        rows = await self.db.fetch(f"SELECT id FROM jobs WHERE {_QUEUED} ORDER BY {_order(self.db)}")
        return {r["id"]: place for place, r in enumerate(rows, start=1)}

    async def by_request_key(self, key: str) -> JobRecord | None:
        """The job a platform request already created, if any."""
        row = await self.db.fetchrow(f"SELECT {_COLUMNS} FROM jobs WHERE request_key = $1", key)
        return _decode(row) if row else None

    async def unfinished(self) -> list[JobRecord]:
        """Every job not yet done, failed or cancelled, oldest first."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM jobs WHERE state NOT IN {_TERMINAL_SQL} ORDER BY created"
        )
        return [_decode(r) for r in rows]

    async def active_child(self, parent_id: str, user_id: str, kind: str) -> JobRecord | None:
        """An unfinished job a button on `parent_id` already started (double-click guard)."""
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM jobs WHERE parent_id = $1 AND user_id = $2 AND kind = $3"
            f" AND state NOT IN {_TERMINAL_SQL} LIMIT 1",
            parent_id,
            user_id,
            kind,
        )
        return _decode(row) if row else None

    async def recent(self, tenant: str, user_id: str, limit: int = 5) -> list[JobRecord]:
        """A user's latest jobs, newest first."""
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM jobs WHERE tenant = $1 AND user_id = $2 ORDER BY created DESC LIMIT $3",
            tenant,
            user_id,
            limit,
        )
        return [_decode(r) for r in rows]

    async def spend(self, tenant: str | None = None) -> list[tuple[str, int, float]]:
        """(tenant, finished jobs, vendor USD) per tenant, or for one tenant."""
        sql = (
            "SELECT tenant, COUNT(*) AS n, COALESCE(SUM(vendor_cost_usd), 0) AS usd FROM jobs "
            "WHERE state = 'done' {} GROUP BY tenant ORDER BY usd DESC"
        )
        if tenant:
            rows = await self.db.fetch(sql.format("AND tenant = $1"), tenant)
        else:
            rows = await self.db.fetch(sql.format(""))
        return [(r["tenant"], int(r["n"]), float(r["usd"])) for r in rows]

    async def count_unfinished(self) -> dict[str, int]:
        """How many jobs are in each unfinished state (every replica's)."""
        rows = await self.db.fetch(
            f"SELECT state, COUNT(*) AS n FROM jobs WHERE state NOT IN {_TERMINAL_SQL} GROUP BY state"
        )
        return {r["state"]: int(r["n"]) for r in rows}

    async def ids(self) -> set[str]:
        """Every job id."""
        return {r["id"] for r in await self.db.fetch("SELECT id FROM jobs")}


def _outbox_row(r: Row) -> OutboxRow:
    return OutboxRow(r["id"], r["job_id"], r["kind"], json.loads(r["payload"]), r["attempts"])


async def _outbox(tx: Tx, job_id: str, kind: OutboxKind, payload: dict[str, Any], now: float) -> OutboxRow:
    row_id = await tx.fetchval(
        "INSERT INTO outbox (job_id, kind, payload, created) VALUES ($1, $2, $3, $4) RETURNING id",
        job_id,
        kind,
        json.dumps(payload),
        now,
    )
    return OutboxRow(int(row_id), job_id, kind, payload, 0)
