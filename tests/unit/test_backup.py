"""The online backup: a consistent, self-contained copy of a database in use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.backup import backup_database
from bot.db import Database
from bot.errors import ConfigError
from bot.ledger import CreditLedger


async def test_a_backup_of_an_open_database_holds_its_ledger_entries(tmp_path: Path) -> None:
    source = tmp_path / "bot.sqlite3"
    async with Database(source) as db:
        ledger = CreditLedger(db, default_allowance=100, default_costs={"image": 10})
        await ledger.grant("console:local", "u1", 25, actor="mod", reason="welcome")
        written = await backup_database(source, tmp_path / "backups" / "copy.sqlite3")
    assert written == tmp_path / "backups" / "copy.sqlite3"
    conn = sqlite3.connect(written)
    try:
        rows = conn.execute("SELECT kind, delta, reason FROM entries WHERE user_id = 'u1'").fetchall()
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    assert ("grant", 25, "welcome") in rows
    assert mode == "delete"  # one self-contained file, no -wal beside it
    assert [p.name for p in written.parent.iterdir()] == ["copy.sqlite3"]


async def test_a_directory_target_gets_a_timestamped_file(tmp_path: Path) -> None:
    source = tmp_path / "bot.sqlite3"
    async with Database(source):
        pass
    (tmp_path / "out").mkdir()
    written = await backup_database(source, tmp_path / "out")
    assert written.parent == tmp_path / "out" and written.name.startswith("bot-")


async def test_a_missing_database_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no database"):
        await backup_database(tmp_path / "none.sqlite3", tmp_path / "copy.sqlite3")
    assert not (tmp_path / "copy.sqlite3").exists()


async def test_the_database_itself_is_never_the_target(tmp_path: Path) -> None:
    source = tmp_path / "bot.sqlite3"
    async with Database(source):
        pass
    with pytest.raises(ConfigError, match="must not overwrite"):
        await backup_database(source, source)
