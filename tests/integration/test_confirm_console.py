"""Expensive jobs ask first in the console: the prompt names `/confirm <id>` and `/cancel <id>`,
a piped demo does not wait for a prompt nobody answered, and a prompt survives a restart."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import pytest

from adapters.console import ConsoleAdapter
from bot import messages
from bot.app import BotApp
from bot.commands import Actor
from bot.config import Settings
from tests.support.cli import run_cli
from tests.support.core import core_settings

ME = Actor(platform="console", tenant_id="local", user_id="me", display_name="me", is_moderator=True)
_ASKED = re.compile(r"Type `/confirm (\w+)` to start it, or `/cancel \1`\.")


def console_app(settings: Settings, out: io.StringIO, consoles: list[ConsoleAdapter]) -> BotApp:
    def make(ctx: Any) -> ConsoleAdapter:
        console = ConsoleAdapter(ctx, stdin=io.StringIO(""), stdout=out, actor=ME)
        consoles.append(console)
        return console

    return BotApp(settings, platforms=[], extra_adapters=[make])


def _request_id(out: str) -> str:
    match = _ASKED.search(out)
    assert match, out
    return match.group(1)


async def test_console_prompt_then_confirm_runs_the_job(tmp_path: Path) -> None:
    out, consoles = io.StringIO(), []
    async with console_app(core_settings(tmp_path), out, consoles) as app:
        console = consoles[0]
        await console.handle("/quota confirm-above 15")
        await console.handle("/imagine two foxes --n 2")
        request = _request_id(out.getvalue())
        assert "This will cost 20 credits (you have 100 credits)" in out.getvalue()  # no ** in a terminal
        assert await app.db.fetchall("SELECT job_id FROM holds") == []
        assert console.running() == 0  # nothing to wait for until it is confirmed

        await console.handle(f"/confirm {request}")
        assert console.running() == 1
        assert await asyncio.wait_for(console.run(), 20) == 0
        assert f"[{request}] saved image" in out.getvalue()
        assert (await app.ledger.account(ME.tenant, ME.user_id)).balance == 80


async def test_console_cancel_on_a_prompt(tmp_path: Path) -> None:
    out, consoles = io.StringIO(), []
    async with console_app(core_settings(tmp_path), out, consoles) as app:
        console = consoles[0]
        await console.handle("/quota confirm-above 15")
        await console.handle("/imagine two foxes --n 2")
        request = _request_id(out.getvalue())

        await console.handle(f"/cancel {request}")

        assert out.getvalue().count(messages.confirm_declined()) == 2  # the prompt line and the answer
        await console.handle(f"/confirm {request}")
        assert f"! {messages.confirm_declined()}" in out.getvalue()
        assert await app.db.fetchall("SELECT id FROM jobs") == []


async def test_console_confirm_after_a_restart(tmp_path: Path) -> None:
    settings = core_settings(tmp_path)
    first, consoles = io.StringIO(), []
    async with console_app(settings, first, consoles):
        await consoles[0].handle("/quota confirm-above 15")
        await consoles[0].handle("/imagine asked before the restart --n 2")
    request = _request_id(first.getvalue())

    second = io.StringIO()
    async with console_app(settings, second, consoles) as app:
        await consoles[1].handle(f"/confirm {request}")
        assert await asyncio.wait_for(consoles[1].run(), 20) == 0
        assert f"[{request}] saved image" in second.getvalue()
        assert (await app.ledger.account(ME.tenant, ME.user_id)).balance == 80


@pytest.mark.slow
async def test_piped_demo_asks_and_a_bare_confirm_starts_the_newest_request(tmp_path: Path) -> None:
    script = "/quota confirm-above 15\n/imagine two foxes --n 2\n/credits\n/confirm\n/quota settings\n"
    code, out, err = await run_cli(tmp_path, "demo", stdin=script)
    assert code == 0, err
    request = _request_id(out)
    assert out.index("You have 100 credits") < out.index(f"[{request}] Queued")  # nothing held before
    assert f"[{request}] saved image" in out
    assert "Ask before jobs over: 15 credits" in out


@pytest.mark.slow
async def test_piped_demo_does_not_wait_for_an_unanswered_prompt(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "demo", stdin="/quota confirm-above 5\n/imagine a fox\n")
    assert code == 0, err
    assert _request_id(out) and "Queued" not in out and "saved image" not in out
