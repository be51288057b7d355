"""Logging setup: text (the default) or one JSON object per line, secrets masked in both.

JSON lines carry `job`, `route` and `tenant` as fields. They come from `extra={"job": …}` when a
call passes it, else from the `job=%s route=%s tenant=%s` pairs the code already writes into its
format strings: only the literal format string is read (values come from the call's arguments),
so user text inside a message can never forge a field, and every existing log call is structured
without being rewritten.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from bot.config import Settings

__all__ = ["FIELDS", "JsonFormatter", "TextFormatter", "redact_urls", "secrets_of", "setup_logging"]

#: the structured fields a JSON line may carry
FIELDS = ("job", "route", "tenant")

#: library loggers that write interaction tokens, response URLs or SQL parameters (reply
#: addresses) below INFO; they stay at INFO or above whatever LOG_LEVEL says
_LEAKY_BELOW_INFO = (
    "discord.http",
    "discord.webhook.async_",
    "slack_sdk",
    "adapters.slack_app.web",  # the Slack Web API client's logger: request bodies and headers
    "adapters.slack_app.bolt",  # bolt's logger: whole request payloads, response_url included
)
#: aiosqlite logs every statement with its parameters at DEBUG (reply_ref JSON holds tokens)
_LEAKY_BELOW_WARNING = ("aiosqlite",)
_NOISY = ("aiohttp.access", "discord.gateway", "discord.client", "slack_bolt")

# one %-placeholder (or a literal %%), as logging's %-formatting reads them
_PLACEHOLDER = re.compile(
    r"%(?:%|(?:\([^)]*\))?[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa])"
)
_KEY_BEFORE = re.compile(r"(\w+)=$")


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret's value (SecretStr settings)."""
    out = []
    for value in settings.__dict__.values():
        if value is not None and hasattr(value, "get_secret_value"):
            out.append(str(value.get_secret_value()))
    return out


#: reply addresses inside URLs: Discord interaction tokens (discord.http logs the URL of a
#: rate-limited request at WARNING) and Slack response URLs; each is a credential for its reply
_REPLY_ADDRESSES = (
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+"), r"\1***"),
    (re.compile(r"(https://hooks\.slack\.com/(?:commands|actions|services)/)[^\s'\"]+"), r"\1***"),
    # Slack's presigned file upload URLs (files.getUploadURLExternal): the path is the ticket
    (re.compile(r"(https://files\.slack\.com/upload/v\d+/)[^\s'\"<>?#]+"), r"\1***"),
)
#: a URL inside free text (an exception message, a response body quoted in one)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
#: Slack tokens (bot, user, app-level, refresh, config) by their shape
_SLACK_TOKEN = re.compile(r"\b(xox[a-z]|xapp)-[A-Za-z0-9-]+")


def redact_urls(text: str) -> str:
    """`text` with every URL cut to scheme, host and path (query, fragment and user info
    dropped), reply addresses and upload tickets masked, and Slack tokens masked.

    For text the code logs that came from elsewhere (exception messages quoting a request URL
    or a response body), whose secrets are not all configured settings.
    """
    text = _URL.sub(_without_query, text)
    for pattern, masked in _REPLY_ADDRESSES:
        text = pattern.sub(masked, text)
    return _SLACK_TOKEN.sub(r"\1-***", text)


def _without_query(match: re.Match[str]) -> str:
    url = match.group()
    scheme, _, rest = url.partition("://")
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


class _Redactor:
    """Masks configured secrets (6 characters or longer) and reply addresses in a line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        for pattern, masked in _REPLY_ADDRESSES:
            text = pattern.sub(masked, text)
        return text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, secrets masked (tracebacks included)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The text line."""
        return self._redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, job/route/tenant, exc."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line."""
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps({k: self._redact(v) if isinstance(v, str) else v for k, v in out.items()})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(record.msg, str) and isinstance(record.args, tuple) and "=" in record.msg:
        position = 0
        for match in _PLACEHOLDER.finditer(record.msg):
            if match.group() == "%%":
                continue
            key = _KEY_BEFORE.search(record.msg, 0, match.start())
            if key and key.group(1) in FIELDS and position < len(record.args):
                found[key.group(1)] = str(record.args[position])
            position += 1
    for name in FIELDS:  # extra= wins over the message
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = str(value)
    return found


def setup_logging(settings: Settings, level: str | None = None, *, stream: TextIO | None = None) -> None:
    """Route every log record to stderr (or `stream`) in LOG_FORMAT, at `level` or LOG_LEVEL."""
    handler = logging.StreamHandler(stream or sys.stderr)
    secrets = secrets_of(settings)
    handler.setFormatter(JsonFormatter(secrets) if settings.log_format == "json" else TextFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or settings.log_level).upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for leaky in _LEAKY_BELOW_INFO:
        logging.getLogger(leaky).setLevel(max(logging.INFO, root.level))
    for leaky in _LEAKY_BELOW_WARNING:
        logging.getLogger(leaky).setLevel(max(logging.WARNING, root.level))
