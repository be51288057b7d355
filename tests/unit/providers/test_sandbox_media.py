"""What the sandbox delivers looks deliberate: prompts in any script render (or say plainly which
characters could not), edits come from their input, and 3D jobs are closed, lit, painted meshes
that depend on the prompt. GLB files are parsed here as a viewer would read them."""

from __future__ import annotations

import io
import itertools
import json
import math
import struct
from collections import Counter
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from providers.sandbox.media import (
    FONT_DIR,
    FONT_FILES,
    font_for,
    missing_glyphs,
    render_edit,
    render_glb,
    render_png,
    render_preview,
)

# --- GLB reading ---------------------------------------------------------------------------


def parse_glb(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON chunk and the BIN chunk of a binary glTF, checking the container."""
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<I4s", data, 20 + json_len)
    assert bin_type == b"BIN\0"
    binary = data[28 + json_len : 28 + json_len + bin_len]
    assert len(binary) == bin_len == gltf["buffers"][0]["byteLength"]
    return gltf, binary


def accessor(gltf: dict[str, Any], binary: bytes, index: int) -> list[Any]:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    fmt = {5126: "f", 5125: "I", 5123: "H"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3}[acc["type"]]
    values = struct.unpack_from(f"<{acc['count'] * width}{fmt}", binary, view.get("byteOffset", 0))
    if width == 1:
        return list(values)
    return [tuple(values[i : i + width]) for i in range(0, len(values), width)]


def mesh_of(
    data: bytes,
) -> tuple[dict[str, Any], list[tuple[float, ...]], list[tuple[float, ...]], list[int]]:
    gltf, binary = parse_glb(data)
    [primitive] = gltf["meshes"][0]["primitives"]
    positions = accessor(gltf, binary, primitive["attributes"]["POSITION"])
    normals = accessor(gltf, binary, primitive["attributes"]["NORMAL"])
    indices = accessor(gltf, binary, primitive["indices"])
    return gltf, positions, normals, indices


def directed_edges(positions: list[tuple[float, ...]], indices: list[int]) -> Counter[tuple[int, int]]:
    """Edges between welded vertices (same position = same vertex, as split normals duplicate
    them), each triangle contributing a→b, b→c, c→a."""
    weld: dict[tuple[float, ...], int] = {}
    ids = [weld.setdefault(p, len(weld)) for p in positions]
    edges: Counter[tuple[int, int]] = Counter()
    for t in range(0, len(indices), 3):
        a, b, c = (ids[i] for i in indices[t : t + 3])
        assert len({a, b, c}) == 3, "degenerate triangle"
        edges.update([(a, b), (b, c), (c, a)])
    return edges


PROMPTS = [
    "a wooden chair",
    "a round table",
    "a pine tree",
    "a small house",
    "a snowman",
    "a strange relic",
    "空",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_mesh_is_closed_and_consistently_wound(prompt: str) -> None:
    _gltf, positions, _normals, indices = mesh_of(render_glb(prompt))
    edges = directed_edges(positions, indices)
    undirected = Counter(tuple(sorted(e)) for e in edges.elements())
    # closed: every edge is shared by exactly two triangles ...
    assert set(undirected.values()) == {2}
    # ... which run along it in opposite directions (a consistent, outward winding)
    assert all(edges[(b, a)] == 1 for (a, b) in edges)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_mesh_has_unit_normals_pointing_out_and_a_pbr_material(prompt: str) -> None:
    gltf, positions, normals, indices = mesh_of(render_glb(prompt))
    assert len(normals) == len(positions)
    assert all(math.isclose(math.hypot(*n), 1.0, rel_tol=1e-4) for n in normals)
    # outward: the triangles' signed volume is positive
    volume = 0.0
    for t in range(0, len(indices), 3):
        a, b, c = (positions[i] for i in indices[t : t + 3])
        volume += (
            a[0] * (b[1] * c[2] - b[2] * c[1])
            - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0])
        ) / 6
    assert volume > 0
    [material] = gltf["materials"]
    pbr = material["pbrMetallicRoughness"]
    assert len(pbr["baseColorFactor"]) == 4
    assert 0 <= pbr["metallicFactor"] <= 1 and 0 <= pbr["roughnessFactor"] <= 1
    assert gltf["meshes"][0]["primitives"][0]["material"] == 0
    pos = gltf["accessors"][0]
    for axis in range(3):
        assert pos["min"][axis] == min(p[axis] for p in positions)
        assert pos["max"][axis] == max(p[axis] for p in positions)


def test_the_mesh_depends_on_the_prompt_and_is_stable_for_one_prompt() -> None:
    meshes = {p: render_glb(p) for p in PROMPTS}
    assert len(set(meshes.values())) == len(PROMPTS)
    assert render_glb("a wooden chair") == meshes["a wooden chair"]
    assert render_glb("a wooden chair", seed=2) != meshes["a wooden chair"]


def test_a_colour_word_paints_the_mesh_and_it_says_sandbox() -> None:
    gltf, *_ = mesh_of(render_glb("a red chair"))
    r, g, b, _a = gltf["materials"][0]["pbrMetallicRoughness"]["baseColorFactor"]
    assert r > 0.6 and g < 0.3 and b < 0.3
    assert gltf["asset"]["generator"] == "imagine-bot sandbox"
    assert "sandbox" in gltf["meshes"][0]["name"]


# --- text in any script --------------------------------------------------------------------


def test_the_shipped_fonts_are_there_with_their_licence() -> None:
    for name in FONT_FILES:
        assert (FONT_DIR / name).stat().st_size > 10_000
    assert "SIL Open Font License" in (FONT_DIR / "OFL.txt").read_text()


@pytest.mark.parametrize("char", ["é", "ß", "Ж", "中", "文", "あ", "한", "م", "ש", "न", "ก", "🦊", "🎉", "€"])
def test_common_scripts_and_emoji_have_a_font(char: str) -> None:
    assert font_for(char, 24) is not None


def test_a_character_no_font_has_is_reported_and_drawn_as_its_code() -> None:
    assert missing_glyphs("café 中文 🦊") == []
    assert missing_glyphs("ᚠ runes") == ["ᚠ"]


def _drawn(prompt: str) -> Image.Image:
    with Image.open(io.BytesIO(render_png(prompt, 512, 512, 4))) as img:
        return img.convert("RGB")


def test_different_scripts_draw_different_pixels() -> None:
    # a tofu box would look the same for every unknown character; real glyphs differ
    images = [_drawn(text) for text in ("中文", "日本", "한국", "🦊🦊")]
    for a, b in itertools.pairwise(images):
        assert ImageChops.difference(a, b).getbbox() is not None


def test_the_image_has_the_requested_size() -> None:
    with Image.open(io.BytesIO(render_png("x", 640, 360))) as img:
        assert img.format == "PNG" and img.size == (640, 360)


# --- edits ---------------------------------------------------------------------------------


def test_an_edit_keeps_its_input_visible_and_tinted_by_the_instruction() -> None:
    source = Image.new("RGB", (400, 400), (0, 0, 0))
    source.paste((255, 255, 255), (0, 0, 400, 200))  # bright top, dark bottom
    buf = io.BytesIO()
    source.save(buf, format="PNG")
    with Image.open(io.BytesIO(render_edit(buf.getvalue(), "make it blue", 400, 400))) as out:
        rgb = out.convert("RGB")
    top = ImageStat.Stat(rgb.crop((0, 60, 400, 180))).mean
    bottom = ImageStat.Stat(rgb.crop((0, 220, 400, 250))).mean
    assert sum(top) > sum(bottom) + 150  # the input's layout shows through
    assert top[2] > top[0] + 30  # and "blue" tinted it


def test_a_3d_thumbnail_shows_the_mesh_in_its_colour() -> None:
    with Image.open(io.BytesIO(render_preview("a red chair", 256))) as img:
        rgb = img.convert("RGB")
    data = rgb.tobytes()
    reds = sum(1 for i in range(0, len(data), 3) if data[i] > 90 and data[i + 1] < 50 and data[i + 2] < 50)
    assert reds > 1500  # the shaded chair covers a good part of the picture
