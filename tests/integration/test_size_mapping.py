"""Size mapping for every vendor: whatever aspect a user asks for, each route is sent a size its
emulator accepts, and the size produced is the one the reply states."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.catalog import ASPECT_CHOICES
from bot.commands import ImagineCommand
from bot.params import parse_imagine, size_for_aspect
from bot.router import map_size
from providers.base import Kind
from providers.sandbox.aimlapi import PRESET_SIZES
from tests.support.core import MEMBER, RecordingReply, running_app


async def test_every_image_route_accepts_the_mapped_size_for_every_aspect(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        routes = app.router.catalog.for_kind(Kind.IMAGE)
        assert len(routes) == 6  # all six text-to-image routes are in the catalog
        for aspect in ASPECT_CHOICES:
            spec = parse_imagine(ImagineCommand(prompt=f"size check --ar {aspect}"), app.router.catalog)
            for route in routes:
                request = app.router.request_for(route, spec, image_url=None, webhook_url=None)
                if route.sizes:
                    assert (request.width, request.height) in route.sizes
                else:
                    assert route.min_side <= min(request.width, request.height)
                    assert max(request.width, request.height) <= route.max_side
                # the emulator validates sizes as the vendor documents them (400 otherwise)
                submission = await app.router.providers[route.vendor].submit(request)
                assert submission.handle.vendor == route.vendor, (aspect, route.key)


async def test_mapping_keeps_the_orientation(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        for aspect in ("16:9", "9:16", "1:1", "3:2", "2:3"):
            w, h = (int(x) for x in aspect.split(":"))
            want = size_for_aspect(w, h)
            for route in app.router.catalog.for_kind(Kind.IMAGE):
                mw, mh = map_size(route, *want)
                assert (mw > mh, mw < mh) == (want[0] > want[1], want[0] < want[1]), (aspect, route.key)


async def test_the_reply_states_the_size_actually_produced(tmp_path: Path) -> None:
    async with running_app(tmp_path) as app:
        # Runware only makes its 17 sizes: 16:9 (1024×576) becomes 1280×768 (5:3, the nearest ratio) there.
        reply = RecordingReply()
        await app.engine.submit(
            MEMBER, ImagineCommand(prompt="wide harbour --ar 16:9 --model runware"), reply
        )
        await reply.wait()
        image = reply.results[0].files[0]
        assert (image.width, image.height) == (1280, 768)
        assert "1280×768" in reply.results[0].text


async def test_when_a_vendor_snaps_to_its_own_size_the_reply_states_the_file_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The vendor documents no pixel size for `portrait_16_9`; should it answer 768×1280 (as it
    # does for landscape_16_9), the caption follows the delivered file, not the size asked for.
    monkeypatch.setitem(PRESET_SIZES, "portrait_16_9", (768, 1280))
    async with running_app(tmp_path) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, ImagineCommand(prompt="tall tower --ar 9:16 --model aimlapi"), reply)
        await reply.wait()
        (result,) = reply.results
        image = result.files[0]
        assert (image.width, image.height) == (768, 1280)
        assert "768×1280" in result.text and "576×1024" not in result.text
