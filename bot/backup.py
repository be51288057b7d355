"""`imagine-bot db backup PATH`: a consistent copy of the live database, taken while the bot runs.

SQLite's online backup API copies every page under one read transaction on its own connection;
in WAL mode readers never block the bot's writers, so the bot keeps working meanwhile. The copy
is written next to its target and renamed into place, so a half-written backup never carries
the target's name, and it is switched to a rollback journal so it is one self-contained file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
from pathlib import Path

from bot.errors import ConfigError

__all__ = ["backup_database"]


async def backup_database(source: Path, target: Path) -> Path:
    """Back `source` up to `target` (a file, or a directory to hold a timestamped file);
    returns the file written. ConfigError when the source is missing or unreadable."""
    return await asyncio.to_thread(_backup, source, target)


def _backup(source: Path, target: Path) -> Path:
    if not source.is_file():
        raise ConfigError(f"no database at {source} (check DATA_DIR / DATABASE_PATH)")
    if target.is_dir():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = target / f"{source.stem}-{stamp}{source.suffix}"
    if target.resolve() == source.resolve():
        raise ConfigError("the backup must not overwrite the database itself")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the database {source}: {exc}") from None
    done = False
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            (verdict,) = dst.execute("PRAGMA quick_check").fetchone()
        finally:
            dst.close()
        if verdict != "ok":
            raise ConfigError(f"the backup failed its integrity check: {verdict}")
        os.replace(partial, target)
        done = True
    except sqlite3.Error as exc:
        raise ConfigError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
        if not done:
            partial.unlink(missing_ok=True)
    return target
