"""An edit keeps its input's aspect ratio unless --ar or --size says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bot.commands import EditCommand, ImageRef
from tests.support.core import MEMBER, RecordingReply, running_app


def _input(tmp_path: Path, size: tuple[int, int]) -> ImageRef:
    path = tmp_path / "input.png"
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return ImageRef(path=str(path))


async def _edited_size(tmp_path: Path, instruction: str, size: tuple[int, int]) -> tuple[int, int]:
    async with running_app(tmp_path) as app:
        reply = RecordingReply()
        await app.engine.submit(
            MEMBER, EditCommand(image=_input(tmp_path, size), instruction=instruction), reply
        )
        await reply.wait()
    assert not reply.failures, reply.failures
    image = next(f for f in reply.results[0].files if f.role == "image")
    with Image.open(image.path) as im:
        return im.size


async def test_a_wide_input_comes_back_wide(tmp_path: Path) -> None:
    width, height = await _edited_size(tmp_path, "make it night", (1600, 900))
    assert width / height == pytest.approx(16 / 9, rel=0.08)


async def test_a_tall_input_comes_back_tall(tmp_path: Path) -> None:
    width, height = await _edited_size(tmp_path, "make it night", (600, 900))
    assert width / height == pytest.approx(2 / 3, rel=0.08)


async def test_an_explicit_aspect_wins_over_the_input(tmp_path: Path) -> None:
    width, height = await _edited_size(tmp_path, "make it night --ar 1:1", (1600, 900))
    assert width == height
