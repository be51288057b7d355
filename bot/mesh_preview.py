"""A picture of a 3D result when the vendor sends none: a shaded view rendered from the GLB.

Reads binary glTF 2.0 (header, JSON chunk, BIN chunk), walks the default scene's nodes with
their transforms, and collects the triangles of every primitive: float32 POSITION, uint8/16/32
indices or none (a plain triangle list), triangle lists, strips and fans. Rendering is pure
Pillow: an orthographic three-quarter view, two-sided Lambert shading, painter's algorithm
(far triangles first), drawn at twice the size and scaled down for smooth edges. Big meshes
are decimated by stride to at most `max_faces` drawn triangles; the face count reported is the
whole mesh's. Everything here is blocking: callers run it in a thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bot.errors import BotError

__all__ = ["MAX_FACES", "Mesh", "MeshError", "MeshPreview", "parse_glb", "render", "render_preview"]

_log = logging.getLogger(__name__)

#: triangles drawn at most; a 500k-face model is decimated by stride
MAX_FACES = 50_000
_MAGIC = b"glTF"
_JSON = 0x4E4F534A
_BIN = 0x004E4942
_FLOAT = 5126
_INDEX_TYPES = {5121: "B", 5123: "H", 5125: "I"}
_TRIANGLES, _STRIP, _FAN = 4, 5, 6
_BACKGROUND = (30, 32, 38)
_CLAY = (214, 200, 182)
_LIGHT = (-0.45, 0.6, 0.66)  # from the upper left, in front of the model
_AMBIENT = 0.28
_SUPERSAMPLE = 2
_MAX_DEPTH = 32  # node nesting; deeper is a cycle or garbage

Matrix = tuple[float, ...]  # 4×4, column-major as glTF stores it
_IDENTITY: Matrix = (1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0)


class MeshError(BotError):
    """The file is not a binary glTF this renderer can read (malformed, compressed, empty)."""


@dataclass(frozen=True, slots=True)
class _Primitive:
    positions: array[float]  # x, y, z per vertex
    triangles: array[int]  # three vertex indices per face
    matrix: Matrix


@dataclass(frozen=True, slots=True)
class Mesh:
    """The triangles of a GLB's scene, per primitive, with each primitive's world transform."""

    primitives: tuple[_Primitive, ...]

    @property
    def faces(self) -> int:
        """How many triangles the whole model has."""
        return sum(len(p.triangles) // 3 for p in self.primitives)


@dataclass(frozen=True, slots=True)
class MeshPreview:
    """A rendered preview written to `path`: its pixel size, bytes, and the model's faces."""

    path: Path
    width: int
    height: int
    size: int
    faces: int


# --- parsing ------------------------------------------------------------------------------------


def _chunks(data: bytes) -> tuple[dict[str, Any], bytes]:
    if len(data) < 20 or data[:4] != _MAGIC:
        raise MeshError("not a binary glTF file")
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise MeshError(f"glTF version {version} is not supported")
    if length > len(data):
        raise MeshError("the GLB is truncated")
    pos, doc, binary = 12, None, b""
    while pos + 8 <= length:
        size, kind = struct.unpack_from("<II", data, pos)
        body = data[pos + 8 : pos + 8 + size]
        if len(body) != size:
            raise MeshError("a GLB chunk runs past the end of the file")
        if kind == _JSON and doc is None:
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise MeshError("the GLB's JSON chunk is not valid JSON") from None
        elif kind == _BIN and not binary:
            binary = body
        pos += 8 + size + (-size % 4)
    if not isinstance(doc, dict):
        raise MeshError("the GLB has no JSON chunk")
    return doc, binary


def _item(doc: dict[str, Any], key: str, index: Any) -> dict[str, Any]:
    items = doc.get(key)
    if not isinstance(index, int) or not isinstance(items, list) or not 0 <= index < len(items):
        raise MeshError(f"{key}[{index}] does not exist")
    item = items[index]
    if not isinstance(item, dict):
        raise MeshError(f"{key}[{index}] is not an object")
    return item


def _view(
    doc: dict[str, Any], binary: bytes, accessor: dict[str, Any], item_size: int
) -> tuple[bytes, int, int]:
    """(buffer bytes, start offset, stride) for an accessor's elements, bounds-checked."""
    if "bufferView" not in accessor or accessor.get("sparse"):
        raise MeshError("compressed or sparse accessors are not supported")
    view = _item(doc, "bufferViews", accessor["bufferView"])
    buffer = _item(doc, "buffers", view.get("buffer", 0))
    if view.get("buffer", 0) != 0 or "uri" in buffer:
        raise MeshError("external buffers are not supported")
    start = int(view.get("byteOffset", 0)) + int(accessor.get("byteOffset", 0))
    stride = int(view.get("byteStride") or item_size)
    count = accessor.get("count")
    if not isinstance(count, int) or count < 0 or stride < item_size:
        raise MeshError("an accessor has a bad count or stride")
    end = start + (stride * (count - 1) + item_size if count else 0)
    view_end = int(view.get("byteOffset", 0)) + int(view.get("byteLength", 0))
    if start < 0 or end > min(len(binary), view_end):
        raise MeshError("an accessor runs past its buffer")
    return binary, start, stride


