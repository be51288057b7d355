"""The demo as a new user meets it: Ctrl-C, `| head`, and wording that fits a terminal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import cli_env, run_cli

pytestmark = pytest.mark.slow

# Well above the few seconds a polite stop takes, well below a hang.
STOP_WITHIN = 10.0


async def _start_demo(tmp_path: Path, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "demo",
        cwd=str(tmp_path),
        env=cli_env(tmp_path, **env),
        stdin=asyncio.subprocess.PIPE,  # kept open: the demo is waiting for the next line
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _line_with(proc: asyncio.subprocess.Process, text: str) -> str:
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, f"the demo ended before printing {text!r}"
        if text in line:
            return line


async def _interrupt(proc: asyncio.subprocess.Process) -> tuple[float, str, str]:
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), STOP_WITHIN)
    return time.monotonic() - started, out.decode(), err.decode()


async def test_ctrl_c_stops_the_demo_and_says_the_running_job_will_resume(tmp_path: Path) -> None:
    proc = await _start_demo(tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b"/model3d a wooden chair\n")
    await proc.stdin.drain()
    await _line_with(proc, "Queued")
    took, out, err = await _interrupt(proc)
    assert proc.returncode == 130
    assert "1 job is still running; it will resume the next time you start the demo." in out
    assert took < STOP_WITHIN and "Traceback" not in err


async def test_ctrl_c_on_an_idle_demo_stops_it_at_once(tmp_path: Path) -> None:
    proc = await _start_demo(tmp_path)
    await _line_with(proc, "imagine-bot demo:")
    _took, out, err = await _interrupt(proc)
    assert proc.returncode == 130
    assert out.strip().endswith("Stopped.") and "Traceback" not in err


async def test_demo_ends_when_its_output_pipe_closes(tmp_path: Path) -> None:
    # `python -m bot demo | head -n 1`: head reads one line and exits; the demo is idle.
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "demo",
        cwd=str(tmp_path),
        env=cli_env(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as head:
        first = await asyncio.wait_for(asyncio.to_thread(head.readline), 60)
    assert first.startswith(b"imagine-bot demo:")
    await asyncio.wait_for(proc.wait(), STOP_WITHIN)  # its stdin still open: no end of input
    assert proc.stderr is not None
    err = await proc.stderr.read()
    assert proc.returncode == 141  # as if SIGPIPE ended it, like any Unix filter
    assert b"BrokenPipeError" not in err and b"Traceback" not in err


async def test_demo_data_dir_option_puts_database_and_files_there(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "demo", "--data-dir", "elsewhere", stdin="/imagine a fox\n")
    assert code == 0, err
    assert (tmp_path / "elsewhere" / "imagine-bot.sqlite3").exists()
    assert f"saved image: {tmp_path / 'elsewhere' / 'output'}" in out


async def test_text_without_a_slash_is_a_hint_and_costs_nothing(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "demo", stdin="hello there\n/credits\n")
    assert code == 0, err
    assert "Commands start with a slash: `/imagine hello there`" in out
    assert "You have 100 credits" in out and "Queued" not in out


async def test_console_names_members_without_chat_mention_markup(tmp_path: Path) -> None:
    script = "/quota grant someone 50 welcome\n/quota history someone\n"
    code, out, err = await run_cli(tmp_path, "demo", stdin=script)
    assert code == 0, err
    assert "Granted 50 credits to someone. Their balance is now 150 credits." in out
    assert "Credit history of someone" in out and "<@" not in out


async def test_next_hint_after_an_image_is_the_typed_edit_and_model3d(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "demo", stdin="/imagine a fox\n")
    assert code == 0, err
    image = next(line.split("saved image: ", 1)[1] for line in out.splitlines() if "saved image: " in line)
    hint = next(line for line in out.splitlines() if "next:" in line)
    assert f"/edit {image} <what to change>" in hint and f"/model3d {image}" in hint


async def test_next_hint_after_a_3d_model_offers_no_image_commands(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "demo", stdin="/model3d a chair\n")
    assert code == 0, err
    hints = [line for line in out.splitlines() if "next:" in line]
    assert all("/edit" not in h and "/imagine" not in h for h in hints)


async def test_a_moderator_short_of_credits_is_told_how_to_grant_themselves(tmp_path: Path) -> None:
    code, out, err = await run_cli(
        tmp_path, "demo", stdin="/imagine a fox\n", DAILY_ALLOWANCE="0", USER="tess", LOGNAME="tess"
    )
    assert code == 0, err
    assert "You need 10 credits for this, but you have 0 credits." in out
    assert "As a moderator you can grant yourself more: `/quota grant tess 10`." in out


async def test_a_text_file_is_refused_without_naming_another_platform(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    code, out, err = await run_cli(tmp_path, "demo", stdin="/edit ./notes.txt make it night\n")
    assert code == 0, err
    assert "isn't an image I can use" in out and "Slack" not in out


async def test_ctrl_c_stops_a_one_off_job_and_names_the_command_that_finishes_it(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "model3d",
        "a",
        "wooden",
        "chair",
        "--sandbox",
        cwd=str(tmp_path),
        env=cli_env(tmp_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await _line_with(proc, "Queued")
    _took, out, err = await _interrupt(proc)
    assert proc.returncode == 130
    assert "1 job is still running; `imagine-bot jobs resume` finishes it." in out
    assert "Traceback" not in err
