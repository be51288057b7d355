"""The console adapter: a terminal chat in which the local user is a moderator.

Reads lines from standard input (interactive or piped), prints progress and where files were
saved. At end of input it waits for its jobs to finish, so
`printf '/imagine a red fox\\n' | imagine-bot demo` prints the result and exits 0. `interrupt()`
(the CLI calls it on Ctrl-C) and a closed standard output (`imagine-bot demo | head`) stop it at
once; unfinished jobs stay in the database and resume on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import io
import logging
import os
import stat
import sys
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, TextIO

from bot import messages
from bot.adapter import AdapterContext
from bot.commands import Actor, CreditsCommand, ModCommand
from bot.config import Settings
from bot.errors import InsufficientCreditsError, UserError
from bot.params import FLAGS_HELP
from bot.reply import ButtonAction, Failure, JobResult, Progress
from bot.textcommands import parse_text

__all__ = ["ConsoleAdapter", "ConsoleReply"]

_log = logging.getLogger(__name__)

HELP = messages.console_help(FLAGS_HELP)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE, what other Unix filters report under `| head`


class _Output:
    """Standard output in the platform's wording; notices when its reader goes away."""

    def __init__(self, out: TextIO, platform: str) -> None:
        self._out = out
        self._platform = platform
        self.closed = asyncio.Event()

    def write(self, text: str, *, end: str = "\n") -> None:
        if self.closed.is_set():
            return
        try:
            print(messages.for_platform(text, self._platform), end=end, file=self._out, flush=True)
        except BrokenPipeError:
            self.close()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.close()

    def close(self) -> None:
        """The reader is gone: write nothing more, and let the interpreter's final flush succeed."""
        if self.closed.is_set():
            return
        self.closed.set()
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            # The documented recipe for SIGPIPE: point the descriptor at devnull so the
            # buffered bytes Python flushes at exit do not raise a second BrokenPipeError.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._out.fileno())
            os.close(devnull)

    def watch(self, loop: asyncio.AbstractEventLoop) -> int | None:
        """On a pipe, notice a closed reader without waiting for the next write; the fd watched."""
        try:
            fd = self._out.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None  # a terminal's fd is readable when the user types: never watch it
            # The write end of a pipe only ever polls ready with an error: its reader closed.
            loop.add_reader(fd, self.close)
        except (OSError, ValueError, io.UnsupportedOperation, NotImplementedError):
            return None
        return fd


