"""What the sandbox vendors deliver: real PNGs and GLB meshes that look deliberate and say
"sandbox" on them.

* `render_png` draws a seeded gradient with the prompt on it, in any script the shipped Noto
  subsets cover (`fonts/`); a character none covers is drawn as a visible `U+XXXX` box and the
  image says so.
* `render_edit` recolours the input image and writes the instruction on it, so an edit is
  visibly derived from what it was given.
* `render_glb` builds a closed mesh with normals and a PBR material from primitives chosen by
  the prompt (a few words pick a shape, the rest is a seeded arrangement).
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import io
import itertools
import json
import math
import random
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, ImageStat

__all__ = [
    "FONT_FILES",
    "Mesh",
    "build_mesh",
    "font_for",
    "image_tint",
    "missing_glyphs",
    "render_edit",
    "render_glb",
    "render_png",
    "render_preview",
]

FONT_DIR = Path(__file__).with_name("fonts")
#: tried in order for each character: the first whose cmap has it draws it
FONT_FILES = (
    "NotoSans-sandbox.ttf",
    "NotoSansCJK-sandbox.otf",
    "NotoSansArabic-sandbox.ttf",
    "NotoSansHebrew-sandbox.ttf",
    "NotoSansDevanagari-sandbox.ttf",
    "NotoSansThai-sandbox.ttf",
    "NotoEmoji-sandbox.ttf",
)
#: drawn with the character before them, never on their own
_JOINERS = {0x200C, 0x200D, 0xFE0E, 0xFE0F, 0x20E3}
_BADGE = "SANDBOX"
_FOOTER = "imagine-bot sandbox · not a real model"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


# --- fonts ------------------------------------------------------------------------------


def _cmap(data: bytes) -> frozenset[int]:
    """The code points a TrueType/OpenType font maps (cmap formats 4 and 12)."""
    (num_tables,) = struct.unpack_from(">H", data, 4)
    offset = None
    for i in range(num_tables):
        tag, _sum, table_offset, _len = struct.unpack_from(">4sIII", data, 12 + 16 * i)
        if tag == b"cmap":
            offset = table_offset
    if offset is None:
        return frozenset()
    (count,) = struct.unpack_from(">H", data, offset + 2)
    points: set[int] = set()
    for i in range(count):
        platform, encoding, sub = struct.unpack_from(">HHI", data, offset + 4 + 8 * i)
        if (platform, encoding) not in ((3, 1), (3, 10), (0, 3), (0, 4)):
            continue
        start = offset + sub
        (fmt,) = struct.unpack_from(">H", data, start)
        if fmt == 4:
            (seg2,) = struct.unpack_from(">H", data, start + 6)
            ends = struct.unpack_from(f">{seg2 // 2}H", data, start + 14)
            starts = struct.unpack_from(f">{seg2 // 2}H", data, start + 16 + seg2)
            for lo, hi in zip(starts, ends, strict=True):
                if lo != 0xFFFF:
                    points.update(range(lo, hi + 1))
        elif fmt == 12:
            (groups,) = struct.unpack_from(">I", data, start + 12)
            for g in range(groups):
                lo, hi, _glyph = struct.unpack_from(">III", data, start + 16 + 12 * g)
                points.update(range(lo, hi + 1))
    return frozenset(points)


@functools.cache
def _coverage() -> tuple[tuple[Path, frozenset[int]], ...]:
    """(font file, code points) of every shipped font present, in fallback order."""
    out = []
    for name in FONT_FILES:
        path = FONT_DIR / name
        if path.exists():
            out.append((path, _cmap(path.read_bytes())))
    return tuple(out)


@functools.cache
def _load(path: Path | None, size: int) -> Font:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(str(path), size)


def font_for(char: str, size: int) -> Font | None:
    """The first shipped font that draws `char`, or None when none does."""
    point = ord(char)
    for path, points in _coverage():
        if point in points:
            return _load(path, size)
    return None


def missing_glyphs(text: str) -> list[str]:
    """The characters of `text` no shipped font draws (they appear as `U+XXXX` boxes)."""
    return [c.text[0] for c in _clusters(text, 16) if c.font is None]


# --- text -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Cluster:
    text: str
    font: Font | None  # None: no font has it; drawn as a U+XXXX box
    width: float


def _clusters(text: str, size: int) -> list[_Cluster]:
    """The text as drawable units: a character with its combining marks and joiners."""
    out: list[_Cluster] = []
    for char in unicodedata.normalize("NFC", " ".join(text.split())):
        point = ord(char)
        attach = point in _JOINERS or unicodedata.combining(char)
        if out and attach and out[-1].font is not None:
            prev = out[-1]
            prev.text += char
            prev.width = prev.font.getlength(prev.text) if prev.font else prev.width
            continue
        if attach:
            continue  # a lone joiner draws nothing
        font = font_for(char, size)
        width = font.getlength(char) if font is not None else _box_width(char, size)
        out.append(_Cluster(char, font, width))
    return out


def _box_width(char: str, size: int) -> float:
    small = _load(_coverage()[0][0] if _coverage() else None, max(8, size // 2))
    return small.getlength(f"U+{ord(char):04X}") + size * 0.4


def _wrap(clusters: list[_Cluster], width: float) -> list[list[_Cluster]]:
    """Greedy lines: break at the last space that fits, or anywhere for unspaced scripts."""
    lines: list[list[_Cluster]] = []
    line: list[_Cluster] = []
    used = 0.0
    for c in clusters:
        if line and used + c.width > width:
            spaces = [i for i, x in enumerate(line) if x.text == " "]
            if spaces and c.text != " ":
                cut = spaces[-1]
                lines.append(line[:cut])
                line = line[cut + 1 :]
            else:
                lines.append(line)
                line = []
            used = sum(x.width for x in line)
            if c.text == " " and not line:
                continue
        line.append(c)
        used += c.width
    if line:
        lines.append(line)
    return lines


def _draw_line(
    draw: ImageDraw.ImageDraw,
    line: list[_Cluster],
    x: float,
    baseline: float,
    size: int,
    fill: tuple[int, ...],
) -> None:
    """Draw runs of one font together (so scripts that join are shaped), boxes for the rest."""
    i = 0
    while i < len(line):
        c = line[i]
        if c.font is None:
            small = _load(_coverage()[0][0] if _coverage() else None, max(8, size // 2))
            box = (x + 1, baseline - size * 0.8, x + c.width - 1, baseline + size * 0.15)
            draw.rectangle(box, outline=fill, width=max(1, size // 16))
            draw.text(
                ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
                f"U+{ord(c.text[0]):04X}",
                fill=fill,
                font=small,
                anchor="mm",
            )
            x += c.width
            i += 1
            continue
        j = i
        while j < len(line) and line[j].font is c.font:
            j += 1
        run = "".join(x_.text for x_ in line[i:j])
        draw.text((x, baseline), run, fill=fill, font=c.font, anchor="ls")
        x += c.font.getlength(run)
        i = j


def _text_block(
    img: Image.Image, text: str, box: tuple[int, int, int, int], size: int, max_lines: int
) -> int:
    """Draw `text` wrapped inside `box` on a translucent panel; returns the missing-glyph count."""
    x0, y0, x1, y1 = box
    clusters = _clusters(text, size)
    missing = sum(1 for c in clusters if c.font is None)
    lines = _wrap(clusters, x1 - x0 - size)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        ellipsis = font_for("…", size)
        if ellipsis is not None:
            lines[-1] = [*lines[-1][:-1], _Cluster("…", ellipsis, ellipsis.getlength("…"))]
    step = int(size * 1.35)
    height = step * len(lines) + size // 2
    top = max(y0, (y0 + y1) // 2 - height // 2)
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    odraw = ImageDraw.Draw(overlay)
    widest = max((sum(c.width for c in line) for line in lines), default=0.0)
    left = int(max(x0, (x0 + x1) / 2 - widest / 2 - size / 2))
    right = int(min(x1, (x0 + x1) / 2 + widest / 2 + size / 2))
    odraw.rounded_rectangle((left, top, right, top + height), radius=size // 2, fill=(0, 0, 0, 110))
    img.alpha_composite(overlay)
    draw = ImageDraw.Draw(img)
    for n, line in enumerate(lines):
        w = sum(c.width for c in line)
        _draw_line(
            draw, line, (x0 + x1) / 2 - w / 2, top + size // 4 + step * n + size, size, (255, 255, 255, 255)
        )
    return missing


def _chrome(img: Image.Image, label: str, note: str) -> None:
    """The badge that says SANDBOX and a footer line; every sandbox image carries both."""
    w, h = img.size
    size = max(10, min(w, h) // 28)
    font = _load(_coverage()[0][0] if _coverage() else None, size)
    draw = ImageDraw.Draw(img)
    text = f"{_BADGE} {label}".strip()
    tw = font.getlength(text)
    pad = size // 2
    draw.rounded_rectangle(
        (pad, pad, pad * 3 + tw, pad * 3 + size), radius=pad, fill=(255, 214, 0, 235), outline=(0, 0, 0, 255)
    )
    draw.text((pad * 2, pad * 2 + size), text, font=font, fill=(0, 0, 0, 255), anchor="ls")
    small = _load(_coverage()[0][0] if _coverage() else None, max(8, size * 3 // 4))
    draw.rectangle((0, h - size * 3 // 2, w, h), fill=(0, 0, 0, 150))
    draw.text((pad, h - size // 2), f"{_FOOTER} · {note}", font=small, fill=(255, 255, 255, 230), anchor="ls")


def _palette(seed: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    rnd = random.Random(seed)
    hue = rnd.random()
    a = colorsys.hsv_to_rgb(hue, 0.55 + 0.3 * rnd.random(), 0.85)
    b = colorsys.hsv_to_rgb((hue + 0.25 + 0.3 * rnd.random()) % 1.0, 0.7, 0.35 + 0.2 * rnd.random())
    return tuple(int(255 * v) for v in a), tuple(int(255 * v) for v in b)  # type: ignore[return-value]


def _background(width: int, height: int, seed: int) -> Image.Image:
    """A soft seeded gradient with a few blurred blobs, drawn small and scaled up (fast)."""
    rnd = random.Random(seed)
    a, b = _palette(seed)
    small = Image.new("RGB", (2, 2))
    small.putdata([a, a, b, b] if rnd.random() < 0.5 else [a, b, a, b])
    base = small.resize((96, 96), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(base, "RGBA")
    for _ in range(5):
        cx, cy, r = rnd.randrange(96), rnd.randrange(96), rnd.randrange(10, 34)
        colour = tuple(rnd.randrange(60, 255) for _ in range(3))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*colour, 90))
    base = base.filter(ImageFilter.GaussianBlur(6))
    return base.resize((width, height), Image.Resampling.BICUBIC).convert("RGBA")


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


def render_png(prompt: str, width: int, height: int, seed: int = 0, label: str = "") -> bytes:
    """A real PNG of the requested size: a seeded gradient with the prompt written on it."""
    img = _background(width, height, seed)
    size = max(12, min(width, height) // 16)
    margin = max(8, width // 14)
    missing = _text_block(
        img, prompt, (margin, margin + size * 2, width - margin, height - size * 2), size, 6
    )
    note = f"seed {seed} · {width}×{height}"
    if missing:
        note += f" · {missing} character(s) shown as U+ codes (no font)"
    _chrome(img, label, note)
    return _png(img)


def image_tint(seed: int, instruction: str) -> tuple[int, int, int]:
    """The colour an edit washes its input with: a colour word in the instruction, else seeded."""
    for word, colour in _COLOUR_WORDS.items():
        if word in instruction.lower():
            return colour
    return _palette(seed)[0]


def render_edit(source: bytes, instruction: str, width: int, height: int, seed: int = 0) -> bytes:
    """The input image, fitted to the size and recoloured, with the instruction written on it."""
    with Image.open(io.BytesIO(source)) as opened:
        picture = ImageOps.fit(opened.convert("RGB"), (width, height), Image.Resampling.BICUBIC)
    tint = image_tint(seed, instruction)
    washed = ImageOps.colorize(ImageOps.grayscale(picture), black=(20, 20, 30), white=tint)
    img = Image.blend(picture, washed, 0.55).convert("RGBA")
    size = max(12, min(width, height) // 20)
    margin = max(8, width // 14)
    missing = _text_block(
        img, instruction, (margin, height * 2 // 3, width - margin, height - size * 2), size, 3
    )
    note = f"edit · seed {seed} · {width}×{height}"
    if missing:
        note += f" · {missing} character(s) shown as U+ codes"
    _chrome(img, "EDIT", note)
    return _png(img)


def average_colour(source: bytes) -> tuple[int, int, int]:
    """The mean colour of an image (an image→3D job paints its mesh with it)."""
    with Image.open(io.BytesIO(source)) as opened:
        mean = ImageStat.Stat(opened.convert("RGB")).mean
    return int(mean[0]), int(mean[1]), int(mean[2])


# --- meshes -----------------------------------------------------------------------------

Vec = tuple[float, float, float]

_COLOUR_WORDS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "orange": (230, 130, 30),
    "yellow": (230, 200, 40),
    "green": (50, 160, 70),
    "blue": (40, 90, 200),
    "purple": (130, 60, 180),
    "pink": (230, 120, 170),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
    "brown": (120, 80, 45),
    "wooden": (150, 100, 60),
    "gold": (212, 175, 55),
}


@dataclass
class Mesh:
    """Triangles with per-vertex normals; every primitive added is a closed shell."""

    positions: list[Vec] = field(default_factory=list)
    normals: list[Vec] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def _vertex(self, p: Vec, n: Vec) -> int:
        self.positions.append(p)
        length = math.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2) or 1.0
        self.normals.append((n[0] / length, n[1] / length, n[2] / length))
        return len(self.positions) - 1

    def box(self, centre: Vec, half: Vec) -> None:
        """An axis-aligned box: six faces with their own (flat) normals."""
        cx, cy, cz = centre
        lo = (cx - half[0], cy - half[1], cz - half[2])
        hi = (cx + half[0], cy + half[1], cz + half[2])
        # (normal axis, sign, u axis, v axis) with u × v pointing along the normal
        faces = ((0, 1, 1, 2), (0, -1, 2, 1), (1, 1, 2, 0), (1, -1, 0, 2), (2, 1, 0, 1), (2, -1, 1, 0))
        for axis, sign, u, v in faces:
            corners = []
            for su, sv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                p = [0.0, 0.0, 0.0]
                p[axis] = hi[axis] if sign > 0 else lo[axis]
                p[u] = hi[u] if su else lo[u]
                p[v] = hi[v] if sv else lo[v]
                n = [0.0, 0.0, 0.0]
                n[axis] = float(sign)
                corners.append(self._vertex((p[0], p[1], p[2]), (n[0], n[1], n[2])))
            a, b, c, d = corners
            self.indices += [a, b, c, a, c, d]

    def cylinder(
        self, centre: Vec, radius: float, height: float, segments: int = 24, top: float = 1.0
    ) -> None:
        """A capped cylinder along Y (`top` < 1 narrows the top ring: a frustum)."""
        cx, cy, cz = centre
        y0, y1 = cy - height / 2, cy + height / 2
        angles = [2 * math.pi * j / segments for j in range(segments)]
        ring0 = [(cx + radius * math.cos(t), y0, cz + radius * math.sin(t)) for t in angles]
        ring1 = [(cx + radius * top * math.cos(t), y1, cz + radius * top * math.sin(t)) for t in angles]
        slope = radius * (1 - top) / height
        side0 = [
            self._vertex(p, (math.cos(t), slope, math.sin(t))) for p, t in zip(ring0, angles, strict=True)
        ]
        side1 = [
            self._vertex(p, (math.cos(t), slope, math.sin(t))) for p, t in zip(ring1, angles, strict=True)
        ]
        for j in range(segments):
            k = (j + 1) % segments
            self.indices += [side0[j], side1[j], side0[k], side0[k], side1[j], side1[k]]
        for ring, y, sign in ((ring0, y0, -1.0), (ring1, y1, 1.0)):
            middle = self._vertex((cx, y, cz), (0.0, sign, 0.0))
            cap = [self._vertex(p, (0.0, sign, 0.0)) for p in ring]
            for j in range(segments):
                k = (j + 1) % segments
                self.indices += [middle, cap[k], cap[j]] if sign > 0 else [middle, cap[j], cap[k]]

    def cone(self, centre: Vec, radius: float, height: float, segments: int = 24, turn: float = 0.0) -> None:
        """A capped cone along Y with its apex up (4 segments make a pyramid)."""
        cx, cy, cz = centre
        y0 = cy - height / 2
        apex = (cx, cy + height / 2, cz)
        angles = [turn + 2 * math.pi * j / segments for j in range(segments)]
        ring = [(cx + radius * math.cos(t), y0, cz + radius * math.sin(t)) for t in angles]
        for j in range(segments):
            k = (j + 1) % segments
            mid = angles[j] + math.pi / segments  # the facet's middle: flat-looking facets
            normal = (height * math.cos(mid), radius, height * math.sin(mid))
            a = self._vertex(ring[j], normal)
            b = self._vertex(apex, normal)
            c = self._vertex(ring[k], normal)
            self.indices += [a, b, c]
        middle = self._vertex((cx, y0, cz), (0.0, -1.0, 0.0))
        base = [self._vertex(p, (0.0, -1.0, 0.0)) for p in ring]
        for j in range(segments):
            self.indices += [middle, base[j], base[(j + 1) % segments]]

    def sphere(self, centre: Vec, radii: Vec, rings: int = 12, segments: int = 24) -> None:
        """A closed UV ellipsoid: one vertex at each pole, smooth normals."""
        cx, cy, cz = centre
        rx, ry, rz = radii

        def point(lat: float, lon: float) -> int:
            x, y, z = math.cos(lat) * math.cos(lon), math.sin(lat), math.cos(lat) * math.sin(lon)
            return self._vertex((cx + rx * x, cy + ry * y, cz + rz * z), (x / rx, y / ry, z / rz))

        top = point(math.pi / 2, 0.0)
        bottom = point(-math.pi / 2, 0.0)
        bands = [
            [point(math.pi / 2 - math.pi * i / rings, 2 * math.pi * j / segments) for j in range(segments)]
            for i in range(1, rings)
        ]
        for j in range(segments):
            k = (j + 1) % segments
            self.indices += [top, bands[0][k], bands[0][j]]
            self.indices += [bottom, bands[-1][j], bands[-1][k]]
        for upper, lower in itertools.pairwise(bands):
            for j in range(segments):
                k = (j + 1) % segments
                self.indices += [lower[j], upper[j], lower[k], lower[k], upper[j], upper[k]]


def _chair(m: Mesh, rnd: random.Random) -> None:
    w, d, seat = 0.5 + 0.2 * rnd.random(), 0.5 + 0.15 * rnd.random(), 0.45 + 0.1 * rnd.random()
    leg = 0.035 + 0.02 * rnd.random()
    m.box((0.0, seat, 0.0), (w / 2, 0.04, d / 2))
    for sx in (-1, 1):
        for sz in (-1, 1):
            m.box((sx * (w / 2 - leg), (seat - 0.04) / 2, sz * (d / 2 - leg)), (leg, (seat - 0.04) / 2, leg))
    back = 0.4 + 0.3 * rnd.random()
    # The back stands in the seat, a little narrower: parts share no edge, so each stays a
    # closed shell of its own.
    m.box((0.0, seat + back / 2, -d / 2 + 0.035), (w / 2 - 0.01, back / 2, 0.03))


def _table(m: Mesh, rnd: random.Random) -> None:
    w, d, h = 0.9 + 0.5 * rnd.random(), 0.6 + 0.3 * rnd.random(), 0.7 + 0.1 * rnd.random()
    m.box((0.0, h, 0.0), (w / 2, 0.03, d / 2))
    for sx in (-1, 1):
        for sz in (-1, 1):
            m.cylinder((sx * (w / 2 - 0.06), (h - 0.03) / 2, sz * (d / 2 - 0.06)), 0.03, h - 0.03, 12)


def _tree(m: Mesh, rnd: random.Random) -> None:
    trunk = 0.4 + 0.3 * rnd.random()
    m.cylinder((0.0, trunk / 2, 0.0), 0.06 + 0.04 * rnd.random(), trunk, 12)
    y = trunk
    for level in range(rnd.randint(2, 4)):
        r = 0.5 - 0.1 * level
        m.cone((0.0, y + 0.25, 0.0), r, 0.5, 16)
        y += 0.3


def _house(m: Mesh, rnd: random.Random) -> None:
    w, h = 0.8 + 0.4 * rnd.random(), 0.5 + 0.3 * rnd.random()
    m.box((0.0, h / 2, 0.0), (w / 2, h / 2, w / 2))
    m.cone((0.0, h + 0.25, 0.0), w * 0.75, 0.5, 4, turn=math.pi / 4)


def _snowman(m: Mesh, rnd: random.Random) -> None:
    y = 0.0
    for r in (0.4, 0.3, 0.2)[: rnd.randint(2, 3)]:
        m.sphere((0.0, y + r, 0.0), (r, r, r))
        y += 1.8 * r


def _pile(m: Mesh, rnd: random.Random) -> None:
    """No known word: a seeded stack of primitives, different for every prompt."""
    y = 0.0
    for _ in range(rnd.randint(2, 5)):
        kind = rnd.choice(("box", "cylinder", "cone", "sphere"))
        s = 0.2 + 0.3 * rnd.random()
        x, z = rnd.uniform(-0.2, 0.2), rnd.uniform(-0.2, 0.2)
        match kind:
            case "box":
                hy = s * rnd.uniform(0.3, 1.0)
                m.box((x, y + hy, z), (s, hy, s * rnd.uniform(0.5, 1.0)))
                y += 2 * hy
            case "cylinder":
                h = s * rnd.uniform(0.5, 2.0)
                m.cylinder((x, y + h / 2, z), s, h, rnd.choice((6, 8, 16, 24)), top=rnd.uniform(0.5, 1.0))
                y += h
            case "cone":
                h = s * rnd.uniform(1.0, 2.0)
                m.cone((x, y + h / 2, z), s, h, rnd.choice((3, 4, 5, 16)))
                y += h
            case _:
                r = (s, s * rnd.uniform(0.6, 1.4), s)
                m.sphere((x, y + r[1], z), r)
                y += 2 * r[1]


_SHAPES = {
    "chair": _chair,
    "stool": _chair,
    "table": _table,
    "desk": _table,
    "tree": _tree,
    "pine": _tree,
    "house": _house,
    "hut": _house,
    "cabin": _house,
    "snowman": _snowman,
}


def _words(prompt: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() else " " for c in prompt).split()


def prompt_seed(prompt: str, seed: int = 0) -> int:
    """A stable seed from the prompt text (Python's hash() differs per process)."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def build_mesh(prompt: str, seed: int = 0) -> Mesh:
    """The mesh for a prompt: a known word picks a shape, the seeded rest varies it."""
    rnd = random.Random(prompt_seed(prompt, seed))
    mesh = Mesh()
    words = _words(prompt)
    shape = next((_SHAPES[w.rstrip("s")] for w in words if w.rstrip("s") in _SHAPES), _pile)
    shape(mesh, rnd)
    return mesh


#: what a known shape is painted when the prompt names no colour
_SHAPE_COLOURS = {
    _chair: (150, 100, 60),
    _table: (150, 100, 60),
    _tree: (50, 140, 60),
    _snowman: (235, 235, 240),
}


def _colour(prompt: str, seed: int) -> tuple[int, int, int]:
    words = _words(prompt)
    for w in words:
        if w in _COLOUR_WORDS:
            return _COLOUR_WORDS[w]
    shape = next((_SHAPES[w.rstrip("s")] for w in words if w.rstrip("s") in _SHAPES), None)
    if shape in _SHAPE_COLOURS:
        return _SHAPE_COLOURS[shape]
    return _palette(prompt_seed(prompt, seed))[0]


def render_preview(
    prompt: str, size: int = 256, seed: int = 0, base_colour: tuple[int, int, int] | None = None
) -> bytes:
    """A shaded view of the prompt's mesh (the thumbnail of a 3D job): flat Lambert shading,
    far triangles first, on the sandbox's usual background and badge."""
    mesh = build_mesh(prompt, seed)
    colour = base_colour or _colour(prompt, seed)
    yaw, pitch = math.radians(35), math.radians(22)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)

    def view(p: Vec) -> Vec:
        x, z = p[0] * cy - p[2] * sy, p[0] * sy + p[2] * cy
        return x, p[1] * cp - z * sp, p[1] * sp + z * cp

    points = [view(p) for p in mesh.positions]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    scale = 0.72 * size / max(max(xs) - min(xs), max(ys) - min(ys), 1e-6)
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    light = (-0.4, 0.7, 0.6)
    faces = []
    for t in range(0, len(mesh.indices), 3):
        a, b, c = (points[i] for i in mesh.indices[t : t + 3])
        u = (b[0] - a[0], b[1] - a[1], b[2] - a[2])
        v = (c[0] - a[0], c[1] - a[1], c[2] - a[2])
        n = (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])
        length = math.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
        if length == 0 or n[2] <= 0:  # facing away (the camera sits on +z, looking down -z)
            continue
        lit = 0.35 + 0.65 * max(0.0, (n[0] * light[0] + n[1] * light[1] + n[2] * light[2]) / length)
        flat = [(size / 2 + (q[0] - mx) * scale, size / 2 - (q[1] - my) * scale) for q in (a, b, c)]
        faces.append((a[2] + b[2] + c[2], flat, tuple(min(255, int(ch * lit)) for ch in colour)))
    img = _background(size, size, prompt_seed(prompt, seed))
    draw = ImageDraw.Draw(img)
    for _depth, flat, fill in sorted(faces, key=lambda f: f[0]):  # far (low z) first
        draw.polygon(flat, fill=fill)
    _chrome(img, "3D", f"{len(mesh.indices) // 3} faces")
    return _png(img)


