"""Ctrl-C soon after the demo starts: whatever had started is stopped, every HTTP client
session closed (no aiohttp "Unclosed client session" on the way out)."""

from __future__ import annotations

import asyncio
import importlib.abc
import runpy
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import BotApp
from tests.integration.test_demo import _interrupt, _line_with, _start_demo
from tests.support.core import core_settings

pytestmark = pytest.mark.slow


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientSession]:
    """Every aiohttp.ClientSession created while the test runs."""
    made: list[aiohttp.ClientSession] = []
    real: Callable[..., aiohttp.ClientSession] = aiohttp.ClientSession

    def tracking(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = real(*args, **kwargs)
        made.append(session)
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", tracking)
    return made


@types.coroutine
def _cancelled_at(coro: Coroutine[Any, Any, Any], suspension: int) -> Generator[Any, None, bool]:
    """Run `coro` as a task would, but cancel it at its `suspension`-th wait (0 = the first)
    as `Task.cancel` does; True when it completed before that."""
    count = 0
    thrown: BaseException | None = None
    while True:
        try:
            waiting = coro.throw(thrown) if thrown is not None else coro.send(None)
        except StopIteration:
            return True
        thrown = None
        if count == suspension:
            if isinstance(waiting, asyncio.Future):
                waiting.cancel()
            thrown = asyncio.CancelledError()
        else:
            try:
                yield waiting
            except BaseException as exc:  # the task woke us with an error: it is the coroutine's
                thrown = exc
        count += 1


async def test_startup_cancelled_at_any_step_closes_every_session(
    tmp_path: Path, sessions: list[aiohttp.ClientSession]
) -> None:
    # A first Ctrl-C before the console owns SIGINT is asyncio.run cancelling the main task:
    # cancel the start-up at its first, second… wait until it completes, each time with the
    # demo's own sandbox (state kept under the data dir, as `python -m bot demo` has it).
    for suspension in range(10_000):
        app = BotApp(core_settings(tmp_path / str(suspension)), platforms=[])
        try:
            completed = await _cancelled_at(app.__aenter__(), suspension)
        except asyncio.CancelledError:
            completed = False
        if completed:
            await app.__aexit__(None, None, None)
            break
        left_open = [s for s in sessions if not s.closed]
        assert left_open == [], f"cancelled at wait {suspension}: {len(left_open)} session(s) open"
    else:
        pytest.fail("start-up never completed")
    assert suspension > 3 and sessions and all(s.closed for s in sessions)


@pytest.mark.parametrize("moment", ["at once", "after a moment", "after the banner"])
async def test_an_early_ctrl_c_stops_the_demo_promptly_without_unclosed_sessions(
    tmp_path: Path, moment: str
) -> None:
    proc = await _start_demo(tmp_path, HTTP_HOST="127.0.0.1", HTTP_PORT="0")
    if moment == "after a moment":
        # Python is up and importing or starting; where exactly varies with the machine.
        await asyncio.sleep(1.0)
    elif moment == "after the banner":
        await _line_with(proc, "imagine-bot demo:")
    _took, _out, err = await _interrupt(proc)  # raises if the demo does not stop within STOP_WITHIN
    assert proc.returncode is not None
    assert "Unclosed" not in err, err


class _InterruptImportOf(importlib.abc.MetaPathFinder):
    """Ctrl-C while one module is being imported."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == self.name:
            raise KeyboardInterrupt


def test_ctrl_c_while_python_m_bot_still_imports_exits_130_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "bot.cli", raising=False)
    monkeypatch.delitem(sys.modules, "bot.__main__", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_InterruptImportOf("bot.cli"), *sys.meta_path])
    try:
        runpy.run_module("bot", run_name="__main__")
        code: object = "ran on"
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        code = "a traceback"  # what Python prints for a Ctrl-C nobody caught
    assert code == 130
