"""The bot process of the chaos test: admits N jobs from many users (idempotent by request key,
so a restarted process admits only the ones its killed predecessor did not), cancels a few at
random moments, and drains. Every message a user is told is appended to `told.jsonl`.

Run as `python -m tests.chaos.chaos_bot N SEED` with the bot's settings in the environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, TextIO

from bot.app import BotApp
from bot.commands import Actor, ImagineCommand
from bot.config import Settings
from bot.errors import BusyError, QueueFullError, UserError
from bot.reply import Failure, JobResult, Progress, Reply

USERS = 120
CANCEL_SHARE = 0.03


class ToldReply:
    """A user's chat: appends every final message (result or failure) to the shared log."""

    def __init__(self, log: TextIO, ref: dict[str, Any]) -> None:
        self._log = log
        self._ref = ref

    def ref(self) -> dict[str, Any]:
        return dict(self._ref)

    async def progress(self, update: Progress) -> None:
        pass

    async def result(self, result: JobResult) -> None:
        self._told(result.job_id, "result", result.text)

    async def failure(self, failure: Failure) -> None:
        self._told(failure.job_id, "failure", failure.text)

    def _told(self, job_id: str, kind: str, text: str) -> None:
        # One write per line and a flush: a SIGKILL after it cannot take the line back.
        line = {"job": job_id, "kind": kind, "text": text, "pid": os.getpid()}
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()


class ToldRestorer:
    def __init__(self, log: TextIO) -> None:
        self._log = log

    def restore(self, ref: dict[str, Any]) -> Reply:
        return ToldReply(self._log, ref)


def actor(i: int) -> Actor:
    user = i % USERS
    return Actor(platform="chaos", tenant_id=f"t{user % 4}", user_id=f"u{user}", display_name=f"user {user}")


async def admit(app: BotApp, log: TextIO, i: int) -> str | None:
    while True:
        try:
            ticket = await app.engine.submit(
                actor(i),
                ImagineCommand(prompt=f"chaos job {i}"),
                ToldReply(log, {"job": i}),
                request_key=f"chaos-{i}",
            )
            return ticket.job_id
        except (BusyError, QueueFullError):
            await asyncio.sleep(0.05)  # the user waits for one of their jobs, then asks again
        except UserError as exc:
            print(f"job {i} refused: {exc}", file=sys.stderr)
            return None


async def cancel_later(app: BotApp, job_id: str, i: int, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        await app.engine.cancel(actor(i), job_id)
    except UserError:
        pass  # already over: nothing to cancel


async def main(n: int, seed: int) -> int:
    settings = Settings()  # type: ignore[call-arg]
    told = Path(settings.data_dir) / "told.jsonl"
    told.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with told.open("a", encoding="utf-8") as log:
        app = BotApp(settings, platforms=[])
        async with app:
            app.engine.register_restorer("chaos", ToldRestorer(log))
            await app.engine.resume()
            cancels: set[asyncio.Task[None]] = set()
            for i in range(n):
                job_id = await admit(app, log, i)
                if job_id is not None and rng.random() < CANCEL_SHARE:
                    cancels.add(asyncio.create_task(cancel_later(app, job_id, i, rng.uniform(0.0, 1.5))))
            await asyncio.gather(*cancels)
            await app.engine.drain()
    print("chaos bot drained", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]))))
