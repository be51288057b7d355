"""The one HTTP server, exercised with a real aiohttp client on 127.0.0.1."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from bot.errors import ConfigError
from bot.metrics import Metrics
from bot.signing import Signer
from bot.web import WebServer

KEY = b"web-test-key-0123456789abcdef012"
NOW = 1_700_000_000.0


@dataclass
class Calls:
    """What the injected webhook handler saw, and what it should do next."""

    seen: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    raise_: BaseException | None = None

    async def __call__(self, vendor: str, job_id: str, body: bytes, headers: Mapping[str, str]) -> None:
        self.seen.append((vendor, job_id, body, dict(headers)))
        if self.raise_ is not None:
            raise self.raise_


@dataclass
class Health:
    """An injectable health check."""

    answer: dict[str, Any] = field(default_factory=lambda: {"ok": True, "queued": 3})

    async def __call__(self) -> dict[str, Any]:
        return self.answer


METRICS_TOKEN = "metrics-token-0123456789"


@dataclass
class Env:
    server: WebServer
    client: aiohttp.ClientSession
    signer: Signer
    calls: Calls
    health: Health
    ready: Health
    files: Path
    metrics: Metrics

    def url(self, path: str) -> str:
        return self.server.base_url + path

    def media_url(self, name: str, expires: int) -> str:
        return self.url(f"/media/{name}?exp={expires}&sig={self.signer.sign_media(name, expires)}")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    files = tmp_path / "output"
    (files / "jobs" / "j1").mkdir(parents=True)
    (files / "jobs" / "j1" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (files / "jobs" / "j1" / "m.glb").write_bytes(b"glTF\x02\0\0\0")
    (tmp_path / "secret.key").write_bytes(b"do not serve me")
    signer, calls, health, metrics = Signer(KEY), Calls(), Health(), Metrics()
    ready = Health({"ok": True, "platforms": {"discord": "connected"}})
    server = WebServer(
        host="127.0.0.1",
        port=0,
        signer=signer,
        metrics=metrics,
        files_dir=files,
        health=health,
        readiness=ready,
        on_webhook=calls,
        vendors=("novita", "runware"),
        clock=lambda: NOW,
    )

    async def slack(_request: web.Request) -> web.Response:
        return web.Response(text="slack ok")

    server.add_route("POST", "/slack/events", slack)
    async with server, aiohttp.ClientSession() as client:
        yield Env(server, client, signer, calls, health, ready, files, metrics)


async def test_healthz_answers_the_injected_health(env: Env) -> None:
    async with env.client.get(env.url("/healthz")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True, "queued": 3}


async def test_healthz_is_503_when_not_ok(env: Env) -> None:
    env.health.answer = {"ok": False, "reason": "db"}
    async with env.client.get(env.url("/healthz")) as resp:
        assert resp.status == 503
        assert (await resp.json())["ok"] is False


async def test_readyz_answers_the_injected_readiness(env: Env) -> None:
    async with env.client.get(env.url("/readyz")) as resp:
        assert resp.status == 200
        assert (await resp.json())["platforms"] == {"discord": "connected"}


async def test_readyz_is_503_when_not_ready_while_healthz_stays_200(env: Env) -> None:
    env.ready.answer = {"ok": False, "platforms": {"discord": "disconnected for 90s"}}
    async with env.client.get(env.url("/readyz")) as resp:
        assert resp.status == 503
    async with env.client.get(env.url("/healthz")) as resp:
        assert resp.status == 200


async def test_metrics_page_lists_every_metric(env: Env) -> None:
    env.metrics.jobs_total.labels(kind="image", state="done").inc()
    env.metrics.vendor_latency_seconds.labels(vendor="novita").observe(1.5)
    async with env.client.get(env.url("/metrics")) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    for name in (
        "imagine_jobs_total",
        "imagine_jobs_in_state",
        "imagine_vendor_latency_seconds_bucket",
        "imagine_vendor_requests_total",
        "imagine_failovers_total",
        "imagine_credits_spent_total",
        "imagine_queue_depth",
        "imagine_breaker_open",
        "imagine_webhooks_total",
    ):
        assert name in text
    assert 'imagine_jobs_total{kind="image",state="done"} 1.0' in text


async def test_webhook_with_the_right_token_reaches_the_handler(env: Env) -> None:
    token = env.signer.webhook_token("job-1")
    async with env.client.post(
        env.url(f"/webhooks/novita/job-1?token={token}"), data=b'{"task":1}', headers={"X-Sig": "v"}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
    [(vendor, job_id, body, headers)] = env.calls.seen
    assert (vendor, job_id, body) == ("novita", "job-1", b'{"task":1}')
    assert headers["X-Sig"] == "v"


@pytest.mark.parametrize("query", ["", "?token=", "?token=wrong"])
async def test_webhook_without_the_right_token_is_403_and_calls_nothing(env: Env, query: str) -> None:
    async with env.client.post(env.url(f"/webhooks/novita/job-1{query}"), data=b"{}") as resp:
        assert resp.status == 403
    assert env.calls.seen == []


async def test_webhook_token_of_another_job_is_403(env: Env) -> None:
    token = env.signer.webhook_token("job-2")
    async with env.client.post(env.url(f"/webhooks/novita/job-1?token={token}"), data=b"{}") as resp:
        assert resp.status == 403
    assert env.calls.seen == []


async def test_duplicate_webhook_deliveries_are_both_accepted(env: Env) -> None:
    url = env.url(f"/webhooks/runware/job-1?token={env.signer.webhook_token('job-1')}")
    for _ in range(2):
        async with env.client.post(url, data=b"same") as resp:
            assert resp.status == 200
    assert [c[2] for c in env.calls.seen] == [b"same", b"same"]


async def test_webhook_for_an_unknown_job_is_404(env: Env) -> None:
    env.calls.raise_ = LookupError("job-1")
    url = env.url(f"/webhooks/novita/job-1?token={env.signer.webhook_token('job-1')}")
    async with env.client.post(url, data=b"{}") as resp:
        assert resp.status == 404


async def test_webhook_handler_crash_is_500_so_the_vendor_retries(env: Env) -> None:
    env.calls.raise_ = RuntimeError("boom")
    url = env.url(f"/webhooks/novita/job-1?token={env.signer.webhook_token('job-1')}")
    async with env.client.post(url, data=b"{}") as resp:
        assert resp.status == 500


async def test_webhook_for_an_unknown_vendor_is_404_before_any_metric(env: Env) -> None:
    env.calls.raise_ = LookupError("job-1")
    url = env.url(f"/webhooks/made-up-vendor/job-1?token={env.signer.webhook_token('job-1')}")
    async with env.client.post(url, data=b"{}") as resp:
        assert resp.status == 404
    async with env.client.post(env.url("/webhooks/other-made-up/job-1?token=bad"), data=b"{}") as resp:
        assert resp.status == 404
    assert env.calls.seen == []
    async with env.client.get(env.url("/metrics")) as resp:
        text = await resp.text()
    assert "made-up" not in text


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[WebServer, aiohttp.ClientSession]]:
    """A server whose /metrics needs METRICS_TOKEN as a bearer token."""
    server = WebServer(signer=Signer(KEY), metrics=Metrics(), files_dir=tmp_path, metrics_token=METRICS_TOKEN)
    async with server, aiohttp.ClientSession() as client:
        yield server, client


@pytest.mark.parametrize("auth", [None, "Bearer wrong", METRICS_TOKEN, f"Basic {METRICS_TOKEN}"])
async def test_metrics_with_a_token_set_refuses_a_missing_or_wrong_bearer(
    guarded: tuple[WebServer, aiohttp.ClientSession], auth: str | None
) -> None:
    server, client = guarded
    headers = {"Authorization": auth} if auth else {}
    async with client.get(server.base_url + "/metrics", headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert "imagine_" not in await resp.text()


async def test_metrics_with_a_token_set_serves_the_right_bearer(
    guarded: tuple[WebServer, aiohttp.ClientSession],
) -> None:
    server, client = guarded
    async with client.get(
        server.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ) as resp:
        assert resp.status == 200
        assert "imagine_jobs_total" in await resp.text()


async def test_webhook_body_over_5_mib_is_refused(env: Env) -> None:
    url = env.url(f"/webhooks/novita/job-1?token={env.signer.webhook_token('job-1')}")
    async with env.client.post(url, data=io.BytesIO(b"x" * (5 * 1024 * 1024 + 1))) as resp:
        assert resp.status == 413
    assert env.calls.seen == []


async def test_valid_media_link_serves_the_file_with_its_type(env: Env) -> None:
    async with env.client.get(env.media_url("jobs/j1/a.png", int(NOW) + 60)) as resp:
        assert resp.status == 200
        assert resp.content_type == "image/png"
        assert await resp.read() == b"\x89PNG\r\n\x1a\nfake"


async def test_glb_is_served_as_a_gltf_model(env: Env) -> None:
    async with env.client.get(env.media_url("jobs/j1/m.glb", int(NOW) + 60)) as resp:
        assert resp.status == 200
        assert resp.content_type == "model/gltf-binary"


async def test_expired_media_link_is_403(env: Env) -> None:
    async with env.client.get(env.media_url("jobs/j1/a.png", int(NOW) - 1)) as resp:
        assert resp.status == 403


async def test_tampered_media_link_is_403(env: Env) -> None:
    expires = int(NOW) + 60
    sig = env.signer.sign_media("jobs/j1/a.png", expires)
    for path in (
        f"/media/jobs/j1/m.glb?exp={expires}&sig={sig}",  # another file
        f"/media/jobs/j1/a.png?exp={expires + 1}&sig={sig}",  # extended expiry
        f"/media/jobs/j1/a.png?exp={expires}&sig={sig[:-2]}xx",  # altered signature
        f"/media/jobs/j1/a.png?exp=soon&sig={sig}",
        "/media/jobs/j1/a.png",
    ):
        async with env.client.get(env.url(path)) as resp:
            assert resp.status == 403, path


async def test_media_link_to_a_missing_file_is_404(env: Env) -> None:
    async with env.client.get(env.media_url("jobs/j1/gone.png", int(NOW) + 60)) as resp:
        assert resp.status == 404


@pytest.mark.parametrize(
    "name", ["../secret.key", "jobs/../../secret.key", "%2E%2E/secret.key", "..%2Fsecret.key"]
)
async def test_media_path_traversal_is_refused_even_when_signed(env: Env, name: str) -> None:
    expires = int(NOW) + 60
    decoded = name.replace("%2E", ".")
    sig = env.signer.sign_media(decoded, expires)
    url = URL(f"{env.server.base_url}/media/{name}?exp={expires}&sig={sig}", encoded=True)
    async with env.client.get(url) as resp:
        assert resp.status == 403
        assert b"do not serve me" not in await resp.read()


async def test_symlink_out_of_the_files_dir_is_refused(env: Env) -> None:
    (env.files / "escape.key").symlink_to(env.files.parent / "secret.key")
    async with env.client.get(env.media_url("escape.key", int(NOW) + 60)) as resp:
        assert resp.status == 403


async def test_adapter_routes_are_mounted(env: Env) -> None:
    async with env.client.post(env.url("/slack/events"), data=b"{}") as resp:
        assert resp.status == 200
        assert await resp.text() == "slack ok"


async def test_routes_cannot_be_added_after_start(env: Env) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(RuntimeError):
        env.server.add_route("GET", "/late", handler)


async def test_port_zero_binds_a_free_port(env: Env) -> None:
    assert env.server.port > 0
    assert env.server.base_url == f"http://127.0.0.1:{env.server.port}"


async def test_a_taken_port_is_a_config_error(env: Env, tmp_path: Path) -> None:
    other = WebServer(
        host="127.0.0.1", port=env.server.port, signer=env.signer, metrics=Metrics(), files_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="HTTP_PORT"):
        await other.start()
