"""Media: input images fetched safely, results downloaded at once, previews, signed links.

Every byte that crosses the network is streamed under a size cap and its type is sniffed from
the bytes themselves (a Slack login page answers 200 with HTML, vendors mislabel files). User
URLs and vendor result URLs may only reach public addresses (unless private ones are allowed:
tests, the sandbox's loopback vendors): each hop, redirects included, is resolved once,
checked, and the connection pinned to the checked address, so DNS cannot swap in a private one
between check and connect.
Pillow and file work run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ipaddress
import logging
import math
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import aiohttp
from PIL import Image, ImageDraw, ImageFont, ImageOps
from yarl import URL

from bot import mesh_preview, messages, pngmeta
from bot.commands import ImageRef
from bot.errors import BotError, InvalidInputError
from bot.reply import OutputFile
from bot.signing import Signer
from providers.base import Artifact

__all__ = [
    "GLB_CONTENT_TYPE",
    "DownloadError",
    "MediaStore",
    "ModelPreview",
    "StoredImage",
    "badge_box",
    "grid_badge",
    "is_public_address",
    "sniff",
]

_log = logging.getLogger(__name__)

GLB_CONTENT_TYPE = "model/gltf-binary"
#: Pillow format → (content type, extension) of the images we accept and deliver
_IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
}
_CHUNK = 64 * 1024
_FLUSH = 1024 * 1024
_MAX_REDIRECTS = 5
_MAX_ADDRESSES = 4
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GRID_LONG_SIDE = 1024
_GRID_BACKGROUND = (24, 24, 24)
_BADGE_FILL = (0, 0, 0, 170)  # dark, see-through enough to keep the picture readable under it
_BADGE_INK = (255, 255, 255, 255)
_THUMB_START_SIDE = 2048
_THUMB_MIN_SIDE = 32

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An input image checked and stored under `files_dir`; `name` is its path relative to it."""

    path: Path
    name: str
    content_type: str
    width: int
    height: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ModelPreview:
    """What the bot adds to a 3D result: a rendered picture when the vendor sent none, and
    the model's face count; either is None when the GLB could not be read."""

    thumbnail: OutputFile | None
    faces: int | None


class DownloadError(BotError):
    """A result file could not be downloaded or is not a usable image/model.

    `retryable` is True for transport trouble (5xx, 429, timeouts, cut connections) and
    False when the file itself is wrong (404, over the cap, not an image or GLB).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def sniff(head: bytes) -> tuple[str, str] | None:
    """(content type, extension) from a file's first bytes: PNG, JPEG, WebP or binary glTF."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _IMAGE_FORMATS["PNG"]
    if head.startswith(b"\xff\xd8\xff"):
        return _IMAGE_FORMATS["JPEG"]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _IMAGE_FORMATS["WEBP"]
    if head[:4] == b"glTF":
        return GLB_CONTENT_TYPE, "glb"
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether a user-supplied URL may reach `ip`: globally routable unicast only."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 is judged by the IPv4 address it reaches.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


class _TooBigError(Exception):
    pass


class _TooManyPixelsError(Exception):
    pass


class _NotImageError(Exception):
    pass


class _PrivateAddressError(Exception):
    """A URL's host is (or resolves to) a non-public address."""


class _UnresolvableError(Exception):
    """A URL's host does not resolve."""