def render_glb(prompt: str = "", seed: int = 0, base_colour: tuple[int, int, int] | None = None) -> bytes:
    """A binary glTF 2.0 file: the prompt's closed mesh with normals and a PBR material."""
    mesh = build_mesh(prompt, seed)
    colour = base_colour or _colour(prompt, seed)
    rnd = random.Random(prompt_seed(prompt, seed + 1))
    pos = b"".join(struct.pack("<3f", *p) for p in mesh.positions)
    nor = b"".join(struct.pack("<3f", *n) for n in mesh.normals)
    idx = struct.pack(f"<{len(mesh.indices)}I", *mesh.indices)
    buffer = pos + nor + idx
    lo = [min(p[i] for p in mesh.positions) for i in range(3)]
    hi = [max(p[i] for p in mesh.positions) for i in range(3)]
    # min/max as float32 round-trips them, so validators comparing with the data agree
    lo = [struct.unpack("<f", struct.pack("<f", v))[0] for v in lo]
    hi = [struct.unpack("<f", struct.pack("<f", v))[0] for v in hi]
    label = " ".join(prompt.split())[:120] or "sandbox model"
    gltf = {
        "asset": {
            "version": "2.0",
            "generator": "imagine-bot sandbox",
            "copyright": "sandbox output, not a real Hunyuan3D model",
            "extras": {"sandbox": True, "prompt": label, "seed": seed},
        },
        "scene": 0,
        "scenes": [{"name": "sandbox", "nodes": [0]}],
        "nodes": [{"mesh": 0, "name": f"sandbox: {label}"}],
        "meshes": [
            {
                "name": f"sandbox: {label}",
                "primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1}, "indices": 2, "material": 0}],
            }
        ],
        "materials": [
            {
                "name": "sandbox material",
                "pbrMetallicRoughness": {
                    "baseColorFactor": [round(c / 255, 4) for c in colour] + [1.0],
                    "metallicFactor": round(rnd.uniform(0.0, 0.4), 3),
                    "roughnessFactor": round(rnd.uniform(0.4, 0.9), 3),
                },
                "doubleSided": False,
            }
        ],
        "buffers": [{"byteLength": len(buffer)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(pos), "target": 34962},
            {"buffer": 0, "byteOffset": len(pos), "byteLength": len(nor), "target": 34962},
            {"buffer": 0, "byteOffset": len(pos) + len(nor), "byteLength": len(idx), "target": 34963},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": len(mesh.positions),
                "type": "VEC3",
                "min": lo,
                "max": hi,
            },
            {"bufferView": 1, "componentType": 5126, "count": len(mesh.normals), "type": "VEC3"},
            {"bufferView": 2, "componentType": 5125, "count": len(mesh.indices), "type": "SCALAR"},
        ],
    }
    js = json.dumps(gltf, separators=(",", ":"), ensure_ascii=False).encode()
    js += b" " * ((4 - len(js) % 4) % 4)
    total = 12 + 8 + len(js) + 8 + len(buffer)
    return (
        struct.pack("<4sII", b"glTF", 2, total)
        + struct.pack("<I4s", len(js), b"JSON")
        + js
        + struct.pack("<I4s", len(buffer), b"BIN\0")
        + buffer
    )
