"""Fixtures shared by the vendor tests: each test module names its `VENDOR` (and may set
`SANDBOX_OPTIONS`), and gets that vendor's emulator on loopback and one HTTP session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from providers.sandbox.common import VendorEmulator
from providers.sandbox.server import Sandbox


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The one client session a provider is built with."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """The module's vendor emulator, fast: jobs finish in 50–100 ms, timeouts after 1 s."""
    options: dict[str, Any] = {"latency": (0.05, 0.1), "timeout_seconds": 1.0}
    options.update(getattr(request.module, "SANDBOX_OPTIONS", {}))
    async with Sandbox([request.module.VENDOR], **options) as sb:
        yield sb


@pytest.fixture
def emulator(sandbox: Sandbox, request: pytest.FixtureRequest) -> VendorEmulator:
    """The emulator itself, to inject faults and read what it received."""
    return sandbox[request.module.VENDOR]


@dataclass
class Hook:
    """Where a vendor's callbacks go in a test, and the bodies received so far."""

    url: str
    deliveries: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)


@pytest.fixture
async def hook(request: pytest.FixtureRequest) -> AsyncIterator[Hook]:
    """A loopback endpoint that records every callback body it receives."""
    vendor = request.module.VENDOR
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(f"/webhooks/{vendor}/{{job}}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield Hook(url=f"http://127.0.0.1:{port}/webhooks/{vendor}/job-1?token=t0k", deliveries=received)
    await runner.cleanup()
