"""The `imagine-bot` command as a user runs it: a real child process each time."""

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


async def test_piped_demo_runs_both_commands_and_exits_zero(tmp_path: Path) -> None:
    code, out, err = await _run(tmp_path, "demo", stdin="/imagine a red fox --ar 16:9\n/credits\n")
    assert code == 0, err
    assert "Queued" in out
    saved = [line.split("saved image: ", 1)[1] for line in out.splitlines() if "saved image: " in line]
    assert saved and Path(saved[0]).exists()
    assert "You have 90 credits" in out
    assert "Traceback" not in out + err


async def test_demo_reports_bad_input_in_one_line_and_carries_on(tmp_path: Path) -> None:
    code, out, _err = await _run(tmp_path, "demo", stdin="/imagine a fox --ar banana\n/credits\n")
    assert code == 0
    assert "isn't an aspect ratio" in out
    assert "You have 100 credits" in out


async def test_run_without_a_platform_exits_2_naming_the_settings(tmp_path: Path) -> None:
    code, _out, err = await _run(tmp_path, "run")
    assert code == 2
    assert "DISCORD_TOKEN" in err and "SLACK_BOT_TOKEN" in err
    assert len(err.strip().splitlines()) == 1


async def test_one_job_prints_where_the_files_went(tmp_path: Path) -> None:
    code, out, err = await _run(tmp_path, "imagine", "a lighthouse --n 2", "--sandbox")
    assert code == 0, err
    assert out.count("saved image: ") == 2 and "saved grid: " in out


async def test_one_job_without_any_vendor_exits_2(tmp_path: Path) -> None:
    code, _out, err = await _run(tmp_path, "imagine", "a lighthouse")
    assert code == 2 and "APIINONE_API_KEY" in err


async def test_credits_grant_then_show_then_history(tmp_path: Path) -> None:
    code, out, err = await _run(
        tmp_path, "credits", "grant", "alice", "25", "--tenant", "discord:42", "--reason", "prize"
    )
    assert code == 0, err
    assert "balance is now 125 credits" in out  # 100 daily allowance + 25
    code, out, _ = await _run(tmp_path, "credits", "show", "alice", "--tenant", "discord:42")
    assert "balance 125" in out
    code, out, _ = await _run(tmp_path, "credits", "history", "alice", "--tenant", "discord:42")
    assert "prize" in out and "operator:cli" in out


async def test_credits_refuses_an_absurd_grant(tmp_path: Path) -> None:
    code, _out, err = await _run(tmp_path, "credits", "grant", "alice", "999999999999")
    assert code == 1 and "valid amount" in err


async def test_providers_check_prints_a_table_of_the_sandbox(tmp_path: Path) -> None:
    code, out, err = await _run(tmp_path, "providers", "check", "--sandbox")
    assert code == 0, err
    for vendor in ("apiinone", "pixazo", "aimlapi", "novita", "runware"):
        assert vendor in out


async def test_providers_check_reports_a_bad_key(tmp_path: Path) -> None:
    code, out, _err = await _run(
        tmp_path, "providers", "check", PIXAZO_API_KEY="wrong", PIXAZO_BASE_URL="http://127.0.0.1:9"
    )
    assert code == 1 and "FAILED" in out


async def test_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    secret = "sk-supersecret-123456"
    _code, out, err = await _run(
        tmp_path,
        "providers",
        "check",
        NOVITA_API_KEY=secret,
        NOVITA_BASE_URL="http://127.0.0.1:9",
        LOG_LEVEL="DEBUG",
    )
    assert secret not in out + err


async def test_demo_edits_a_local_image_and_builds_3d_models(tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "cat.png"
    Image.new("RGB", (320, 240), (200, 120, 40)).save(picture)
    script = f"/edit {picture} make it night\n/model3d {picture}\n/model3d a wooden chair\n"
    code, out, err = await _run(tmp_path, "demo", stdin=script)
    assert code == 0, err
    assert out.count("saved image: ") == 1  # the edit
    assert out.count("saved model: ") == 2  # image → 3D and text → 3D
    assert out.count("saved thumbnail: ") >= 1
    models = [line.split("saved model: ", 1)[1] for line in out.splitlines() if "saved model: " in line]
    assert all(Path(m).read_bytes()[:4] == b"glTF" for m in models)


async def test_credits_spend_reads_vendor_cost_per_tenant(tmp_path: Path) -> None:
    code, _out, err = await _run(tmp_path, "imagine", "a lighthouse", "--sandbox", "--tenant", "acme")
    assert code == 0, err
    code, out, err = await _run(tmp_path, "credits", "spend", "--tenant", "all")
    assert code == 0, err
    assert "cli:acme: 1 jobs, $" in out
