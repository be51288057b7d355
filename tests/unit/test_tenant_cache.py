"""The tenant settings cache: a burst of admissions costs one read of each setting."""

from __future__ import annotations

import asyncio

import pytest

from bot.admission import TenantCache


async def test_concurrent_misses_share_one_load() -> None:
    cache = TenantCache(ttl=10.0, clock=lambda: 0.0)
    loads = 0
    gate = asyncio.Event()

    async def load() -> list[str]:
        nonlocal loads
        loads += 1
        await gate.wait()
        return ["badword"]

    waiting = [asyncio.create_task(cache.get(("t", "blocklist"), load)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [["badword"]] * 50
    assert loads == 1
    assert await cache.get(("t", "blocklist"), load) == ["badword"] and loads == 1  # cached


async def test_a_failed_load_is_not_shared_each_waiter_loads_again() -> None:
    cache = TenantCache(ttl=10.0, clock=lambda: 0.0)
    calls = 0
    gate = asyncio.Event()

    async def load() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
            raise RuntimeError("database hiccup")
        return 7

    first = asyncio.create_task(cache.get(("t", "cost"), load))
    await asyncio.sleep(0)
    others = [asyncio.create_task(cache.get(("t", "cost"), load)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(RuntimeError):
        await first
    assert await asyncio.gather(*others) == [7, 7, 7]
    assert await cache.get(("t", "cost"), load) == 7


async def test_a_cancelled_waiter_does_not_cancel_the_load() -> None:
    cache = TenantCache(ttl=10.0, clock=lambda: 0.0)
    gate = asyncio.Event()

    async def load() -> str:
        await gate.wait()
        return "v"

    leader = asyncio.create_task(cache.get(("t", "k"), load))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get(("t", "k"), load))
    await asyncio.sleep(0)
    waiter.cancel()
    gate.set()
    assert await leader == "v"
    with pytest.raises(asyncio.CancelledError):
        await waiter
