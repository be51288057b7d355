"""Media: input images fetched safely and checked, results downloaded under caps, previews.

Every fetch goes over a real socket to a small aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

import bot.media as media_module
from bot.commands import ImageRef
from bot.errors import InvalidInputError
from bot.media import DownloadError, MediaStore, badge_box, grid_badge, is_public_address, sniff
from bot.pngmeta import ResultInfo, add_text
from bot.reply import OutputFile
from bot.signing import Signer
from providers.base import Artifact
from providers.sandbox.common import render_glb, render_png

MiB = 1024 * 1024
NOW = 1_700_000_000.0


def _image(fmt: str, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


PNG = _image("PNG")
JPEG = _image("JPEG")
WEBP = _image("WEBP")
GLB = render_glb()
# A well-formed PNG of 1.5 MB (a big text chunk): over the 1 MB a result may keep in memory.
PADDED_PNG = add_text(PNG, {"Comment": "x" * (3 * MiB // 2)})
LOGIN_PAGE = b"<!DOCTYPE html><html><body>Sign in to Slack</body></html>"


@dataclass
class Files:
    """The loopback file server: its base URL and every request it saw."""

    base: str
    requests: list[web.Request] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    state = Files(base="")

    async def cat(_r: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def login(_r: web.Request) -> web.Response:
        return web.Response(body=LOGIN_PAGE, content_type="text/html")

    async def note(_r: web.Request) -> web.Response:
        return web.Response(text="just some text", content_type="text/plain")

    async def model(_r: web.Request) -> web.Response:
        return web.Response(body=GLB, content_type="application/octet-stream")

    async def big_image(_r: web.Request) -> web.Response:
        return web.Response(body=render_png("big", 1536, 1536), content_type="image/png")

    async def padded(_r: web.Request) -> web.Response:
        return web.Response(body=PADDED_PNG, content_type="image/png")

    async def huge(request: web.Request) -> web.StreamResponse:
        # No Content-Length: only counting the streamed bytes can stop this one.
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        try:
            await resp.write(PNG[:16])
            for _ in range(64):
                await resp.write(b"\0" * MiB)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up at its cap, as it should
        return resp

    async def lying_length(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": str(500 * MiB)})
        await resp.prepare(request)
        try:
            await resp.write(PNG)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def missing(_r: web.Request) -> web.Response:
        return web.Response(status=404, text="no such file")

    async def broken(_r: web.Request) -> web.Response:
        return web.Response(status=503, text="try later")

    async def to_localhost(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/cat.png")

    async def to_private(_r: web.Request) -> web.Response:
        raise web.HTTPFound("http://10.0.0.1/cat.png")

    async def loop(_r: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        state.requests.append(request)
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_get("/cat.png", cat)
    app.router.add_get("/login", login)
    app.router.add_get("/note.txt", note)
    app.router.add_get("/model.glb", model)
    app.router.add_get("/big.png", big_image)
    app.router.add_get("/huge.png", huge)
    app.router.add_get("/padded.png", padded)
    app.router.add_get("/lying.png", lying_length)
    app.router.add_get("/missing.png", missing)
    app.router.add_get("/broken.png", broken)
    app.router.add_get("/to-localhost", to_localhost)
    app.router.add_get("/to-private", to_private)
    app.router.add_get("/loop", loop)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


@dataclass
class Traced:
    """A client session that records every request it starts."""

    session: aiohttp.ClientSession
    started: list[str]


@pytest.fixture
async def traced() -> AsyncIterator[Traced]:
    started: list[str] = []

    async def on_start(_s: Any, _ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        started.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield Traced(session, started)


def _store(session: aiohttp.ClientSession, tmp_path: Path, **overrides: Any) -> MediaStore:
    options: dict[str, Any] = {
        "session": session,
        "files_dir": tmp_path / "files",
        "signer": Signer(b"m" * 32),
        "max_input_bytes": 1 * MiB,
        "max_result_bytes": 2 * MiB,
        "allow_private": True,
        "link_base_url": "http://bot.example:8080",
        "link_ttl": 600,
        "clock": lambda: NOW,
    }
    options.update(overrides)
    return MediaStore(**options)


@pytest.fixture
def store(traced: Traced, tmp_path: Path) -> MediaStore:
    return _store(traced.session, tmp_path)


@pytest.fixture
def strict(traced: Traced, tmp_path: Path) -> MediaStore:
    """A store that refuses private addresses, as in production."""
    return _store(traced.session, tmp_path, allow_private=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- input images ----------------------------------------------------------------------------


async def test_url_input_is_stored_by_hash_and_measured(store: MediaStore, files: Files) -> None:
    stored = await store.load_input(ImageRef(url=f"{files.base}/cat.png"))
    digest = hashlib.sha256(PNG).hexdigest()
    assert stored.name == f"inputs/{digest}.png"
    assert stored.path == store.files_dir / "inputs" / f"{digest}.png"
    assert stored.path.read_bytes() == PNG
    assert (stored.content_type, stored.width, stored.height, stored.size, stored.sha256) == (
        "image/png",
        64,
        48,
        len(PNG),
        digest,
    )


async def test_input_request_carries_the_refs_headers(store: MediaStore, files: Files) -> None:
    ref = ImageRef(url=f"{files.base}/cat.png", headers={"Authorization": "Bearer xoxb-secret"})
    await store.load_input(ref)
    assert files.requests[0].headers["Authorization"] == "Bearer xoxb-secret"


async def test_headers_are_not_sent_to_another_origin_after_a_redirect(
    store: MediaStore, files: Files
) -> None:
    ref = ImageRef(url=f"{files.base}/to-localhost", headers={"Authorization": "Bearer xoxb-secret"})
    stored = await store.load_input(ref)
    assert stored.width == 64
    assert files.paths() == ["/to-localhost", "/cat.png"]
    assert "Authorization" in files.requests[0].headers
    assert "Authorization" not in files.requests[1].headers


async def test_input_headers_never_reach_the_log(
    store: MediaStore, files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    ref = ImageRef(url=f"{files.base}/login?t=1", headers={"Authorization": "Bearer xoxb-secret"})
    with pytest.raises(InvalidInputError):
        await store.load_input(ref)
    assert "xoxb-secret" not in caplog.text


async def test_local_path_input(store: MediaStore, tmp_path: Path) -> None:
    path = tmp_path / "photo.webp"
    path.write_bytes(WEBP)
    stored = await store.load_input(ImageRef(path=str(path)))
    assert stored.content_type == "image/webp"
    assert stored.name.endswith(".webp")


async def test_bytes_input(store: MediaStore) -> None:
    stored = await store.load_input(ImageRef(data=JPEG, filename="cam.jpg"))
    assert (stored.content_type, stored.width, stored.height) == ("image/jpeg", 64, 48)
    assert stored.path.suffix == ".jpg"


async def test_no_image_given(store: MediaStore) -> None:
    with pytest.raises(InvalidInputError, match="attach an image"):
        await store.load_input(ImageRef())


async def test_html_login_page_is_refused(store: MediaStore, files: Files) -> None:
    with pytest.raises(InvalidInputError, match="isn't an image"):
        await store.load_input(ImageRef(url=f"{files.base}/login"))
    assert not (store.files_dir / "inputs").exists() or not any((store.files_dir / "inputs").iterdir())


async def test_text_file_is_refused(store: MediaStore, files: Files) -> None:
    with pytest.raises(InvalidInputError, match="isn't an image"):
        await store.load_input(ImageRef(url=f"{files.base}/note.txt"))


async def test_text_file_named_png_on_disk_is_refused(store: MediaStore, tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("hello, I am text")
    with pytest.raises(InvalidInputError, match="PNG, JPEG or WebP"):
        await store.load_input(ImageRef(path=str(fake)))


async def test_truncated_png_is_refused(store: MediaStore) -> None:
    with pytest.raises(InvalidInputError, match="isn't an image"):
        await store.load_input(ImageRef(data=PNG[: len(PNG) // 2]))


async def test_streamed_input_over_the_cap_is_refused_naming_the_limit(
    store: MediaStore, files: Files
) -> None:
    with pytest.raises(InvalidInputError, match=r"limit is 1 MB"):
        await asyncio.wait_for(store.load_input(ImageRef(url=f"{files.base}/huge.png")), timeout=5)


async def test_declared_length_over_the_cap_is_refused_before_reading(
    store: MediaStore, files: Files
) -> None:
    with pytest.raises(InvalidInputError, match=r"limit is 1 MB"):
        await store.load_input(ImageRef(url=f"{files.base}/lying.png"))


async def test_local_file_over_the_cap_is_refused(store: MediaStore, tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(PNG + b"\0" * (2 * MiB))
    with pytest.raises(InvalidInputError, match=r"limit is 1 MB"):
        await store.load_input(ImageRef(path=str(path)))


async def test_bytes_over_the_cap_are_refused(store: MediaStore) -> None:
    with pytest.raises(InvalidInputError, match=r"limit is 1 MB"):
        await store.load_input(ImageRef(data=b"\0" * (MiB + 1)))


async def test_image_with_too_many_pixels_is_refused(traced: Traced, tmp_path: Path) -> None:
    store = _store(traced.session, tmp_path, max_pixels=1000)
    with pytest.raises(InvalidInputError, match="too many pixels"):
        await store.load_input(ImageRef(data=PNG))


async def test_unreachable_url(store: MediaStore) -> None:
    with pytest.raises(InvalidInputError, match="couldn't download"):
        await store.load_input(ImageRef(url=f"http://127.0.0.1:{_free_port()}/gone.png"))


async def test_input_url_answering_404_is_unreachable(store: MediaStore, files: Files) -> None:
    with pytest.raises(InvalidInputError, match="couldn't download"):
        await store.load_input(ImageRef(url=f"{files.base}/missing.png"))


async def test_redirect_loop_is_unreachable(store: MediaStore, files: Files) -> None:
    with pytest.raises(InvalidInputError, match="couldn't download"):
        await store.load_input(ImageRef(url=f"{files.base}/loop"))
    assert len(files.requests) == 6


async def test_missing_local_file_is_unreadable(store: MediaStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="couldn't read"):
        await store.load_input(ImageRef(path=str(tmp_path / "nope.png")))


async def test_loopback_url_is_refused_when_private_addresses_are_not_allowed(
    strict: MediaStore, files: Files
) -> None:
    with pytest.raises(InvalidInputError, match="public internet addresses"):
        await strict.load_input(ImageRef(url=f"{files.base}/cat.png"))
    assert files.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/cat.png",
        "http://192.168.1.10/cat.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/cat.png",
        "http://[::ffff:10.0.0.1]/cat.png",
        "http://[fe80::1]/cat.png",
        "http://224.0.0.1/cat.png",
        "http://0.0.0.0/cat.png",
        "https://100.64.0.1/cat.png",
    ],
)
async def test_private_address_is_refused_without_any_connection(
    strict: MediaStore, traced: Traced, url: str
) -> None:
    with pytest.raises(InvalidInputError, match="public internet addresses"):
        await strict.load_input(ImageRef(url=url))
    assert traced.started == []


async def test_hostname_resolving_to_loopback_is_refused(
    strict: MediaStore, traced: Traced, files: Files
) -> None:
    port = urlsplit(files.base).port
    with pytest.raises(InvalidInputError, match="public internet addresses"):
        await strict.load_input(ImageRef(url=f"http://localhost:{port}/cat.png"))
    assert traced.started == []
    assert files.requests == []


async def test_redirect_to_a_private_address_is_refused(
    strict: MediaStore, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let the test server's own address count as public, so the first hop goes through.
    monkeypatch.setattr(media_module, "is_public_address", lambda ip: str(ip) == "127.0.0.1")
    with pytest.raises(InvalidInputError, match="public internet addresses"):
        await strict.load_input(ImageRef(url=f"{files.base}/to-private"))
    assert files.paths() == ["/to-private"]


async def test_checked_hostname_is_pinned_to_its_checked_address(
    strict: MediaStore, traced: Traced, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media_module, "is_public_address", lambda ip: ip.is_loopback)
    port = urlsplit(files.base).port
    stored = await strict.load_input(ImageRef(url=f"http://localhost:{port}/cat.png"))
    assert stored.width == 64
    # The connection went to the resolved address; the server still saw the original host.
    assert traced.started[-1] == f"http://127.0.0.1:{port}/cat.png"
    assert files.requests[-1].headers["Host"] == f"localhost:{port}"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/cat.png", "gopher://x/"])
async def test_unsupported_scheme_is_refused(strict: MediaStore, traced: Traced, url: str) -> None:
    with pytest.raises(InvalidInputError, match=r"http:// or https://"):
        await strict.load_input(ImageRef(url=url))
    assert traced.started == []


def test_public_addresses_are_told_apart_from_private_ones() -> None:
    import ipaddress

    assert is_public_address(ipaddress.ip_address("93.184.216.34"))
    assert is_public_address(ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946"))
    assert not is_public_address(ipaddress.ip_address("127.0.0.1"))
    assert not is_public_address(ipaddress.ip_address("2002:0a00:0001::1"))  # 6to4 of 10.0.0.1


# --- results ----------------------------------------------------------------------------------


async def test_result_download_is_saved_with_its_sniffed_type(
    store: MediaStore, files: Files, tmp_path: Path
) -> None:
    dest = store.files_dir / "jobs" / "j1"
    out = await store.save_result(Artifact(url=f"{files.base}/cat.png"), dest, "j1-0")
    assert out.path == dest / "j1-0.png"
    assert out.path.read_bytes() == PNG
    assert (out.filename, out.content_type, out.role, out.size, out.width, out.height) == (
        "j1-0.png",
        "image/png",
        "image",
        len(PNG),
        64,
        48,
    )
    assert [p.name for p in dest.iterdir()] == ["j1-0.png"]  # no temp file left behind


async def test_result_url_is_a_signed_link_to_the_saved_file(store: MediaStore, files: Files) -> None:
    out = await store.save_result(Artifact(url=f"{files.base}/cat.png"), store.files_dir / "jobs/j1", "j1-0")
    assert out.url is not None
    parts = urlsplit(out.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "bot.example:8080", "/media/jobs/j1/j1-0.png")
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert int(query["exp"]) == int(NOW) + 600
    assert Signer(b"m" * 32).check_media("jobs/j1/j1-0.png", int(query["exp"]), query["sig"], NOW)


async def test_result_url_is_the_vendor_url_without_a_link_base(
    traced: Traced, files: Files, tmp_path: Path
) -> None:
    store = _store(traced.session, tmp_path, link_base_url=None)
    url = f"{files.base}/cat.png"
    out = await store.save_result(Artifact(url=url), store.files_dir / "jobs/j1", "j1-0")
    assert out.url == url


async def test_inline_result_bytes_are_written(store: MediaStore) -> None:
    out = await store.save_result(Artifact(data=WEBP), store.files_dir / "jobs/j2", "j2-0")
    assert (out.content_type, out.filename, out.width) == ("image/webp", "j2-0.webp", 64)


async def test_glb_is_recognised_as_a_model(store: MediaStore, files: Files) -> None:
    out = await store.save_result(
        Artifact(url=f"{files.base}/model.glb", role="model"), store.files_dir / "jobs/j3", "j3-0"
    )
    assert (out.role, out.content_type, out.filename, out.width) == (
        "model",
        "model/gltf-binary",
        "j3-0.glb",
        None,
    )


async def test_vendor_thumbnail_keeps_its_role(store: MediaStore) -> None:
    out = await store.save_result(Artifact(data=PNG, role="thumbnail"), store.files_dir / "jobs/j3", "j3-1")
    assert out.role == "thumbnail"


async def test_truncated_glb_is_a_retryable_download_error(store: MediaStore) -> None:
    with pytest.raises(DownloadError) as info:
        await store.save_result(Artifact(data=GLB[:-10], role="model"), store.files_dir / "jobs/j3", "j3-0")
    assert info.value.retryable


async def test_a_small_image_result_is_checked_stamped_and_written_in_one_thread_hop(
    store: MediaStore, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = asyncio.to_thread

    async def spy(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(media_module.asyncio, "to_thread", spy)
    info = ResultInfo("a fox", None, 7, "v:m", "j1")
    out = await store.save_result(
        Artifact(url=f"{files.base}/cat.png"), store.files_dir / "jobs/j1", "j1-0", metadata=info
    )
    assert calls == ["_finish_result"]
    assert out.size == out.path.stat().st_size
    with Image.open(out.path) as img:
        assert img.size == (64, 48) and img.text["Size"] == "64x48"  # type: ignore[attr-defined]
    assert [p.name for p in out.path.parent.iterdir()] == ["j1-0.png"]


async def test_a_result_over_a_megabyte_streams_to_disk_and_is_saved_whole(
    store: MediaStore, files: Files
) -> None:
    info = ResultInfo("a fox", None, 7, "v:m", "j1")
    dest = store.files_dir / "jobs" / "j1"
    out = await store.save_result(Artifact(url=f"{files.base}/padded.png"), dest, "j1-0", metadata=info)
    assert (out.width, out.height, out.size) == (64, 48, out.path.stat().st_size)
    with Image.open(out.path) as img:
        text = dict(img.text)  # type: ignore[attr-defined]
    assert text["Comment"] == "x" * (3 * MiB // 2) and text["Prompt"] == "a fox"
    assert [p.name for p in dest.iterdir()] == ["j1-0.png"]  # the part file became the result


async def test_result_over_the_cap_is_a_download_error(store: MediaStore, files: Files) -> None:
    dest = store.files_dir / "jobs/j4"
    with pytest.raises(DownloadError) as info:
        await asyncio.wait_for(store.save_result(Artifact(url=f"{files.base}/huge.png"), dest, "j4-0"), 5)
    assert not info.value.retryable
    assert not dest.exists() or list(dest.iterdir()) == []  # no partial file is left


async def test_result_declared_over_the_cap_is_refused_before_reading(
    store: MediaStore, files: Files
) -> None:
    with pytest.raises(DownloadError, match="cap"):
        await store.save_result(Artifact(url=f"{files.base}/lying.png"), store.files_dir / "jobs/j4", "j4-0")


async def test_result_404_is_a_final_download_error(store: MediaStore, files: Files) -> None:
    with pytest.raises(DownloadError, match="404") as info:
        await store.save_result(
            Artifact(url=f"{files.base}/missing.png"), store.files_dir / "jobs/j5", "j5-0"
        )
    assert not info.value.retryable


async def test_result_5xx_is_a_retryable_download_error(store: MediaStore, files: Files) -> None:
    with pytest.raises(DownloadError) as info:
        await store.save_result(Artifact(url=f"{files.base}/broken.png"), store.files_dir / "jobs/j5", "j5-0")
    assert info.value.retryable


async def test_result_connection_refused_is_a_retryable_download_error(store: MediaStore) -> None:
    url = f"http://127.0.0.1:{_free_port()}/x.png"
    with pytest.raises(DownloadError) as info:
        await store.save_result(Artifact(url=url), store.files_dir / "jobs/j5", "j5-0")
    assert info.value.retryable


async def test_result_that_is_not_an_image_or_model_is_refused(store: MediaStore, files: Files) -> None:
    with pytest.raises(DownloadError, match="neither an image nor a GLB"):
        await store.save_result(Artifact(url=f"{files.base}/login"), store.files_dir / "jobs/j6", "j6-0")


async def test_sandbox_vendor_results_may_live_on_loopback_even_when_inputs_may_not(
    traced: Traced, tmp_path: Path, files: Files
) -> None:
    sandboxed = _store(traced.session, tmp_path, allow_private=False, result_allow_private=True)
    out = await sandboxed.save_result(
        Artifact(url=f"{files.base}/cat.png"), sandboxed.files_dir / "jobs/j7", "j7-0"
    )
    assert out.width == 64


def test_sniff_knows_the_four_formats() -> None:
    assert sniff(PNG[:16]) == ("image/png", "png")
    assert sniff(JPEG[:16]) == ("image/jpeg", "jpg")
    assert sniff(WEBP[:16]) == ("image/webp", "webp")
    assert sniff(GLB[:16]) == ("model/gltf-binary", "glb")
    assert sniff(LOGIN_PAGE[:16]) is None


# --- links ------------------------------------------------------------------------------------


def test_no_link_without_a_link_base(traced: Traced, tmp_path: Path) -> None:
    store = _store(traced.session, tmp_path, link_base_url=None)
    assert store.link_for(store.files_dir / "inputs/a.png") is None


def test_link_names_a_relative_path_under_files_dir(store: MediaStore) -> None:
    link = store.link_for(store.files_dir / "inputs" / "a b.png")
    assert link is not None
    assert link.startswith("http://bot.example:8080/media/inputs/a%20b.png?exp=")


@pytest.mark.parametrize("path", ["../secret.key", "/etc/passwd", "inputs/../../x.png", "."])
def test_link_refuses_paths_outside_files_dir(store: MediaStore, path: str) -> None:
    assert store.link_for(Path(path) if path.startswith("/") else store.files_dir / path) is None


# --- previews ---------------------------------------------------------------------------------


async def _saved(store: MediaStore, n: int, size: tuple[int, int] = (512, 512)) -> list[OutputFile]:
    out = []
    for i in range(n):
        data = _image("PNG", size, ((i * 60) % 256, 80, 160))
        out.append(await store.save_result(Artifact(data=data), store.files_dir / "jobs/g", f"g-{i}"))
    return out


def _cell_colors(path: Path, cols: int, rows: int) -> list[tuple[int, ...]]:
    with Image.open(path) as img:
        rgb = img.convert("RGB")
        w, h = rgb.width // cols, rgb.height // rows
        return [rgb.getpixel((c * w + w // 2, r * h + h // 2)) for r in range(rows) for c in range(cols)]


def _close(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= 8 for x, y in zip(a, b, strict=True))


async def test_grid_of_four_is_two_by_two(store: MediaStore) -> None:
    images = await _saved(store, 4)
    grid = await store.compose_grid(images, store.files_dir / "jobs/g/g-grid")
    assert grid.role == "grid"
    assert grid.path.name == "g-grid.jpg"
    assert (grid.width, grid.height) == (1024, 1024)
    with Image.open(grid.path) as img:
        assert (img.format, img.size) == ("JPEG", (1024, 1024))
    colors = _cell_colors(grid.path, 2, 2)
    for i, color in enumerate(colors):
        assert _close(color, ((i * 60) % 256, 80, 160)), (i, color)


async def test_grid_of_two_is_side_by_side(store: MediaStore) -> None:
    images = await _saved(store, 2, size=(640, 960))
    grid = await store.compose_grid(images, store.files_dir / "jobs/g/g-grid.png")
    assert grid.content_type == "image/png"
    assert max(grid.width or 0, grid.height or 0) <= 1024
    assert (grid.width, grid.height) == (1024, 768)  # two 640×960 cells, scaled by 0.8
    assert _close(_cell_colors(grid.path, 2, 1)[1], (60, 80, 160))


async def test_grid_of_three_leaves_the_fourth_cell_empty(store: MediaStore) -> None:
    grid = await store.compose_grid(await _saved(store, 3, size=(300, 200)), store.files_dir / "jobs/g/g3")
    assert (grid.width, grid.height) == (600, 400)
    assert _close(_cell_colors(grid.path, 2, 2)[3], (24, 24, 24))


def _expected_corner(color: tuple[int, int, int], number: int, tile: tuple[int, int]) -> Image.Image:
    """A tile's top-left corner as the grid must draw it: the badge for `number` on `color`."""
    x, y, side = badge_box(*tile)
    corner = Image.new("RGB", (x + side, y + side), color)
    badge = grid_badge(number, side)
    corner.paste(badge, (x, y), mask=badge.getchannel("A"))
    return corner


