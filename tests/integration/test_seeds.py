"""Every image result states its seed, the vendor got that seed, and --seed reproduces it."""

from __future__ import annotations

import re
from pathlib import Path

from bot.catalog import Catalog
from bot.commands import ImagineCommand
from bot.params import parse_imagine
from providers.base import Kind, RouteSpec
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app


async def test_a_result_without_seed_states_the_seed_the_bot_picked_and_sent(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, sandbox=sandbox, route_order="pixazo") as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a red fox"), reply)
        await reply.wait()
    stated = re.search(r"seed (\d+)", reply.results[0].text)
    assert stated is not None
    sent = [job.request.get("seed") for job in sandbox["pixazo"].jobs.values()]
    assert sent == [int(stated.group(1))]


def test_the_bot_picks_a_different_seed_each_time_and_keeps_a_given_one() -> None:
    catalog = Catalog([RouteSpec("alpha", "img", Kind.IMAGE)])
    picked = {parse_imagine(ImagineCommand(prompt="a fox"), catalog).seed for _ in range(5)}
    assert None not in picked and len(picked) > 1
    assert parse_imagine(ImagineCommand(prompt="a fox --seed 7"), catalog).seed == 7
