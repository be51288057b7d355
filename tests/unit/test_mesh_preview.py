"""3D results come with a picture: a GLB is parsed and rendered as a shaded view when the vendor
sends no thumbnail, and the caption says the face count. Malformed files give a typed error and
the delivery goes on without the picture."""

from __future__ import annotations

import json
import struct
from array import array
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.commands import Model3DCommand
from bot.errors import BotError
from bot.media import MediaStore, ModelPreview
from bot.mesh_preview import MeshError, parse_glb, render, render_preview
from bot.signing import Signer
from providers.base import Artifact
from providers.sandbox.common import render_glb
from providers.sandbox.pixazo import PixazoEmulator
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app

CUBE_POSITIONS = [(x, y, z) for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]
# 12 triangles, two per face of the cube (vertex i has x = bit 2, y = bit 1, z = bit 0).
CUBE_INDICES = [
    *(0, 1, 3, 0, 3, 2),  # x = -1
    *(4, 6, 7, 4, 7, 5),  # x = +1
    *(0, 4, 5, 0, 5, 1),  # y = -1
    *(2, 3, 7, 2, 7, 6),  # y = +1
    *(0, 2, 6, 0, 6, 4),  # z = -1
    *(1, 5, 7, 1, 7, 3),  # z = +1
]
TETRA_POSITIONS = [(1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, -1.0, -1.0)]
TETRA_INDICES = [0, 1, 2, 0, 3, 1, 0, 2, 3, 1, 3, 2]


def glb(
    positions: list[tuple[float, float, float]],
    indices: list[int] | None,
    *,
    index_type: str = "H",
    node: dict[str, Any] | None = None,
    mode: int | None = None,
    stride: int | None = None,
) -> bytes:
    """A binary glTF 2.0 file with one primitive; `stride` pads each position to that many bytes."""
    if stride:
        pos = b"".join(struct.pack("<3f", *p) + b"\0" * (stride - 12) for p in positions)
    else:
        pos = array("f", [c for p in positions for c in p]).tobytes()
    idx = array(index_type, indices or []).tobytes()
    buf = pos + b"\0" * (-len(pos) % 4) + idx
    idx_offset = len(pos) + (-len(pos) % 4)
    buf += b"\0" * (-len(buf) % 4)
    prim: dict[str, Any] = {"attributes": {"POSITION": 0}}
    views: list[dict[str, Any]] = [
        {"buffer": 0, "byteLength": len(pos), **({"byteStride": stride} if stride else {})}
    ]
    accessors: list[dict[str, Any]] = [
        {"bufferView": 0, "componentType": 5126, "count": len(positions), "type": "VEC3"}
    ]
    if indices is not None:
        prim["indices"] = 1
        views.append({"buffer": 0, "byteOffset": idx_offset, "byteLength": len(idx)})
        code = {"B": 5121, "H": 5123, "I": 5125}[index_type]
        accessors.append({"bufferView": 1, "componentType": code, "count": len(indices), "type": "SCALAR"})
    if mode is not None:
        prim["mode"] = mode
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, **(node or {})}],
        "meshes": [{"primitives": [prim]}],
        "buffers": [{"byteLength": len(buf)}],
        "bufferViews": views,
        "accessors": accessors,
    }
    return pack_glb(doc, buf)


def pack_glb(doc: dict[str, Any], buf: bytes) -> bytes:
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(buf)
    return (
        struct.pack("<4sII", b"glTF", 2, total)
        + struct.pack("<I4s", len(js), b"JSON")
        + js
        + struct.pack("<I4s", len(buf), b"BIN\0")
        + buf
    )


def lit_pixels(image: Image.Image) -> int:
    """Pixels that are not the background."""
    background = image.getpixel((0, 0))
    return sum(
        count for count, color in image.getcolors(image.width * image.height) or [] if color != background
    )


@pytest.mark.parametrize("index_type", ["B", "H", "I"])
def test_a_cube_has_twelve_faces_with_any_index_width(index_type: str) -> None:
    assert parse_glb(glb(CUBE_POSITIONS, CUBE_INDICES, index_type=index_type)).faces == 12


def test_a_tetrahedron_has_four_faces() -> None:
    assert parse_glb(glb(TETRA_POSITIONS, TETRA_INDICES)).faces == 4


def test_without_indices_the_vertices_are_a_triangle_list() -> None:
    flat = [CUBE_POSITIONS[i] for i in CUBE_INDICES]
    assert parse_glb(glb(flat, None)).faces == 12


def test_strips_fans_and_interleaved_positions_are_read() -> None:
    square = [(0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0)]
    assert parse_glb(glb(square, [0, 1, 2, 3], mode=5)).faces == 2  # strip
    assert parse_glb(glb(square, [0, 1, 3, 2], mode=6)).faces == 2  # fan
    assert parse_glb(glb(TETRA_POSITIONS, TETRA_INDICES, stride=24)).faces == 4


def test_the_sandbox_model_is_read() -> None:
    assert parse_glb(render_glb()).faces > 0


def test_a_render_is_shaded_not_a_flat_silhouette() -> None:
    image = render(parse_glb(glb(CUBE_POSITIONS, CUBE_INDICES)), 128)
    assert image.size == (128, 128)
    assert lit_pixels(image) > 128 * 128 // 8  # the cube fills a good part of the frame
    # Three visible faces of the cube, lit differently: several distinct bright tones.
    tones = {c for n, c in image.getcolors(128 * 128) or [] if n > 200 and c != image.getpixel((0, 0))}
    assert len(tones) >= 3


