"""Durable jobs: one row per job with enough to finish or refund it after a restart."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.commands import Actor
from bot.db import Database
from bot.params import JobSpec
from bot.reply import JobPhase
from providers.base import JobHandle

__all__ = ["JobRecord", "JobStore", "new_job_id"]


def new_job_id() -> str:
    """A short, unguessable id users can type (`/show 3f9a1c02de`)."""
    return secrets.token_hex(5)


@dataclass(slots=True)
class JobRecord:
    """A job row, decoded."""

    id: str
    created: float
    updated: float
    actor: Actor
    spec: JobSpec
    state: JobPhase
    reply_ref: dict[str, Any]
    cost: int
    route: str | None = None
    handle: JobHandle | None = None
    attempts: int = 0
    routes_tried: list[str] = field(default_factory=list)
    vendor_cost_usd: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    parent_id: str | None = None
    request_key: str | None = None

    @property
    def tenant(self) -> str:
        """The ledger tenant of the job's actor."""
        return self.actor.tenant


_COLUMNS = (
    "id, created, updated, platform, tenant, user_id, kind, state, spec, actor, reply_ref, cost, route, "
    "handle, attempts, routes_tried, vendor_cost_usd, result, error, parent_id, request_key"
)


def _mutable(job: JobRecord) -> dict[str, Any]:
    """The columns that change over a job's life, encoded for SQLite."""
    return {
        "updated": job.updated,
        "state": job.state.value,
        "reply_ref": json.dumps(job.reply_ref),
        "route": job.route,
        "handle": job.handle.model_dump_json() if job.handle else None,
        "attempts": job.attempts,
        "routes_tried": json.dumps(job.routes_tried),
        "vendor_cost_usd": job.vendor_cost_usd,
        "result": json.dumps(job.result) if job.result is not None else None,
        "error": job.error,
    }


def _decode(row: sqlite3.Row | Any) -> JobRecord:
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
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        parent_id=row["parent_id"],
        request_key=row["request_key"],
    )


class JobStore:
    """Reads and writes the `jobs` table."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def create(self, job: JobRecord) -> None:
        """Insert a new job (its id and request key must be new)."""
        row = {
            "id": job.id,
            "created": job.created,
            "platform": job.actor.platform,
            "tenant": job.tenant,
            "user_id": job.actor.user_id,
            "kind": job.spec.kind.value,
            "spec": job.spec.model_dump_json(),
            "actor": job.actor.model_dump_json(),
            "cost": job.cost,
            "parent_id": job.parent_id,
            "request_key": job.request_key,
            **_mutable(job),
        }
        async with self.db.transaction() as conn:
            await conn.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})", row
            )

    async def save(self, job: JobRecord) -> None:
        """Write back every mutable field of a job."""
        job.updated = self.clock()
        row = _mutable(job)
        async with self.db.transaction() as conn:
            await conn.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = :{k}' for k in row)} WHERE id = :id",
                {**row, "id": job.id},
            )

    async def get(self, job_id: str) -> JobRecord | None:
        """A job by id, or None."""
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _decode(row) if row else None

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
        """Every job id (to find ledger holds that lost their job in a crash)."""
        return {r["id"] for r in await self.db.fetchall("SELECT id FROM jobs")}
