"""/credits and /quota history tell the truth: what each job cost, refunds, freeze and ban, the
server's budget cap and when it resets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.commands import ImagineCommand, ModCommand, ModOp
from bot.errors import TenantBudgetError
from providers.sandbox.common import Fault
from tests.support.core import MEMBER, MODERATOR, RecordingReply, fast_sandbox, running_app


async def test_credits_show_the_cost_of_a_charged_job_and_refunded_for_a_failed_one(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, sandbox=sandbox, route_order="apiinone") as app:
        ok = RecordingReply()
        charged = await app.engine.submit(MEMBER, ImagineCommand(prompt="a red fox"), ok)
        await ok.wait()
        for emu in sandbox.emulators.values():
            emu.inject(Fault.JOB_FAILED, 3)
        bad = RecordingReply()
        refunded = await app.engine.submit(MEMBER, ImagineCommand(prompt="a blue fox"), bad)
        await bad.wait()
        text = (await app.engine.credits(MEMBER)).text
    charged_line = next(line for line in text.splitlines() if charged.job_id in line)
    refunded_line = next(line for line in text.splitlines() if refunded.job_id in line)
    assert "charged 10 credits" in charged_line
    assert "refunded" in refunded_line and "10 credits" not in refunded_line


async def test_credits_show_a_ban_as_well_as_a_freeze(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        for op in (ModOp.FREEZE, ModOp.BAN):
            await app.engine.moderate(MODERATOR, ModCommand(op=op, target=MEMBER.user_id))
        text = (await app.engine.credits(MEMBER)).text
    assert "frozen" in text
    assert "not allowed to generate" in text


async def test_history_names_jobs_and_leaves_out_settles_that_move_nothing(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a red fox"), reply)
        await reply.wait()
        text = (
            await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.HISTORY, target=MEMBER.user_id))
        ).text
    assert f"`{ticket.job_id}` -10" in text
    assert "settle" not in text and "±0" not in text


async def test_a_spent_budget_says_the_cap_and_when_it_resets(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.BUDGET, amount=10))
        first = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a red fox"), first)
        await first.wait()
        with pytest.raises(TenantBudgetError) as refused:
            await app.engine.submit(MEMBER, ImagineCommand(prompt="a blue fox"), RecordingReply())
    assert "10 credits" in str(refused.value)
    assert "resets" in str(refused.value) and "00:00 UTC" in str(refused.value)
