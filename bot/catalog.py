"""The model catalog: which vendor routes serve each command kind, and the limits users see.

Built from the configured providers' `routes()`; the core never names a vendor module. Limits
shown to users (prompt length, image count, sizes) are the most generous any configured route
offers — the router then picks a route that can serve the exact request (`accepts`). A vendor's
own limit (API in One wants 3 characters or more) is never the user's fault while another route
can take the request; `Catalog.check` speaks up only when none can.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot import messages
from bot.errors import InvalidInputError
from providers.base import Kind, RouteSpec

if TYPE_CHECKING:
    from bot.params import JobSpec

__all__ = ["ASPECT_CHOICES", "SEED_MAX", "Catalog", "Limits", "accepts"]

#: aspect ratios offered as choices in platform UIs; any W:H within MAX_RATIO also parses
ASPECT_CHOICES: tuple[str, ...] = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3")
#: the common seed range every vendor accepts (Novita's is the narrowest)
SEED_MAX = 2_147_483_647
MAX_RATIO = 3.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What a user may ask of one command kind."""

    max_prompt: int
    max_count: int
    min_side: int
    max_side: int


def accepts(route: RouteSpec, spec: JobSpec, *, has_image: bool | None = None) -> bool:
    """Whether `route` can take the request as asked: its kind, input (for 3D), image count and
    prompt length. Sizes never disqualify a route: the router maps them to the nearest it makes.

    `has_image` defaults to whether the spec carries a stored input (known only after admission).
    """
    if route.kind is not spec.kind:
        return False
    if has_image is None:
        has_image = bool(spec.input_name or spec.input_url)
    if spec.kind is Kind.MODEL3D and route.needs_image != has_image:
        return False
    return spec.count <= route.max_images and route.min_prompt <= len(spec.prompt) <= route.max_prompt


class Catalog:
    """Routes by kind, in the operator's preference order."""

    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        self.routes: tuple[RouteSpec, ...] = tuple(routes)

    def for_kind(self, kind: Kind) -> list[RouteSpec]:
        """Every route of a kind, in catalog order."""
        return [r for r in self.routes if r.kind is kind]

    def kinds(self) -> set[Kind]:
        """The kinds at least one route serves."""
        return {r.kind for r in self.routes}

    def limits(self, kind: Kind) -> Limits:
        """The most generous limits across the kind's routes (defaults when none)."""
        routes = self.for_kind(kind)
        if not routes:
            return Limits(max_prompt=2000, max_count=1, min_side=256, max_side=1536)
        sides = [s for r in routes for pair in r.sizes for s in pair]
        return Limits(
            max_prompt=max(r.max_prompt for r in routes),
            max_count=min(4, max(r.max_images for r in routes)),
            min_side=min([*sides, *(r.min_side for r in routes if not r.sizes)]),
            max_side=max([*sides, *(r.max_side for r in routes if not r.sizes)]),
        )

    def check(self, spec: JobSpec, *, has_image: bool) -> JobSpec:
        """`spec` itself when a route of the user's choice can take it (the router then skips
        the others); else raises `InvalidInputError` with one clear message."""
        routes = [r for r in self.for_kind(spec.kind) if self.matches(r, spec.model)]
        if spec.kind is Kind.MODEL3D:
            routes = [r for r in routes if r.needs_image == has_image]
        if not routes or any(accepts(r, spec, has_image=has_image) for r in routes):
            return spec  # no route at all is reported by the parsers, as "not configured"
        what = "instruction" if spec.kind is Kind.EDIT else "prompt"
        length = len(spec.prompt)
        fits = [r for r in routes if r.min_prompt <= length <= r.max_prompt]
        if not fits:
            minimum = min(r.min_prompt for r in routes)
            maximum = max(r.max_prompt for r in routes)
            raise InvalidInputError(messages.prompt_length_refused(what, length, minimum, maximum))
        kind_words = {Kind.IMAGE: "images", Kind.EDIT: "this edit", Kind.MODEL3D: "this 3D model"}
        raise InvalidInputError(messages.no_model_takes(kind_words[spec.kind]))

    def model_names(self, kind: Kind) -> list[str]:
        """Names a user may pass as `--model`: route keys and vendor names, catalog order."""
        names: list[str] = []
        for r in self.for_kind(kind):
            for name in (r.vendor, r.key):
                if name not in names:
                    names.append(name)
        return names

    def matches(self, route: RouteSpec, wanted: str | None) -> bool:
        """Whether a route answers to a user's `--model` choice (key, vendor or model id)."""
        if not wanted:
            return True
        w = wanted.strip().lower()
        return w in (route.key.lower(), route.vendor.lower(), route.model.lower())

    def ordered(self, order: Sequence[str], *, cheapest: bool = False) -> Catalog:
        """A catalog re-ordered by the operator: keys or vendor names first, in that order,
        or by published price (unknown prices last) when `cheapest`."""
        routes = list(self.routes)
        if cheapest:
            routes.sort(key=lambda r: (r.price_usd is None, r.price_usd or 0.0))
        elif order:

            def rank(r: RouteSpec) -> int:
                for i, name in enumerate(order):
                    if name in (r.key, r.vendor):
                        return i
                return len(order)

            routes.sort(key=rank)
        return Catalog(routes)
