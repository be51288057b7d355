"""Platform-neutral commands and the actor who sends them: what adapters hand the core.

Adapters build these in small pure functions; no discord or slack object travels past them.
Ids are strings. The models are frozen and forbid unknown fields.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot import messages
from bot.errors import InvalidInputError

__all__ = [
    "Actor",
    "CommandModel",
    "CreditsCommand",
    "EditCommand",
    "ImageRef",
    "ImagineCommand",
    "ModCommand",
    "ModOp",
    "Model3DCommand",
    "Platform",
    "clean_text",
]

# C0 and C1 controls except newline (tab and carriage return become a space / newline first),
# bidi embeddings, overrides and isolates, the directional marks, and the word joiner that
# `messages.mention` uses to mark the core's own mentions (so user text can never forge one).
_INVISIBLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """User text as it may be stored, shown and sent to a vendor: controls and invisible
    direction changes removed (newlines kept). Lone UTF-16 surrogates (discord.py makes them
    from `\\ud800` escapes) cannot be stored or sent at all: InvalidInputError."""
    if _SURROGATE.search(value):
        raise InvalidInputError(messages.unreadable_characters())
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return _INVISIBLE.sub("", value)


class Platform(StrEnum):
    """Where a command came from."""

    DISCORD = "discord"
    SLACK = "slack"
    CONSOLE = "console"
    CLI = "cli"


class _Frozen(BaseModel):
    """The boundary: every text field of every command model is cleaned (`clean_text`) here,
    whichever adapter built it, before the core parses, stores or echoes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _clean(cls, value: Any) -> Any:
        return clean_text(value) if isinstance(value, str) else value


class Actor(_Frozen):
    """Who asks: the platform decides `is_moderator` from its own permissions; the core
    still checks every moderator operation against it."""

    platform: str
    tenant_id: str  # guild / team id, or "dm:<user id>" for direct messages
    user_id: str
    display_name: str = ""
    is_moderator: bool = False
    is_dm: bool = False

    @property
    def tenant(self) -> str:
        """The ledger's tenant key: one namespace per platform."""
        return f"{self.platform}:{self.tenant_id}"


class ImageRef(_Frozen):
    """An input image: a URL, a local path, or bytes an adapter already holds.

    `headers` (e.g. a Slack bot token for a private file) are used for the one download at
    admission and never persisted or logged.
    """

    url: str | None = None
    path: str | None = None
    data: bytes | None = Field(default=None, repr=False)
    filename: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False, exclude=True)

    @property
    def label(self) -> str:
        """A short description for messages and logs (never the headers)."""
        return self.filename or self.path or (self.url or "uploaded image").split("?", 1)[0]


class ImagineCommand(_Frozen):
    """/imagine: structured options win over inline flags in `prompt`."""

    prompt: str
    aspect: str | None = None
    seed: int | None = None
    negative: str | None = None
    count: int | None = None
    model: str | None = None
    size: str | None = None


class EditCommand(_Frozen):
    """/edit: change an image by instruction."""

    image: ImageRef | None = None
    instruction: str
    seed: int | None = None
    model: str | None = None


class Model3DCommand(_Frozen):
    """/model3d: a prompt or an image to a textured (or geometry-only) mesh."""

    prompt: str | None = None
    image: ImageRef | None = None
    face_count: int | None = None
    geometry_only: bool = False
    model: str | None = None


class CreditsCommand(_Frozen):
    """/credits: the actor's own balance."""


class ModOp(StrEnum):
    """Moderator operations; every one writes an audited entry."""

    GRANT = "grant"
    TAKE = "take"
    SET = "set"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    BAN = "ban"
    UNBAN = "unban"
    ALLOWANCE = "allowance"
    COST = "cost"
    BUDGET = "budget"
    CONFIRM_ABOVE = "confirm-above"  # jobs costing more wait for their requester's Confirm
    SETTINGS = "settings"
    BLOCK_ADD = "blocklist-add"
    BLOCK_REMOVE = "blocklist-remove"
    BLOCK_LIST = "blocklist-list"
    HISTORY = "history"
    TOP = "top"
    SPEND = "spend"

    @property
    def changes_state(self) -> bool:
        """False for the read-only operations (nothing to audit or post to a moderation log)."""
        return self not in (ModOp.BLOCK_LIST, ModOp.HISTORY, ModOp.TOP, ModOp.SPEND, ModOp.SETTINGS)


class ModCommand(_Frozen):
    """/quota …: `target` is a user id, `kind` a command kind for COST, `words` for the
    blocklist."""

    op: ModOp
    target: str | None = None
    amount: int | None = None
    kind: str | None = None
    words: str | None = None
    reason: str = ""


CommandModel = ImagineCommand | EditCommand | Model3DCommand
