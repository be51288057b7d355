"""The Dockerfile, docker-compose.yml, .env.example and README agree with the settings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PORT = Settings.model_fields["http_port"].default


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_dockerfile_uses_a_slim_base_and_a_non_root_user() -> None:
    text = _dockerfile()
    assert re.search(r"^FROM python:3\.1[1-9]-slim", text, re.M)
    assert re.search(r"^USER (?!root)\w+", text, re.M)


def test_dockerfile_entry_point_is_the_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    text = _dockerfile()
    assert 'ENTRYPOINT ["imagine-bot"]' in text and "imagine-bot" in scripts
    assert 'CMD ["run"]' in text


def test_dockerfile_port_data_dir_and_healthcheck_match_settings() -> None:
    text = _dockerfile()
    assert f"EXPOSE {PORT}" in text
    assert f"HTTP_PORT={PORT}" in text
    assert "DATA_DIR=/data" in text and 'VOLUME ["/data"]' in text
    assert f"127.0.0.1:{PORT}/readyz" in text


def test_compose_service_agrees_with_the_image() -> None:
    bot = _compose()["services"]["bot"]
    assert bot["env_file"] == ".env"
    assert bot["environment"]["DATA_DIR"] == "/data"
    assert str(bot["environment"]["HTTP_PORT"]) == str(PORT)
    assert f"{PORT}:{PORT}" in bot["ports"]
    assert any(v.endswith(":/data") for v in bot["volumes"])
    # readiness, not liveness: a bot whose gateway or database is gone is not healthy
    assert f"127.0.0.1:{PORT}/readyz" in " ".join(bot["healthcheck"]["test"])
    assert bot["command"] == ["run"]


def test_env_example_lists_every_setting_once() -> None:
    names = re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    expected = [n.upper() for n in Settings.model_fields]
    assert sorted(names) == sorted(expected)


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in readme]
    assert missing == []


def test_readme_quick_start_is_two_commands_demo_then_tests() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```sh\n(.*?)```", readme, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    assert "demo" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = commands[1].split("&&")[-1].strip().replace("python ", "python3 ")
    assert test_cmd.split(" -q")[0] in ci


def test_blank_env_values_mean_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_PATH", "")
    monkeypatch.setenv("SECRET_KEY", "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_path is None and settings.secret_key is None
