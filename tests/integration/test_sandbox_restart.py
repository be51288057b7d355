"""The demo's promise: start `/model3d a chair`, stop the bot, start it again on the same data
dir → the job finishes on the embedded sandbox (built by BotApp, as the demo builds it), is
delivered once and charged once."""

from __future__ import annotations

import asyncio
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.console import ConsoleAdapter
from bot.app import BotApp
from bot.commands import Actor
from bot.config import Settings
from bot.reply import JobPhase
from tests.support.core import core_settings

ME = Actor(platform="console", tenant_id="local", user_id="me", display_name="me", is_moderator=True)
LATENCY = 2.0  # long enough to stop the bot mid-job


def console_app(settings: Settings, out: io.StringIO, consoles: list[ConsoleAdapter]) -> BotApp:
    def make(ctx: Any) -> ConsoleAdapter:
        console = ConsoleAdapter(ctx, stdin=io.StringIO(""), stdout=out, actor=ME)
        consoles.append(console)
        return console

    return BotApp(settings, platforms=[], extra_adapters=[make])


async def wait_until_at_the_vendor(app: BotApp, timeout: float = 10.0) -> str:
    """The job's id once its vendor handle is saved (the bot may stop from then on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for job in await app.engine.store.unfinished():
            if job.handle is not None:
                return job.id
        await asyncio.sleep(0.05)
    raise AssertionError("the job never reached the vendor")


async def test_a_3d_job_started_before_a_restart_is_delivered_after_it_and_charged_once(
    tmp_path: Path,
) -> None:
    settings = core_settings(tmp_path, sandbox_latency=LATENCY, route_order="pixazo")
    first_out, consoles = io.StringIO(), []
    async with console_app(settings, first_out, consoles) as app:
        assert app.sandbox.state_dir == settings.data_dir / "sandbox"
        await consoles[0].handle("/model3d a chair")
        job_id = await wait_until_at_the_vendor(app)
        [vendor_job] = app.sandbox["pixazo"].jobs.values()
        assert vendor_job.latency == LATENCY
        first_port = app.sandbox.port
    assert "saved model" not in first_out.getvalue()

    second_out = io.StringIO()
    async with console_app(settings, second_out, consoles) as app:
        # Whatever port the new sandbox got, the saved handle still reaches the job.
        assert app.sandbox.port > 0 and isinstance(first_port, int)
        assert await asyncio.wait_for(consoles[1].run(), 20) == 0
        job = await app.engine.store.get(job_id)
        assert job is not None and job.state is JobPhase.DONE
        history = await app.ledger.history(ME.tenant, ME.user_id, limit=100)
        account = await app.ledger.account(ME.tenant, ME.user_id)
        assert await app.ledger.check_invariants() == []
    printed = second_out.getvalue()
    assert printed.count("saved model") == 1
    assert sorted(e.kind for e in history if e.job_id == job_id) == ["hold", "settle"]
    assert account.balance == settings.daily_allowance - settings.cost_model3d

    [glb_path] = [
        Path(line.split("saved model: ", 1)[1]) for line in printed.splitlines() if "saved model: " in line
    ]
    data = glb_path.read_bytes()
    assert data[:4] == b"glTF"
    (json_len,) = struct.unpack_from("<I", data, 12)
    gltf = json.loads(data[20 : 20 + json_len])
    assert "NORMAL" in gltf["meshes"][0]["primitives"][0]["attributes"]
    assert gltf["materials"][0]["pbrMetallicRoughness"]["baseColorFactor"]


def test_sandbox_latency_is_bounded() -> None:
    assert Settings(_env_file=None, sandbox_latency=30).sandbox_latency == 30.0  # type: ignore[call-arg]
    for bad in (-1, 7200):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, sandbox_latency=bad)  # type: ignore[call-arg]
