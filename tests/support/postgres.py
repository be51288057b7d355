"""A real PostgreSQL for the tests: the cluster `.ci/run` started (IMAGINE_TEST_PG_URL), else one
this session starts itself with `.ci/pg` when a server is installed, else a skip with the reason.
Under CI=true a missing PostgreSQL fails instead of skipping."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

__all__ = ["fresh_pg_url", "pg_server_url"]

_ROOT = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def pg_server_url() -> Iterator[str]:
    """Generator for a session fixture: the server's URL (the maintenance database)."""
    url = os.environ.get("IMAGINE_TEST_PG_URL")
    if url:
        yield url
        return
    if shutil.which("bash") is None:
        _unavailable("no bash to run .ci/pg")
    done = subprocess.run(
        ["bash", str(_ROOT / ".ci" / "pg"), "start"], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        _unavailable(f"set IMAGINE_TEST_PG_URL or install postgresql-15 ({done.stderr.strip()[-300:]})")
    env = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    try:
        yield env["IMAGINE_TEST_PG_URL"]
    finally:
        subprocess.run(["bash", str(_ROOT / ".ci" / "pg"), "stop", env["IMAGINE_TEST_PG_DIR"]], timeout=60)


@asynccontextmanager
async def fresh_pg_url(server_url: str) -> AsyncIterator[str]:
    """A new empty database on the server for one test, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
