"""The core's error hierarchy, split by audience.

`UserError` and its subclasses are the user's to read: their `str()` is a friendly message in
the shared wording (`bot.messages`), the same on every platform, and raising one never costs
credits. `ConfigError` is the operator's: one line naming the setting to fix.
"""

from __future__ import annotations

__all__ = [
    "BannedError",
    "BlockedPromptError",
    "BotError",
    "BusyError",
    "ConfigError",
    "FrozenError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "NotFoundError",
    "NotModeratorError",
    "QueueFullError",
    "TenantBudgetError",
    "UserError",
]


class BotError(Exception):
    """Root of every error the core raises on purpose."""


class ConfigError(BotError):
    """A missing or wrong setting; the message names it."""


class UserError(BotError):
    """Something the user can fix or must be told; `message` is safe to show as is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(UserError):
    """A prompt, flag, option or input file that cannot be used."""


class NotModeratorError(UserError):
    """A moderator command from someone who is not one."""


class BannedError(UserError):
    """The user is banned from generating in this server/workspace."""


class FrozenError(UserError):
    """The user's credits are frozen by a moderator."""


class BlockedPromptError(UserError):
    """The prompt contains a word on the tenant's blocklist."""


class InsufficientCreditsError(UserError):
    """Not enough credits; carries the balance and the cost for the message."""

    def __init__(self, message: str, *, balance: int, cost: int) -> None:
        super().__init__(message)
        self.balance = balance
        self.cost = cost


class TenantBudgetError(UserError):
    """The server's overall budget for the period is spent."""


class BusyError(UserError):
    """The user already has as many jobs running as allowed."""


class QueueFullError(UserError):
    """The bot's queue is full; try again shortly."""


class NotFoundError(UserError):
    """No such job (or not one the actor may see)."""
