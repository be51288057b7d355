"""The console adapter: a terminal chat in which the local user is a moderator.

Reads lines from standard input (interactive or piped), prints progress and where files were
saved. At end of input it waits for its jobs to finish, so
`printf '/imagine a red fox\\n' | imagine-bot demo` prints the result and exits 0.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from typing import Any, ClassVar, TextIO

from bot import messages
from bot.adapter import AdapterContext
from bot.commands import Actor, CreditsCommand, ModCommand
from bot.config import Settings
from bot.errors import UserError
from bot.params import FLAGS_HELP
from bot.reply import Failure, JobResult, Progress
from bot.textcommands import parse_text

__all__ = ["ConsoleAdapter", "ConsoleReply"]

_log = logging.getLogger(__name__)

HELP = messages.console_help(FLAGS_HELP)


def _write(out: TextIO, text: str) -> None:
    print(text, file=out, flush=True)


def _plain(text: str) -> str:
    """Shared wording without its `**bold**` markers, for a terminal."""
    return text.replace("**", "")


class ConsoleReply:
    """Prints one job's progress and results; `done` is set when the job ends."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.done = asyncio.Event()
        self.failed = False

    def ref(self) -> dict[str, Any]:
        """Nothing to address: the console is the console."""
        return {"console": True}

    async def progress(self, update: Progress) -> None:
        """One line per status change."""
        _write(self._out, f"[{update.job_id}] {update.text}")

    async def result(self, result: JobResult) -> None:
        """The caption and every saved file's path."""
        _write(self._out, f"[{result.job_id}] {_plain(result.text)}")
        for f in result.files:
            _write(self._out, f"[{result.job_id}] saved {f.role}: {f.path}")
        if result.preview is not None:
            _write(self._out, f"[{result.job_id}] saved grid: {result.preview.path}")
        if result.buttons:
            _write(self._out, f"[{result.job_id}] {messages.console_next(result.job_id)}")
        self.done.set()

    async def failure(self, failure: Failure) -> None:
        """The failure text."""
        _write(self._out, f"[{failure.job_id}] {failure.text}")
        self.failed = True
        self.done.set()


class ConsoleAdapter:
    """Runs the console chat; `run()` returns the process exit code."""

    name: ClassVar[str] = "console"

    def __init__(
        self,
        ctx: AdapterContext,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        actor: Actor | None = None,
        strict: bool = False,
    ) -> None:
        self.engine = ctx.engine
        self._in = stdin or sys.stdin
        self._out = stdout or sys.stdout
        me = _user()
        self.actor = actor or Actor(
            platform="console", tenant_id="local", user_id=me, display_name=me, is_moderator=True
        )
        self._strict = strict  # the one-job CLI exits 1 when its job or command failed
        self._errors = 0
        self._pending: list[ConsoleReply] = []
        # Both local platforms print here: the chat console and the one-job CLI.
        for platform in ("console", "cli"):
            self.engine.register_restorer(platform, self)

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """The console only runs when asked for (the demo)."""
        return False

    def restore(self, ref: dict[str, Any]) -> ConsoleReply:
        """A job from an earlier run still prints here, and the run waits for it."""
        reply = ConsoleReply(self._out)
        self._pending.append(reply)
        return reply

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to disconnect."""

    async def run(self) -> int:
        """Read commands until end of input or /quit; then wait for running jobs."""
        interactive = self._in.isatty()
        if interactive:
            _write(self._out, messages.console_welcome())
        while True:
            if interactive:
                print("> ", end="", file=self._out, flush=True)
            # Reading stdin blocks; keep it off the event loop.
            line = await asyncio.to_thread(self._in.readline)
            if not line:
                break
            if not line.strip():
                continue
            if await self.handle(line) == "quit":
                break
        waiting = [r.done.wait() for r in self._pending if not r.done.is_set()]
        if waiting:
            await asyncio.gather(*waiting)
        failed = self._errors + sum(r.failed for r in self._pending)
        return 1 if self._strict and failed else 0

    async def handle(self, line: str) -> str | None:
        """Run one line; user errors are printed, never raised."""
        try:
            parsed = parse_text(line)
            match parsed.name:
                case "quit" | "exit":
                    return "quit"
                case "help":
                    _write(self._out, HELP)
                case "show":
                    result = await self.engine.show(self.actor, parsed.arg)
                    await ConsoleReply(self._out).result(result)
                case "cancel":
                    _write(self._out, await self.engine.cancel(self.actor, parsed.arg))
                case _:
                    command = parsed.command
                    if isinstance(command, CreditsCommand):
                        _write(self._out, _plain((await self.engine.credits(self.actor)).text))
                    elif isinstance(command, ModCommand):
                        _write(self._out, (await self.engine.moderate(self.actor, command)).text)
                    elif command is not None:
                        reply = ConsoleReply(self._out)
                        self._pending.append(reply)
                        try:
                            await self.engine.submit(self.actor, command, reply)
                        except BaseException:
                            self._pending.remove(reply)
                            raise
        except UserError as err:
            self._errors += 1
            _write(self._out, f"! {err}")
        except Exception:
            self._errors += 1
            _log.exception("console command failed: %s", line.strip()[:200])
            _write(self._out, f"! {messages.something_went_wrong()}")
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "you"
