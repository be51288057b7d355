"""Chaos at scale: 1,000 jobs from 120 users on the sandbox, a fifth of vendor calls faulty, a few
cancels at random moments, and the bot process SIGKILLed three times and restarted. At the end
every job is terminal with exactly one settle or release, every user was told, and the books
balance with no hold left open."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.db import Database
from bot.ledger import CreditLedger
from providers.sandbox.server import Sandbox
from tests.chaos.env import ROOT, bot_env, chaotic_sandbox

pytestmark = pytest.mark.slow

JOBS = 1000
KILLS = 3
FAULT_SHARE = 0.2
SEED = 9


@pytest.fixture
async def chaos_sandbox() -> AsyncIterator[Sandbox]:
    async with chaotic_sandbox(SEED, FAULT_SHARE) as sandbox:
        yield sandbox


def _env(tmp_path: Path, sandbox: Sandbox) -> dict[str, str]:
    return bot_env(
        tmp_path,
        sandbox,
        ROUTE_ORDER="apiinone,pixazo",
        WORKERS="128",
        QUEUE_SIZE="5000",
        MAX_JOBS_PER_USER="20",
        DAILY_ALLOWANCE="100000",
        JOB_TIMEOUT="40",
        VENDOR_TIMEOUT="5",
        BREAKER_RESET_SECONDS="1",
        LOG_LEVEL="WARNING",
    )


async def _start(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as err:  # the child keeps its own descriptor
        return await _exec(env, err.fileno())


async def _exec(env: dict[str, str], err: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.chaos.chaos_bot",
        str(JOBS),
        str(SEED),
        env=env,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=err,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def test_a_thousand_jobs_through_faults_cancels_and_three_sigkills(
    tmp_path: Path, chaos_sandbox: Sandbox
) -> None:
    env = _env(tmp_path, chaos_sandbox)
    log = tmp_path / "bot-stderr.log"
    rng = random.Random(SEED)
    killed: set[int] = set()
    for _ in range(KILLS):
        child = await _start(env, log)
        killed.add(child.pid)
        await asyncio.sleep(rng.uniform(2.0, 6.0))  # a random moment mid-run
        child.send_signal(signal.SIGKILL)
        await child.wait()
        assert child.returncode == -signal.SIGKILL
    final = await _start(env, log)
    out, _ = await asyncio.wait_for(final.communicate(), 150)
    assert final.returncode == 0 and b"drained" in out, log.read_text()[-3000:]

    async with Database(tmp_path / "data" / "imagine-bot.sqlite3") as db:
        jobs = {r["id"]: r["state"] for r in await db.fetchall("SELECT id, state FROM jobs")}
        assert len(jobs) == JOBS, log.read_text()[-3000:]
        states = Counter(jobs.values())
        print("chaos job states:", dict(states))
        assert set(states) <= {"done", "failed", "cancelled"}, states
        assert states["done"] > JOBS // 2 and states["cancelled"] > 0, states
        # exactly one settle (done) or one release (failed, cancelled) per job
        resolved = {
            r["job_id"]: r["kinds"]
            for r in await db.fetchall(
                "SELECT job_id, GROUP_CONCAT(kind) AS kinds FROM entries"
                " WHERE kind IN ('settle', 'release') GROUP BY job_id"
            )
        }
        expected = {job: "settle" if state == "done" else "release" for job, state in jobs.items()}
        assert resolved == expected
        assert await db.fetchall("SELECT job_id FROM holds WHERE state = 'held'") == []
        orphans = await db.fetchall(
            "SELECT h.job_id FROM holds h LEFT JOIN jobs j ON j.id = h.job_id WHERE j.id IS NULL"
        )
        assert orphans == []
        # one message per job, committed with its ending, and sent
        outbox = await db.fetchall("SELECT job_id, kind, sent_at FROM outbox")
        assert sorted(r["job_id"] for r in outbox) == sorted(jobs)
        assert all(r["sent_at"] is not None for r in outbox)
        assert await CreditLedger(db).check_invariants() == []

    told = [json.loads(line) for line in (tmp_path / "data" / "told.jsonl").read_text().splitlines()]
    times = Counter(t["job"] for t in told)
    assert set(times) == set(jobs)  # every user was told
    # The outbox is at-least-once: a kill between a message and its "sent" mark repeats that
    # message after the restart. So a message is repeated only when the process that sent it
    # was killed afterwards, and no process tells anyone twice.
    by_job: dict[str, list[int]] = {}
    for t in told:
        by_job.setdefault(t["job"], []).append(t["pid"])
    repeated = {job: pids for job, pids in by_job.items() if len(pids) > 1}
    print("told twice:", len(repeated), "messages:", len(told))
    for job, pids in repeated.items():
        assert len(set(pids)) == len(pids), (job, pids)
        assert set(pids[:-1]) <= killed, (job, pids)
    for t in told:
        assert (t["kind"] == "result") == (jobs[t["job"]] == "done")
        if jobs[t["job"]] == "cancelled":
            assert t["text"].startswith("Cancelled")
