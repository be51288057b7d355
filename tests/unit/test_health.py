"""Readiness rules, with an injected clock: never connected, connected, dropped, gone; and the
database probes, on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import asyncpg

from bot.health import DatabaseProbe, PostgresProbe, Readiness, database_probe
from tests.support.postgres import fresh_pg_url


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


def test_the_probe_for_a_sqlite_url_or_path_probes_that_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    for url in (f"sqlite:///{path}", path, str(path)):
        probe = database_probe(url, timeout=0.5)
        assert isinstance(probe, DatabaseProbe) and probe.path == path and probe.timeout == 0.5
        assert probe._probe() == "database file missing"
    sqlite3.connect(path).close()
    assert database_probe(f"sqlite:///{path}")._probe() is None  # type: ignore[union-attr]


async def test_the_postgresql_probe_passes_on_a_writable_database(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url:
        probe = database_probe(url)
        assert isinstance(probe, PostgresProbe)
        assert await probe() is None
        ready = Readiness(grace=1.0, give_up=2.0, db_probe=probe)
        assert (await ready.check())["database"] == "writable"


async def test_the_postgresql_probe_says_a_read_only_server_cannot_take_a_write(pg_server: str) -> None:
    async with fresh_pg_url(pg_server) as url:
        admin = await asyncpg.connect(pg_server)
        try:
            name = url.rpartition("/")[2]
            await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        finally:
            await admin.close()
        assert await database_probe(url)() == "database not writable: the server is read-only"


async def test_the_postgresql_probe_names_the_problem_but_never_the_password(pg_server: str) -> None:
    base = pg_server.rpartition("/")[0]
    user, _, host = base.removeprefix("postgresql://").rpartition("@")
    url = f"postgresql://{user}:hunter2-secret@{host}/no_such_database"
    probe = database_probe(url)

    problem = await probe()

    assert problem is not None and problem.startswith("database cannot be reached: InvalidCatalogNameError")
    assert "hunter2" not in problem and "hunter2" not in repr(probe)


async def test_the_postgresql_probe_says_a_closed_port_cannot_be_reached() -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    problem = await PostgresProbe(f"postgresql://bot:pw@127.0.0.1:{port}/db")()
    assert problem is not None and problem.startswith("database cannot be reached: ")
    assert "pw@" not in problem


async def test_the_postgresql_probe_gives_up_on_a_server_that_never_answers() -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the startup packet, answers nothing, until the probe hangs up
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        problem = await PostgresProbe(f"postgresql://bot@127.0.0.1:{port}/db", timeout=0.2)()
        await asyncio.wait_for(hung_up.wait(), 10)
    finally:
        server.close()
        await server.wait_closed()
    assert problem == "database did not answer within 0.2s"


def test_a_password_echoed_by_the_driver_is_redacted() -> None:
    probe = PostgresProbe("postgresql://bot:p%40ss-word@db.internal/bot")
    echoed = OSError("cannot connect to postgresql://bot:p%40ss-word@db.internal/bot (p@ss-word)")
    text = probe._redact(echoed)
    assert "ss-word" not in text and text.startswith("OSError: cannot connect to postgresql://bot:***@")
