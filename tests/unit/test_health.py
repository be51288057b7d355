"""Readiness rules, with an injected clock: never connected, connected, dropped, gone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bot.health import DatabaseProbe, Readiness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _readiness(clock: Clock, **kw: float) -> Readiness:
    return Readiness(grace=kw.get("grace", 10.0), give_up=kw.get("give_up", 100.0), clock=clock)


async def test_a_platform_that_never_connected_is_not_ready() -> None:
    ready = _readiness(Clock())
    ready.platform("slack")
    assert await ready.check() == {"ok": False, "platforms": {"slack": "connecting"}, "database": "writable"}


async def test_a_drop_is_ready_within_the_grace_period_and_not_after() -> None:
    clock = Clock()
    ready = _readiness(clock)
    discord = ready.platform("discord")
    discord.connected()
    discord.disconnected()
    clock.now += 9
    assert (await ready.check())["ok"] is True
    clock.now += 2
    answer = await ready.check()
    assert answer["ok"] is False and answer["platforms"]["discord"] == "disconnected for 11s"
    discord.connected()
    assert (await ready.check())["ok"] is True


async def test_every_platform_must_be_ready() -> None:
    ready = _readiness(Clock())
    ready.platform("discord").connected()
    ready.platform("slack")
    assert (await ready.check())["ok"] is False


async def test_a_failed_platform_ends_the_watch_at_once() -> None:
    ready = _readiness(Clock())
    ready.platform("discord").connected()
    ready.platform("discord").failed("LoginFailure")
    assert await ready.gone() == "discord: LoginFailure"


def test_the_probe_says_why_a_database_cannot_take_a_write(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    assert DatabaseProbe(path)._probe() == "database file missing"
    assert not path.exists()  # the probe never creates an empty database in its place
    sqlite3.connect(path).close()
    assert DatabaseProbe(path)._probe() is None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert DatabaseProbe(path, timeout=0.05)._probe() == "database not writable: database is locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