class MediaStore:
    """Fetches, checks and stores media under `files_dir`, and signs links to it.

    `link_base_url` (the bot HTTP server's public base) may be set after construction, once
    the server knows its port.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        files_dir: Path,
        signer: Signer,
        max_input_bytes: int,
        max_result_bytes: int,
        allow_private: bool,
        result_allow_private: bool | None = None,
        link_base_url: str | None = None,
        link_ttl: int = 3600,
        clock: Callable[[], float] = time.time,
        input_timeout: float = 30.0,
        result_timeout: float = 120.0,
        max_pixels: int = 64_000_000,
    ) -> None:
        self._session = session
        # abspath, not resolve(): no file-system access here, and paths built from this
        # attribute by callers stay comparable with it.
        self.files_dir = Path(os.path.abspath(files_dir))
        self._signer = signer
        self.max_input_bytes = max_input_bytes
        self.max_result_bytes = max_result_bytes
        self.allow_private = allow_private
        # Vendor results follow the same rule; only the sandbox's loopback vendors need an
        # exception of their own (None: the same as for user URLs).
        self.result_allow_private = allow_private if result_allow_private is None else result_allow_private
        self.link_base_url = link_base_url
        self.link_ttl = link_ttl
        self._clock = clock
        self._input_timeout = aiohttp.ClientTimeout(total=input_timeout)
        self._result_timeout = aiohttp.ClientTimeout(total=result_timeout)
        self._max_pixels = max_pixels

    # --- links ---------------------------------------------------------------------------

    def name_for(self, path: Path) -> str | None:
        """`path` (absolute, or relative to files_dir) as a link name; None if outside it."""
        # String work, not pathlib: every delivered file asks this (and again for each link).
        root = str(self.files_dir)
        full = os.path.normpath(os.path.join(root, os.fspath(path)))
        prefix = root if root.endswith(os.sep) else root + os.sep
        if not full.startswith(prefix) or len(full) == len(prefix):
            return None
        return full[len(prefix) :].replace(os.sep, "/")

    def link_for(self, path: Path) -> str | None:
        """A signed link to a file under files_dir, valid for `link_ttl` seconds; None when
        there is no link base or the path escapes files_dir."""
        if not self.link_base_url:
            return None
        name = self.name_for(path)
        if name is None:
            _log.warning("refused a media link outside the files directory: %s", path)
            return None
        expires = int(self._clock()) + self.link_ttl
        sig = self._signer.sign_media(name, expires)
        return f"{self.link_base_url.rstrip('/')}/media/{quote(name)}?exp={expires}&sig={sig}"

    # --- input images ---------------------------------------------------------------------

    async def load_input(self, ref: ImageRef) -> StoredImage:
        """Fetch, check and store the input image of /edit or /model3d.

        Raises `InvalidInputError` with one friendly message for every failure: nothing
        given, not a PNG/JPEG/WebP, over `max_input_bytes`, unreachable, private address,
        unsupported scheme.
        """
        if ref.data is not None:
            if len(ref.data) > self.max_input_bytes:
                raise InvalidInputError(messages.image_too_big(self.max_input_bytes))
            data = ref.data
        elif ref.path:
            data = await self._read_local(ref)
        elif ref.url:
            data = await self._fetch_input(ref)
        else:
            raise InvalidInputError(messages.no_image())
        try:
            stored = await asyncio.to_thread(self._store_input, data)
        except _NotImageError:
            _log.info("input refused, not an image: %s", ref.label)
            raise InvalidInputError(messages.not_an_image(ref.label, chat_file=bool(ref.headers))) from None
        except _TooManyPixelsError:
            raise InvalidInputError(messages.image_too_many_pixels(self._max_pixels)) from None
        _log.info(
            "input stored %s (%dx%d, %d bytes) from %s",
            stored.name,
            stored.width,
            stored.height,
            stored.size,
            ref.label,
        )
        return stored

    async def _read_local(self, ref: ImageRef) -> bytes:
        assert ref.path is not None
        try:
            return await asyncio.to_thread(_read_file_capped, Path(ref.path), self.max_input_bytes)
        except _TooBigError:
            raise InvalidInputError(messages.image_too_big(self.max_input_bytes)) from None
        except OSError as exc:
            _log.info("input file unreadable %s: %s", ref.label, exc.strerror)
            raise InvalidInputError(messages.image_unreadable(ref.label)) from None

    async def _fetch_input(self, ref: ImageRef) -> bytes:
        assert ref.url is not None
        unreachable = InvalidInputError(messages.image_unreachable(ref.label))
        try:
            url = URL(ref.url)
        except (ValueError, TypeError):
            raise unreachable from None
        headers = dict(ref.headers)
        for _ in range(_MAX_REDIRECTS + 1):
            if url.scheme not in ("http", "https"):
                raise InvalidInputError(messages.image_unsupported_scheme(url.scheme))
            if not url.raw_host:
                raise unreachable
            try:
                targets, host_header, server_hostname = await self._pin(url, allow_private=self.allow_private)
            except _PrivateAddressError:
                _log.info("input refused, private address: %s", ref.label)
                raise InvalidInputError(messages.image_private_address(url.host or url.raw_host)) from None
            except _UnresolvableError:
                _log.info("input host does not resolve: %s", ref.label)
                raise unreachable from None
            sent = dict(headers)
            if host_header:
                sent["Host"] = host_header
            try:
                resp = await self._connect(targets, sent, server_hostname, self._input_timeout)
                async with resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        nxt = url.join(URL(location))
                        if nxt.origin() != url.origin():
                            headers = {}  # never send a platform token to another host
                        url = nxt
                        continue
                    if resp.status != 200:
                        _log.info("input fetch HTTP %d: %s", resp.status, ref.label)
                        raise unreachable
                    return await _read_response_capped(resp, self.max_input_bytes)
            except _TooBigError:
                raise InvalidInputError(messages.image_too_big(self.max_input_bytes)) from None
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                _log.info("input fetch failed %s: %s", ref.label, type(exc).__name__)
                raise unreachable from None
        _log.info("input fetch: too many redirects: %s", ref.label)
        raise unreachable

    async def _connect(
        self,
        targets: Sequence[URL],
        headers: dict[str, str],
        server_hostname: str | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """GET the first target that accepts a connection (the addresses of one host)."""
        for i, target in enumerate(targets):
            try:
                return await self._session.get(
                    target,
                    headers=headers,
                    allow_redirects=False,
                    server_hostname=server_hostname,
                    timeout=timeout,
                )
            except aiohttp.ClientConnectorError:
                if i == len(targets) - 1:
                    raise
        raise aiohttp.ClientConnectionError("no address to connect to")

    async def _pin(self, url: URL, *, allow_private: bool) -> tuple[list[URL], str | None, str | None]:
        """Where to connect for `url`: (target URLs in order, Host header, TLS server name).

        With `allow_private` the URL is used as is. Otherwise every address the host
        resolves to must be public (`_PrivateAddressError`), and the connection goes to those
        checked addresses. `_UnresolvableError` when the host does not resolve.
        """
        host = url.raw_host
        assert host is not None
        if allow_private:
            return [url], None, None
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            if not is_public_address(literal):
                raise _PrivateAddressError
            return [url], None, None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, url.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise _UnresolvableError from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos))
        if not addresses or not all(is_public_address(a) for a in addresses):
            raise _PrivateAddressError
        return (
            [url.with_host(str(a)) for a in addresses[:_MAX_ADDRESSES]],
            url.host_port_subcomponent,
            host if url.scheme == "https" else None,
        )

    def _store_input(self, data: bytes) -> StoredImage:
        fmt, width, height = _decode_image(io.BytesIO(data), self._max_pixels)
        content_type, ext = _IMAGE_FORMATS[fmt]
        digest = hashlib.sha256(data).hexdigest()
        name = f"inputs/{digest}.{ext}"
        path = self.files_dir / name
        if not path.exists():  # content-addressed: an existing file has these very bytes
            _write_atomic(path, data)
        return StoredImage(
            path=path,
            name=name,
            content_type=content_type,
            width=width,
            height=height,
            size=len(data),
            sha256=digest,
        )

    # --- results --------------------------------------------------------------------------

    async def save_result(
        self, source: Artifact, dest_dir: Path, stem: str, *, metadata: pngmeta.ResultInfo | None = None
    ) -> OutputFile:
        """Download (or write) one vendor artifact to `dest_dir/<stem>.<ext>` now.

        The extension and role come from the bytes: PNG/JPEG/WebP → "image" (or
        "thumbnail" when the vendor said so), binary glTF → "model". A PNG image gets
        `metadata` (with its measured size) as text chunks. Raises `DownloadError`.

        A file of up to 1 MB (every image a vendor sends) stays in memory and is checked,
        stamped and written in one thread hop; a larger one streams to a part file first.
        """
        part = dest_dir / f".{stem}.{secrets.token_hex(4)}.part"
        data: bytes | None = None
        try:
            if source.data is not None:
                if len(source.data) > self.max_result_bytes:
                    raise DownloadError(self._too_big_text(len(source.data)), retryable=False)
                data = source.data
                head, size = data[:16], len(data)
            elif source.url:
                head, size, data = await self._download(source.url, part)
            else:
                raise DownloadError("the vendor returned a file with neither URL nor data", retryable=False)
            kind = sniff(head)
            if kind is None:
                raise DownloadError("the vendor's file is neither an image nor a GLB model", retryable=False)
            content_type, ext = kind
            if content_type == GLB_CONTENT_TYPE:
                _check_glb(head, size)
                role = "model"
            else:
                role = "image" if source.role == "image" else "thumbnail"
            stamp = None
            if metadata is not None and role == "image" and content_type == "image/png":
                seed = source.seed
                stamp = lambda w, h: metadata.fields(w, h, seed=seed)  # noqa: E731
            final = dest_dir / f"{stem}.{ext}"
            measure = content_type != GLB_CONTENT_TYPE
            width, height, size = await asyncio.to_thread(
                self._finish_result, data, part, final, measure=measure, stamp=stamp
            )
        except BaseException:
            if data is None:  # streamed (or failed while streaming): a part file may exist
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(part.unlink, missing_ok=True)
            raise
        _log.info("result saved %s (%s, %d bytes)", final.name, content_type, size)
        return OutputFile(
            path=final,
            filename=final.name,
            content_type=content_type,
            size=size,
            role=role,
            url=self.link_for(final) or source.url,
            width=width,
            height=height,
        )

    def _finish_result(
        self,
        data: bytes | None,
        part: Path,
        final: Path,
        *,
        measure: bool,
        stamp: Callable[[int | None, int | None], dict[str, str]] | None,
    ) -> tuple[int | None, int | None, int]:
        """In a thread: measure an image from its header, stamp a PNG's metadata, and put the
        file in place (written from `data`, or the streamed `part`); (width, height, size)."""
        width = height = None
        if data is None:
            if measure:
                width, height = self._measure(part)
            if stamp is not None:
                stamped = pngmeta.stamp_file(part, stamp(width, height))
                size = stamped if stamped is not None else part.stat().st_size
            else:
                size = part.stat().st_size
            os.replace(part, final)
            return width, height, size
        if measure:
            width, height = self._measure_bytes(data)
        if stamp is not None:
            data = pngmeta.stamp_bytes(data, stamp(width, height), final.name)
        final.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(final, data)
        return width, height, len(data)

    async def _download(self, url: str, part: Path) -> tuple[bytes, int, bytes | None]:
        """Stream `url` under the result cap; (first bytes, size, the bytes when they fit in
        memory — else None and the file is at `part`).

        The vendor's URL gets the user URLs' guard: http(s) only, public addresses only
        (pinned), every redirect hop checked again, at most `_MAX_REDIRECTS` of them.
        """
        shown = _redact(url)
        try:
            current = URL(url)
        except (ValueError, TypeError):
            raise DownloadError("the vendor's result URL is not a valid link", retryable=False) from None
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                if current.scheme not in ("http", "https") or not current.raw_host:
                    _log.warning("result refused, not an http(s) URL: %s", _redact(str(current)))
                    raise DownloadError("the vendor's result URL is not an http(s) link", retryable=False)
                try:
                    targets, host_header, server_hostname = await self._pin(
                        current, allow_private=self.result_allow_private
                    )
                except _PrivateAddressError:
                    _log.warning("result refused, private address: %s", _redact(str(current)))
                    raise DownloadError(
                        "the vendor's result URL points at a private address", retryable=False
                    ) from None
                except _UnresolvableError:
                    _log.warning("result host does not resolve: %s", _redact(str(current)))
                    raise DownloadError("the vendor's result host does not resolve", retryable=True) from None
                headers = {"Host": host_header} if host_header else {}
                resp = await self._connect(targets, headers, server_hostname, self._result_timeout)
                async with resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        current = current.join(URL(location))
                        continue
                    if resp.status != 200:
                        retryable = resp.status >= 500 or resp.status in (408, 425, 429)
                        _log.warning("result download HTTP %d: %s", resp.status, shown)
                        raise DownloadError(
                            f"the result download failed (HTTP {resp.status})", retryable=retryable
                        )
                    if resp.content_length is not None and resp.content_length > self.max_result_bytes:
                        raise DownloadError(self._too_big_text(resp.content_length), retryable=False)
                    return await self._stream_to(resp, part)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            _log.warning("result download failed %s: %s", shown, type(exc).__name__)
            raise DownloadError("the result download was interrupted", retryable=True) from None
        _log.warning("result download: too many redirects: %s", shown)
        raise DownloadError("the vendor's result URL redirects too often", retryable=False)

    async def _stream_to(self, resp: aiohttp.ClientResponse, part: Path) -> tuple[bytes, int, bytes | None]:
        # In memory while it fits in one flush; a larger file goes to `part` in 1 MB writes.
        out: BinaryIO | None = None
        try:
            head, size, buf = b"", 0, bytearray()
            async for chunk in resp.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > self.max_result_bytes:
                    raise DownloadError(self._too_big_text(size), retryable=False)
                if len(head) < 16:
                    head = (head + chunk)[:16]
                buf += chunk
                if len(buf) >= _FLUSH:
                    if out is None:
                        out = await asyncio.to_thread(_open_part, part)
                    await asyncio.to_thread(out.write, buf)
                    buf = bytearray()
            if out is None:
                return head, size, bytes(buf)
            if buf:
                await asyncio.to_thread(out.write, buf)
            return head, size, None
        finally:
            if out is not None:
                await asyncio.to_thread(out.close)

    def _too_big_text(self, size: int) -> str:
        return f"the result is larger than the {self.max_result_bytes // (1024 * 1024)} MB cap ({size} bytes)"

    def _measure(self, path: Path) -> tuple[int, int]:
        with path.open("rb") as f:
            return self._measure_file(f)

    def _measure_bytes(self, data: bytes) -> tuple[int, int]:
        return self._measure_file(io.BytesIO(data))

    def _measure_file(self, f: BinaryIO) -> tuple[int, int]:
        try:
            _, width, height = _verify_image(f, self._max_pixels)
        except (_NotImageError, _TooManyPixelsError):
            raise DownloadError("the vendor's image is damaged or unreadable", retryable=False) from None
        return width, height

    # --- previews -------------------------------------------------------------------------

    async def compose_grid(self, files: Sequence[OutputFile], dest: Path) -> OutputFile:
        """A 2×2 preview of 1–4 images (two side by side), long side ≤ 1024 px, each tile
        numbered 1–4 in its top-left corner to match the U1–U4 buttons.

        JPEG (quality 90) unless `dest` ends in `.png`; the extension is added when missing.
        """
        if not 1 <= len(files) <= 4:
            raise ValueError(f"a grid takes 1 to 4 images, not {len(files)}")
        out = _with_suffix(dest, (".png", ".jpg", ".jpeg"), ".jpg")
        width, height, size = await asyncio.to_thread(_compose, [f.path for f in files], out)
        return OutputFile(
            path=out,
            filename=out.name,
            content_type="image/png" if out.suffix.lower() == ".png" else "image/jpeg",
            size=size,
            role="grid",
            url=self.link_for(out),
            width=width,
            height=height,
        )

    async def model_preview(self, files: Sequence[OutputFile], dest: Path) -> ModelPreview:
        """For a result holding a GLB: its face count, and a shaded PNG view of it at `dest`
        unless the vendor sent a thumbnail. A model that cannot be read gets neither (logged);
        the delivery goes on without them."""
        model = next((f for f in files if f.role == "model"), None)
        if model is None:
            return ModelPreview(None, None)
        if any(f.role == "thumbnail" for f in files):
            try:
                faces = await asyncio.to_thread(_count_faces, model.path)
            except (mesh_preview.MeshError, OSError) as exc:
                _log.info("face count unknown for %s: %s", model.filename, exc)
                return ModelPreview(None, None)
            return ModelPreview(None, faces)
        out = _with_suffix(dest, (".png",), ".png")
        try:
            shot = await mesh_preview.render_preview(model.path, out)
        except (mesh_preview.MeshError, OSError) as exc:
            _log.warning("no preview for the model %s: %s", model.filename, exc)
            return ModelPreview(None, None)
        thumbnail = OutputFile(
            path=out,
            filename=out.name,
            content_type="image/png",
            size=shot.size,
            role="thumbnail",
            url=self.link_for(out),
            width=shot.width,
            height=shot.height,
        )
        return ModelPreview(thumbnail, shot.faces)

    async def thumbnail_under(self, file: OutputFile, limit_bytes: int, dest: Path) -> OutputFile:
        """A downscaled JPEG of `file` of at most `limit_bytes`, for images over a platform's
        attachment limit. Its `url` links to the full-size original. Raises ValueError when
        even a tiny preview does not fit."""
        out = _with_suffix(dest, (".jpg", ".jpeg"), ".jpg")
        width, height, size = await asyncio.to_thread(_shrink_jpeg, file.path, limit_bytes, out)
        return OutputFile(
            path=out,
            filename=out.name,
            content_type="image/jpeg",
            size=size,
            role="thumbnail",
            url=file.url or self.link_for(file.path),
            width=width,
            height=height,
        )


# --- helpers that run in threads --------------------------------------------------------------


async def _read_response_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    if resp.content_length is not None and resp.content_length > cap:
        raise _TooBigError
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        buf += chunk
        if len(buf) > cap:
            raise _TooBigError  # leaving the response unread closes the connection
    return bytes(buf)


def _read_file_capped(path: Path, cap: int) -> bytes:
    with path.open("rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise _TooBigError
    return data


def _decode_image(fp: BinaryIO, max_pixels: int) -> tuple[str, int, int]:
    """(Pillow format, width, height) after a full decode; only PNG, JPEG and WebP pass."""
    # Our own pixel cap is checked right after the header is parsed, before any decoding;
    # Pillow's bomb guard still stops the absurd cases inside open().
    try:
        with Image.open(fp, formats=tuple(_IMAGE_FORMATS)) as img:
            if img.width * img.height > max_pixels:
                raise _TooManyPixelsError
            img.load()
            fmt, width, height = img.format, img.width, img.height
    except Image.DecompressionBombError:
        raise _TooManyPixelsError from None
    except _TooManyPixelsError:
        raise
    except Exception:  # Pillow raises many types on malformed data
        raise _NotImageError from None
    if fmt not in _IMAGE_FORMATS:
        raise _NotImageError
    return fmt, width, height


def _verify_image(fp: BinaryIO, max_pixels: int) -> tuple[str, int, int]:
    """(Pillow format, width, height) from the header, for vendor results: `verify()` walks
    the file's structure (a PNG's chunks and their checksums) without decoding the pixels,
    which costs a fraction of a full decode on every delivered image."""
    try:
        with Image.open(fp, formats=tuple(_IMAGE_FORMATS)) as img:
            fmt, width, height = img.format, img.width, img.height
            if width * height > max_pixels:
                raise _TooManyPixelsError
            img.verify()
    except Image.DecompressionBombError:
        raise _TooManyPixelsError from None
    except _TooManyPixelsError:
        raise
    except Exception:  # Pillow raises many types on malformed data
        raise _NotImageError from None
    if fmt not in _IMAGE_FORMATS:
        raise _NotImageError
    return fmt, width, height


def _check_glb(head: bytes, size: int) -> None:
    # GLB header: magic, version, total length; a short file was cut off in transit.
    if len(head) < 12:
        raise DownloadError("the vendor's GLB model is truncated", retryable=True)
    version, length = struct.unpack("<II", head[4:12])
    if version != 2:
        raise DownloadError(f"the vendor's GLB model has unsupported version {version}", retryable=False)
    if length != size:
        raise DownloadError("the vendor's GLB model is truncated", retryable=True)


def _open_part(part: Path) -> BinaryIO:
    part.parent.mkdir(parents=True, exist_ok=True)
    return part.open("wb")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _with_suffix(dest: Path, allowed: tuple[str, ...], default: str) -> Path:
    return dest if dest.suffix.lower() in allowed else dest.with_name(dest.name + default)


def _flatten(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def _save(img: Image.Image, out: Path) -> int:
    buf = io.BytesIO()
    if out.suffix.lower() == ".png":
        img.save(buf, format="PNG", optimize=False)
    else:
        img.save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    _write_atomic(out, data)
    return len(data)


def _compose(paths: Sequence[Path], out: Path) -> tuple[int, int, int]:
    images: list[Image.Image] = []
    for path in paths:
        with Image.open(path) as opened:
            images.append(_flatten(opened, _GRID_BACKGROUND))
    cols = 1 if len(images) == 1 else 2
    rows = 1 if len(images) <= 2 else 2
    cell_w = max(i.width for i in images)
    cell_h = max(i.height for i in images)
    scale = min(1.0, _GRID_LONG_SIDE / max(cols * cell_w, rows * cell_h))
    cell_w, cell_h = max(1, int(cell_w * scale)), max(1, int(cell_h * scale))
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), _GRID_BACKGROUND)
    for index, img in enumerate(images):
        fitted = ImageOps.contain(img, (cell_w, cell_h), Image.Resampling.LANCZOS)
        col, row = index % cols, index // cols
        x = col * cell_w + (cell_w - fitted.width) // 2
        y = row * cell_h + (cell_h - fitted.height) // 2
        canvas.paste(fitted, (x, y))
        if len(images) > 1:  # numbers pair tiles with U1–U4; a lone image has no buttons to match
            bx, by, side = badge_box(fitted.width, fitted.height)
            badge = grid_badge(index + 1, side)
            canvas.paste(badge, (x + bx, y + by), mask=badge.getchannel("A"))
    return canvas.width, canvas.height, _save(canvas, out)


def badge_box(tile_width: int, tile_height: int) -> tuple[int, int, int]:
    """Where a tile's number badge goes: (x, y) from the tile's top-left corner, and its side."""
    side = max(14, round(min(tile_width, tile_height) * 0.09))
    margin = max(2, side // 4)
    return margin, margin, side


def grid_badge(number: int, side: int) -> Image.Image:
    """The RGBA badge for tile `number`: a white digit on a dark rounded square."""
    badge = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(badge)
    draw.rounded_rectangle((0, 0, side - 1, side - 1), radius=max(2, side // 5), fill=_BADGE_FILL)
    font = ImageFont.load_default(size=max(8, round(side * 0.7)))
    draw.text((side / 2, side / 2), str(number), font=font, fill=_BADGE_INK, anchor="mm")
    return badge


def _count_faces(path: Path) -> int:
    return mesh_preview.parse_glb(path.read_bytes()).faces


def _encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _shrink_jpeg(path: Path, limit: int, out: Path) -> tuple[int, int, int]:
    with Image.open(path) as img:
        source = _flatten(img, (255, 255, 255))
    side = min(max(source.size), _THUMB_START_SIDE)
    while side >= _THUMB_MIN_SIDE:
        resized = ImageOps.contain(source, (side, side), Image.Resampling.LANCZOS)
        size = 0
        for quality in (85, 70, 55):
            data = _encode_jpeg(resized, quality)
            size = len(data)
            if size <= limit:
                _write_atomic(out, data)
                return resized.width, resized.height, size
        # Bytes scale roughly with the pixel count: aim for the limit, with some margin.
        side = min(int(side * 0.85), int(side * math.sqrt(limit / size) * 0.9))
    raise ValueError(f"no JPEG preview fits in {limit} bytes")


def _redact(url: str) -> str:
    # Vendor result URLs carry signatures in their query; logs get scheme, host and path only.
    try:
        return str(URL(url).with_query(None).with_fragment(None).with_user(None))
    except (ValueError, TypeError):
        return "<unparseable url>"
