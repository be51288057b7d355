"""One parser for every adapter: Midjourney-style inline flags and validation into a JobSpec.

`/imagine a red fox --ar 16:9 --seed 7 --no text, blur --n 4 --model pixazo --size 1024x576`
Structured platform options (Discord's typed options) win over inline flags. Every violation
raises `InvalidInputError` with one message naming the fix.
"""

from __future__ import annotations

import math
import re
import secrets
import shlex
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from bot import messages
from bot.catalog import MAX_RATIO, SEED_MAX, Catalog, Limits
from bot.commands import EditCommand, ImagineCommand, Model3DCommand
from bot.errors import InvalidInputError
from providers.base import Kind

__all__ = [
    "FLAGS_HELP",
    "JobSpec",
    "fit_to_input",
    "parse_edit",
    "parse_flags",
    "parse_imagine",
    "parse_model3d",
    "random_seed",
]

FLAGS_HELP = (
    "Options you can add after your prompt:\n"
    "• `--ar W:H` aspect ratio, e.g. `--ar 16:9`\n"
    "• `--size WxH` exact size, e.g. `--size 1024x576`\n"
    "• `--seed N` repeat a result (0 to 2147483647)\n"
    "• `--no words` things to leave out, e.g. `--no text, blur`\n"
    "• `--n N` how many images (1 to 4)\n"
    "• `--model NAME` pick a model or vendor"
)

_KNOWN = {
    "ar": "aspect",
    "aspect": "aspect",
    "seed": "seed",
    "no": "negative",
    "n": "count",
    "count": "count",
    "model": "model",
    "size": "size",
}
# `--n 4` or `--n=4`; phones turn "--" into a dash.
_FLAG = re.compile(r"^(?:--|—|–)([a-zA-Z]+)(?:=(.*))?$", re.DOTALL)


