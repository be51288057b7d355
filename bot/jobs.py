"""What the engine's parts share: its knobs, the answers adapters get back, the reasons a job
ends, and the conversion between delivered files and their stored form."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot.errors import BotError
from bot.jobstore import StoredFile
from bot.reply import Failure, JobResult, OutputFile, Progress, Reply, ReplyRestorer

__all__ = [
    "CreditsView",
    "EngineConfig",
    "JobEndedError",
    "LogReply",
    "MediaLinks",
    "ModResult",
    "Ticket",
    "file_from_stored",
    "file_to_stored",
    "restore_reply",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted job: its id, its place in the queue (1 = next) and the credits held."""

    job_id: str
    position: int
    cost: int
    text: str  # rendered acknowledgement, e.g. "Queued — 2nd in line · 10 credits held."
    awaiting_confirmation: bool = False  # no job yet: `job_id` names a request waiting for Confirm


@dataclass(frozen=True, slots=True)
class CreditsView:
    """What /credits shows; `text` is the rendered answer."""

    balance: int
    allowance: int
    next_refill: float  # unix time
    frozen: bool
    banned: bool
    recent: tuple[dict[str, Any], ...]
    text: str


@dataclass(frozen=True, slots=True)
class ModResult:
    """A moderator operation's answer: the new state, rendered."""

    text: str
    log_line: str  # for a moderation-log channel


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """The engine's knobs (from Settings; tests shrink the timings)."""

    workers: int = 64
    queue_size: int = 500
    max_jobs_per_user: int = 2
    admissions: int = 64  # commands admitted at once; the others wait before they are parsed
    progress_interval: float = 3.0
    job_timeout: float = 900.0
    poll_initial: float = 1.0
    poll_max: float = 10.0
    webhook_poll_interval: float = 30.0  # slow fallback polling when a webhook was requested
    max_attempts: int = 3  # vendor jobs tried (failover after a vendor-side failure)
    steps: int = 256  # job steps (polls, downloads) running at once
    route_times_every: float = 60.0  # how often the learned poll schedule is saved


class JobEndedError(BotError):
    """A job cannot go on: `text` is what the user is told, `why` goes to the log and the row."""

    def __init__(self, text: str, why: str) -> None:
        super().__init__(why)
        self.text = text
        self.why = why


class MediaLinks(Protocol):
    """The part of the media store that turns stored paths back into files with links."""

    files_dir: Path

    def link_for(self, path: Path) -> str | None:
        """A signed public link to a stored file, when the bot has a public URL."""
        ...


def file_to_stored(f: OutputFile, root: Path) -> StoredFile:
    """A delivered file as saved with the job (its path relative to the media root)."""
    return StoredFile(
        path=str(f.path.relative_to(root)) if f.path.is_relative_to(root) else str(f.path),
        filename=f.filename,
        content_type=f.content_type,
        size=f.size,
        role=f.role,
        width=f.width,
        height=f.height,
        url=f.url,
    )


def file_from_stored(d: StoredFile, media: MediaLinks) -> OutputFile:
    """A stored file back as an OutputFile, with a fresh link when one can be made."""
    path = Path(d.path)
    if not path.is_absolute():
        path = media.files_dir / path
    return OutputFile(
        path=path,
        filename=d.filename,
        content_type=d.content_type,
        size=d.size,
        role=d.role,
        url=media.link_for(path) or d.url,
        width=d.width,
        height=d.height,
    )


class LogReply:
    """A reply for jobs whose platform is not running in this process: logs only."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self._ref = ref

    def ref(self) -> dict[str, Any]:
        """The original address, kept unchanged."""
        return self._ref

    async def progress(self, update: Progress) -> None:
        """Log the status line."""
        _log.info("job %s: %s", update.job_id, update.text)

    async def result(self, result: JobResult) -> None:
        """Log where the files are."""
        _log.info("job %s done: %s", result.job_id, ", ".join(str(f.path) for f in result.files))

    async def failure(self, failure: Failure) -> None:
        """Log the failure."""
        _log.info("job %s failed: %s", failure.job_id, failure.text)


def restore_reply(restorers: dict[str, ReplyRestorer], platform: str, ref: dict[str, Any]) -> Reply:
    """The reply at a saved address: rebuilt by its platform's restorer, else a log-only stand-in."""
    restorer = restorers.get(platform)
    return restorer.restore(ref) if restorer else LogReply(ref)
