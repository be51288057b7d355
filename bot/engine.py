"""The engine: admits commands, runs durable jobs through the router, talks back via Reply.

PUBLIC SURFACE (what adapters call) — implementation in progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.commands import Actor, EditCommand, ImagineCommand, ModCommand, Model3DCommand
from bot.reply import JobResult, Reply, ReplyRestorer

__all__ = ["CreditsView", "Engine", "ModResult", "Ticket"]


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted job: its id, its place in the queue (1 = next) and the credits held."""

    job_id: str
    position: int
    cost: int
    text: str  # rendered acknowledgement, e.g. "Queued — position 2 in line."


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


class Engine:
    """See module docstring. All methods raise `bot.errors.UserError` subclasses for anything
    the user must be told (their `str()` is the message); those never cost credits."""

    def register_restorer(self, platform: str, restorer: ReplyRestorer) -> None:
        """Before `async with engine`: how to rebuild replies of `platform` after a restart."""
        raise NotImplementedError

    async def submit(
        self,
        actor: Actor,
        command: ImagineCommand | EditCommand | Model3DCommand,
        reply: Reply,
        *,
        request_key: str | None = None,
    ) -> Ticket:
        """Validate, check policy, hold credits, persist and queue a job.

        `request_key` (e.g. an interaction id or Slack trigger id) makes retried deliveries of
        the same platform request return the first job's ticket instead of starting another.
        """
        raise NotImplementedError

    async def reroll(self, actor: Actor, job_id: str, reply: Reply) -> Ticket:
        """Same parameters as `job_id`, new seed. Owner or moderator only."""
        raise NotImplementedError

    async def edit_result(
        self, actor: Actor, job_id: str, index: int | None, instruction: str, reply: Reply
    ) -> Ticket:
        """Edit image `index` (default 0) of a finished job by instruction."""
        raise NotImplementedError

    async def make_3d(self, actor: Actor, job_id: str, index: int | None, reply: Reply) -> Ticket:
        """Image → 3D from image `index` (default 0) of a finished job."""
        raise NotImplementedError

    async def single(self, actor: Actor, job_id: str, index: int) -> JobResult:
        """One image of a finished multi-image job, alone at full size (costs nothing)."""
        raise NotImplementedError

    async def show(self, actor: Actor, job_id: str) -> JobResult:
        """A finished job's result again, with its buttons (like Midjourney's /show)."""
        raise NotImplementedError

    async def cancel(self, actor: Actor, job_id: str) -> str:
        """Cancel an unfinished job (owner or moderator); releases the hold. Returns the text."""
        raise NotImplementedError

    async def credits(self, actor: Actor) -> CreditsView:
        """The actor's balance, allowance, next refill and recent jobs."""
        raise NotImplementedError

    async def moderate(self, actor: Actor, command: ModCommand) -> ModResult:
        """Run a moderator operation; refused with `NotModeratorError` for members."""
        raise NotImplementedError
