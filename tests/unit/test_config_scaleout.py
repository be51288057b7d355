"""The scale-out settings: DATABASE_URL (SQLite or PostgreSQL), MEDIA_ROOT, SECRET_KEY required
with PostgreSQL, and the Discord shard settings; each problem is one line naming its env var."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.cli import main
from bot.config import Settings, settings_problems
from bot.errors import ConfigError

PG = "postgresql://bot:hunter2-secret@db.internal:5432/imagine"
KEY = "k" * 32


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def _problems(**values: object) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        _settings(**values)
    return settings_problems(caught.value)


# --- DATABASE_URL ------------------------------------------------------------------------------


def test_the_default_database_is_the_embedded_sqlite_file() -> None:
    s = _settings(data_dir=Path("/srv/bot"))
    assert s.database_kind == "sqlite" and s.postgres_url is None
    assert s.db_path == Path("/srv/bot/imagine-bot.sqlite3")


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///db/bot.sqlite3", Path("db/bot.sqlite3")),
        ("sqlite:////var/lib/bot.db", Path("/var/lib/bot.db")),
    ],
)
def test_a_sqlite_url_names_the_file(url: str, path: Path) -> None:
    s = _settings(database_url=url)
    assert s.database_kind == "sqlite" and s.db_path == path


def test_database_path_keeps_working() -> None:
    assert _settings(database_path=Path("/x/old.sqlite3")).db_path == Path("/x/old.sqlite3")


def test_database_path_and_database_url_together_are_refused() -> None:
    (line,) = _problems(database_path=Path("a.db"), database_url="sqlite:///b.db")
    assert "DATABASE_PATH" in line and "DATABASE_URL" in line


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgresql_url_selects_postgresql(scheme: str) -> None:
    url = PG.replace("postgresql", scheme, 1)
    s = _settings(database_url=url, secret_key=KEY)
    assert s.database_kind == "postgresql" and s.postgres_url == url
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())  # a SecretStr
    with pytest.raises(ConfigError):
        _ = s.db_path  # no SQLite file to hand to SQLite-only code


@pytest.mark.parametrize(
    "url", ["mysql://bot:hunter2@db/imagine", "sqlite:///", "postgresql://", "/tmp/x.db"]
)
def test_a_bad_database_url_is_one_line_that_never_echoes_it(url: str) -> None:
    (line,) = _problems(database_url=url)
    assert line.startswith("setting DATABASE_URL is invalid")
    assert "hunter2" not in line and "(got" not in line  # a SecretStr: its value is never shown


# --- SECRET_KEY with PostgreSQL ----------------------------------------------------------------


def test_postgresql_without_a_secret_key_is_refused_naming_it() -> None:
    (line,) = _problems(database_url=PG)
    assert line.startswith("setting SECRET_KEY must be set") and "DATABASE_URL" in line
    assert "hunter2" not in line


def test_postgresql_refuses_a_short_secret_key() -> None:
    (line,) = _problems(database_url=PG, secret_key="short")
    assert "SECRET_KEY" in line and "short" not in line.split(":", 1)[0]


def test_sqlite_still_generates_the_key_when_none_is_set() -> None:
    assert _settings().secret_key is None  # bot/signing.py keeps one in DATA_DIR/secret.key


def test_run_on_postgresql_without_a_secret_key_stops_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setenv("DATABASE_URL", PG)
    monkeypatch.setenv("DISCORD_TOKEN", "x")
    assert main(["run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SECRET_KEY" in err[0] and "hunter2" not in err[0]


# --- MEDIA_ROOT --------------------------------------------------------------------------------


def test_media_root_defaults_under_the_data_dir() -> None:
    assert _settings(data_dir=Path("/d")).files_dir == Path("/d/output")


def test_media_root_sets_where_files_live(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIA_ROOT", "/shared/media")
    assert _settings().files_dir == Path("/shared/media")


def test_output_dir_still_works_as_the_old_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUT_DIR", "/old/output")
    assert _settings().files_dir == Path("/old/output")


# --- Discord shards ----------------------------------------------------------------------------


def test_no_shard_settings_means_unsharded() -> None:
    s = _settings()
    assert not s.discord_sharded and s.discord_shard_id_list is None


def test_shard_ids_are_a_comma_list_below_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_SHARD_COUNT", "4")
    monkeypatch.setenv("DISCORD_SHARD_IDS", " 2, 3 ")
    s = _settings()
    assert s.discord_sharded and s.discord_shard_count == 4 and s.discord_shard_id_list == [2, 3]


def test_shard_count_alone_runs_every_shard() -> None:
    s = _settings(discord_shard_count=2)
    assert s.discord_sharded and s.discord_shard_id_list is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"discord_shard_ids": "0"}, "DISCORD_SHARD_COUNT"),
        ({"discord_shard_ids": "0", "discord_shard_count": 0}, "DISCORD_SHARD_COUNT"),
        ({"discord_shard_ids": "0,2", "discord_shard_count": 2}, "DISCORD_SHARD_IDS"),
        ({"discord_shard_ids": "0,0", "discord_shard_count": 2}, "DISCORD_SHARD_IDS"),
        ({"discord_shard_ids": "one", "discord_shard_count": 2}, "DISCORD_SHARD_IDS"),
        ({"discord_shard_ids": "-1", "discord_shard_count": 2}, "DISCORD_SHARD_IDS"),
        ({"discord_shard_count": -1}, "DISCORD_SHARD_COUNT"),
    ],
)
def test_inconsistent_shard_settings_are_one_line_naming_them(values: dict[str, object], named: str) -> None:
    (line,) = _problems(**values)
    assert named in line and "\n" not in line