async def test_grid_tiles_are_numbered_1_to_4_in_the_files_order(store: MediaStore) -> None:
    images = await _saved(store, 4)
    grid = await store.compose_grid(images, store.files_dir / "jobs/g/g-grid.png")
    with Image.open(grid.path) as img:
        rgb = img.convert("RGB")
    for i in range(4):
        color = ((i * 60) % 256, 80, 160)
        left, top = (i % 2) * 512, (i // 2) * 512
        expected = _expected_corner(color, i + 1, (512, 512))
        corner = rgb.crop((left, top, left + expected.width, top + expected.height))
        assert corner.tobytes() == expected.tobytes(), f"tile {i + 1} does not carry badge {i + 1}"
        assert corner.tobytes() != Image.new("RGB", corner.size, color).tobytes()  # the badge is drawn


def test_each_number_has_its_own_badge() -> None:
    badges = {grid_badge(n, 40).tobytes() for n in range(1, 5)}
    assert len(badges) == 4


async def test_a_lone_image_has_no_number(store: MediaStore) -> None:
    [single] = await _saved(store, 1, size=(300, 200))
    grid = await store.compose_grid([single], store.files_dir / "jobs/g/one.png")
    with Image.open(grid.path) as img:
        assert img.convert("RGB").getcolors() == [(300 * 200, (0, 80, 160))]


async def test_grid_refuses_more_than_four(store: MediaStore) -> None:
    images = await _saved(store, 1)
    with pytest.raises(ValueError):
        await store.compose_grid(images * 5, store.files_dir / "jobs/g/g-grid")


async def test_thumbnail_respects_the_byte_limit(store: MediaStore, files: Files) -> None:
    big = await store.save_result(Artifact(url=f"{files.base}/big.png"), store.files_dir / "jobs/t", "t-0")
    thumb = await store.thumbnail_under(big, 40_000, store.files_dir / "jobs/t/t-0-small")
    assert thumb.size <= 40_000
    assert thumb.path.stat().st_size == thumb.size
    assert (thumb.role, thumb.content_type, thumb.filename) == ("thumbnail", "image/jpeg", "t-0-small.jpg")
    assert thumb.url == big.url  # the preview links to the full-size file
    with Image.open(thumb.path) as img:
        assert img.format == "JPEG"
        assert img.width == img.height == thumb.width


async def test_thumbnail_keeps_the_size_when_it_already_fits(store: MediaStore) -> None:
    [small] = await _saved(store, 1, size=(200, 100))
    thumb = await store.thumbnail_under(small, 1 * MiB, store.files_dir / "jobs/g/small-thumb.jpg")
    assert (thumb.width, thumb.height) == (200, 100)


async def test_pillow_work_runs_off_the_event_loop(
    store: MediaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = asyncio.to_thread

    async def spy(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(media_module.asyncio, "to_thread", spy)
    await store.load_input(ImageRef(data=PNG))
    images = await _saved(store, 2)
    await store.compose_grid(images, store.files_dir / "jobs/g/g-grid")
    assert {"_store_input", "_finish_result", "_compose"} <= set(calls)
