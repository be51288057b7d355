"""Crash safety: a real child process running the engine is killed with SIGKILL mid-job, a new
one is started on the same database, and the job completes (or is refunded) with the ledger
balanced."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from bot.db import Database
from bot.ledger import CreditLedger
from providers.sandbox.common import Fault
from providers.sandbox.server import Sandbox
from tests.chaos.env import ROOT, bot_env

pytestmark = pytest.mark.slow


@pytest.fixture
async def slow_sandbox() -> AsyncIterator[Sandbox]:
    # The vendor lives in the test process, so it outlives the killed bot like a real vendor.
    async with Sandbox(["apiinone", "pixazo"], api_key="sandbox-key", latency=(3.0, 3.0)) as sandbox:
        yield sandbox


def _env(tmp_path: Path, sandbox: Sandbox) -> dict[str, str]:
    return bot_env(tmp_path, sandbox, ROUTE_ORDER="apiinone")


async def _spawn(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        env=env,
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )


async def _job_state(db_path: Path) -> tuple[str, str | None] | None:
    if not await asyncio.to_thread(db_path.exists):
        return None
    try:
        async with aiosqlite.connect(db_path) as conn:
            row = await (
                await conn.execute("SELECT state, handle FROM jobs ORDER BY created LIMIT 1")
            ).fetchone()
    except aiosqlite.OperationalError:
        return None  # schema not created yet
    return (row[0], row[1]) if row else None


async def _wait_for(db_path: Path, predicate, timeout: float = 30.0) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        state = await _job_state(db_path)
        if state and predicate(state):
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"job never reached the expected state; last {await _job_state(db_path)}")


async def _ledger_report(db_path: Path) -> tuple[list[str], int, str]:
    async with Database(db_path) as db:
        ledger = CreditLedger(db)
        account = await ledger.account("cli:chaos", "operator")
        row = await db.fetchone("SELECT state FROM jobs")
        assert row is not None
        return await ledger.check_invariants(), account.balance, row["state"]


async def _kill_then_resume(tmp_path: Path, sandbox: Sandbox) -> tuple[list[str], int, str, str]:
    env = _env(tmp_path, sandbox)
    db_path = tmp_path / "data" / "imagine-bot.sqlite3"
    child = await _spawn(env, "imagine", "a fox in the snow", "--tenant", "chaos")
    try:
        await _wait_for(db_path, lambda s: s[0] == "running" and s[1] is not None)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    resumed = await _spawn(env, "jobs", "resume")
    out, err = await asyncio.wait_for(resumed.communicate(), 60)
    assert resumed.returncode == 0, err.decode()
    invariants, balance, state = await _ledger_report(db_path)
    return invariants, balance, state, out.decode()


async def test_a_job_killed_mid_flight_completes_after_restart(tmp_path: Path, slow_sandbox: Sandbox) -> None:
    invariants, balance, state, out = await _kill_then_resume(tmp_path, slow_sandbox)
    assert invariants == []
    assert state == "done"
    assert balance == 90  # charged exactly once
    assert "saved image:" in out


async def test_a_job_the_vendor_forgot_is_refunded_after_restart(
    tmp_path: Path, slow_sandbox: Sandbox
) -> None:
    env = _env(tmp_path, slow_sandbox)
    db_path = tmp_path / "data" / "imagine-bot.sqlite3"
    child = await _spawn(env, "imagine", "a fox", "--tenant", "chaos")
    try:
        await _wait_for(db_path, lambda s: s[0] == "running" and s[1] is not None)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    slow_sandbox["apiinone"].jobs.clear()  # the vendor lost it (expired, restarted)
    resumed = await _spawn(env, "jobs", "resume")
    out, err = await asyncio.wait_for(resumed.communicate(), 60)
    assert resumed.returncode == 0, err.decode()
    invariants, balance, state = await _ledger_report(db_path)
    assert invariants == []
    assert state == "failed"
    assert balance == 100  # refunded
    assert "weren't charged" in out.decode()


async def test_a_crash_before_the_vendor_answered_is_refunded(tmp_path: Path, slow_sandbox: Sandbox) -> None:
    env = _env(tmp_path, slow_sandbox)
    db_path = tmp_path / "data" / "imagine-bot.sqlite3"
    slow_sandbox["apiinone"].timeout_seconds = 20.0
    slow_sandbox["apiinone"].inject(Fault.TIMEOUT, 1, stage="submit")  # the submit call hangs
    child = await _spawn(env, "imagine", "a fox", "--tenant", "chaos")
    try:
        await _wait_for(db_path, lambda s: s[0] == "submitting")
        await asyncio.sleep(0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    resumed = await _spawn(env, "jobs", "resume")
    _out, err = await asyncio.wait_for(resumed.communicate(), 60)
    assert resumed.returncode == 0, err.decode()
    invariants, balance, state = await _ledger_report(db_path)
    assert invariants == [] and state == "failed" and balance == 100
