"""Fixtures shared by the vendor tests: each test module names its `VENDOR` (and may set
`SANDBOX_OPTIONS`), and gets that vendor's emulator on loopback and one HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

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
