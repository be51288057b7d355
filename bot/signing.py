"""HMAC tokens for vendor webhooks and signed, expiring media links.

One secret key signs both, with a domain tag in every MAC so a webhook token can never pass
as a media signature (or the other way round).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from bot.errors import ConfigError

__all__ = ["Signer", "load_or_create_key"]

_log = logging.getLogger(__name__)

_WEBHOOK = b"imagine-bot/webhook/v1"
_MEDIA = b"imagine-bot/media/v1"
_KEY_BYTES = 32
_MIN_KEY_BYTES = 16


class Signer:
    """Makes and checks HMAC-SHA256 tokens over a secret key (never logged, never in repr)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the signing key must not be empty")
        self._key = key

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def _mac(self, domain: bytes, *parts: str) -> str:
        # NUL separators: no two different (name, expires) pairs share a message.
        message = domain + b"".join(b"\0" + p.encode() for p in parts)
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def webhook_token(self, job_id: str) -> str:
        """The `?token=` a vendor must send back with a callback about `job_id` (URL-safe)."""
        return self._mac(_WEBHOOK, job_id)

    def check_webhook_token(self, job_id: str, token: str | None) -> bool:
        """Whether `token` is the webhook token of `job_id` (constant-time)."""
        if not token:
            return False
        return hmac.compare_digest(self.webhook_token(job_id).encode(), token.encode())

    def sign_media(self, name: str, expires: int) -> str:
        """The signature of a media link to `name` (relative path) valid until `expires` (epoch s)."""
        return self._mac(_MEDIA, name, str(int(expires)))

    def check_media(self, name: str, expires: int, sig: str | None, now: float) -> bool:
        """Whether `sig` signs (`name`, `expires`) and the link has not expired at `now`."""
        if not sig or now > expires:
            return False
        return hmac.compare_digest(self.sign_media(name, expires).encode(), sig.encode())


def load_or_create_key(path: Path, configured: str | None) -> bytes:
    """The signing key: the configured secret, else the one in `path`, else a new random one
    written there with mode 0600. Raises `ConfigError` for an unreadable or too short key file.
    """
    if configured:
        if len(configured.encode()) < _MIN_KEY_BYTES:
            _log.warning("SECRET_KEY is shorter than %d bytes; use a longer random value", _MIN_KEY_BYTES)
        return configured.encode()
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return _create_key(path)
    except OSError as exc:
        raise ConfigError(f"SECRET_KEY: cannot read the key file {path}: {exc.strerror}") from None
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(
            f"SECRET_KEY: the key file {path} is damaged (too short); delete it or set SECRET_KEY"
        )
    return key


def _create_key(path: Path) -> bytes:
    key = secrets.token_bytes(_KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: if another process created the file first, use its key rather than ours.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_key(path, None)
    except OSError as exc:
        raise ConfigError(f"SECRET_KEY: cannot create the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    _log.info("created a new signing key in %s", path)
    return key
