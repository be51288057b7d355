"""The `imagine-bot` command as a user runs it: a real child process each time."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.cli import cli_env, run_cli
from tests.support.postgres import fresh_pg_url

pytestmark = pytest.mark.slow


async def test_piped_demo_runs_both_commands_and_exits_zero(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "demo", stdin="/imagine a red fox --ar 16:9\n/credits\n")
    assert code == 0, err
    assert "Queued" in out
    saved = [line.split("saved image: ", 1)[1] for line in out.splitlines() if "saved image: " in line]
    assert saved and Path(saved[0]).exists()
    assert "You have 90 credits" in out
    assert "Traceback" not in out + err


async def test_demo_reports_bad_input_in_one_line_and_carries_on(tmp_path: Path) -> None:
    code, out, _err = await run_cli(tmp_path, "demo", stdin="/imagine a fox --ar banana\n/credits\n")
    assert code == 0
    assert "isn't an aspect ratio" in out
    assert "You have 100 credits" in out


async def test_run_without_a_platform_exits_2_naming_the_settings(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "run")
    assert code == 2
    assert "DISCORD_TOKEN" in err and "SLACK_BOT_TOKEN" in err
    assert len(err.strip().splitlines()) == 1


async def test_one_job_prints_where_the_files_went(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "imagine", "a lighthouse --n 2", "--sandbox")
    assert code == 0, err
    assert out.count("saved image: ") == 2 and "saved grid: " in out


async def test_one_job_without_any_vendor_exits_2(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "imagine", "a lighthouse")
    assert code == 2 and "APIINONE_API_KEY" in err


async def test_credits_grant_then_show_then_history(tmp_path: Path) -> None:
    code, out, err = await run_cli(
        tmp_path, "credits", "grant", "alice", "25", "--tenant", "discord:42", "--reason", "prize"
    )
    assert code == 0, err
    assert "balance is now 125 credits" in out  # 100 daily allowance + 25
    code, out, _ = await run_cli(tmp_path, "credits", "show", "alice", "--tenant", "discord:42")
    assert "balance 125" in out
    code, out, _ = await run_cli(tmp_path, "credits", "history", "alice", "--tenant", "discord:42")
    assert "prize" in out and "operator:cli" in out


async def test_credits_work_on_postgresql_and_leave_no_sqlite_file(tmp_path: Path, pg_server: str) -> None:
    import asyncpg

    async with fresh_pg_url(pg_server) as url:
        env = {"DATABASE_URL": url, "SECRET_KEY": "a-shared-test-key-0123456789"}
        code, out, err = await run_cli(
            tmp_path, "credits", "grant", "alice", "25", "--tenant", "discord:42", "--reason", "prize", **env
        )
        assert code == 0, err
        assert "balance is now 125 credits" in out
        code, out, err = await run_cli(tmp_path, "credits", "show", "alice", "--tenant", "discord:42", **env)
        assert code == 0 and "balance 125" in out, err
        conn = await asyncpg.connect(url)
        try:
            reasons = await conn.fetch(
                "SELECT reason FROM entries WHERE user_id = 'alice' AND kind = 'grant'"
            )
        finally:
            await conn.close()
        assert [r["reason"] for r in reasons] == ["prize"]
        assert not (tmp_path / "data" / "imagine-bot.sqlite3").exists()


async def test_db_backup_on_postgresql_points_to_pg_dump(tmp_path: Path) -> None:
    # No server needed: the command refuses before it connects, and never echoes the URL.
    url = "postgresql://bot:hunter2-secret@127.0.0.1:9/bot"
    code, out, err = await run_cli(
        tmp_path, "db", "backup", str(tmp_path / "b.sqlite3"), DATABASE_URL=url, SECRET_KEY="k" * 32
    )
    assert code == 2 and out == ""
    assert (
        err.strip()
        == "imagine-bot db backup: copies the SQLite database only; back up PostgreSQL with pg_dump"
    )
    assert not (tmp_path / "b.sqlite3").exists()


async def test_credits_refuses_an_absurd_grant(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "credits", "grant", "alice", "999999999999")
    assert code == 1 and "valid amount" in err


async def test_providers_check_prints_a_table_of_the_sandbox(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "providers", "check", "--sandbox")
    assert code == 0, err
    for vendor in ("apiinone", "pixazo", "aimlapi", "novita", "runware"):
        assert vendor in out


async def test_providers_check_reports_a_bad_key(tmp_path: Path) -> None:
    code, out, _err = await run_cli(
        tmp_path, "providers", "check", PIXAZO_API_KEY="wrong", PIXAZO_BASE_URL="http://127.0.0.1:9"
    )
    assert code == 1 and "FAILED" in out


async def test_secrets_never_reach_the_logs(tmp_path: Path) -> None:
    secret = "sk-supersecret-123456"
    _code, out, err = await run_cli(
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
    code, out, err = await run_cli(tmp_path, "demo", stdin=script)
    assert code == 0, err
    assert out.count("saved image: ") == 1  # the edit
    assert out.count("saved model: ") == 2  # image → 3D and text → 3D
    assert out.count("saved thumbnail: ") >= 1
    models = [line.split("saved model: ", 1)[1] for line in out.splitlines() if "saved model: " in line]
    assert all(Path(m).read_bytes()[:4] == b"glTF" for m in models)


async def test_credits_spend_reads_vendor_cost_per_tenant(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "imagine", "a lighthouse", "--sandbox", "--tenant", "acme")
    assert code == 0, err
    code, out, err = await run_cli(tmp_path, "credits", "spend", "--tenant", "all")
    assert code == 0, err
    assert "cli:acme: 1 jobs, $" in out


async def test_version_prints_the_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    code, out, _err = await run_cli(tmp_path, "--version")
    assert code == 0 and out.strip() == f"imagine-bot {version('imagine-bot')}"


async def test_one_job_takes_inline_flags_without_a_separator(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "imagine", "a", "lighthouse", "--n", "2", "--sandbox")
    assert code == 0, err
    assert out.count("saved image: ") == 2


async def test_one_job_flag_with_equals_and_cli_options_anywhere(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "imagine", "--sandbox", "a", "lighthouse", "--ar=16:9")
    assert code == 0, err
    assert "1024×576" in out


async def test_one_job_refuses_a_repeated_flag(tmp_path: Path) -> None:
    code, out, _err = await run_cli(
        tmp_path, "imagine", "a", "fox", "--seed", "1", "--seed", "2", "--sandbox"
    )
    assert code == 1 and "`--seed` is given more than once" in out


async def test_one_job_and_credits_show_share_the_default_tenant(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "imagine", "a", "lighthouse", "--sandbox", "--user", "ann")
    assert code == 0, err
    code, out, err = await run_cli(tmp_path, "credits", "show", "ann")
    assert code == 0, err
    assert out.strip() == "cli:local ann: balance 90, held 0, allowance 100"


async def test_one_off_edit_and_model3d_print_their_files(tmp_path: Path) -> None:
    from PIL import Image

    picture = tmp_path / "cat.png"
    Image.new("RGB", (320, 240), (200, 120, 40)).save(picture)
    code, out, err = await run_cli(tmp_path, "edit", str(picture), "make", "it", "night", "--sandbox")
    assert code == 0, err
    assert out.count("saved image: ") == 1
    code, out, err = await run_cli(tmp_path, "model3d", "a", "wooden", "chair", "--sandbox")
    assert code == 0, err
    assert out.count("saved model: ") == 1


async def test_credits_show_reports_an_unknown_user_instead_of_a_fresh_account(tmp_path: Path) -> None:
    await run_cli(tmp_path, "credits", "grant", "alice", "5", "--tenant", "discord:42")
    code, out, err = await run_cli(tmp_path, "credits", "show", "bob", "--tenant", "discord:42")
    assert code == 1 and "unknown user bob in discord:42" in err and "balance" not in out


async def test_credits_history_reports_an_unknown_tenant(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "credits", "history", "alice", "--tenant", "discord:43")
    assert code == 1 and "unknown tenant discord:43" in err and not out


async def test_credits_set_then_take(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "credits", "set", "alice", "40", "--tenant", "slack:T1")
    assert code == 0, err
    assert "balance is now 40 credits" in out and "<@" not in out
    code, out, err = await run_cli(tmp_path, "credits", "take", "alice", "15", "--tenant", "slack:T1")
    assert code == 0, err
    assert "balance is now 25 credits" in out


async def test_jobs_list_and_resume_with_nothing_unfinished(tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, "jobs", "list")
    assert code == 0, err
    assert out.strip() == "0 unfinished job(s)"
    code, out, err = await run_cli(tmp_path, "jobs", "resume", SANDBOX="true")
    assert code == 0, err
    assert out.strip() == "0 finished, 0 refunded, 0 left"


async def test_jobs_resume_prints_what_it_finished_or_refunded(tmp_path: Path) -> None:
    import signal

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "demo",
        cwd=str(tmp_path),
        env=cli_env(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"/model3d a wooden chair\n")
    await proc.stdin.drain()
    queued = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    while "Queued" not in queued:
        queued = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    job_id = queued.split("]", 1)[0].lstrip("[")
    proc.send_signal(signal.SIGINT)
    await asyncio.wait_for(proc.communicate(), 30)
    code, out, err = await run_cli(tmp_path, "jobs", "resume", SANDBOX="true")
    assert code == 0, err
    report = out.strip().splitlines()
    assert any(
        line.startswith(f"{job_id}  finished: ") or line.startswith(f"{job_id}  refunded: ")
        for line in report
    )
    assert report[-1] in ("1 finished, 0 refunded, 0 left", "0 finished, 1 refunded, 0 left")


async def test_discord_sync_with_a_guild_needs_the_token(tmp_path: Path) -> None:
    code, _out, err = await run_cli(tmp_path, "discord", "sync", "--guild", "123")
    assert code == 2 and "DISCORD_TOKEN" in err


def test_every_help_text_reads_as_a_sentence() -> None:
    import argparse

    from bot.cli import _parser

    def helps(parser: argparse.ArgumentParser) -> list[str]:
        out = [parser.description or ""]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += [a.help or "" for a in action._choices_actions]
                for sub in action.choices.values():
                    out += helps(sub)
            elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                out.append(action.help or "")
        return out

    bad = [h for h in helps(_parser()) if not (h[:1].isupper() and h.endswith("."))]
    assert bad == []
