"""What the operator sees from `imagine-bot` processes: bad settings, one instance per database,
backups, readiness. Real child processes each time."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DISCORD_", "SLACK_", "APIINONE_", "PIXAZO_", "AIMLAPI_", "NOVITA_", "RUNWARE_"))
    }
    env.update(PYTHONPATH=str(ROOT), DATA_DIR=str(tmp_path / "data"), **extra)
    return env


async def _run(tmp_path: Path, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=str(tmp_path),
        env=_env(tmp_path, **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_every_invalid_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    code, out, err = await _run(
        tmp_path, "run", VENDOR_CONCURRENCY="0", DAILY_ALLOWANCE="-1", LOG_LEVEL="LOUD"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    for name, line in zip(("LOG_LEVEL", "VENDOR_CONCURRENCY", "DAILY_ALLOWANCE"), lines, strict=True):
        assert line.startswith(f"imagine-bot: setting {name} is invalid")
    assert "Traceback" not in out + err


async def test_a_negative_allowance_alone_is_a_clear_line_not_a_traceback(tmp_path: Path) -> None:
    code, _out, err = await _run(tmp_path, "credits", "show", "u1", DAILY_ALLOWANCE="-1")
    assert code == 2
    assert err.strip().splitlines() == [
        "imagine-bot: setting DAILY_ALLOWANCE is invalid (got '-1'): Input should be greater than or equal to 0"
    ]
