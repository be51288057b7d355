"""The bot's one HTTP server: liveness and readiness, metrics, vendor webhooks, signed media
links, and any route an adapter mounts (Slack's request URL).

Webhook tokens and media signatures travel in query strings, so the access log records paths
only, never queries.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Self

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from bot.errors import ConfigError
from bot.metrics import Metrics
from bot.signing import Signer

__all__ = ["MAX_BODY_BYTES", "HealthCheck", "WebServer", "WebhookHandler"]

_log = logging.getLogger(__name__)

MAX_BODY_BYTES = 5 * 1024 * 1024

HealthCheck = Callable[[], Awaitable[Mapping[str, Any]]]
#: (vendor, job id, raw body, headers); raises LookupError for an unknown job
WebhookHandler = Callable[[str, str, bytes, Mapping[str, str]], Awaitable[None]]

_CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".glb": "model/gltf-binary",
}


class _PathOnlyAccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3fs', request.remote, request.method, request.path, response.status, time
        )


class WebServer:
    """aiohttp server on `host:port` (port 0 picks a free one); an async context manager.

    `port` and `base_url` are valid once started. Routes from `add_route` must be added
    before start.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        signer: Signer,
        metrics: Metrics,
        files_dir: Path,
        health: HealthCheck | None = None,
        readiness: HealthCheck | None = None,
        on_webhook: WebhookHandler | None = None,
        vendors: Collection[str] = (),
        metrics_token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        clock: Callable[[], float] = time.time,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self._signer = signer
        self._metrics = metrics
        self._files_dir = Path(os.path.abspath(files_dir))
        self._health = health
        self._readiness = readiness
        self._on_webhook = on_webhook
        self._vendors = frozenset(vendors)
        self._metrics_token = metrics_token
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        # client_max_size caps every body read (webhooks, Slack events): 413 beyond it.
        self._app = web.Application(client_max_size=max_body_bytes)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        self._app.router.add_get("/metrics", self._metrics_page)
        self._app.router.add_post("/webhooks/{vendor}/{job_id}", self._webhook)
        self._app.router.add_get("/media/{name:.*}", self._media)

    def add_route(
        self, method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> None:
        """Mount another route (e.g. `POST /slack/events`); only before the server starts."""
        if self._runner is not None:
            raise RuntimeError("routes must be added before the web server starts")
        self._app.router.add_route(method, path, handler)

    @property
    def port(self) -> int:
        """The port actually bound (after start)."""
        if self._runner is None:
            raise RuntimeError("the web server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`http://host:port` to reach the server locally (wildcard binds map to loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._host, self._host)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve. Raises `ConfigError` when the address cannot be bound."""
        runner = web.AppRunner(
            self._app, access_log_class=_PathOnlyAccessLogger, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"HTTP_HOST/HTTP_PORT: cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        _log.info("http server listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handlers --------------------------------------------------------------------------

    async def _healthz(self, _request: web.Request) -> web.Response:
        return await _answer("health", self._health)

    async def _readyz(self, _request: web.Request) -> web.Response:
        return await _answer("readiness", self._readiness)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        if self._metrics_token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._metrics_token}".encode()):
                return web.Response(
                    status=401, text="bearer token required\n", headers={"WWW-Authenticate": "Bearer"}
                )
        body, content_type = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _webhook(self, request: web.Request) -> web.Response:
        vendor = request.match_info["vendor"]
        job_id = request.match_info["job_id"]
        if vendor not in self._vendors:
            # Before any metric: a caller-chosen vendor name must never become a label.
            return _json({"ok": False, "error": "unknown vendor"}, status=404)
        if not self._signer.check_webhook_token(job_id, request.query.get("token")):
            self._metrics.webhooks_total.labels(vendor=vendor, outcome="forbidden").inc()
            _log.warning("webhook refused (bad token) vendor=%s job=%s", vendor, job_id[:64])
            return _json({"ok": False, "error": "forbidden"}, status=403)
        body = await request.read()
        if self._on_webhook is None:
            return _json({"ok": False, "error": "unknown job"}, status=404)
        try:
            await self._on_webhook(vendor, job_id, body, request.headers)
        except LookupError:
            self._metrics.webhooks_total.labels(vendor=vendor, outcome="unknown_job").inc()
            return _json({"ok": False, "error": "unknown job"}, status=404)
        except Exception:
            self._metrics.webhooks_total.labels(vendor=vendor, outcome="error").inc()
            _log.exception("webhook handler failed vendor=%s job=%s", vendor, job_id)
            return _json({"ok": False, "error": "internal error"}, status=500)
        return _json({"ok": True})

    async def _media(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not _is_plain_relative(name):
            return _forbidden()
        try:
            expires = int(request.query.get("exp", ""))
        except ValueError:
            return _forbidden()
        if not self._signer.check_media(name, expires, request.query.get("sig"), self._clock()):
            return _forbidden()
        path = await asyncio.to_thread(_resolve_under, self._files_dir, name)
        if path is None:
            return _forbidden()
        if not path.is_file():
            return _json({"ok": False, "error": "not found"}, status=404)
        content_type = (
            _CONTENT_TYPES.get(path.suffix.lower())
            or mimetypes.guess_type(path.name)[0]
            or "application/octet-stream"
        )
        return web.FileResponse(
            path,
            headers={
                "Content-Type": content_type,
                "Cache-Control": "private, max-age=300",
                "X-Content-Type-Options": "nosniff",
            },
        )


async def _answer(what: str, check: HealthCheck | None) -> web.Response:
    # 200 when the check says ok, 503 otherwise (or when the check itself fails)
    if check is None:
        return _json({"ok": True})
    try:
        data = dict(await check())
    except Exception:
        _log.exception("%s check failed", what)
        return _json({"ok": False, "error": f"{what} check failed"}, status=503)
    data.setdefault("ok", True)
    return _json(data, status=200 if data["ok"] else 503)


def _json(data: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _forbidden() -> web.Response:
    return _json({"ok": False, "error": "forbidden"}, status=403)


def _is_plain_relative(name: str) -> bool:
    if not name or "\0" in name or "\\" in name:
        return False
    pure = PurePosixPath(name)
    return not pure.is_absolute() and all(part not in ("", ".", "..") for part in name.split("/"))


def _resolve_under(root: Path, name: str) -> Path | None:
    # realpath on both sides: a symlink inside files_dir must not lead out of it.
    real_root = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root / name))
    return target if target.is_relative_to(real_root) and target != real_root else None
