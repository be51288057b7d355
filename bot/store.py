"""Durable jobs: one row per job, moved through the state machine by one transaction per step.

Every transition is one method and one `Database.run` hop: a compare-and-set on the state
(`UPDATE jobs SET state = :to, version = version + 1 WHERE id = :id AND state = :from`, checked
by rowcount) together with its ledger effect and, for endings, the outbox row that tells the
user. Whoever loses a race (a worker against a Cancel, a webhook against a poll) learns it from
the result — `LostRaceError`, False, or the state it found — and does nothing.

| from                          | to           | in the same transaction                      |
|-------------------------------|--------------|----------------------------------------------|
| —                             | `queued`     | hold the credits, insert the job (`admit`)   |
| `queued`                      | `submitting` | lease to this process (`claim`)              |
| `submitting`                  | `running`    | route, vendor handle (`accepted`)            |
| `running`                     | `submitting` | failover after a vendor FAILED (`resubmit`)  |
| `running`                     | `done`       | settle, the result, outbox "result" (`done`) |
| `queued` `submitting` `running` | `failed`   | release, outbox "failure" (`failed`)         |
| `queued` `submitting` `running` | `cancelled`| release, outbox "cancelled" (`cancel`)       |

This is the SQLite implementation of `bot.jobstore.JobStorePort`, the interface a second
backend (PostgreSQL) implements; no SQL lives outside the store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol

from bot import messages
from bot.commands import Actor
from bot.db import Database
from bot.errors import BusyError
from bot.jobstore import (
    OPEN,
    JobRecord,
    JobStorePort,
    LostRaceError,
    OutboxKind,
    OutboxRow,
    StoredFile,
    StoredResult,
    new_job_id,
)
from bot.params import JobSpec
from bot.reply import JobPhase
from providers.base import JobHandle

__all__ = [
    "OPEN",
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


class JobLedger(Protocol):
    """The ledger steps a transition composes into its own transaction."""

    def hold_in(
        self, conn: sqlite3.Connection, tenant: str, user: str, job_id: str, amount: int, *, kind: str
    ) -> int:
        """Hold credits (raises the ledger's user errors)."""
        ...

    def settle_in(self, conn: sqlite3.Connection, job_id: str) -> bool:
        """Keep the held credits."""
        ...

    def release_in(self, conn: sqlite3.Connection, job_id: str, *, reason: str) -> bool:
        """Give the held credits back."""
        ...


_COLUMNS = (
    "id, created, updated, platform, tenant, user_id, kind, state, spec, actor, reply_ref, cost, route, "
    "handle, attempts, routes_tried, vendor_cost_usd, result, error, parent_id, request_key, version, deadline"
)


def _decode(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        created=row["created"],
        updated=row["updated"],
        actor=Actor.model_validate_json(row["actor"]),
        spec=JobSpec.model_validate_json(row["spec"]),
        state=JobPhase(row["state"]),
        reply_ref=json.loads(row["reply_ref"]),
        cost=row["cost"],
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


def _state_of(conn: sqlite3.Connection, job_id: str) -> JobPhase | None:
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return JobPhase(row[0]) if row else None


class JobStore:
    """The jobs, the outbox and the learned poll times, on one SQLite `Database`
    (`bot.jobstore.JobStorePort`, checked structurally where the app hands it to the engine).

    `ledger` supplies the credit steps of admission and endings; read-only users (the CLI's
    listings) may leave it out.
    """

    def __init__(
        self, db: Database, *, ledger: JobLedger | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock

    def _ledger(self) -> JobLedger:
        if self.ledger is None:
            raise RuntimeError("this JobStore was opened without a ledger: it cannot move jobs")
        return self.ledger

    # --- transitions -----------------------------------------------------------------------

    async def admit(self, job: JobRecord, *, max_open: int | None = None) -> tuple[JobRecord, bool]:
        """Hold the job's credits and insert it, in one transaction; (job, True).

        Idempotent by request key: when a job with `job.request_key` exists, nothing is held
        and (that job, False) is returned. Raises BusyError when the user already has
        `max_open` unfinished jobs, and the ledger's refusals (credits, budget, ban); a
        refusal writes nothing.
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
        sql = f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"

        def tx(conn: sqlite3.Connection) -> tuple[JobRecord, bool]:
            if job.request_key:
                found = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE request_key = ?", (job.request_key,)
                ).fetchone()
                if found is not None:
                    return _decode(found), False
            if max_open is not None:
                (open_jobs,) = conn.execute(
                    f"SELECT COUNT(*) FROM jobs WHERE tenant = ? AND user_id = ? AND state IN {_OPEN_SQL}",
                    (job.tenant, job.actor.user_id),
                ).fetchone()
                if open_jobs >= max_open:
                    raise BusyError(messages.busy(max_open))
            ledger.hold_in(conn, job.tenant, job.actor.user_id, job.id, job.cost, kind=job.spec.kind.value)
            conn.execute(sql, row)
            return job, True

        return await self.db.run(tx)

    async def claim(self, job_id: str, owner: str, lease: float, deadline: float) -> JobRecord | None:
        """queued → submitting for this worker; the job as claimed, or None if it is not queued."""
        now = self.clock()

        def tx(conn: sqlite3.Connection) -> JobRecord | None:
            found = conn.execute(
                "UPDATE jobs SET state = 'submitting', version = version + 1, attempts = attempts + 1,"
                " lease_owner = ?, lease_until = ?, deadline = COALESCE(deadline, ?), updated = ?"
                f" WHERE id = ? AND state = 'queued' RETURNING {_COLUMNS}",
                (owner, now + lease, deadline, now, job_id),
            ).fetchone()
            return _decode(found) if found else None

        return await self.db.run(tx)

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
        job was no longer running (a Cancel won: nothing is charged, nothing recorded)."""
        ledger = self._ledger()
        now = self.clock()
        encoded = result.model_dump_json()

        def tx(conn: sqlite3.Connection) -> OutboxRow | None:
            moved = conn.execute(
                "UPDATE jobs SET state = 'done', version = version + 1, result = ?, updated = ?,"
                " vendor_cost_usd = COALESCE(?, vendor_cost_usd), lease_owner = NULL"
                " WHERE id = ? AND state = 'running'",
                (encoded, now, vendor_cost_usd, job_id),
            ).rowcount
            if moved != 1:
                return None
            ledger.settle_in(conn, job_id)
            return _outbox(conn, job_id, "result", {}, now)

        return await self.db.run(tx)

    async def failed(self, job_id: str, text: str, why: str) -> OutboxRow | None:
        """Any open state → failed with the release and the outbox row telling the user `text`;
        that row, or None if the job had already ended."""
        return await self._end(job_id, JobPhase.FAILED, "failure", text, why)

    async def cancel(self, job_id: str, text: str) -> JobPhase | None:
        """Any open state → cancelled with the release and the outbox row `text`. Returns
        CANCELLED when this call won, else the state found (DONE: too late; None: no job)."""
        if await self._end(job_id, JobPhase.CANCELLED, "cancelled", text, "cancelled"):
            return JobPhase.CANCELLED
        return await self.db.run(lambda conn: _state_of(conn, job_id))

    async def _end(
        self, job_id: str, to: JobPhase, kind: OutboxKind, text: str, why: str
    ) -> OutboxRow | None:
        ledger = self._ledger()
        now = self.clock()

        def tx(conn: sqlite3.Connection) -> OutboxRow | None:
            moved = conn.execute(
                "UPDATE jobs SET state = ?, version = version + 1, error = ?, updated = ?, lease_owner = NULL"
                f" WHERE id = ? AND state IN {_OPEN_SQL}",
                (to.value, why[:500] if to is JobPhase.FAILED else None, now, job_id),
            ).rowcount
            if moved != 1:
                return None
            ledger.release_in(conn, job_id, reason=why[:200])
            return _outbox(conn, job_id, kind, {"text": text}, now)

        return await self.db.run(tx)

    async def _move(self, job: JobRecord, frm: JobPhase, to: JobPhase, **columns: Any) -> None:
        now = self.clock()
        sets = "".join(f", {k} = :{k}" for k in columns)
        sql = (
            f"UPDATE jobs SET state = :to, version = version + 1, updated = :now{sets}"
            " WHERE id = :id AND state = :frm"
        )
        params = {**columns, "to": to.value, "now": now, "id": job.id, "frm": frm.value}

        def tx(conn: sqlite3.Connection) -> JobPhase | None:
            if conn.execute(sql, params).rowcount == 1:
                return to
            return _state_of(conn, job.id)

        state = await self.db.run(tx)
        if state is not to:
            raise LostRaceError(job.id, state)
        job.state, job.version, job.updated = to, job.version + 1, now

    async def save_reply_ref(self, job_id: str, ref: dict[str, Any]) -> None:
        """Where the job's reply now lives (a platform moved it, e.g. to a DM)."""
        encoded = json.dumps(ref)
        await self.db.run(
            lambda c: c.execute("UPDATE jobs SET reply_ref = ? WHERE id = ?", (encoded, job_id))
        )

    async def release_orphan_holds(self) -> list[str]:
        """Release every open hold whose job row does not exist; their job ids.

        Admission holds and inserts in one transaction, so such a hold can only be left by a
        process that crashed between the two (an older version) or by hand."""
        ledger = self._ledger()

        def tx(conn: sqlite3.Connection) -> list[str]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT h.job_id FROM holds h LEFT JOIN jobs j ON j.id = h.job_id"
                    " WHERE h.state = 'held' AND j.id IS NULL"
                ).fetchall()
            ]
            for job_id in ids:
                ledger.release_in(conn, job_id, reason="job lost before it was saved")
            return ids

        return await self.db.run(tx)

    # --- the outbox ------------------------------------------------------------------------

    async def unsent(self, job_id: str | None = None) -> list[OutboxRow]:
        """Messages committed but not yet delivered (of one job, or all), oldest first."""
        sql = "SELECT id, job_id, kind, payload, attempts FROM outbox WHERE sent_at IS NULL"
        rows = (
            await self.db.fetchall(sql + " AND job_id = ?", (job_id,))
            if job_id
            else await self.db.fetchall(sql + " ORDER BY id")
        )
        return [
            OutboxRow(r["id"], r["job_id"], r["kind"], json.loads(r["payload"]), r["attempts"]) for r in rows
        ]

    async def mark_sent(self, row_id: int) -> None:
        """The message reached the user (or the platform took it)."""
        now = self.clock()
        await self.db.run(
            lambda c: c.execute(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ? AND sent_at IS NULL",
                (now, row_id),
            )
        )

    async def mark_attempt(self, row_id: int) -> None:
        """A delivery attempt failed; the row stays unsent for the next start."""
        await self.db.run(
            lambda c: c.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (row_id,))
        )

    # --- the learned poll schedule ---------------------------------------------------------

    async def load_route_times(self) -> dict[str, list[float]]:
        """Each route's saved recent job durations."""
        rows = await self.db.fetchall("SELECT route, samples FROM route_times")
        return {r["route"]: [float(x) for x in json.loads(r["samples"])] for r in rows}

    async def save_route_times(self, data: dict[str, list[float]]) -> None:
        """Replace the saved durations of every route in `data`."""
        now = self.clock()
        rows = [(route, json.dumps(samples), now) for route, samples in data.items()]

        def tx(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO route_times (route, samples, updated) VALUES (?, ?, ?)"
                " ON CONFLICT (route) DO UPDATE SET samples = excluded.samples, updated = excluded.updated",
                rows,
            )

        await self.db.run(tx)

    # --- reads -----------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        """A job by id, or None."""
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _decode(row) if row else None

    async def queue_position(self, job_id: str) -> int:
        """1-based place of a queued job among every queued job, in the order they were
        admitted (committed); 0 when not queued.

        Asked right after an admission, so it goes with the writes (one hop, committed in the
        same group as the admissions around it). The count reads the open-jobs index alone
        (its entries are state and rowid), never the rows of finished jobs."""

        def tx(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state NOT IN {_TERMINAL_SQL} AND state = 'queued'"
                " AND rowid <= (SELECT rowid FROM jobs WHERE id = ? AND state = 'queued')",
                (job_id,),
            ).fetchone()
            return int(row[0]) if row else 0

        return await self.db.run(tx)

    async def queue_positions(self) -> dict[str, int]:
        """Every queued job's 1-based place in line (one read for a whole queue's refresh)."""
        rows = await self.db.fetchall(
            f"SELECT id FROM jobs WHERE state NOT IN {_TERMINAL_SQL} AND state = 'queued' ORDER BY rowid"
        )
        return {r["id"]: place for place, r in enumerate(rows, start=1)}

    async def by_request_key(self, key: str) -> JobRecord | None:
        """The job a platform request already created, if any."""
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM jobs WHERE request_key = ?", (key,))
        return _decode(row) if row else None

    async def unfinished(self) -> list[JobRecord]:
        """Every job not yet done, failed or cancelled, oldest first."""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM jobs WHERE state NOT IN ('done','failed','cancelled') ORDER BY created"
        )
        return [_decode(r) for r in rows]

    async def active_child(self, parent_id: str, user_id: str, kind: str) -> JobRecord | None:
        """An unfinished job a button on `parent_id` already started (double-click guard)."""
        row = await self.db.fetchone(
            f"SELECT {_COLUMNS} FROM jobs WHERE parent_id = ? AND user_id = ? AND kind = ? "
            "AND state NOT IN ('done','failed','cancelled') LIMIT 1",
            (parent_id, user_id, kind),
        )
        return _decode(row) if row else None

    async def recent(self, tenant: str, user_id: str, limit: int = 5) -> list[JobRecord]:
        """A user's latest jobs, newest first."""
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM jobs WHERE tenant = ? AND user_id = ? ORDER BY created DESC LIMIT ?",
            (tenant, user_id, limit),
        )
        return [_decode(r) for r in rows]

    async def spend(self, tenant: str | None = None) -> list[tuple[str, int, float]]:
        """(tenant, finished jobs, vendor USD) per tenant, or for one tenant."""
        sql = (
            "SELECT tenant, COUNT(*) AS n, COALESCE(SUM(vendor_cost_usd), 0) AS usd FROM jobs "
            "WHERE state = 'done' {} GROUP BY tenant ORDER BY usd DESC"
        )
        if tenant:
            rows = await self.db.fetchall(sql.format("AND tenant = ?"), (tenant,))
        else:
            rows = await self.db.fetchall(sql.format(""))
        return [(r["tenant"], int(r["n"]), float(r["usd"])) for r in rows]

    async def count_unfinished(self) -> dict[str, int]:
        """How many jobs are in each unfinished state."""
        rows = await self.db.fetchall(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE state NOT IN ('done','failed','cancelled') GROUP BY state"
        )
        return {r["state"]: int(r["n"]) for r in rows}

    async def ids(self) -> set[str]:
        """Every job id."""
        return {r["id"] for r in await self.db.fetchall("SELECT id FROM jobs")}


def _outbox(
    conn: sqlite3.Connection, job_id: str, kind: OutboxKind, payload: dict[str, Any], now: float
) -> OutboxRow:
    cursor = conn.execute(
        "INSERT INTO outbox (job_id, kind, payload, created) VALUES (?, ?, ?, ?)",
        (job_id, kind, json.dumps(payload), now),
    )
    assert cursor.lastrowid is not None
    return OutboxRow(cursor.lastrowid, job_id, kind, payload, 0)
