"""PNG metadata: what made a result is written into the delivered PNG as text chunks, without
touching its pixels, readable by Pillow (and so by the image tools built like it)."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, PngImagePlugin

import bot.pngmeta as pngmeta
from bot.commands import ImagineCommand
from bot.media import MediaStore
from bot.pngmeta import NotPNGError, ResultInfo, add_text, stamp_png
from bot.signing import Signer
from providers.base import Artifact
from tests.support.core import MEMBER, RecordingReply, running_app

INFO = ResultInfo(
    prompt="一只戴帽子的猫 🐱 au café",
    negative="blur, text",
    seed=1234,
    route="aimlapi:hunyuan/hunyuan-image-v3-text-to-image",
    job_id="abc123",
)


def _png(size: tuple[int, int] = (32, 24), **text: str) -> bytes:
    buf = io.BytesIO()
    meta = PngImagePlugin.PngInfo()
    for k, v in text.items():
        meta.add_text(k, v)
    Image.new("RGB", size, (10, 120, 200)).save(buf, format="PNG", pnginfo=meta)
    return buf.getvalue()


def _chunk_types(data: bytes) -> list[bytes]:
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return out


def _crcs_hold(data: bytes) -> bool:
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        body = data[pos + 4 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(body) != crc:
            return False
        pos += 12 + length
    return True


def test_every_field_is_readable_by_pillow_including_chinese_and_emoji() -> None:
    stamped = add_text(_png(), INFO.fields(32, 24))
    with Image.open(io.BytesIO(stamped)) as img:
        text = dict(img.text)  # type: ignore[attr-defined]
    assert text["Prompt"] == "一只戴帽子的猫 🐱 au café"
    assert text["Negative prompt"] == "blur, text"
    assert text["Seed"] == "1234"
    assert text["Size"] == "32x24"
    assert text["Model"] == "hunyuan/hunyuan-image-v3-text-to-image"
    assert text["Vendor"] == "aimlapi"
    assert text["Job ID"] == "abc123"
    assert text["parameters"] == (
        "一只戴帽子的猫 🐱 au café\nNegative prompt: blur, text\n"
        "Seed: 1234, Size: 32x24, Model: hunyuan/hunyuan-image-v3-text-to-image, Vendor: aimlapi, Job ID: abc123"
    )


def test_latin1_text_goes_in_text_chunks_and_other_scripts_in_itxt() -> None:
    stamped = add_text(_png(), {"Seed": "7", "Prompt": "café", "Title": "猫"})
    types = _chunk_types(stamped)
    assert types[:4] == [b"IHDR", b"tEXt", b"tEXt", b"iTXt"]


def test_the_chunks_sit_after_ihdr_with_valid_crcs_and_the_pixels_untouched() -> None:
    original = _png((40, 30))
    stamped = add_text(original, INFO.fields(40, 30))
    assert _crcs_hold(stamped)
    with Image.open(io.BytesIO(stamped)) as img:
        img.verify()  # Pillow checks every chunk's CRC here
    # Bit-identical image data: removing the new chunks gives back the original bytes.
    ihdr_end = 8 + 12 + 13
    tail = original[ihdr_end:]
    assert stamped[:ihdr_end] == original[:ihdr_end] and stamped.endswith(tail)
    with Image.open(io.BytesIO(stamped)) as a, Image.open(io.BytesIO(original)) as b:
        assert a.tobytes() == b.tobytes()


def test_a_field_already_in_the_file_is_replaced_not_repeated() -> None:
    stamped = add_text(_png(Prompt="vendor's words", Comment="keep me"), {"Prompt": "ours"})
    with Image.open(io.BytesIO(stamped)) as img:
        assert dict(img.text) == {"Prompt": "ours", "Comment": "keep me"}  # type: ignore[attr-defined]
    assert _chunk_types(stamped).count(b"tEXt") == 2


def test_empty_fields_are_left_out() -> None:
    fields = ResultInfo("fox", None, None, "novita:hunyuan-image-3", "j1").fields(None, None)
    assert "Negative prompt" not in fields and "Seed" not in fields and "Size" not in fields
    assert fields["parameters"] == "fox\nModel: hunyuan-image-3, Vendor: novita, Job ID: j1"


def test_the_vendors_per_image_seed_wins_over_the_jobs() -> None:
    assert INFO.fields(8, 8, seed=99)["Seed"] == "99"


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8\xff\xe0 a jpeg", b"", _png()[:40], _png()[:8] + _png()[33:]],
    ids=["jpeg", "empty", "truncated", "no IHDR"],
)
def test_a_file_that_is_not_a_whole_png_is_refused(data: bytes) -> None:
    with pytest.raises(NotPNGError):
        add_text(data, {"Prompt": "x"})


async def test_stamping_a_non_png_file_leaves_it_as_is(tmp_path: Path) -> None:
    path = tmp_path / "result.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())
    assert await stamp_png(path, {"Prompt": "x"}) is None
    assert path.read_bytes() == buf.getvalue()


async def test_stamping_runs_off_the_event_loop_and_returns_the_new_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = asyncio.to_thread

    async def spy(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append(func.__name__)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(pngmeta.asyncio, "to_thread", spy)
    path = tmp_path / "r.png"
    path.write_bytes(_png())
    size = await stamp_png(path, {"Prompt": "中文"})
    assert calls == ["stamp_file"]
    assert size == path.stat().st_size
    with Image.open(path) as img:
        assert img.text == {"Prompt": "中文"}  # type: ignore[attr-defined]


async def test_an_invalid_keyword_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        add_text(_png(), {" leading": "x"})


async def test_saved_png_results_carry_the_metadata_and_their_true_size(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        store = MediaStore(
            session=session,
            files_dir=tmp_path,
            signer=Signer(b"k" * 32),
            max_input_bytes=1 << 20,
            max_result_bytes=1 << 20,
            allow_private=True,
        )
        out = await store.save_result(
            Artifact(data=_png((64, 48)), seed=5), tmp_path / "jobs/j", "j-0", metadata=INFO
        )
        assert out.size == out.path.stat().st_size
        with Image.open(out.path) as img:
            text = dict(img.text)  # type: ignore[attr-defined]
        assert (text["Prompt"], text["Seed"], text["Size"], text["Job ID"]) == (
            INFO.prompt,
            "5",
            "64x48",
            "abc123",
        )
        # A JPEG result is delivered as the vendor made it.
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="JPEG")
        jpeg = await store.save_result(
            Artifact(data=buf.getvalue()), tmp_path / "jobs/j", "j-1", metadata=INFO
        )
        assert jpeg.path.read_bytes() == buf.getvalue()


async def test_every_delivered_png_says_what_made_it(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        reply = RecordingReply()
        ticket = await app.engine.submit(
            MEMBER, ImagineCommand(prompt="水墨画的山 --no fog --seed 42 --n 2 --model aimlapi"), reply
        )
        await reply.wait()
        (result,) = reply.results
        images = [f for f in result.files if f.role == "image"]
        assert len(images) == 2
        for image in images:
            assert image.content_type == "image/png"
            with Image.open(image.path) as img:
                text = dict(img.text)  # type: ignore[attr-defined]
            assert text["Prompt"] == "水墨画的山"
            assert text["Negative prompt"] == "fog"
            assert text["Seed"] == "42"
            assert text["Size"] == f"{image.width}x{image.height}"
            assert (text["Vendor"], text["Model"]) == ("aimlapi", "hunyuan/hunyuan-image-v3-text-to-image")
            assert text["Job ID"] == ticket.job_id
            assert image.size == image.path.stat().st_size