def _native(values: array[Any]) -> array[Any]:
    if sys.byteorder == "big":  # glTF is little-endian
        values.byteswap()
    return values


def _positions(doc: dict[str, Any], binary: bytes, index: Any) -> array[float]:
    accessor = _item(doc, "accessors", index)
    if accessor.get("componentType") != _FLOAT or accessor.get("type") != "VEC3":
        raise MeshError("POSITION must be float32 VEC3")
    data, start, stride = _view(doc, binary, accessor, 12)
    count = accessor["count"]
    out: array[float] = array("f")
    if stride == 12:
        out.frombytes(data[start : start + 12 * count])
    else:
        for i in range(count):
            out.frombytes(data[start + i * stride : start + i * stride + 12])
    out = _native(out)
    # float32 values cannot overflow a float64 sum, so the sum is finite unless one is NaN or ±inf.
    if not math.isfinite(sum(out)):
        raise MeshError("POSITION holds a non-finite number")
    return out


def _indices(doc: dict[str, Any], binary: bytes, index: Any, vertices: int) -> array[int]:
    if index is None:
        return array("I", range(vertices))
    accessor = _item(doc, "accessors", index)
    code = _INDEX_TYPES.get(accessor.get("componentType", 0))
    if code is None or accessor.get("type") != "SCALAR":
        raise MeshError("indices must be unsigned 8, 16 or 32-bit scalars")
    out: array[int] = array(code)
    data, start, _ = _view(doc, binary, accessor, out.itemsize)
    out.frombytes(data[start : start + out.itemsize * accessor["count"]])
    out = _native(out)
    if out and max(out) >= vertices:
        raise MeshError("an index points past the vertices")
    return out


def _triangles(indices: array[int], mode: int) -> array[int]:
    if mode == _TRIANGLES:
        return array("I", indices[: len(indices) - len(indices) % 3])
    out: array[int] = array("I")
    for i in range(len(indices) - 2):
        if mode == _STRIP:
            a, b = (indices[i], indices[i + 1]) if i % 2 == 0 else (indices[i + 1], indices[i])
            out.extend((a, b, indices[i + 2]))
        else:  # fan
            out.extend((indices[0], indices[i + 1], indices[i + 2]))
    return out


def _multiply(a: Matrix, b: Matrix) -> Matrix:
    return tuple(sum(a[k * 4 + r] * b[c * 4 + k] for k in range(4)) for c in range(4) for r in range(4))


def _local(node: dict[str, Any]) -> Matrix:
    matrix = node.get("matrix")
    if isinstance(matrix, list) and len(matrix) == 16:
        return tuple(float(v) for v in matrix)
    tx, ty, tz = (float(v) for v in node.get("translation", (0, 0, 0)))
    qx, qy, qz, qw = (float(v) for v in node.get("rotation", (0, 0, 0, 1)))
    sx, sy, sz = (float(v) for v in node.get("scale", (1, 1, 1)))
    # Rotation from the unit quaternion, scaled per axis, then translated (T · R · S).
    r = (
        (1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy + qz * qw), 2 * (qx * qz - qy * qw)),
        (2 * (qx * qy - qz * qw), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz + qx * qw)),
        (2 * (qx * qz + qy * qw), 2 * (qy * qz - qx * qw), 1 - 2 * (qx * qx + qy * qy)),
    )
    return (
        *(v * sx for v in r[0]),
        0.0,
        *(v * sy for v in r[1]),
        0.0,
        *(v * sz for v in r[2]),
        0.0,
        tx,
        ty,
        tz,
        1.0,
    )


def _mesh_nodes(doc: dict[str, Any]) -> Iterator[tuple[int, Matrix]]:
    """(mesh index, world matrix) for every mesh the default scene shows (every mesh, once,
    when the file has no scene)."""
    scenes = doc.get("scenes")
    if not isinstance(scenes, list) or not scenes:
        meshes = doc.get("meshes")
        yield from ((i, _IDENTITY) for i in range(len(meshes) if isinstance(meshes, list) else 0))
        return
    scene = _item(doc, "scenes", doc.get("scene", 0))

    def walk(index: Any, parent: Matrix, depth: int) -> Iterator[tuple[int, Matrix]]:
        if depth > _MAX_DEPTH:
            raise MeshError("the node hierarchy is too deep (a cycle?)")
        node = _item(doc, "nodes", index)
        try:
            world = _multiply(parent, _local(node))
        except (TypeError, ValueError):
            raise MeshError(f"nodes[{index}] has a malformed transform") from None
        if "mesh" in node:
            yield node["mesh"], world
        for child in node.get("children", ()):
            yield from walk(child, world, depth + 1)

    for root in scene.get("nodes", ()):
        yield from walk(root, _IDENTITY, 0)


