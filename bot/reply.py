"""The Reply port: how the core talks back to a user, implemented by each adapter.

The engine calls `progress` (throttled), then exactly one of `result` or `failure`. A reply
is durable: `ref()` returns a JSON-able address (channel, message id, token…) that the engine
saves with the job, and after a restart the adapter's `ReplyRestorer` turns it back into a
`Reply`, so every job ends with a message to its user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Button",
    "ButtonAction",
    "Failure",
    "JobPhase",
    "JobResult",
    "OutputFile",
    "Progress",
    "Reply",
    "ReplyRestorer",
    "parse_custom_id",
    "per_image_rows",
]


class JobPhase(StrEnum):
    """The job state machine (persisted in the jobs table; see `bot.store`).

    DELIVERING is shown to users while results download; the row stays `running` meanwhile.
    """

    QUEUED = "queued"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DELIVERING = "delivering"  # progress only, never stored
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the job is over."""
        return self in (JobPhase.DONE, JobPhase.FAILED, JobPhase.CANCELLED)


class ButtonAction(StrEnum):
    """What a result button does; carried in the custom id with the job id."""

    REROLL = "reroll"
    EDIT = "edit"
    MAKE_3D = "make3d"
    SINGLE = "single"  # post one image of a multi-image result alone, full size
    VARY = "vary"  # a variation of one image: an instruction edit from it (`ResultActions.vary`)
    CANCEL = "cancel"
    DELETE = "delete"  # remove the result's messages (requester or moderator; `Engine.may_delete`)
    CONFIRM = "confirm"  # start a request that waited for its cost to be confirmed (`bot.confirm`)

    @property
    def spends(self) -> bool:
        """Buttons that start a paid job: only the requester or a moderator may press them."""
        return self in (ButtonAction.REROLL, ButtonAction.EDIT, ButtonAction.MAKE_3D, ButtonAction.VARY)


_PREFIX = "ib"


@dataclass(frozen=True, slots=True)
class Button:
    """A result or status button. `custom_id` survives restarts: it names the job, not a view."""

    action: ButtonAction
    job_id: str
    label: str
    index: int | None = None

    @property
    def custom_id(self) -> str:
        """`ib:<action>:<job id>[:<index>]`, well under Discord's 100 and Slack's 255 chars."""
        tail = "" if self.index is None else f":{self.index}"
        return f"{_PREFIX}:{self.action.value}:{self.job_id}{tail}"


def parse_custom_id(custom_id: str) -> tuple[ButtonAction, str, int | None] | None:
    """(action, job id, index) from a button's custom id; None if it is not ours."""
    parts = custom_id.split(":")
    if len(parts) not in (3, 4) or parts[0] != _PREFIX:
        return None
    try:
        action = ButtonAction(parts[1])
        index = int(parts[3]) if len(parts) == 4 else None
    except ValueError:
        return None
    return action, parts[2], index


def per_image_rows(buttons: Sequence[Button]) -> tuple[list[Button], list[Button]]:
    """The U1…U4 and V1…V4 buttons of a multi-image result, each set for a row of its own; a
    lone Vary (single image) is none of them and sits with the job's actions."""
    singles = [b for b in buttons if b.action is ButtonAction.SINGLE]
    varies = [b for b in buttons if b.action is ButtonAction.VARY]
    return singles, varies if len(varies) > 1 else []


@dataclass(frozen=True, slots=True)
class Progress:
    """A status update; `text` is already rendered in the shared wording."""

    job_id: str
    phase: JobPhase
    text: str
    position: int | None = None
    elapsed: float = 0.0
    percent: float | None = None
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A delivered file on local disk; `url` is a link to use when it is over the platform's
    attachment limit (the bot's signed media link, or the vendor's URL)."""

    path: Path
    filename: str
    content_type: str
    size: int
    role: str = "image"  # "image" | "grid" | "model" | "thumbnail"
    url: str | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job: caption text, the files, an optional grid preview, and buttons."""

    job_id: str
    kind: str
    text: str
    files: tuple[OutputFile, ...]
    preview: OutputFile | None = None
    buttons: tuple[Button, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failure:
    """A job that ended without a result; `text` says why and that nothing was charged."""

    job_id: str
    text: str
    refunded: bool = True


@runtime_checkable
class Reply(Protocol):
    """Where one job's messages go. Implementations must not raise for platform hiccups they
    can absorb (log and carry on); an exception makes the engine log and move on."""

    def ref(self) -> dict[str, Any]:
        """A JSON-able address of this reply, saved with the job after every call."""
        ...

    async def progress(self, update: Progress) -> None:
        """Show or edit the job's one status message."""
        ...

    async def result(self, result: JobResult) -> None:
        """Deliver the files and buttons."""
        ...

    async def failure(self, failure: Failure) -> None:
        """Tell the user the job ended without a result."""
        ...


class ReplyRestorer(Protocol):
    """Rebuilds a `Reply` from a saved `ref()` after a restart (one per platform)."""

    def restore(self, ref: dict[str, Any]) -> Reply:
        """A reply that writes to the same place as the one that produced `ref`."""
        ...
