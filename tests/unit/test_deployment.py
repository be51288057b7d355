"""The Dockerfile, docker-compose.yml (one process), docker-compose.scale.yml (PostgreSQL and
several replicas), .env.example and README agree with the settings. Docker does not run here:
these are static checks of what compose would be given."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from bot.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PORT = Settings.model_fields["http_port"].default


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _compose(name: str = "docker-compose.yml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


SCALE = "docker-compose.scale.yml"
#: compose's ${VAR}, ${VAR:?message}, ${VAR:-default} interpolation
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def _interpolate(value: object, env: dict[str, str]) -> str:
    return _INTERPOLATION.sub(lambda m: env[m.group(1)], str(value))


def _replicas(compose: dict) -> dict[str, dict]:
    """The services that run the bot (built from this repository)."""
    return {name: svc for name, svc in compose["services"].items() if svc.get("build") == "."}


def _volume(service: dict, target: str) -> str | None:
    """The named volume `service` mounts at `target`."""
    for spec in service.get("volumes", []):
        source, _, mounted = spec.partition(":")
        if mounted.split(":")[0] == target:
            return source
    return None


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


@pytest.mark.parametrize("name", ["docker-compose.yml", SCALE])
def test_every_env_var_compose_gives_the_bot_is_a_setting(name: str) -> None:
    known = {n.upper() for n in Settings.model_fields}
    for service, svc in _replicas(_compose(name)).items():
        unknown = sorted(set(svc["environment"]) - known)
        assert unknown == [], f"{name}:{service} sets {unknown}, which Settings does not read"


def test_scale_compose_starts_postgresql_15_with_a_healthcheck() -> None:
    pg = _compose(SCALE)["services"]["postgres"]
    assert re.fullmatch(r"postgres:15(\.\d+)?(-\w+)?", pg["image"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")  # never a literal
    assert _volume(pg, "/var/lib/postgresql/data") in _compose(SCALE)["volumes"]


def test_scale_compose_runs_two_replicas_that_wait_for_a_healthy_database() -> None:
    replicas = _replicas(_compose(SCALE))
    assert len(replicas) >= 2
    for svc in replicas.values():
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert svc["command"] == ["run"] and svc["env_file"] == ".env"
        assert f"127.0.0.1:{PORT}/readyz" in " ".join(svc["healthcheck"]["test"])
    host_ports = [p.split(":")[0] for svc in replicas.values() for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))  # no two replicas on one host port


def test_scale_compose_replicas_share_database_key_and_media_but_not_data_dirs() -> None:
    compose = _compose(SCALE)
    replicas = _replicas(compose).values()
    pg_env = compose["services"]["postgres"]["environment"]
    for key in ("DATABASE_URL", "SECRET_KEY", "MEDIA_ROOT", "DISCORD_SHARD_COUNT"):
        assert len({str(svc["environment"][key]) for svc in replicas}) == 1, key
    first = next(iter(replicas))["environment"]
    url = _interpolate(first["DATABASE_URL"], {"POSTGRES_PASSWORD": "pw"})
    assert url == f"postgresql://{pg_env['POSTGRES_USER']}:pw@postgres:5432/{pg_env['POSTGRES_DB']}"
    assert first["SECRET_KEY"].startswith("${SECRET_KEY:?")  # from the environment, required
    media = {_volume(svc, first["MEDIA_ROOT"]) for svc in replicas}
    assert len(media) == 1 and None not in media and media <= set(compose["volumes"])
    data = [_volume(svc, svc["environment"]["DATA_DIR"]) for svc in replicas]
    assert None not in data and len(set(data)) == len(data)  # each its own (SQLite-free) data dir
    assert set(data) <= set(compose["volumes"])


def test_scale_compose_replicas_split_the_shards_exactly() -> None:
    envs = [svc["environment"] for svc in _replicas(_compose(SCALE)).values()]
    count = int(envs[0]["DISCORD_SHARD_COUNT"])
    ids = [int(i) for env in envs for i in str(env["DISCORD_SHARD_IDS"]).split(",")]
    assert sorted(ids) == list(range(count))  # every shard run once, by one replica


def test_scale_compose_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"POSTGRES_PASSWORD": "0123abcd", "SECRET_KEY": "f" * 64}
    for svc in _replicas(_compose(SCALE)).values():
        for key in [k for k in os.environ if k.upper() in {n.upper() for n in Settings.model_fields}]:
            monkeypatch.delenv(key)
        for key, value in svc["environment"].items():
            monkeypatch.setenv(key, _interpolate(value, env))
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.database_kind == "postgresql" and settings.files_dir == Path("/media")
        assert settings.discord_sharded and settings.http_port == PORT


def test_the_image_has_a_media_directory_the_bot_user_owns() -> None:
    # A named volume mounted at /media starts as a copy of the image's directory (and its owner).
    text = _dockerfile()
    assert re.search(r"mkdir -p [^\n]*/media", text) and re.search(r"chown imagine [^\n]*/media", text)


def test_readme_documents_scaling_out_next_to_the_single_process_setup() -> None:
    readme = (ROOT / "README.md").read_text()
    deployment, scaling = readme.index("## Deployment"), readme.index("## Scaling out")
    assert deployment < scaling
    section = readme[scaling : readme.index("\n## ", scaling + 1)]
    assert f"docker compose -f {SCALE} up -d" in section
    for name in ("DATABASE_URL", "SECRET_KEY", "MEDIA_ROOT", "DISCORD_SHARD_COUNT", "DISCORD_SHARD_IDS"):
        assert f"`{name}" in section, name
