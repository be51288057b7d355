"""Router rules that need no vendor: size mapping, circuit breaker, candidate order."""

from __future__ import annotations

from bot.catalog import Catalog
from bot.params import JobSpec
from bot.router import CircuitBreaker, Router, map_size
from providers.base import Kind, RouteSpec

FIXED = RouteSpec("v", "fixed", Kind.IMAGE, sizes=((1024, 1024), (1280, 768), (768, 1280), (1536, 512)))
FREE = RouteSpec("w", "free", Kind.IMAGE, min_side=256, max_side=1536, size_step=8)


def test_fixed_sizes_pick_the_nearest_aspect_ratio() -> None:
    assert map_size(FIXED, 1024, 576) == (1280, 768)  # 16:9 → closest 5:3
    assert map_size(FIXED, 576, 1024) == (768, 1280)
    assert map_size(FIXED, 1024, 1024) == (1024, 1024)
    assert map_size(FIXED, 1536, 500) == (1536, 512)


def test_free_sizes_are_clamped_into_range_keeping_the_ratio() -> None:
    assert map_size(FREE, 1024, 576) == (1024, 576)
    assert map_size(FREE, 3000, 1500) == (1536, 768)
    w, h = map_size(FREE, 100, 100)
    assert (w, h) == (256, 256)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_probes_after_reset() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=3, reset=30, clock=clock)
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow()
    clock.now = 31
    assert b.state == "half-open"
    assert b.allow()  # the one probe
    assert not b.allow()  # nobody else while probing
    b.success()
    assert b.state == "closed" and b.allow()


def test_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    b = CircuitBreaker(threshold=1, reset=10, clock=clock)
    b.failure()
    clock.now = 11
    assert b.allow()
    b.failure()
    assert b.state == "open"
    clock.now = 15
    assert not b.allow()


def _router(*routes: RouteSpec) -> Router:
    return Router({r.vendor: object() for r in routes}, Catalog(routes))  # type: ignore[misc]


def test_candidates_respect_count_model_and_exclusions() -> None:
    one = RouteSpec("a", "m1", Kind.IMAGE, max_images=1)
    four = RouteSpec("b", "m4", Kind.IMAGE, max_images=4)
    router = _router(one, four)
    assert [r.key for r in router.candidates(JobSpec(kind=Kind.IMAGE, prompt="x"))] == ["a:m1", "b:m4"]
    assert [r.key for r in router.candidates(JobSpec(kind=Kind.IMAGE, prompt="x", count=3))] == ["b:m4"]
    assert [r.key for r in router.candidates(JobSpec(kind=Kind.IMAGE, prompt="x", model="a"))] == ["a:m1"]
    assert router.candidates(JobSpec(kind=Kind.IMAGE, prompt="x"), exclude=["a:m1", "b:m4"]) == []


def test_negative_prompts_prefer_routes_that_honour_them() -> None:
    plain = RouteSpec("a", "m", Kind.IMAGE)
    neg = RouteSpec("b", "n", Kind.IMAGE, supports_negative=True)
    router = _router(plain, neg)
    spec = JobSpec(kind=Kind.IMAGE, prompt="x", negative="blur")
    assert [r.key for r in router.candidates(spec)] == ["b:n", "a:m"]


def test_3d_routes_split_by_whether_an_image_is_given() -> None:
    text = RouteSpec("p", "t3d", Kind.MODEL3D)
    image = RouteSpec("p", "i3d", Kind.MODEL3D, needs_image=True)
    router = _router(text, image)
    assert [r.key for r in router.candidates(JobSpec(kind=Kind.MODEL3D, prompt="chair"))] == ["p:t3d"]
    spec = JobSpec(kind=Kind.MODEL3D, input_name="inputs/x.png")
    assert [r.key for r in router.candidates(spec)] == ["p:i3d"]


def test_cheapest_first_orders_by_published_price() -> None:
    a = RouteSpec("a", "m", Kind.IMAGE, price_usd=0.25)
    b = RouteSpec("b", "m", Kind.IMAGE, price_usd=0.10)
    c = RouteSpec("c", "m", Kind.IMAGE)
    assert [r.vendor for r in Catalog([a, b, c]).ordered([], cheapest=True).routes] == ["b", "a", "c"]
    assert [r.vendor for r in Catalog([a, b, c]).ordered(["c", "a"]).routes] == ["c", "a", "b"]


async def test_vendor_concurrency_limit_caps_calls_in_flight() -> None:
    import asyncio

    from providers.base import GenerationRequest, JobHandle, JobUpdate, Provider, Submission

    class CountingProvider(Provider):
        """Counts overlapping submit calls; a test double for the router's semaphore only."""

        name = "v"
        in_flight = 0
        peak = 0

        def __init__(self) -> None:
            pass  # no session or settings: it never makes a request

        @classmethod
        def routes(cls) -> tuple[RouteSpec, ...]:
            return (RouteSpec("v", "m", Kind.IMAGE),)

        async def submit(self, request: GenerationRequest) -> Submission:
            type(self).in_flight += 1
            type(self).peak = max(type(self).peak, type(self).in_flight)
            await asyncio.sleep(0.01)
            type(self).in_flight -= 1
            return Submission(JobHandle(vendor="v", model="m", job_id="j"))

        async def poll(self, handle: JobHandle) -> JobUpdate:
            raise NotImplementedError

    router = Router({"v": CountingProvider()}, Catalog(CountingProvider.routes()), vendor_concurrency=3)
    spec = JobSpec(kind=Kind.IMAGE, prompt="x")
    await asyncio.gather(*(router.submit(spec) for _ in range(12)))
    assert CountingProvider.peak == 3