def parse_glb(data: bytes) -> Mesh:
    """The triangles of a GLB; raises `MeshError` when the file is malformed or holds none."""
    doc, binary = _chunks(data)
    primitives: list[_Primitive] = []
    try:
        for mesh_index, matrix in _mesh_nodes(doc):
            mesh = _item(doc, "meshes", mesh_index)
            for prim in mesh.get("primitives", ()):
                mode = prim.get("mode", _TRIANGLES)
                if mode not in (_TRIANGLES, _STRIP, _FAN) or "POSITION" not in prim.get("attributes", {}):
                    continue  # points and lines have no faces to show
                if prim.get("extensions", {}).get("KHR_draco_mesh_compression"):
                    raise MeshError("Draco-compressed meshes are not supported")
                positions = _positions(doc, binary, prim["attributes"]["POSITION"])
                indices = _indices(doc, binary, prim.get("indices"), len(positions) // 3)
                triangles = _triangles(indices, mode)
                if triangles:
                    primitives.append(_Primitive(positions, triangles, matrix))
    except MeshError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, struct.error) as exc:
        raise MeshError(f"the GLB's structure is malformed ({type(exc).__name__})") from None
    if not primitives:
        raise MeshError("the GLB holds no triangles")
    return Mesh(tuple(primitives))


# --- rendering ----------------------------------------------------------------------------------


def _view_rotation(yaw: float, pitch: float) -> tuple[tuple[float, float, float], ...]:
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    # Turn the model around the vertical axis, then tilt it towards the camera.
    return ((cy, 0.0, sy), (sp * sy, cp, -sp * cy), (-cp * sy, sp, cp * cy))


def _sample(mesh: Mesh, max_faces: int, view: Matrix) -> list[tuple[tuple[float, float, float], ...]]:
    """View-space triangles (`view` applied after each primitive's world transform), every
    `stride`-th face when the mesh is over `max_faces`."""
    stride = max(1, math.ceil(mesh.faces / max(1, max_faces)))
    out: list[tuple[tuple[float, float, float], ...]] = []
    seen = 0
    for prim in mesh.primitives:
        m = _multiply(view, prim.matrix)
        pos, tri = prim.positions, prim.triangles
        first = (-seen) % stride  # keep the stride steady across primitives
        seen += len(tri) // 3
        for f in range(first, len(tri) // 3, stride):
            corners = []
            for v in tri[3 * f : 3 * f + 3]:
                x, y, z = pos[3 * v], pos[3 * v + 1], pos[3 * v + 2]
                corners.append(
                    (
                        m[0] * x + m[4] * y + m[8] * z + m[12],
                        m[1] * x + m[5] * y + m[9] * z + m[13],
                        m[2] * x + m[6] * y + m[10] * z + m[14],
                    )
                )
            out.append(tuple(corners))
    return out


def render(mesh: Mesh, size: int = 512, *, max_faces: int = MAX_FACES) -> Image.Image:
    """A `size`×`size` RGB picture of the mesh: three-quarter view, Lambert-shaded clay."""
    rot = _view_rotation(math.radians(-35), math.radians(22))
    view: Matrix = (*(rot[r][0] for r in range(3)), 0.0, *(rot[r][1] for r in range(3)), 0.0)
    view += (*(rot[r][2] for r in range(3)), 0.0, 0.0, 0.0, 0.0, 1.0)
    tris = _sample(mesh, max_faces, view)
    xs = [p[0] for t in tris for p in t]
    ys = [p[1] for t in tris for p in t]
    span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
    big = size * _SUPERSAMPLE
    scale = big * 0.84 / span
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    ln = math.sqrt(sum(c * c for c in _LIGHT))
    lx, ly, lz = (c / ln for c in _LIGHT)
    image = Image.new("RGB", (big, big), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    # Painter's algorithm: the camera looks down -z, so the lowest mean z is drawn first.
    tris.sort(key=lambda t: t[0][2] + t[1][2] + t[2][2])
    for a, b, c in tris:
        ux, uy, uz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
        vx, vy, vz = c[0] - a[0], c[1] - a[1], c[2] - a[2]
        nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
        norm = math.sqrt(nx * nx + ny * ny + nz * nz)
        if norm == 0.0:
            continue  # a degenerate sliver has no surface to shade
        # Two-sided: vendor meshes do not all wind their faces the same way.
        light = _AMBIENT + (1 - _AMBIENT) * abs(nx * lx + ny * ly + nz * lz) / norm
        color = tuple(int(ch * light) for ch in _CLAY)
        points = [(big / 2 + (p[0] - cx) * scale, big / 2 - (p[1] - cy) * scale) for p in (a, b, c)]
        draw.polygon(points, fill=color, outline=color)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _render_file(glb: Path, out: Path, size: int, max_faces: int) -> MeshPreview:
    mesh = parse_glb(glb.read_bytes())
    image = render(mesh, size, max_faces=max_faces)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return MeshPreview(path=out, width=image.width, height=image.height, size=len(data), faces=mesh.faces)


async def render_preview(glb: Path, out: Path, *, size: int = 512, max_faces: int = MAX_FACES) -> MeshPreview:
    """Render the model at `glb` to the PNG `out`, in a thread. Raises `MeshError`."""
    return await asyncio.to_thread(_render_file, glb, out, size, max_faces)
