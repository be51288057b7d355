"""Moderation policy: who may do what, and which prompts are refused.

The adapters only report whether the platform says an actor is a moderator; every decision is
made here, the same for all platforms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bot import messages
from bot.commands import Actor
from bot.errors import BlockedPromptError, NotModeratorError

__all__ = ["DM_BLOCKLIST", "check_prompt", "require_moderator"]

#: Always on in direct messages, where no server moderator is watching.
DM_BLOCKLIST: frozenset[str] = frozenset(
    {"nude", "nudes", "naked", "nsfw", "porn", "gore", "sex", "sexual", "explicit", "child", "minor", "loli"}
)


def require_moderator(actor: Actor) -> None:
    """Refuse moderator operations from members (and from anyone in a DM: no server to moderate)."""
    if not actor.is_moderator or actor.is_dm:
        raise NotModeratorError(messages.not_moderator())


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
