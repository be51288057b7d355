"""One bot per database: an exclusive `flock` on a lock file next to the SQLite file.

Two processes following the same jobs would poll, deliver and settle them twice, so `run`,
`demo` and `jobs resume` hold the lock for their whole life. The kernel drops it when the
process dies (even by SIGKILL), so a crash never leaves a stale lock behind. Read-only and
ledger commands (`credits`, `jobs list`) do not take it and work next to a running bot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO, Self

from bot.errors import ConfigError

__all__ = ["InstanceLock", "lock_path"]


def lock_path(db_path: Path) -> Path:
    """`imagine-bot.sqlite3` → `imagine-bot.sqlite3.lock`, in the same directory."""
    return db_path.with_name(db_path.name + ".lock")


class InstanceLock:
    """Held while a process follows jobs. `acquire()` raises ConfigError (one line naming the
    database and the holder's pid) when another process holds it. A sync context manager:
    flock with LOCK_NB never blocks."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConfigError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(
                f"another imagine-bot (pid {holder}) is already running on {self.db_path}; "
                "stop it first (one bot per database)"
            ) from None
        except BaseException:
            f.close()
            raise
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock right now (this one does not take it)."""
        if self._file is not None or not self.path.exists():
            return False
        with self.path.open("a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        """Drop the lock; idempotent. The file stays (removing it would race a new holder)."""
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
