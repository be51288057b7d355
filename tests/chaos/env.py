"""The environment a chaos test gives its bot child process: the two sandbox vendors, fast
polling, loopback only; for several replicas, one shared database, key and media root."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from providers.sandbox.common import Fault, FaultPlan, VendorEmulator
from providers.sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parents[2]

# Database settings a developer's shell may carry: a test's child must not reach a real one.
_DATABASE = ("DATABASE_URL", "DATABASE_PATH", "MEDIA_ROOT", "OUTPUT_DIR", "SECRET_KEY")

#: the key every replica of one test shares (PostgreSQL mode requires one, 16+ characters)
SHARED_KEY = "chaos-test-shared-secret-key"


def bot_env(tmp_path: Path, sandbox: Sandbox, **overrides: str) -> dict[str, str]:
    """The test's environment without real vendor keys, pointed at `sandbox`; `overrides` win."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL")) and k not in _DATABASE
    }
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        APIINONE_API_KEY="sandbox-key",
        APIINONE_BASE_URL=sandbox.base_url("apiinone"),
        PIXAZO_API_KEY="sandbox-key",
        PIXAZO_BASE_URL=sandbox.base_url("pixazo"),
        POLL_INITIAL="0.2",
        POLL_MAX="0.5",
        MEDIA_ALLOW_PRIVATE="true",
        HTTP_HOST="127.0.0.1",  # a test listens on loopback only, on a port the kernel picks
        HTTP_PORT="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return env


def replica_env(
    tmp_path: Path, sandbox: Sandbox, name: str, database_url: str, **overrides: str
) -> dict[str, str]:
    """One replica of several: its own DATA_DIR (`tmp_path/name`), the shared `database_url`,
    SECRET_KEY and MEDIA_ROOT (`tmp_path/media`); `overrides` win."""
    return bot_env(
        tmp_path,
        sandbox,
        DATA_DIR=str(tmp_path / name),
        DATABASE_URL=database_url,
        SECRET_KEY=SHARED_KEY,
        MEDIA_ROOT=str(tmp_path / "media"),
        **overrides,
    )


_REQUEST_FAULTS = (Fault.SERVER_ERROR, Fault.RATE_LIMIT, Fault.MALFORMED, Fault.TIMEOUT)


def make_chaotic(emulator: VendorEmulator, rng: random.Random, share: float) -> None:
    """`share` of the vendor's requests fail transiently; a few jobs fail or lose their file."""

    def take_fault(stage: str) -> FaultPlan | None:
        if rng.random() >= share:
            return None
        return FaultPlan(rng.choice(_REQUEST_FAULTS), 1, stage, retry_after=0.1)

    def take_job_faults() -> set[Fault]:
        r = rng.random()
        if r < 0.03:
            return {Fault.JOB_FAILED}
        if r < 0.06:
            return {Fault.JOB_ERROR}
        if r < 0.08:
            return {Fault.DEAD_URL}
        return set()

    emulator.take_fault = take_fault  # type: ignore[method-assign]
    emulator.take_job_faults = take_job_faults  # type: ignore[method-assign]


@asynccontextmanager
async def chaotic_sandbox(seed: int, share: float) -> AsyncIterator[Sandbox]:
    """The two image vendors, quick, with a `share` of their calls faulty (seeded). They live in
    the test process, so they outlive a killed bot like real vendors."""
    async with Sandbox(
        ["apiinone", "pixazo"],
        api_key="sandbox-key",
        latency=(0.2, 0.8),
        timeout_seconds=0.3,
        render_cache=True,
    ) as sandbox:
        rng = random.Random(seed)
        for emulator in sandbox.emulators.values():
            make_chaotic(emulator, rng, share)
        yield sandbox
