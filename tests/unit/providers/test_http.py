"""The shared vendor HTTP helper against a loopback server: status mapping, keys kept secret."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from providers.base import (
    AuthError,
    OutOfFundsError,
    ProviderError,
    ProviderSettings,
    RejectedInputError,
    RetryableError,
    UnknownJobError,
)
from providers.http import VendorHTTP, content_type_from_name, decode_data_uri, error_code

KEY = "sk-very-secret-key"


async def _answer(request: web.Request) -> web.Response:
    """`/status/{code}` answers that status with a JSON error; `/big` a large success body."""
    seen = {"auth": request.headers.get("Authorization"), "apim": request.headers.get("X-Key")}
    if request.path == "/big":
        return web.json_response({"blob": "x" * 600_000, **seen})
    if request.path == "/ok":
        return web.json_response(seen)
    if request.path == "/garbage":
        return web.Response(text="<html>oops</html>", content_type="text/html")
    status = int(request.match_info["code"])
    headers = {"Retry-After": "7"} if status == 429 else None
    body = {"error": {"message": "nope", "code": "someCode"}}
    return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/status/{code}", _answer)
    for path in ("/big", "/ok", "/garbage"):
        app.router.add_get(path, _answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _http(session: aiohttp.ClientSession, base_url: str, **kwargs: str) -> VendorHTTP:
    return VendorHTTP.from_settings("acme", session, ProviderSettings(base_url, KEY), **kwargs)


async def test_bearer_key_by_default_or_a_named_header(session: aiohttp.ClientSession, base_url: str) -> None:
    assert await _http(session, base_url).request_json("GET", "/ok") == {
        "auth": f"Bearer {KEY}",
        "apim": None,
    }
    named = _http(session, base_url, key_header="X-Key")
    assert await named.request_json("GET", "ok") == {"auth": None, "apim": KEY}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RejectedInputError),
        (401, AuthError),
        (402, OutOfFundsError),
        (404, UnknownJobError),
        (429, RetryableError),
        (503, RetryableError),
    ],
)
async def test_statuses_map_to_one_error_each(
    session: aiohttp.ClientSession, base_url: str, status: int, error: type[ProviderError]
) -> None:
    with pytest.raises(error) as caught:
        await _http(session, base_url).request_json("GET", f"/status/{status}")
    assert type(caught.value) is error
    assert caught.value.status == status and caught.value.code == "someCode"
    assert caught.value.message == "nope"
    if status == 429:
        assert isinstance(caught.value, RetryableError) and caught.value.retry_after == 7.0


async def test_the_classify_hook_sees_the_body_first(session: aiohttp.ClientSession, base_url: str) -> None:
    def classify(status: int, body: object) -> type[ProviderError] | None:
        return OutOfFundsError if status == 403 and error_code(body) == "someCode" else None

    with pytest.raises(OutOfFundsError):
        await _http(session, base_url).request_json("GET", "/status/403", classify=classify)


async def test_non_json_success_is_retryable(session: aiohttp.ClientSession, base_url: str) -> None:
    with pytest.raises(RetryableError, match="malformed JSON"):
        await _http(session, base_url).request_json("GET", "/garbage")


async def test_large_bodies_are_parsed(session: aiohttp.ClientSession, base_url: str) -> None:
    body = await _http(session, base_url).request_json("GET", "/big")
    assert len(body["blob"]) == 600_000


async def test_connection_failure_is_retryable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(RetryableError, match="connection failed"):
        await _http(session, "http://127.0.0.1:9").request_json("GET", "/ok")


async def test_the_key_appears_in_no_repr_and_no_log_line(
    session: aiohttp.ClientSession, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    http = _http(session, base_url)
    assert KEY not in repr(http)
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError):
        await http.request_json("GET", "/status/401", params={"token": "query-secret"})
    assert caplog.records, "a failed call is logged for the operator"
    assert all(KEY not in r.getMessage() and "query-secret" not in r.getMessage() for r in caplog.records)


def test_error_code_reads_every_envelope() -> None:
    assert error_code({"code": 403, "reason": "NOT_ENOUGH_BALANCE"}) == "NOT_ENOUGH_BALANCE"
    assert error_code({"error": {"code": "INVALID_API_KEY"}}) == "INVALID_API_KEY"
    assert error_code({"errors": [{"code": "invalidApiKey"}]}) == "invalidApiKey"
    assert error_code(json.loads('"text"')) is None


def test_data_uris_decode_or_raise() -> None:
    png = b"\x89PNG\r\n\x1a\nrest"
    encoded = base64.b64encode(png).decode()
    assert decode_data_uri(f"data:image/png;base64,{encoded}") == (png, "image/png")
    assert decode_data_uri(encoded) == (png, None)
    with pytest.raises(ValueError):
        decode_data_uri("data:image/png,notbase64")
    with pytest.raises(ValueError):
        decode_data_uri("not base64!")


def test_content_type_from_name_ignores_the_query() -> None:
    assert content_type_from_name("https://cdn/x.PNG?X-Amz-Signature=a.jpg") == "image/png"
    assert content_type_from_name("https://cdn/model.glb") == "model/gltf-binary"
    assert content_type_from_name("https://cdn/file") is None
