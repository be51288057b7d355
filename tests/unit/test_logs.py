"""Log lines: text by default, JSON on request, never a secret or a reply address."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.db import Database
from bot.logs import redact_urls, setup_logging

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQ"  # the shape of a Discord interaction token
KEY = "sk-novita-0123456789"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, novita_api_key=KEY, **values)  # type: ignore[arg-type]


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


async def test_sql_parameters_never_reach_the_log_even_at_debug(tmp_path: Path) -> None:
    stream = io.StringIO()
    settings = _settings(tmp_path, log_level="DEBUG")
    setup_logging(settings, stream=stream)
    async with Database(settings.db_path) as db, db.transaction() as conn:
        await conn.execute("SELECT ?", (json.dumps({"token": TOKEN}),))
    logging.getLogger("bot.test").debug("debug still works")
    assert TOKEN not in stream.getvalue()
    assert "debug still works" in stream.getvalue()


def test_text_is_the_default_format(tmp_path: Path) -> None:
    stream = io.StringIO()
    setup_logging(_settings(tmp_path), stream=stream)
    logging.getLogger("bot.engine").info("job done job=%s route=%s files=%d", "j1", "novita:hunyuan", 2)
    (line,) = _lines(stream)
    assert line.endswith("INFO bot.engine: job done job=j1 route=novita:hunyuan files=2")


def test_json_lines_carry_job_route_and_tenant_as_fields(tmp_path: Path) -> None:
    stream = io.StringIO()
    setup_logging(_settings(tmp_path, log_format="json"), stream=stream)
    log = logging.getLogger("bot.engine")
    log.info("job done job=%s route=%s files=%d", "j1", "novita:hunyuan", 2)
    log.info("grant tenant=%s user=%s amount=%d", "discord:1", "u1", 5)
    log.warning("refund", extra={"job": "j2", "tenant": "slack:T1"})
    first, second, third = (json.loads(line) for line in _lines(stream))
    assert first["message"] == "job done job=j1 route=novita:hunyuan files=2"
    assert (first["level"], first["logger"], first["job"], first["route"]) == (
        "INFO",
        "bot.engine",
        "j1",
        "novita:hunyuan",
    )
    assert first["ts"].endswith("+00:00")
    assert second["tenant"] == "discord:1" and "job" not in second
    assert (third["job"], third["tenant"]) == ("j2", "slack:T1")


def test_user_text_in_a_message_cannot_forge_a_field(tmp_path: Path) -> None:
    stream = io.StringIO()
    setup_logging(_settings(tmp_path, log_format="json"), stream=stream)
    logging.getLogger("bot").info("prompt %s job=%s", "a fox job=evil tenant=evil", "j1")
    (record,) = (json.loads(line) for line in _lines(stream))
    assert record["job"] == "j1" and "tenant" not in record


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configured_secrets_are_masked_in_messages_and_tracebacks(tmp_path: Path, fmt: str) -> None:
    stream = io.StringIO()
    setup_logging(_settings(tmp_path, log_format=fmt), stream=stream)
    log = logging.getLogger("providers.novita")
    log.info("calling with key %s", KEY)
    try:
        raise RuntimeError(f"refused key {KEY}")
    except RuntimeError:
        log.exception("vendor call failed")
    assert KEY not in stream.getvalue()
    assert stream.getvalue().count("***") >= 2
    if fmt == "json":
        assert all(json.loads(line) for line in _lines(stream))


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    "url",
    [
        f"https://discord.com/api/v10/webhooks/1234567890/{TOKEN}/messages/@original",
        f"https://discord.com/api/v10/interactions/1234567890/{TOKEN}/callback",
        f"https://hooks.slack.com/commands/T0001/1234/{TOKEN}",
    ],
)
def test_reply_addresses_in_library_warnings_are_masked(tmp_path: Path, fmt: str, url: str) -> None:
    stream = io.StringIO()
    setup_logging(_settings(tmp_path, log_format=fmt), stream=stream)
    # discord.py's own warning for a rate-limited request, at the default level
    logging.getLogger("discord.http").warning(
        "We are being rate limited. %s %s responded with 429. Retrying in %.2f seconds.", "PATCH", url, 0.5
    )
    text = stream.getvalue()
    assert TOKEN not in text
    assert "responded with 429" in text


def test_our_own_vendor_webhook_paths_are_left_readable(tmp_path: Path) -> None:
    stream = io.StringIO()
    setup_logging(_settings(tmp_path), stream=stream)
    logging.getLogger("aiohttp.access").warning('127.0.0.1 "POST /webhooks/novita/job-1" 200 0.001s')
    assert "/webhooks/novita/job-1" in stream.getvalue()


def test_redact_urls_keeps_where_but_drops_credentials() -> None:
    text = (
        "status: 403, body: <Error>https://files.slack.com/upload/v1/CwABAAAXg?X-Amz-Signature=abc"
        "</Error> via http://user:pw@127.0.0.1:8080/upload/F1?sig=2#frag token xoxb-1-2-secret"
    )

    out = redact_urls(text)

    assert out == (
        "status: 403, body: <Error>https://files.slack.com/upload/v1/***</Error>"
        " via http://127.0.0.1:8080/upload/F1 token xoxb-***"
    )
