"""Routing across vendors: failover before the user notices, circuit breakers, webhooks."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from bot.commands import ImagineCommand
from bot.reply import JobPhase
from providers.sandbox.common import Fault
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app

IMAGE_ROUTES = "apiinone:hunyuan-image-3,pixazo:hunyuan-image"


def _failovers(app, route: str, reason: str) -> float:  # type: ignore[no-untyped-def]
    return app.metrics.failovers_total.labels(from_route=route, reason=reason)._value.get()


@pytest.mark.parametrize(
    "fault,reason",
    [(Fault.SERVER_ERROR, "unavailable"), (Fault.FUNDS, "funds"), (Fault.AUTH, "auth")],
)
async def test_first_route_down_the_job_succeeds_on_the_next_charged_once(
    tmp_path: Path, fault: Fault, reason: str
) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, sandbox=sandbox, route_order=IMAGE_ROUTES, submit_retries=1) as app:
        sandbox["apiinone"].inject(fault, 10, stage="submit")
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.results and not reply.failures
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.route == "pixazo:hunyuan-image"
        account = await app.ledger.account(MEMBER.tenant, MEMBER.user_id)
        assert account.balance == 90  # charged once
        assert _failovers(app, "apiinone:hunyuan-image-3", reason) == 1
        assert await app.ledger.check_invariants() == []


async def test_a_rejected_prompt_is_not_retried_elsewhere(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, sandbox=sandbox, route_order=IMAGE_ROUTES) as app:
        sandbox["apiinone"].inject(Fault.REJECT, 1, stage="submit")
        before = sandbox.request_counts["pixazo"]
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.failures and "couldn't use this request" in reply.failures[0].text
        assert sandbox.request_counts["pixazo"] == before
        assert (await app.ledger.account(MEMBER.tenant, MEMBER.user_id)).balance == 100


async def test_a_vendor_side_job_error_moves_to_the_next_route(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with running_app(tmp_path, sandbox=sandbox, route_order=IMAGE_ROUTES) as app:
        sandbox["apiinone"].inject(Fault.JOB_FAILED)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert reply.results
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.routes_tried == ["apiinone:hunyuan-image-3", "pixazo:hunyuan-image"]
        assert (await app.ledger.account(MEMBER.tenant, MEMBER.user_id)).balance == 90


async def test_circuit_breaker_opens_then_recovers(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    settings = {
        "route_order": IMAGE_ROUTES,
        "submit_retries": 0,
        "breaker_failures": 2,
        "breaker_reset_seconds": 0.5,
        "max_jobs_per_user": 10,
    }
    async with running_app(tmp_path, sandbox=sandbox, **settings) as app:
        sandbox["apiinone"].inject(Fault.SERVER_ERROR, 100, stage="submit")
        for _ in range(2):
            reply = RecordingReply()
            await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
            await reply.wait()
        assert app.router.health()["apiinone:hunyuan-image-3"] == "open"
        calls = sandbox.request_counts["apiinone"]
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        assert sandbox.request_counts["apiinone"] == calls  # not even tried while open
        sandbox["apiinone"].clear_faults()
        await asyncio.sleep(0.6)
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait()
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.route == "apiinone:hunyuan-image-3"  # the probe went through
        assert app.router.health()["apiinone:hunyuan-image-3"] == "closed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _webhook_app(tmp_path: Path, sandbox):  # type: ignore[no-untyped-def]
    port = _free_port()
    return running_app(
        tmp_path,
        sandbox=sandbox,
        route_order="pixazo:hunyuan-image",
        http_port=port,
        public_base_url=f"http://127.0.0.1:{port}",
    )


async def test_a_webhook_completes_the_job_without_polling(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with _webhook_app(tmp_path, sandbox) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait(timeout=10)
        assert reply.results
        polls = [p for m, p in sandbox["pixazo"].requests if "/v2/requests/status/" in p]
        assert polls == []
        assert sandbox["pixazo"].webhooks_sent
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.state is JobPhase.DONE


async def test_a_callback_for_a_job_followed_here_costs_no_database_read(tmp_path: Path) -> None:
    async with _webhook_app(tmp_path, fast_sandbox()) as app:
        store = app.engine.store
        get, read = store.get, []

        async def counted(job_id: str):  # type: ignore[no-untyped-def]
            read.append(job_id)
            return await get(job_id)

        store.get = counted  # type: ignore[method-assign]
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait(timeout=10)
        assert reply.results
        received = app.metrics.registry.get_sample_value(
            "imagine_webhooks_total", {"vendor": "pixazo", "outcome": "received"}
        )
        assert received is not None and received >= 1  # the callback came, and was taken
        assert ticket.job_id not in read


async def test_a_webhook_with_a_wrong_token_is_refused(tmp_path: Path) -> None:
    async with _webhook_app(tmp_path, fast_sandbox(latency=(5.0, 5.0))) as app:
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), RecordingReply())
        url = f"{app.web.base_url}/webhooks/pixazo/{ticket.job_id}?token=forged"
        async with aiohttp.ClientSession() as http, http.post(url, json={"status": "COMPLETED"}) as resp:
            assert resp.status == 403
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and not job.state.terminal


async def test_duplicate_and_late_webhooks_change_nothing(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    async with _webhook_app(tmp_path, sandbox) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox"), reply)
        await reply.wait(timeout=10)
        url, payload = sandbox["pixazo"].webhooks_sent[-1]
        async with aiohttp.ClientSession() as http:
            for _ in range(2):
                async with http.post(url, json=payload) as resp:
                    assert resp.status == 200
        await asyncio.sleep(0.2)
        assert len(reply.results) == 1
        assert (await app.ledger.account(MEMBER.tenant, MEMBER.user_id)).balance == 90
        assert await app.ledger.check_invariants() == []


async def test_per_image_callbacks_are_gathered_until_every_image_is_in(tmp_path: Path) -> None:
    sandbox = fast_sandbox()
    port = _free_port()
    settings = {"route_order": "runware", "http_port": port, "public_base_url": f"http://127.0.0.1:{port}"}
    async with running_app(tmp_path, sandbox=sandbox, **settings) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="three foxes --n 3"), reply)
        await reply.wait(timeout=10)
        images = [f for f in reply.results[0].files if f.role == "image"]
        assert len(images) == 3
        callbacks = [p for u, p in sandbox["runware"].webhooks_sent if ticket.job_id in u]
        assert len(callbacks) == 3  # one POST per image, as Runware does
        polls = [b for m, b in sandbox["runware"].requests if "getResponse" in str(b)]
        assert polls == []
