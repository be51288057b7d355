"""Vendor result URLs get the guard user URLs get: public addresses only, every redirect hop
checked, a bounded number of hops. Result images are checked from their structure, not decoded.

Every fetch goes over a real socket to a small aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image, ImageFile

import bot.media as media_module
from bot.commands import ImagineCommand
from bot.media import DownloadError, MediaStore
from bot.signing import Signer
from providers.base import Artifact
from tests.support.core import MEMBER, RecordingReply, running_app


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class Server:
    """The loopback vendor file host: base URL and the paths it was asked for."""

    def __init__(self) -> None:
        self.base = ""
        self.paths: list[str] = []


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()

    async def cat(_r: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def truncated(_r: web.Request) -> web.Response:
        return web.Response(body=PNG[: len(PNG) // 2], content_type="image/png")

    def to(location: str) -> Any:
        async def redirect(_r: web.Request) -> web.Response:
            raise web.HTTPFound(location)

        return redirect

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.paths.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_get("/cat.png", cat)
    app.router.add_get("/truncated.png", truncated)
    app.router.add_get("/to-cat", to("/cat.png"))
    app.router.add_get("/to-private", to("http://10.0.0.1/cat.png"))
    app.router.add_get("/to-metadata", to("http://169.254.169.254/latest/meta-data/"))
    app.router.add_get("/to-file", to("file:///etc/passwd"))
    app.router.add_get("/loop", to("/loop"))
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _store(session: aiohttp.ClientSession, tmp_path: Path, **options: Any) -> MediaStore:
    return MediaStore(
        session=session,
        files_dir=tmp_path / "files",
        signer=Signer(b"m" * 32),
        max_input_bytes=1024 * 1024,
        max_result_bytes=2 * 1024 * 1024,
        **options,
    )


@pytest.fixture
def guarded(session: aiohttp.ClientSession, tmp_path: Path) -> MediaStore:
    """Production: private addresses refused for inputs and results alike."""
    return _store(session, tmp_path, allow_private=False)


async def _save(store: MediaStore, url: str) -> Any:
    return await store.save_result(Artifact(url=url), store.files_dir / "jobs/j1", "j1-0")


async def test_a_result_on_loopback_is_refused_without_any_request(
    guarded: MediaStore, server: Server
) -> None:
    with pytest.raises(DownloadError, match="private address") as info:
        await _save(guarded, f"{server.base}/cat.png")
    assert info.value.retryable is False
    assert server.paths == []


@pytest.mark.parametrize("hop", ["/to-private", "/to-metadata"])
async def test_a_result_redirecting_to_a_private_address_is_refused(
    guarded: MediaStore, server: Server, monkeypatch: pytest.MonkeyPatch, hop: str
) -> None:
    # Let the test server's own address count as public, so the first hop goes through.
    monkeypatch.setattr(media_module, "is_public_address", lambda ip: str(ip) == "127.0.0.1")
    with pytest.raises(DownloadError, match="private address"):
        await _save(guarded, f"{server.base}{hop}")
    assert server.paths == [hop]
    dest = guarded.files_dir / "jobs/j1"
    assert not dest.exists() or not list(dest.iterdir())  # no partial file left behind


async def test_a_result_redirecting_to_a_file_url_is_refused(
    guarded: MediaStore, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_module, "is_public_address", lambda ip: str(ip) == "127.0.0.1")
    with pytest.raises(DownloadError, match="not an http"):
        await _save(guarded, f"{server.base}/to-file")


async def test_a_checked_redirect_to_a_public_address_is_followed(
    guarded: MediaStore, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_module, "is_public_address", lambda ip: str(ip) == "127.0.0.1")
    out = await _save(guarded, f"{server.base}/to-cat")
    assert (out.width, out.height) == (64, 48)
    assert server.paths == ["/to-cat", "/cat.png"]


async def test_result_redirects_are_bounded(
    session: aiohttp.ClientSession, tmp_path: Path, server: Server
) -> None:
    store = _store(session, tmp_path, allow_private=True)
    with pytest.raises(DownloadError, match="redirects too often"):
        await _save(store, f"{server.base}/loop")
    assert len(server.paths) == media_module._MAX_REDIRECTS + 1


async def test_the_sandbox_may_serve_results_on_loopback_while_inputs_stay_guarded(
    session: aiohttp.ClientSession, tmp_path: Path, server: Server
) -> None:
    store = _store(session, tmp_path, allow_private=False, result_allow_private=True)
    out = await _save(store, f"{server.base}/cat.png")
    assert out.width == 64
    assert store.allow_private is False


async def test_a_sandbox_bot_without_private_media_still_delivers_its_results(tmp_path: Path) -> None:
    async with running_app(tmp_path, media_allow_private=False) as app:
        assert app.media.allow_private is False
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a red fox"), reply)
        await reply.wait()
        assert reply.results, reply.failures


# --- checked from the header -----------------------------------------------------------------


async def test_result_images_are_verified_without_decoding_their_pixels(
    session: aiohttp.ClientSession, tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(_self: object) -> None:
        raise AssertionError("the result image was fully decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    out = await _save(_store(session, tmp_path, allow_private=True), f"{server.base}/cat.png")
    assert (out.width, out.height) == (64, 48)


async def test_a_truncated_result_image_is_refused(
    session: aiohttp.ClientSession, tmp_path: Path, server: Server
) -> None:
    with pytest.raises(DownloadError, match="damaged"):
        await _save(_store(session, tmp_path, allow_private=True), f"{server.base}/truncated.png")
