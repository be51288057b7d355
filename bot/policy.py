"""Moderation policy: who may do what, and which prompts are refused.

The adapters only report whether the platform says an actor is a moderator; every decision is
made here, the same for all platforms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bot import messages
from bot.commands import Actor, EditCommand, ImagineCommand, Model3DCommand, Platform, clean_text
from bot.errors import BlockedPromptError, InvalidInputError, NotModeratorError

__all__ = [
    "DM_BLOCKLIST",
    "LOCAL_FILE_PLATFORMS",
    "check_image_source",
    "check_job_id",
    "check_prompt",
    "require_moderator",
]

#: Where a user may name a file on the bot's own disk: the operator's terminal, nowhere else.
LOCAL_FILE_PLATFORMS: frozenset[str] = frozenset({Platform.CONSOLE.value, Platform.CLI.value})

#: Always on in direct messages, where no server moderator is watching.
DM_BLOCKLIST: frozenset[str] = frozenset(
    {"nude", "nudes", "naked", "nsfw", "porn", "gore", "sex", "sexual", "explicit", "child", "minor", "loli"}
)


def require_moderator(actor: Actor) -> None:
    """Refuse moderator operations from members (and from anyone in a DM: no server to moderate)."""
    if not actor.is_moderator or actor.is_dm:
        raise NotModeratorError(messages.not_moderator())


def check_image_source(actor: Actor, command: ImagineCommand | EditCommand | Model3DCommand) -> None:
    """Refuse a user-named local path unless the actor sits at the bot's own terminal.

    Called on what a user sent (`Engine.submit`), before anything touches the disk, so the
    answer is the same whether the file exists or not. The engine's own result files (Edit
    and Make 3D buttons) do not come through here.
    """
    image = command.image if isinstance(command, EditCommand | Model3DCommand) else None
    if image is not None and image.path and actor.platform not in LOCAL_FILE_PLATFORMS:
        raise InvalidInputError(messages.local_path_refused())


def check_job_id(job_id: str) -> str:
    """A job id as typed by a user (/show, /cancel), cleaned like any other user text."""
    return clean_text(job_id).strip()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w'-]+", text.lower()))


def check_prompt(actor: Actor, texts: Iterable[str | None], blocklist: Iterable[str]) -> None:
    """Refuse a prompt containing a blocklisted word (whole words, or phrases as substrings)."""
    blocked = {w.lower() for w in blocklist}
    if actor.is_dm:
        blocked |= DM_BLOCKLIST
    if not blocked:
        return
    for text in texts:
        if not text:
            continue
        words = _words(text)
        lowered = " ".join(text.lower().split())
        for entry in sorted(blocked):
            if (" " in entry and entry in lowered) or entry in words:
                raise BlockedPromptError(messages.blocked_prompt(entry))