def test_the_node_transform_is_applied() -> None:
    # A cube squashed to a tenth of its height is drawn as a flat slab: fewer pixels.
    plain = lit_pixels(render(parse_glb(glb(CUBE_POSITIONS, CUBE_INDICES)), 128))
    flat = lit_pixels(render(parse_glb(glb(CUBE_POSITIONS, CUBE_INDICES, node={"scale": [1, 0.1, 1]})), 128))
    assert flat < plain * 0.7


def test_a_big_mesh_is_decimated_for_drawing_but_counted_whole() -> None:
    mesh = parse_glb(glb(TETRA_POSITIONS, TETRA_INDICES * 3000, index_type="I"))
    assert mesh.faces == 12_000
    assert lit_pixels(render(mesh, 64, max_faces=100)) > 0


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"PK\x03\x04 a zip", "not glTF"),
        (glb(CUBE_POSITIONS, CUBE_INDICES)[:60], "truncated"),
        (b"glTF" + struct.pack("<II", 1, 20) + b"\0" * 8, "version 1"),
        (glb(CUBE_POSITIONS, [0, 1, 99]), "index out of range"),
        (glb([(float("nan"), 0.0, 0.0)] * 3, [0, 1, 2]), "NaN"),
        (pack_glb({"asset": {"version": "2.0"}, "meshes": []}, b""), "no triangles"),
        (
            pack_glb(
                {
                    "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
                    "accessors": [{"componentType": 5126, "count": 3, "type": "VEC3"}],
                },
                b"",
            ),
            "no buffer view (Draco)",
        ),
        (
            pack_glb(
                {
                    "scenes": [{"nodes": [0]}],
                    "nodes": [{"children": [0]}],
                    "meshes": [],
                },
                b"",
            ),
            "node cycle",
        ),
        (pack_glb({"scenes": [{"nodes": ["x"]}]}, b""), "junk node index"),
        (
            struct.pack("<4sIII4s", b"glTF", 2, 20 + 200_000, 200_000, b"JSON")
            + b"[" * 100_000
            + b"]" * 100_000,
            "JSON nested past the recursion limit",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "glb",
)
def test_a_malformed_glb_is_a_typed_error(data: bytes, why: str) -> None:
    with pytest.raises(MeshError) as caught:
        parse_glb(data)
    assert isinstance(caught.value, BotError), why


async def test_a_preview_is_written_as_png_with_the_face_count(tmp_path: Path) -> None:
    source = tmp_path / "m.glb"
    source.write_bytes(glb(TETRA_POSITIONS, TETRA_INDICES))
    shot = await render_preview(source, tmp_path / "view.png", size=200)
    assert (shot.faces, shot.width, shot.height) == (4, 200, 200)
    assert shot.size == shot.path.stat().st_size
    with Image.open(shot.path) as img:
        assert (img.format, img.size) == ("PNG", (200, 200))


async def test_a_3d_result_without_thumbnail_comes_with_a_rendered_view_and_its_face_count(
    tmp_path: Path,
) -> None:
    sandbox = fast_sandbox()
    emulator = sandbox.emulators["pixazo"]
    assert isinstance(emulator, PixazoEmulator)
    emulator.model3d_shape = "media_url"  # the webhook example: a GLB and no thumbnail
    async with running_app(tmp_path, sandbox) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, Model3DCommand(prompt="a wooden chair"), reply)
        await reply.wait()
        (result,) = reply.results
        model = next(f for f in result.files if f.role == "model")
        (view,) = [f for f in result.files if f.role == "thumbnail"]
        assert view.content_type == "image/png" and view.path.exists()
        with Image.open(view.path) as img:
            assert lit_pixels(img.convert("RGB")) > 0
        faces = parse_glb(model.path.read_bytes()).faces
        assert f"{faces:,} faces" in result.text


async def test_a_vendor_thumbnail_is_kept_and_no_view_is_rendered(tmp_path: Path) -> None:
    async with running_app(tmp_path, fast_sandbox()) as app:
        reply = RecordingReply()
        await app.engine.submit(MEMBER, Model3DCommand(prompt="a wooden chair"), reply)
        await reply.wait()
        (result,) = reply.results
        thumbs = [f for f in result.files if f.role == "thumbnail"]
        assert len(thumbs) == 1 and "-view" not in thumbs[0].filename
        assert " faces" in result.text


async def test_an_unreadable_model_gets_neither_view_nor_face_count(tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        store = MediaStore(
            session=session,
            files_dir=tmp_path,
            signer=Signer(b"k" * 32),
            max_input_bytes=1 << 20,
            max_result_bytes=1 << 20,
            allow_private=True,
        )
        broken = bytearray(glb(CUBE_POSITIONS, CUBE_INDICES))
        broken[20:24] = b"\xff\xfe\xfd\xfc"  # the header passes, the JSON chunk is garbage
        model = await store.save_result(Artifact(data=bytes(broken)), tmp_path / "jobs/j", "j-0")
        assert model.role == "model"
        assert await store.model_preview([model], tmp_path / "jobs/j/j-view") == ModelPreview(None, None)
        assert not (tmp_path / "jobs/j/j-view.png").exists()
        good = await store.save_result(
            Artifact(data=glb(CUBE_POSITIONS, CUBE_INDICES)), tmp_path / "jobs/k", "k-0"
        )
        preview = await store.model_preview([good], tmp_path / "jobs/k/k-view")
        assert preview.faces == 12 and preview.thumbnail is not None
        assert (preview.thumbnail.role, preview.thumbnail.filename) == ("thumbnail", "k-view.png")