class _Lines:
    """Lines of standard input, read one at a time when asked.

    A real descriptor is read by a daemon thread rather than `asyncio.to_thread`: the default
    executor is joined at exit, so a blocked `readline` there would keep Ctrl-C waiting for Enter.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._wanted = threading.Semaphore(0)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._thread: threading.Thread | None = None
        try:
            stream.fileno()
            self._in_memory = False
        except (OSError, ValueError, io.UnsupportedOperation):
            self._in_memory = True  # a StringIO (the one-off CLI job) never blocks

    async def next(self) -> str:
        """The next line, `""` at end of input."""
        if self._in_memory:
            return self._stream.readline()
        if self._thread is None:
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._read, args=(loop,), name="console-stdin", daemon=True
            )
            self._thread.start()
        self._wanted.release()
        return await self._queue.get()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            self._wanted.acquire()
            try:
                line = self._stream.readline()
            except (OSError, ValueError):
                line = ""  # stdin closed under us: end of input
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, line)
            except RuntimeError:
                return  # the loop is closed: the console is gone
            if not line:
                return


class ConsoleReply:
    """Prints one job's progress and results; `done` is set when the job ends."""

    def __init__(self, out: _Output) -> None:
        self._out = out
        self.done = asyncio.Event()
        self.failed = False

    def ref(self) -> dict[str, Any]:
        """Nothing to address: the console is the console."""
        return {"console": True}

    async def progress(self, update: Progress) -> None:
        """One line per status change."""
        self._out.write(f"[{update.job_id}] {update.text}")

    async def result(self, result: JobResult) -> None:
        """The caption, every saved file's path, and the typed form of the result's buttons."""
        self._out.write(f"[{result.job_id}] {result.text}")
        for f in result.files:
            self._out.write(f"[{result.job_id}] saved {f.role}: {f.path}")
        if result.preview is not None:
            self._out.write(f"[{result.job_id}] saved grid: {result.preview.path}")
        if result.buttons:
            actions = {b.action for b in result.buttons}
            image = next((str(f.path) for f in result.files if f.role == "image"), None)
            hint = messages.console_next(
                result.job_id,
                image,
                edit=ButtonAction.EDIT in actions,
                make3d=ButtonAction.MAKE_3D in actions,
            )
            self._out.write(f"[{result.job_id}] {hint}")
        self.done.set()

    async def failure(self, failure: Failure) -> None:
        """The failure text."""
        self._out.write(f"[{failure.job_id}] {failure.text}")
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
        me = _user()
        self.actor = actor or Actor(
            platform="console", tenant_id="local", user_id=me, display_name=me, is_moderator=True
        )
        self._out = _Output(stdout or sys.stdout, self.actor.platform)
        self._strict = strict  # the one-job CLI exits 1 when its job or command failed
        self._errors = 0
        self._pending: list[ConsoleReply] = []
        # Prompts waiting for `/confirm`: request id -> the reply that becomes the job's.
        self._asking: dict[str, ConsoleReply] = {}
        self._interrupted = asyncio.Event()
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

    def interrupt(self) -> None:
        """Stop reading and waiting (Ctrl-C); `run()` then says what is left and returns."""
        self._interrupted.set()

    def running(self) -> int:
        """How many of this console's jobs have not ended yet."""
        return sum(not r.done.is_set() for r in self._pending)

    async def run(self) -> int:
        """Read commands until end of input or /quit; then wait for running jobs."""
        loop = asyncio.get_running_loop()
        watched = self._out.watch(loop)
        try:
            return await self._run()
        finally:
            if watched is not None:
                loop.remove_reader(watched)

    async def _run(self) -> int:
        interactive = self._in.isatty()
        if interactive:
            self._out.write(messages.console_welcome())
        lines = _Lines(self._in)
        while True:
            if interactive:
                self._out.write("> ", end="")
            line = await self._unless_stopped(lines.next())
            if line is None:
                return self._stopped()
            if not line:
                break
            if not line.strip():
                continue
            if await self.handle(line) == "quit":
                break
        if await self._unless_stopped(self._jobs_ended()) is None:
            return self._stopped()
        failed = self._errors + sum(r.failed for r in self._pending)
        return 1 if self._strict and failed else 0

    async def _jobs_ended(self) -> bool:
        # Restored jobs may add replies while we wait: look again until none is left.
        while waiting := [r for r in self._pending if not r.done.is_set()]:
            await waiting[0].done.wait()
        return True

    async def _unless_stopped(self, work: Coroutine[Any, Any, Any]) -> Any:
        """`work`'s result, or None as soon as Ctrl-C or a closed output stops the console."""
        task = asyncio.ensure_future(work)
        stops = [
            asyncio.ensure_future(self._interrupted.wait()),
            asyncio.ensure_future(self._out.closed.wait()),
        ]
        try:
            await asyncio.wait([task, *stops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, *stops):
                t.cancel()
            await asyncio.gather(task, *stops, return_exceptions=True)
        return None if task.cancelled() else task.result()

    def _stopped(self) -> int:
        if self._out.closed.is_set():
            return EXIT_OUTPUT_CLOSED
        if self._in.isatty():
            self._out.write("")  # the cursor is after the "> " prompt (and the terminal's "^C")
        self._out.write(messages.console_stopped(self.running(), self.actor.platform))
        return EXIT_INTERRUPTED

    async def handle(self, line: str) -> str | None:
        """Run one line; user errors are printed, never raised."""
        try:
            parsed = parse_text(line)
            match parsed.name:
                case "quit" | "exit":
                    return "quit"
                case "help":
                    self._out.write(HELP)
                case "show":
                    result = await self.engine.show(self.actor, parsed.arg)
                    await ConsoleReply(self._out).result(result)
                case "cancel":
                    self._out.write(await self.engine.cancel(self.actor, parsed.arg))
                    self._asking.pop(parsed.arg, None)
                case "confirm":
                    ticket = await self.engine.confirm(self.actor, parsed.arg or None)
                    if not ticket.awaiting_confirmation:
                        # The prompt's reply now carries the job: wait for it at end of input.
                        # (A prompt from an earlier run was restored into `_pending` already.)
                        asked = self._asking.pop(ticket.job_id, None)
                        if asked is not None and asked not in self._pending:
                            self._pending.append(asked)
                case _:
                    command = parsed.command
                    if isinstance(command, CreditsCommand):
                        self._out.write((await self.engine.credits(self.actor)).text)
                    elif isinstance(command, ModCommand):
                        self._out.write((await self.engine.moderate(self.actor, command)).text)
                    elif command is not None:
                        reply = ConsoleReply(self._out)
                        self._pending.append(reply)
                        try:
                            ticket = await self.engine.submit(self.actor, command, reply)
                        except BaseException:
                            self._pending.remove(reply)
                            raise
                        if ticket.awaiting_confirmation:
                            # No job until `/confirm`: end of input must not wait for this one.
                            self._pending.remove(reply)
                            self._asking[ticket.job_id] = reply
        except InsufficientCreditsError as err:
            self._errors += 1
            text = str(err)
            if self.actor.is_moderator:
                a = self.actor
                short = max(err.cost - err.balance, 1)
                text += " " + messages.moderator_top_up(a.platform, a.user_id, a.tenant, short)
            self._out.write(f"! {text}")
        except UserError as err:
            self._errors += 1
            self._out.write(f"! {err}")
        except Exception:
            self._errors += 1
            _log.exception("console command failed: %s", line.strip()[:200])
            self._out.write(f"! {messages.something_went_wrong()}")
        return None


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "you"
