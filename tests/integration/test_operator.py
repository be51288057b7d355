"""What the operator sees from `imagine-bot` processes: bad settings, one instance per database,
backups, readiness. Real child processes each time."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.fakes.discord_fake import DiscordFake
from tests.support.cli import cli_env, run_cli

pytestmark = pytest.mark.slow


async def test_every_invalid_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out, err = await run_cli(
        tmp_path, "run", VENDOR_CONCURRENCY="0", DAILY_ALLOWANCE="-1", LOG_LEVEL="LOUD"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    for name, line in zip(("LOG_LEVEL", "VENDOR_CONCURRENCY", "DAILY_ALLOWANCE"), lines, strict=True):
        assert line.startswith(f"imagine-bot: setting {name} is invalid")
    assert "Traceback" not in out + err


async def test_a_negative_allowance_alone_is_a_clear_line_not_a_traceback(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "credits", "show", "u1", DAILY_ALLOWANCE="-1")
    assert code == 2
    assert err.strip().splitlines() == [
        "imagine-bot: setting DAILY_ALLOWANCE is invalid (got '-1'): Input should be greater than or equal to 0"
    ]


class Running:
    """A long-lived `imagine-bot` child; `ready_line` is awaited on stdout or stderr."""

    def __init__(self, tmp_path: Path, *args: str, ready_line: str, **env: str) -> None:
        self.tmp_path, self.args, self.ready_line, self.env = tmp_path, args, ready_line, env
        self.proc: asyncio.subprocess.Process | None = None
        self.seen: list[str] = []

    async def __aenter__(self) -> Running:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            *self.args,
            cwd=str(self.tmp_path),
            env=cli_env(self.tmp_path, **self.env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.wait_for(self._until(self.ready_line), 60)
        return self

    async def _until(self, text: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while not any(text in line for line in self.seen):
            line = await self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"exited before {text!r}: {''.join(self.seen)}")
            self.seen.append(line.decode())

    async def wait(self, timeout: float = 60) -> tuple[int, str]:
        """Its exit code and everything it printed."""
        assert self.proc is not None and self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        return code, "".join(self.seen) + rest.decode()

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the demo ends with its input
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _demo(tmp_path: Path) -> Running:
    return Running(tmp_path, "demo", ready_line="imagine-bot demo: sandbox vendors")


async def test_a_second_bot_on_the_same_database_refuses_to_start(tmp_path: Path) -> None:
    async with _demo(tmp_path) as first:
        assert first.proc is not None
        for command in (["demo"], ["run"], ["jobs", "resume"]):
            code, out, err = await run_cli(
                tmp_path, *command, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET="s" * 32
            )
            assert code == 2, (command, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert "another imagine-bot" in lines[0] and f"pid {first.proc.pid}" in lines[0]
            assert "imagine-bot.sqlite3" in lines[0]


async def test_operator_commands_still_work_next_to_a_running_bot(tmp_path: Path) -> None:
    async with _demo(tmp_path):
        code, out, err = await run_cli(tmp_path, "credits", "grant", "u1", "5")
        assert code == 0, err
        code, out, err = await run_cli(tmp_path, "jobs", "list")
        assert code == 0 and "unfinished job(s)" in out, err


async def test_the_lock_is_free_again_once_the_first_bot_exits(tmp_path: Path) -> None:
    async with _demo(tmp_path) as first:
        pass
    assert first.proc is not None and first.proc.returncode == 0
    code, out, err = await run_cli(tmp_path, "demo", stdin="/credits\n")
    assert code == 0, err
    assert "You have 100 credits" in out


def _discord_env(fake: DiscordFake, **extra: str) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": fake.token,
        "DISCORD_API_BASE": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
        "SANDBOX": "true",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": "0",
        **extra,
    }


async def test_a_gateway_gone_for_good_exits_non_zero(tmp_path: Path) -> None:
    async with (
        DiscordFake() as fake,
        Running(tmp_path, "run", ready_line="imagine-bot up:", **_discord_env(fake)) as bot,
    ):
        await fake.drop_connection(code=4014)  # disallowed intents: discord.py stops for good
        code, out = await bot.wait()
    assert code == 1
    assert "exiting: discord: the Discord gateway stopped: PrivilegedIntentsRequired" in out
    assert "Traceback" not in out


async def test_a_gateway_away_beyond_the_give_up_period_exits_non_zero(tmp_path: Path) -> None:
    async with DiscordFake() as fake:
        env = _discord_env(fake, PLATFORM_GRACE_SECONDS="0.5", PLATFORM_GIVE_UP_SECONDS="1")
        async with Running(tmp_path, "run", ready_line="imagine-bot up:", **env) as bot:
            fake.gateway_refused = True
            await fake.drop_connection()
            code, out = await bot.wait()
    assert code == 1
    assert "exiting: discord: disconnected for more than 1s" in out


async def test_db_backup_while_the_bot_runs_holds_the_ledger(tmp_path: Path) -> None:
    target = tmp_path / "backup.sqlite3"
    async with _demo(tmp_path):
        code, _out, err = await run_cli(tmp_path, "credits", "grant", "u1", "7", "--reason", "before backup")
        assert code == 0, err
        code, out, err = await run_cli(tmp_path, "db", "backup", str(target))
        assert code == 0, err
    assert out.strip() == f"backed up {tmp_path / 'data' / 'imagine-bot.sqlite3'} to {target}"
    conn = sqlite3.connect(target)
    try:
        rows = conn.execute("SELECT kind, delta, reason FROM entries WHERE user_id = 'u1'").fetchall()
    finally:
        conn.close()
    assert ("grant", 7, "before backup") in rows


async def test_a_one_off_job_runs_next_to_a_running_bot(tmp_path: Path) -> None:
    async with _demo(tmp_path):
        code, out, err = await run_cli(tmp_path, "imagine", "--sandbox", "a red fox")
    assert code == 0, err
    assert "saved image: " in out


async def test_json_logs_are_one_object_per_line_and_sigterm_exits_0(tmp_path: Path) -> None:
    async with DiscordFake() as fake:
        env = _discord_env(fake, LOG_FORMAT="json", NOVITA_API_KEY="sk-novita-secret-123456")
        async with Running(tmp_path, "run", ready_line="imagine-bot up:", **env) as bot:
            assert bot.proc is not None
            bot.proc.send_signal(signal.SIGTERM)
            code, out = await bot.wait()
    assert code == 0
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert {"ts", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("imagine-bot up:") for r in records)
    assert "sk-novita-secret-123456" not in out
