"""Variations end to end: V1 under a grid on Discord and on Slack starts an edit of image 1
that comes back as a new result (real discord.py / slack-bolt against the loopback fakes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.discord_harness import discord_bot, wait_result
from tests.e2e.slack_harness import CHANNEL, slack_bot
from tests.fakes.discord_fake import DiscordFake
from tests.fakes.slack_fake import SlackFake
from tests.support.core import fast_sandbox

pytestmark = pytest.mark.slow


async def test_discord_v1_under_a_grid_posts_a_variation_of_image_one(tmp_path: Path) -> None:
    async with (
        DiscordFake() as fake,
        fast_sandbox() as sandbox,
        discord_bot(tmp_path, fake, sandbox, route_order="pixazo") as app,  # type: ignore[arg-type]
    ):
        grid = await wait_result(fake, await fake.slash("imagine", {"prompt": "four foxes", "count": 4}))
        rows = [[c.get("label") for c in row["components"]] for row in grid.components]
        assert ["U1", "U2", "U3", "U4"] in rows and ["V1", "V2", "V3", "V4"] in rows

        variation = await wait_result(fake, await fake.click(grid.id, grid.button("V1")["custom_id"]))

        parent_id, child_id = [r["id"] for r in await app.db.fetchall("SELECT id FROM jobs ORDER BY created")]
        child = await app.engine.store.get(child_id)
        assert child is not None and child.parent_id == parent_id
        assert (child.spec.kind.value, child.spec.prompt) == ("edit", "a variation of: four foxes")
        assert child_id in variation.content
        assert "Vary" in [b.get("label") for b in variation.buttons]  # a single image: Vary


async def test_slack_v1_under_a_grid_posts_a_variation_of_image_one(tmp_path: Path) -> None:
    async with SlackFake() as fake, slack_bot(tmp_path, fake, route_order="pixazo") as bot:
        await bot.slash("/imagine", "four foxes --n 4")
        card = await bot.card(with_button="ib:vary:")
        actions = [b for b in card.blocks if b["type"] == "actions"]
        labels = [[e["text"]["text"] for e in block["elements"]] for block in actions]
        assert ["U1", "U2", "U3", "U4"] in labels and ["V1", "V2", "V3", "V4"] in labels

        pressed = await bot.press(card, card.button("ib:vary:")["action_id"])
        assert pressed.status == 200 and pressed.elapsed < 3.0
        await fake.wait_for(lambda: len(fake.shared_uploads(CHANNEL)) == 2)

        parent, child = await bot.job_rows()
        assert child["parent_id"] == parent["id"] and child["state"] == "done"
        job = await bot.app.engine.store.get(child["id"])
        assert job is not None
        assert (job.spec.kind.value, job.spec.prompt) == ("edit", "a variation of: four foxes")
