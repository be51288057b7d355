"""The small interface every chat platform adapter implements, and what it is given.

The composition root (`bot.app`) builds one `AdapterContext`, constructs each configured
adapter from the `ADAPTERS` registry (lazy imports: the core never imports a platform library),
starts them, and only then lets the engine resume unfinished jobs — so replies restored after a
restart can use the adapter's live connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from bot.health import Readiness
from bot.registry import load

if TYPE_CHECKING:
    import aiohttp

    from bot.config import Settings
    from bot.engine import Engine

__all__ = ["ADAPTERS", "Adapter", "AdapterContext", "load_adapter"]

#: platform name -> "module:Class"; explicit, lazy
ADAPTERS: dict[str, str] = {
    "discord": "adapters.discord_bot:DiscordAdapter",
    "slack": "adapters.slack_app:SlackAdapter",
    "console": "adapters.console:ConsoleAdapter",
}


@dataclass(slots=True)
class AdapterContext:
    """Everything an adapter may use: the engine (its only way to act), settings, the bot's
    HTTP server (to mount routes before it starts), the shared HTTP session and media store,
    and `readiness`, where it reports its connection (`readiness.platform(name)`)."""

    engine: Engine
    settings: Settings
    web: Any  # bot.web.WebServer
    session: aiohttp.ClientSession
    media: Any  # bot.media.MediaStore
    readiness: Readiness = field(default_factory=lambda: Readiness(grace=60.0, give_up=900.0))


class Adapter(Protocol):
    """A platform connector. `__init__(ctx)` registers its ReplyRestorer with the engine and its
    HTTP routes with `ctx.web`; `start()` connects and returns once events flow; `stop()`
    disconnects and waits for its own tasks."""

    name: ClassVar[str]

    def __init__(self, ctx: AdapterContext) -> None:
        """Register the reply restorer with `ctx.engine` and any HTTP routes on `ctx.web`."""
        ...

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Whether the settings ask for this platform."""
        ...

    async def start(self) -> None:
        """Connect and begin handling events."""
        ...

    async def stop(self) -> None:
        """Disconnect; pending work is left to the engine's durable jobs."""
        ...


def load_adapter(name: str) -> type[Adapter]:
    """The adapter class registered under `name`; unknown names list the valid ones."""
    return load(ADAPTERS, name, "platform")
