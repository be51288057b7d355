"""PNG text metadata: what made a delivered image, written into the file as image tools expect.

The chunks are spliced into the byte stream right after IHDR, with their CRCs computed here;
the pixel data is never decoded or re-encoded, so the image stays bit-identical. Latin-1 text
goes in `tEXt`, anything else (中文, emoji) in UTF-8 `iTXt`. A file that is not a well-formed
PNG is left untouched. Besides one chunk per field, a `parameters` chunk carries the
Stable-Diffusion-WebUI style summary that PNG-info viewers and image sites read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.errors import BotError

__all__ = [
    "PNG_SIGNATURE",
    "NotPNGError",
    "ResultInfo",
    "add_text",
    "stamp_bytes",
    "stamp_file",
    "stamp_png",
    "text_chunk",
]

_log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = frozenset({b"tEXt", b"iTXt", b"zTXt"})
SOFTWARE = "imagine-bot"


class NotPNGError(BotError):
    """The bytes are not a well-formed PNG stream (signature, chunk lengths, IHDR first)."""


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """What made a result, for its PNG metadata; `route` is the `vendor:model` key."""

    prompt: str
    negative: str | None
    seed: int | None
    route: str
    job_id: str

    def fields(self, width: int | None, height: int | None, *, seed: int | None = None) -> dict[str, str]:
        """The text chunks for one file: its measured size, and the vendor's per-image seed when
        it reported one (else the job's)."""
        vendor, _, model = self.route.partition(":")
        used_seed = seed if seed is not None else self.seed
        size = f"{width}x{height}" if width and height else ""
        out = {
            "Prompt": self.prompt,
            "Negative prompt": self.negative or "",
            "Seed": "" if used_seed is None else str(used_seed),
            "Size": size,
            "Model": model,
            "Vendor": vendor,
            "Job ID": self.job_id,
            "Software": SOFTWARE,
        }
        summary = [f"{k}: {out[k]}" for k in ("Seed", "Size", "Model", "Vendor", "Job ID") if out[k]]
        lines = [self.prompt]
        if self.negative:
            lines.append(f"Negative prompt: {self.negative}")
        lines.append(", ".join(summary))
        out["parameters"] = "\n".join(lines)
        return {k: v for k, v in out.items() if v}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _keyword(key: str) -> bytes:
    # PNG keywords: 1–79 printable Latin-1 characters, no leading, trailing or double spaces.
    try:
        raw = key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG keyword {key!r} is not Latin-1") from None
    if not 1 <= len(raw) <= 79 or key != key.strip() or "  " in key or not key.isprintable():
        raise ValueError(f"invalid PNG keyword {key!r}")
    return raw


def text_chunk(key: str, value: str) -> bytes:
    """One `tEXt` chunk when `value` is Latin-1 without NULs, else an uncompressed `iTXt`."""
    keyword = _keyword(key)
    if "\x00" not in value:
        try:
            return _chunk(b"tEXt", keyword + b"\x00" + value.encode("latin-1"))
        except UnicodeEncodeError:
            pass
    # iTXt: keyword, NUL, compression flag 0, method 0, empty language tag, NUL, empty
    # translated keyword, NUL, then the UTF-8 text, which may hold no NUL either.
    return _chunk(b"iTXt", keyword + b"\x00\x00\x00\x00\x00" + value.replace("\x00", "").encode("utf-8"))


def _chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of every chunk, end exclusive; raises NotPNGError when malformed."""
    if not data.startswith(PNG_SIGNATURE):
        raise NotPNGError("no PNG signature")
    out: list[tuple[bytes, int, int]] = []
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise NotPNGError("truncated chunk header")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise NotPNGError("truncated chunk")
        out.append((kind, pos, end))
        pos = end
        if kind == b"IEND":
            break
    if not out or out[0][0] != b"IHDR" or out[-1][0] != b"IEND":
        raise NotPNGError("IHDR must come first and IEND last")
    return out


def _keyword_of(data: bytes, start: int, end: int) -> bytes:
    payload = data[start + 8 : end - 4]
    return payload.split(b"\x00", 1)[0]


def add_text(data: bytes, info: Mapping[str, str]) -> bytes:
    """`data` with `info` as text chunks right after IHDR; an existing text chunk with one of
    these keywords is dropped, so a field is never there twice. Raises NotPNGError."""
    chunks = _chunks(data)
    new = b"".join(text_chunk(k, v) for k, v in info.items())
    keywords = {_keyword(k) for k in info}
    _, _, ihdr_end = chunks[0]
    kept = [
        data[start:end]
        for kind, start, end in chunks[1:]
        if not (kind in _TEXT_CHUNKS and _keyword_of(data, start, end) in keywords)
    ]
    return data[:ihdr_end] + new + b"".join(kept)


def stamp_bytes(data: bytes, info: Mapping[str, str], name: str) -> bytes:
    """`data` with `info` added (see `add_text`), or `data` unchanged when it is not a
    well-formed PNG (logged with `name`). Raises ValueError on an invalid keyword."""
    try:
        return add_text(data, info)
    except NotPNGError as exc:
        _log.info("png metadata skipped for %s: %s", name, exc)
        return data


def stamp_file(path: Path, info: Mapping[str, str]) -> int | None:
    """`stamp_png` without the thread hop, for code already on a worker thread."""
    data = path.read_bytes()
    try:
        stamped = add_text(data, info)
    except NotPNGError as exc:
        _log.info("png metadata skipped for %s: %s", path.name, exc)
        return None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.meta")
    try:
        tmp.write_bytes(stamped)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(stamped)


async def stamp_png(path: Path, info: Mapping[str, str]) -> int | None:
    """Write `info` into the PNG at `path` (in a thread); returns the new file size, or None
    when the file is not a PNG and was left as is. Raises ValueError on an invalid keyword."""
    return await asyncio.to_thread(stamp_file, path, info)
