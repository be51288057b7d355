"""Helpers for tests that run the real core on the sandbox vendors: settings, a recording
Reply, and waiting for a job to end."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bot.app import SANDBOX_KEY, BotApp
from bot.commands import Actor
from bot.config import Settings
from bot.reply import Failure, JobResult, Progress
from providers.sandbox.server import Sandbox

__all__ = [
    "MEMBER",
    "MODERATOR",
    "RecordingReply",
    "RecordingRestorer",
    "core_settings",
    "fast_sandbox",
    "running_app",
]

MEMBER = Actor(platform="console", tenant_id="t1", user_id="u-member", display_name="Member")
MODERATOR = Actor(platform="console", tenant_id="t1", user_id="u-mod", display_name="Mod", is_moderator=True)


def core_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: sandbox vendors, loopback server, fast polling, no throttle."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "sandbox": True,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "media_allow_private": True,
        "poll_initial": 0.05,
        "poll_max": 0.2,
        "progress_interval": 0.0,
        "submit_retries": 2,
        "daily_allowance": 100,
        "workers": 8,
    }
    values.update(overrides)
    if str(values.get("database_url", "")).startswith("postgresql"):
        values.setdefault("secret_key", "test-secret-key-shared-by-replicas")  # required there
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def fast_sandbox(vendors: list[str] | None = None, **options: Any) -> Sandbox:
    """Emulators that finish jobs in a fraction of a second."""
    options.setdefault("latency", (0.1, 0.2))
    options.setdefault("timeout_seconds", 2.0)
    return Sandbox(vendors, api_key=SANDBOX_KEY, **options)


def running_app(tmp_path: Path, sandbox: Sandbox | None = None, **overrides: Any) -> BotApp:
    """A BotApp with no platform adapters, for driving the engine directly."""
    return BotApp(core_settings(tmp_path, **overrides), platforms=[], sandbox=sandbox or fast_sandbox())


class RecordingReply:
    """A Reply that keeps everything it is told; `done` is set on result or failure."""

    def __init__(self) -> None:
        self.progress_updates: list[Progress] = []
        self.results: list[JobResult] = []
        self.failures: list[Failure] = []
        self.done = asyncio.Event()
        self.address: dict[str, Any] = {"console": True}

    def ref(self) -> dict[str, Any]:
        return dict(self.address)

    async def progress(self, update: Progress) -> None:
        self.progress_updates.append(update)

    async def result(self, result: JobResult) -> None:
        self.results.append(result)
        self.done.set()

    async def failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.done.set()

    async def wait(self, timeout: float = 20.0) -> None:
        await asyncio.wait_for(self.done.wait(), timeout)


class RecordingRestorer:
    """A platform's restorer that keeps every reply it rebuilt (what the process told users
    through saved addresses, after a restart or on another replica)."""

    def __init__(self) -> None:
        self.replies: list[RecordingReply] = []

    def restore(self, ref: dict[str, Any]) -> RecordingReply:
        reply = RecordingReply()
        self.replies.append(reply)
        return reply

    def results(self) -> int:
        """How many results its replies were given."""
        return sum(len(r.results) for r in self.replies)
