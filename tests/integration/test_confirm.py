"""Expensive jobs ask first: above a server's threshold nothing is held until Confirm, on the
real engine, ledger and SQLite with the sandbox vendors."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from bot import messages
from bot.app import BotApp
from bot.commands import Actor, ImagineCommand, Model3DCommand
from bot.confirm import CONFIRM_TTL
from bot.errors import InsufficientCreditsError, UserError
from bot.reply import ButtonAction, JobPhase
from bot.textcommands import parse_mod
from tests.support.core import MEMBER, MODERATOR, RecordingReply, core_settings, fast_sandbox, running_app

OTHER = Actor(platform="console", tenant_id="t1", user_id="u-other", display_name="Other")


async def _balance(app: BotApp, actor: Actor = MEMBER) -> int:
    return (await app.ledger.account(actor.tenant, actor.user_id)).balance


async def _threshold(app: BotApp, value: str) -> str:
    return (await app.engine.moderate(MODERATOR, parse_mod(f"confirm-above {value}"))).text


async def _holds(app: BotApp) -> tuple[int, int, int]:
    """(hold entries, hold rows, job rows): all zero while a request only waits."""
    entries = await app.db.fetchall("SELECT id FROM entries WHERE kind = 'hold'")
    holds = await app.db.fetchall("SELECT job_id FROM holds")
    jobs = await app.db.fetchall("SELECT id FROM jobs")
    return len(entries), len(holds), len(jobs)


async def _ask(app: BotApp, reply: RecordingReply, prompt: str = "two foxes --n 2") -> str:
    ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt=prompt), reply)
    assert ticket.awaiting_confirmation
    return ticket.job_id


async def test_above_the_threshold_nothing_is_held_until_confirm(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        assert await _threshold(app, "15") == messages.mod_confirm_above(15)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="two foxes --n 2"), reply)

        assert ticket.awaiting_confirmation and ticket.cost == 20
        assert await _holds(app) == (0, 0, 0)
        assert await _balance(app) == 100
        [prompt] = reply.progress_updates
        assert prompt.text == messages.confirm_prompt(20, 100, 15, ticket.job_id, "console")
        assert [(b.action, b.job_id) for b in prompt.buttons] == [
            (ButtonAction.CONFIRM, ticket.job_id),
            (ButtonAction.CANCEL, ticket.job_id),
        ]

        started = await app.engine.confirm(MEMBER, ticket.job_id)

        assert not started.awaiting_confirmation and started.job_id == ticket.job_id
        await reply.wait()  # the prompt's own reply carries the job to its result
        assert reply.results and not reply.failures
        assert reply.progress_updates[1].text.startswith("Queued")
        assert await _balance(app) == 80
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.DONE and job.cost == 20
        assert await app.ledger.check_invariants() == []


async def test_at_or_below_the_threshold_the_job_starts_at_once(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "10")
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="one fox"), reply)  # 10 credits
        assert not ticket.awaiting_confirmation
        await reply.wait()
        assert await _balance(app) == 90


async def test_turned_off_no_job_asks(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "5")
        assert await _threshold(app, "off") == messages.mod_confirm_above(None)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="two foxes --n 2"), reply)
        assert not ticket.awaiting_confirmation
        await reply.wait()
        assert await _balance(app) == 80
        await _threshold(app, "5")
        await _threshold(app, "0")  # 0 turns it off too
        assert not (
            await app.engine.submit(MEMBER, ImagineCommand(prompt="x fox"), RecordingReply())
        ).awaiting_confirmation


async def test_a_double_confirm_starts_one_job(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        reply = RecordingReply()
        request = await _ask(app, reply)

        tickets = await asyncio.gather(*(app.engine.confirm(MEMBER, request) for _ in range(3)))

        assert {t.job_id for t in tickets} == {request}
        await reply.wait()
        assert (await _holds(app))[0] == 1
        assert await _balance(app) == 80
        again = await app.engine.confirm(MEMBER, request)  # a late third click: the same job
        assert again.job_id == request and len(await app.db.fetchall("SELECT id FROM jobs")) == 1


async def test_only_the_requester_may_confirm_or_cancel(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        request = await _ask(app, RecordingReply())

        with pytest.raises(UserError) as refused:
            await app.engine.confirm(OTHER, request)
        assert str(refused.value) == messages.confirm_not_yours()
        with pytest.raises(UserError) as refused:
            await app.engine.cancel(MODERATOR, request)
        assert str(refused.value) == messages.confirm_not_yours()
        assert await _holds(app) == (0, 0, 0)
        assert (await app.engine.confirmations.store.get(request)).state.value == "pending"  # type: ignore[union-attr]


async def test_cancel_says_nothing_was_charged_and_a_later_confirm_is_refused(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        reply = RecordingReply()
        request = await _ask(app, reply)

        assert await app.engine.cancel(MEMBER, request) == messages.confirm_declined()

        assert [f.text for f in reply.failures] == [messages.confirm_declined()]
        with pytest.raises(UserError) as refused:
            await app.engine.confirm(MEMBER, request)
        assert str(refused.value) == messages.confirm_declined()
        assert await _holds(app) == (0, 0, 0)
        assert await _balance(app) == 100


async def test_an_expired_request_says_so_and_starts_nothing(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        reply = RecordingReply()
        request = await _ask(app, reply)
        confirmations = app.engine.confirmations
        asked_at = confirmations.clock()
        confirmations.clock = lambda: asked_at + CONFIRM_TTL + 1

        with pytest.raises(UserError) as refused:
            await app.engine.confirm(MEMBER, request)

        assert str(refused.value) == messages.confirm_expired()
        assert [f.text for f in reply.failures] == [messages.confirm_expired()]  # buttons gone
        assert await _holds(app) == (0, 0, 0)
        with pytest.raises(UserError):
            await app.engine.cancel(MEMBER, request)


async def test_a_confirm_after_a_restart_starts_the_job_on_the_prompts_reply(tmp_path: Path) -> None:
    restored: list[RecordingReply] = []

    class Restorer:
        def restore(self, ref: dict[str, Any]) -> RecordingReply:
            reply = RecordingReply()
            reply.address = dict(ref)
            restored.append(reply)
            return reply

    async with fast_sandbox() as sandbox:
        async with BotApp(core_settings(tmp_path), platforms=[], sandbox=nullcontext(sandbox)) as app:
            await _threshold(app, "15")
            first = RecordingReply()
            first.address = {"console": True, "prompt": "here"}
            request = await _ask(app, first)
        async with BotApp(core_settings(tmp_path), platforms=[], sandbox=nullcontext(sandbox)) as app:
            app.engine.register_restorer("console", Restorer())
            assert await _holds(app) == (0, 0, 0)

            ticket = await app.engine.confirm(MEMBER, request)

            assert ticket.job_id == request
            [reply] = restored
            assert reply.address["prompt"] == "here"  # rebuilt from the saved address
            await reply.wait()
            assert reply.results and await _balance(app) == 80


async def test_a_balance_that_dropped_meanwhile_gets_the_usual_refusal(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        reply = RecordingReply()
        request = await _ask(app, reply)
        await app.engine.moderate(MODERATOR, parse_mod(f"take @{MEMBER.user_id} 90"))

        with pytest.raises(InsufficientCreditsError) as refused:
            await app.engine.confirm(MEMBER, request)

        assert str(refused.value) == messages.insufficient_credits(10, 20)
        assert await _holds(app) == (0, 0, 0)
        # Topped up again, the same prompt still works.
        await app.engine.moderate(MODERATOR, parse_mod(f"grant @{MEMBER.user_id} 90"))
        await app.engine.confirm(MEMBER, request)
        await reply.wait()
        assert reply.results and await _balance(app) == 80


async def test_a_request_the_member_cannot_pay_is_refused_without_asking(tmp_path: Path) -> None:
    async with running_app(tmp_path, daily_allowance=15) as app:
        await _threshold(app, "10")
        reply = RecordingReply()
        with pytest.raises(InsufficientCreditsError):
            await app.engine.submit(MEMBER, ImagineCommand(prompt="two foxes --n 2"), reply)
        assert reply.progress_updates == []
        assert await app.db.fetchall("SELECT id FROM confirmations") == []


async def test_a_3d_job_asks_with_the_3d_cost(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        unit = await app.ledger.cost_for(MEMBER.tenant, "model3d")
        await _threshold(app, str(unit - 1))
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, Model3DCommand(prompt="a chair"), reply)
        assert ticket.awaiting_confirmation and ticket.cost == unit
        assert await _holds(app) == (0, 0, 0)
        await _threshold(app, str(unit))  # not above: at once
        assert not (
            await app.engine.submit(MEMBER, Model3DCommand(prompt="a stool"), RecordingReply())
        ).awaiting_confirmation


async def test_reroll_asks_too_and_a_second_click_waits_for_the_first(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        first = RecordingReply()
        parent = await app.engine.submit(MEMBER, ImagineCommand(prompt="two foxes --n 2"), first)
        await first.wait()
        await _threshold(app, "15")

        reply = RecordingReply()
        asked = await app.engine.reroll(MEMBER, parent.job_id, reply)
        assert asked.awaiting_confirmation
        with pytest.raises(UserError) as again:
            await app.engine.reroll(MEMBER, parent.job_id, RecordingReply())
        assert str(again.value) == messages.confirm_already_waiting()
        assert len(await app.db.fetchall("SELECT id FROM jobs")) == 1

        await app.engine.press(MEMBER, ButtonAction.CONFIRM, asked.job_id, None, RecordingReply())
        await reply.wait()
        child = await app.engine.store.get(asked.job_id)
        assert child is not None and child.parent_id == parent.job_id and child.state is JobPhase.DONE
        assert await _balance(app) == 60


async def test_the_settings_view_shows_the_threshold(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        view = (await app.engine.moderate(MODERATOR, parse_mod("settings"))).text
        assert "Ask before jobs over: off" in view
        await _threshold(app, "25")
        view = (await app.engine.moderate(MODERATOR, parse_mod("settings"))).text
        assert "Ask before jobs over: 25 credits" in view and "Daily allowance: 100 credits" in view
        with pytest.raises(UserError):
            await app.engine.moderate(MEMBER, parse_mod("confirm-above 5"))
        with pytest.raises(UserError):
            await _threshold(app, "-3")


async def test_an_unanswered_prompt_loses_its_buttons_when_it_expires(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        old, fresh = RecordingReply(), RecordingReply()
        stale = await _ask(app, old)
        confirmations = app.engine.confirmations
        asked_at = confirmations.clock()
        confirmations.clock = lambda: asked_at + CONFIRM_TTL - 5
        await _ask(app, fresh, "two owls --n 2")
        confirmations.clock = lambda: asked_at + CONFIRM_TTL + 1

        assert await confirmations.expire_due() == 1

        assert [f.text for f in old.failures] == [messages.confirm_expired()] and fresh.failures == []
        assert (await confirmations.store.get(stale)).state.value == "expired"  # type: ignore[union-attr]
        assert await confirmations.expire_due() == 0


async def test_a_price_that_rose_before_confirm_asks_again_on_the_same_reply(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        reply = RecordingReply()
        request = await _ask(app, reply)  # 2 images × 10
        await app.engine.moderate(MODERATOR, parse_mod("cost image 12"))

        again = await app.engine.confirm(MEMBER, request)

        assert again.awaiting_confirmation and again.cost == 24 and again.job_id != request
        assert reply.progress_updates[-1].text == messages.confirm_prompt(
            24, 100, 15, again.job_id, "console"
        )
        assert await _holds(app) == (0, 0, 0)
        with pytest.raises(UserError):
            await app.engine.confirm(MEMBER, request)  # the old offer is gone
        await app.engine.confirm(MEMBER, again.job_id)
        await reply.wait()
        assert await _balance(app) == 76


async def test_a_retried_platform_request_asks_once(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        await _threshold(app, "15")
        first, retry = RecordingReply(), RecordingReply()
        command = ImagineCommand(prompt="two foxes --n 2")
        a = await app.engine.submit(MEMBER, command, first, request_key="slack:cmd:T1:trigger-1")
        b = await app.engine.submit(MEMBER, command, retry, request_key="slack:cmd:T1:trigger-1")

        assert a.job_id == b.job_id and b.awaiting_confirmation
        assert len(first.progress_updates) == 1 and retry.progress_updates == []
        assert len(await app.db.fetchall("SELECT id FROM confirmations")) == 1
