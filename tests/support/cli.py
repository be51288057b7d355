"""The `imagine-bot` command as a child process, with an environment free of the caller's
platform tokens, vendor keys and database settings."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

__all__ = ["ROOT", "cli_env", "run_cli"]

ROOT = Path(__file__).resolve().parents[2]

# Settings a developer's shell may carry that would point a test's child at something real.
_FOREIGN = (
    "DISCORD_",
    "SLACK_",
    "APIINONE_",
    "PIXAZO_",
    "AIMLAPI_",
    "NOVITA_",
    "RUNWARE_",
    "DATABASE_",
    "MEDIA_ROOT",
    "OUTPUT_DIR",
    "SECRET_KEY",
)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without foreign settings, the data under `tmp_path`, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update(PYTHONPATH=str(ROOT), DATA_DIR=str(tmp_path / "data"), **extra)
    return env


async def run_cli(tmp_path: Path, *args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
    """Run `python -m bot ARGS` in `tmp_path` with `stdin`; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=str(tmp_path),
        env=cli_env(tmp_path, **env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
