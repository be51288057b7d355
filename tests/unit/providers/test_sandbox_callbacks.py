"""The sandbox sends a vendor callback at the moment its job completes (not on the next tick of
a sweep, nor after drawing the result), and logs when each was due and when it left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from providers.base import GenerationRequest, Kind, ProviderSettings
from providers.novita import MODEL as NOVITA_MODEL
from providers.novita import NovitaProvider
from providers.runware import MODEL as RUNWARE_MODEL
from providers.runware import RunwareProvider
from providers.sandbox.server import Sandbox

KEY = "sandbox-key"
#: how late a callback may arrive after its job's end on a busy two-core machine
ON_TIME = 0.08


@dataclass
class Receiver:
    url: str
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async def enough() -> None:
            while len(self.arrivals) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(enough(), timeout)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A loopback webhook endpoint noting when each callback arrived (monotonic clock)."""
    box = Receiver(url="")

    async def receive(request: web.Request) -> web.Response:
        box.arrivals.append((time.monotonic(), await request.read()))
        box.changed.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{job}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield box
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_each_callback_arrives_when_its_job_ends(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    async with Sandbox(["novita"], api_key=KEY) as sb:
        emu = sb["novita"]
        client = NovitaProvider(session, ProviderSettings(base_url=sb.base_url("novita"), api_key=KEY))
        ids = []
        for i in range(6):
            emu.latency = (0.5 + 0.07 * i, 0.5 + 0.07 * i)  # ends spread out, not on a grid
            request = GenerationRequest(
                kind=Kind.IMAGE,
                model=NOVITA_MODEL,
                prompt=f"fox {i}",
                width=512,
                height=512,
                webhook_url=f"{receiver.url}/{i}",
            )
            ids.append((await client.submit(request)).handle.job_id)
        await receiver.wait_for(6)
        for job_id in ids:
            done_at = emu.jobs[job_id].created + emu.jobs[job_id].latency
            [arrived] = [t for t, body in receiver.arrivals if job_id.encode() in body]
            assert 0.0 <= arrived - done_at < ON_TIME


async def test_the_callback_log_has_the_due_and_send_time_of_each(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    async with Sandbox(["novita"], api_key=KEY, latency=(0.3, 0.3)) as sb:
        client = NovitaProvider(session, ProviderSettings(base_url=sb.base_url("novita"), api_key=KEY))
        request = GenerationRequest(
            kind=Kind.IMAGE,
            model=NOVITA_MODEL,
            prompt="a fox",
            width=512,
            height=512,
            webhook_url=receiver.url + "/a",
        )
        job_id = (await client.submit(request)).handle.job_id
        await receiver.wait_for(1)
        [entry] = sb.callback_log
        job = sb["novita"].jobs[job_id]
        assert (entry.vendor, entry.job_id) == ("novita", job_id)
        assert entry.due_at == pytest.approx(job.created + job.latency)
        assert 0.0 <= entry.sent_at - entry.due_at < ON_TIME
        async with session.get(f"http://127.0.0.1:{sb.port}/_sandbox/novita/jobs") as resp:
            stats = await resp.json()
        assert stats["callbacks"] == [[job_id, entry.due_at, entry.sent_at]]


async def test_runware_posts_each_image_as_it_finishes(
    receiver: Receiver, session: aiohttp.ClientSession
) -> None:
    # Drawing three 1024² images can outlast the first image's 0.5 s on a busy machine; the
    # render cache keeps this about scheduling.
    async with Sandbox(["runware"], api_key=KEY, latency=(1.5, 1.5), render_cache=True) as sb:
        client = RunwareProvider(session, ProviderSettings(base_url=sb.base_url("runware"), api_key=KEY))
        request = GenerationRequest(
            kind=Kind.IMAGE,
            model=RUNWARE_MODEL,
            prompt="three koi",
            width=1024,
            height=1024,
            count=3,
            webhook_url=receiver.url + "/r",
        )
        await client.submit(request)
        await receiver.wait_for(3)
        (job,) = sb["runware"].jobs.values()
        for k, (arrived, _body) in enumerate(sorted(receiver.arrivals), start=1):
            due = job.created + job.latency * k / 3
            assert 0.0 <= arrived - due < ON_TIME
        assert [round(c.due_at - job.created, 3) for c in sb.callback_log] == [0.5, 1.0, 1.5]