class JobSpec(BaseModel):
    """A validated job, persisted with the job row: what to make, at what size, from what."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    prompt: str = ""
    negative: str | None = None
    width: int = 1024
    height: int = 1024
    aspect: str | None = None
    count: int = 1
    seed: int | None = None
    model: str | None = None
    input_name: str | None = None  # stored input image, relative to the files dir
    input_url: str | None = None  # the user's original public URL, if any
    face_count: int | None = None
    geometry_only: bool = False


@dataclass(slots=True)
class Flags:
    """Inline flags found in a prompt, and the prompt without them."""

    prompt: str
    values: dict[str, str] = field(default_factory=dict)


def parse_flags(text: str) -> Flags:
    """Split `text` into the prompt and its `--flag value` pairs (unknown flags are refused)."""
    try:
        tokens = shlex.split(text, posix=True)
    except ValueError:
        tokens = text.split()  # an unbalanced quote is still a prompt
    words: list[str] = []
    values: dict[str, str] = {}
    current: str | None = None
    current_words: list[str] = []

    def close() -> None:
        if current is None:
            return
        if not current_words:
            raise InvalidInputError(
                messages.invalid(f"`--{_flag_name(current)}` needs a value.", _example(current))
            )
        values[current] = " ".join(current_words)

    for token in tokens:
        match = _FLAG.match(token)
        if match:
            close()
            name, inline = match.group(1).lower(), match.group(2)
            if name not in _KNOWN:
                raise InvalidInputError(
                    messages.invalid(
                        f"I don't know the option `--{name}`.",
                        "Use --ar, --size, --seed, --no, --n or --model (see `/imagine help`).",
                    )
                )
            current, current_words = _KNOWN[name], []
            if current in values:
                # Silently keeping one of two values would make a result nobody asked for.
                raise InvalidInputError(messages.flag_repeated(_flag_name(current)))
            if inline:
                current_words.append(inline)
            continue
        if current is None:
            words.append(token)
        elif current == "negative" or not current_words:
            current_words.append(token)  # --no takes every word up to the next flag
        else:
            close()
            current, current_words = None, []
            words.append(token)
    close()
    return Flags(prompt=" ".join(words).strip(), values=values)


def _flag_name(key: str) -> str:
    return {"aspect": "ar", "negative": "no", "count": "n"}.get(key, key)


def _example(key: str) -> str:
    return {
        "aspect": "For example `--ar 16:9`.",
        "seed": "For example `--seed 42`.",
        "negative": "For example `--no text, watermark`.",
        "count": "For example `--n 4`.",
        "model": "For example `--model pixazo`.",
        "size": "For example `--size 1024x576`.",
    }[key]


def _check_prompt(prompt: str, max_len: int, what: str = "prompt") -> str:
    prompt = " ".join(prompt.split())
    if not prompt:
        raise InvalidInputError(
            messages.invalid(
                f"Your {what} is empty.", "Describe what you want, e.g. `/imagine a red fox in snow`."
            )
        )
    if len(prompt) > max_len:
        raise InvalidInputError(
            messages.invalid(
                f"Your {what} is {len(prompt):,} characters long.", f"Please keep it under {max_len:,}."
            )
        )
    return prompt


def _parse_int(key: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise InvalidInputError(
            messages.invalid(f"`--{_flag_name(key)} {raw}` isn't a whole number.", _example(key))
        ) from None


def _parse_aspect(raw: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{1,3})\s*[:x/]\s*(\d{1,3})\s*", raw)
    if not m or int(m.group(1)) == 0 or int(m.group(2)) == 0:
        raise InvalidInputError(
            messages.invalid(
                f"`--ar {raw}` isn't an aspect ratio.", "Use two numbers like `--ar 16:9` or `--ar 1:1`."
            )
        )
    w, h = int(m.group(1)), int(m.group(2))
    if max(w / h, h / w) > MAX_RATIO:
        raise InvalidInputError(
            messages.invalid(f"`--ar {raw}` is too stretched.", "Use a ratio between 1:3 and 3:1.")
        )
    return w, h


def _parse_size(raw: str, min_side: int, max_side: int) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d{2,5})\s*[x*×]\s*(\d{2,5})\s*", raw)
    if not m:
        raise InvalidInputError(messages.invalid(f"`--size {raw}` isn't a size.", _example("size")))
    w, h = int(m.group(1)), int(m.group(2))
    if not (min_side <= w <= max_side and min_side <= h <= max_side):
        raise InvalidInputError(
            messages.invalid(
                f"`--size {raw}` is out of range.", f"Each side must be from {min_side} to {max_side} pixels."
            )
        )
    return w, h


def size_for_aspect(w: int, h: int, long_side: int = 1024) -> tuple[int, int]:
    """Pixel size for an aspect ratio: long side `long_side`, both sides multiples of 8."""
    if w >= h:
        return long_side, max(8, round(long_side * h / w / 8) * 8)
    return max(8, round(long_side * w / h / 8) * 8), long_side


def _size_and_aspect(
    size_raw: str | None, aspect_raw: str | None, limits: Limits
) -> tuple[int, int, str | None]:
    """(width, height, aspect) from --size or --ar (never both); 1024×1024 and no aspect if neither."""
    if size_raw and aspect_raw:
        raise InvalidInputError(messages.flags_conflict("ar", "size"))
    if size_raw:
        width, height = _parse_size(size_raw, limits.min_side, limits.max_side)
        return width, height, _ratio(width, height)
    if aspect_raw:
        aw, ah = _parse_aspect(aspect_raw)
        width, height = size_for_aspect(aw, ah)
        return width, height, f"{aw}:{ah}"
    return 1024, 1024, None


def _merge(structured: object | None, inline: str | None) -> str | None:
    # Structured platform options win over inline flags.
    if structured is not None and structured != "":
        return str(structured)
    return inline


def parse_imagine(cmd: ImagineCommand, catalog: Catalog) -> JobSpec:
    """Validate /imagine into a JobSpec using the catalog's limits."""
    if Kind.IMAGE not in catalog.kinds():
        raise InvalidInputError(messages.not_configured("Image generation"))
    limits = catalog.limits(Kind.IMAGE)
    flags = parse_flags(cmd.prompt)
    prompt = _check_prompt(flags.prompt, limits.max_prompt)
    v = flags.values
    aspect_raw = _merge(cmd.aspect, v.get("aspect"))
    size_raw = _merge(cmd.size, v.get("size"))
    seed_raw = _merge(cmd.seed, v.get("seed"))
    count_raw = _merge(cmd.count, v.get("count"))
    negative = _merge(cmd.negative, v.get("negative"))
    model = _merge(cmd.model, v.get("model"))

    width, height, aspect = _size_and_aspect(size_raw, aspect_raw, limits)

    count = 1
    if count_raw is not None:
        count = _parse_int("count", count_raw)
        if not 1 <= count <= limits.max_count:
            raise InvalidInputError(
                messages.invalid(
                    f"`--n {count}` is out of range.", f"Ask for 1 to {limits.max_count} images."
                )
            )
    # A result always states its seed, so the bot picks one when the user gave none.
    seed = _parse_seed(seed_raw)
    if seed is None:
        seed = random_seed()
    if negative is not None:
        negative = " ".join(negative.split()) or None
        if negative and len(negative) > limits.max_prompt:
            raise InvalidInputError(
                messages.invalid(
                    "Your `--no` list is too long.", f"Keep it under {limits.max_prompt:,} characters."
                )
            )
    model = _check_model(model, Kind.IMAGE, catalog)
    spec = JobSpec(
        kind=Kind.IMAGE,
        prompt=prompt,
        negative=negative,
        width=width,
        height=height,
        aspect=aspect,
        count=count,
        seed=seed,
        model=model,
    )
    return catalog.check(spec, has_image=False)


def random_seed() -> int:
    """A fresh seed for a job the user gave none (and for Reroll); 1 and up, since some
    vendors (AI/ML API) treat 0 as "random"."""
    return secrets.randbelow(SEED_MAX) + 1


def _parse_seed(raw: str | None) -> int | None:
    if raw is None:
        return None
    seed = _parse_int("seed", raw)
    if not 0 <= seed <= SEED_MAX:
        raise InvalidInputError(
            messages.invalid(f"`--seed {seed}` is out of range.", f"Use a number from 0 to {SEED_MAX}.")
        )
    return seed


def _check_model(model: str | None, kind: Kind, catalog: Catalog) -> str | None:
    if not model:
        return None
    if not any(catalog.matches(r, model) for r in catalog.for_kind(kind)):
        names = ", ".join(f"`{n}`" for n in catalog.model_names(kind)) or "none"
        raise InvalidInputError(
            messages.invalid(f"I don't know the model `{model}`.", f"Choose one of: {names}.")
        )
    return model.strip().lower()


def parse_edit(cmd: EditCommand, catalog: Catalog) -> JobSpec:
    """Validate /edit (the image itself is checked and stored by the engine's media step)."""
    if Kind.EDIT not in catalog.kinds():
        raise InvalidInputError(messages.not_configured("Image editing"))
    limits = catalog.limits(Kind.EDIT)
    if cmd.image is None or not (cmd.image.url or cmd.image.path or cmd.image.data):
        raise InvalidInputError(
            messages.invalid(
                "Please attach the image to edit.", "Add an image (or an image link) and an instruction."
            )
        )
    flags = parse_flags(cmd.instruction)
    instruction = _check_prompt(flags.prompt, limits.max_prompt, what="instruction")
    seed = _parse_seed(_merge(cmd.seed, flags.values.get("seed")))
    model = _check_model(_merge(cmd.model, flags.values.get("model")), Kind.EDIT, catalog)
    # An explicit --size or --ar wins; otherwise `fit_to_input` follows the input image once
    # the engine has read it (aspect stays None until then).
    width, height, aspect = _size_and_aspect(flags.values.get("size"), flags.values.get("aspect"), limits)
    spec = JobSpec(
        kind=Kind.EDIT,
        prompt=instruction,
        seed=seed,
        model=model,
        width=width,
        height=height,
        aspect=aspect,
    )
    return catalog.check(spec, has_image=True)


def fit_to_input(spec: JobSpec, width: int, height: int) -> JobSpec:
    """An edit with no --ar/--size keeps its input's aspect ratio (the router then picks the
    route's nearest supported size); any other spec is returned unchanged."""
    if spec.kind is not Kind.EDIT or spec.aspect is not None or width <= 0 or height <= 0:
        return spec
    # Clamp very stretched inputs to the widest ratio the bot accepts anywhere.
    ratio = min(max(width / height, 1 / MAX_RATIO), MAX_RATIO)
    w, h = size_for_aspect(round(ratio * 1000), 1000)
    return spec.model_copy(update={"width": w, "height": h, "aspect": _ratio(w, h)})


def _ratio(width: int, height: int) -> str:
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


def parse_model3d(cmd: Model3DCommand, catalog: Catalog) -> JobSpec:
    """Validate /model3d: a prompt or an image (not neither), quality options."""
    if Kind.MODEL3D not in catalog.kinds():
        raise InvalidInputError(messages.not_configured("3D generation"))
    limits = catalog.limits(Kind.MODEL3D)
    has_image = cmd.image is not None and bool(cmd.image.url or cmd.image.path or cmd.image.data)
    prompt = ""
    if cmd.prompt and cmd.prompt.strip():
        flags = parse_flags(cmd.prompt)
        prompt = _check_prompt(flags.prompt, limits.max_prompt) if (flags.prompt or not has_image) else ""
    elif not has_image:
        raise InvalidInputError(
            messages.invalid(
                "Tell me what to build.", "Give a prompt (`/model3d a wooden chair`) or attach an image."
            )
        )
    face_count = cmd.face_count
    if face_count is not None and not 40_000 <= face_count <= 1_500_000:
        raise InvalidInputError(
            messages.invalid(f"A face count of {face_count:,} is out of range.", "Use 40,000 to 1,500,000.")
        )
    model = _check_model(cmd.model, Kind.MODEL3D, catalog)
    routes = [r for r in catalog.for_kind(Kind.MODEL3D) if r.needs_image == has_image]
    if not routes:
        what = "from an image" if has_image else "from text"
        raise InvalidInputError(messages.not_configured(f"3D generation {what}"))
    spec = JobSpec(
        kind=Kind.MODEL3D,
        prompt=prompt,
        face_count=face_count,
        geometry_only=cmd.geometry_only,
        model=model,
    )
    return catalog.check(spec, has_image=has_image)


def split_words(text: str) -> list[str]:
    """Blocklist input: comma- or space-separated words, lower-cased, de-duplicated."""
    seen: list[str] = []
    for w in re.split(r"[,\s]+", text.lower()):
        if w and w not in seen:
            seen.append(w)
    return seen
