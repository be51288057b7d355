"""The router: picks a vendor route for a job, maps its size, and fails over.

Routes come from the catalog in the operator's order. A route is tried when it can serve the
request's parameters and its circuit breaker lets traffic through. Transient errors are retried
a few times (honouring `Retry-After` up to a bound), then the next route is tried; a refused key
or an empty vendor wallet fails over at once and tells the operator. A rejected prompt is the
user's: it is raised, never retried elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.catalog import Catalog, accepts
from bot.errors import BotError
from bot.metrics import Metrics
from bot.params import JobSpec
from providers.base import (
    AuthError,
    GenerationRequest,
    JobHandle,
    JobState,
    JobUpdate,
    OutOfFundsError,
    Provider,
    ProviderError,
    RetryableError,
    RouteSpec,
    Submission,
)

__all__ = ["CircuitBreaker", "NoRouteError", "Routed", "Router", "map_size"]

_log = logging.getLogger(__name__)

#: longest Retry-After we wait on one route before trying the next one
MAX_RETRY_AFTER = 10.0


class NoRouteError(BotError):
    """Every route that could serve the job failed or is switched off; `errors` says why."""

    def __init__(self, errors: list[ProviderError], reason: str = "no route") -> None:
        super().__init__(reason + ": " + "; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `reset` seconds lets one probe
    through (half-open); a success closes it, a failed probe opens it again."""

    threshold: int
    reset: float
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        """ "closed", "open" or "half-open"."""
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset else "open"

    def allow(self) -> bool:
        """Whether a request may go to this route now (claims the probe when half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def trip(self) -> None:
        """Open at once (the vendor refused our key or our wallet is empty)."""
        self.failures = max(self.failures + 1, self.threshold)
        self.opened_at = self.clock()
        self.probing = False

    def success(self) -> None:
        """A call worked: close."""
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self) -> None:
        """A call failed: count it, open at the threshold (or re-open after a failed probe)."""
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self.probing = False


def map_size(route: RouteSpec, width: int, height: int) -> tuple[int, int]:
    """The size this route will produce for a requested one: the accepted pair closest in
    aspect ratio (then in area), or the request clamped into the route's range."""
    if route.sizes:
        want_ratio = math.log(width / height)
        want_area = width * height
        return min(
            route.sizes,
            key=lambda s: (round(abs(math.log(s[0] / s[1]) - want_ratio), 3), abs(s[0] * s[1] - want_area)),
        )
    scale = min(1.0, route.max_side / max(width, height))
    scale = max(scale, route.min_side / min(width, height))
    step = max(1, route.size_step)

    def fit(v: float) -> int:
        return int(min(route.max_side, max(route.min_side, round(v / step) * step)))

    return fit(width * scale), fit(height * scale)


@dataclass(frozen=True, slots=True)
class Routed:
    """A job accepted by a vendor: which route, what was asked, what came back."""

    route: RouteSpec
    request: GenerationRequest
    submission: Submission
    failovers: int = 0


@dataclass(slots=True)
class _RouteState:
    breaker: CircuitBreaker
    stats: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})


class Router:
    """Sends work to vendors. Thread-unsafe by design: one event loop owns it."""

    def __init__(
        self,
        providers: Mapping[str, Provider],
        catalog: Catalog,
        *,
        retries: int = 2,
        vendor_concurrency: int = 16,
        breaker_failures: int = 5,
        breaker_reset: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.providers = dict(providers)
        self.catalog = catalog
        self.retries = retries
        self.metrics = metrics
        self._sleep = sleep
        self._clock = clock
        self._limits = {v: asyncio.Semaphore(vendor_concurrency) for v in self.providers}
        self._routes = {
            r.key: _RouteState(CircuitBreaker(breaker_failures, breaker_reset, clock)) for r in catalog.routes
        }
        self._by_key = {r.key: r for r in catalog.routes}
        self._metric_children: dict[tuple[str, str], Any] = {}

    # --- choosing ------------------------------------------------------------------------

    def candidates(self, spec: JobSpec, *, exclude: Iterable[str] = ()) -> list[RouteSpec]:
        """Routes able to serve the spec's parameters, in preference order (health ignored)."""
        skip = set(exclude)
        out: list[RouteSpec] = []
        for r in self.catalog.for_kind(spec.kind):
            if r.key in skip or r.vendor not in self.providers:
                continue
            if not self.catalog.matches(r, spec.model):
                continue
            if not accepts(r, spec):  # input, image count, prompt length (a vendor's own limits)
                continue
            out.append(r)
        # A negative prompt is a wish, not a requirement: prefer routes that honour it.
        if spec.negative:
            out.sort(key=lambda r: not r.supports_negative)
        return out

    def route(self, key: str) -> RouteSpec:
        """A catalog route by `vendor:model` key."""
        route = self._by_key.get(key)
        if route is None:
            raise KeyError(key)
        return route

    def request_for(
        self, route: RouteSpec, spec: JobSpec, *, image_url: str | None, webhook_url: str | None
    ) -> GenerationRequest:
        """The vendor-neutral request for one route, size mapped to what it accepts."""
        width, height = map_size(route, spec.width, spec.height)
        return GenerationRequest(
            kind=spec.kind,
            model=route.model,
            prompt=spec.prompt,
            negative_prompt=spec.negative if route.supports_negative else None,
            width=width,
            height=height,
            count=spec.count,
            seed=spec.seed,
            image_urls=(image_url,) if image_url else (),
            face_count=spec.face_count,
            geometry_only=spec.geometry_only,
            webhook_url=webhook_url if route.webhook else None,
        )

    # --- calling -------------------------------------------------------------------------

    async def submit(
        self,
        spec: JobSpec,
        *,
        image_url: str | None = None,
        webhook_url: Callable[[RouteSpec], str | None] = lambda _r: None,
        exclude: Iterable[str] = (),
    ) -> Routed:
        """Submit to the first route that takes the job; raises the user's `RejectedInputError`
        as is, or `NoRouteError` when every route failed."""
        errors: list[ProviderError] = []
        routes = self.candidates(spec, exclude=exclude)
        if not routes:
            raise NoRouteError([], "no configured route can serve these parameters")
        failovers = 0
        for i, route in enumerate(routes):
            state = self._routes[route.key]
            if not state.breaker.allow():
                _log.info("route skipped: circuit open route=%s", route.key)
                continue
            request = self.request_for(route, spec, image_url=image_url, webhook_url=webhook_url(route))
            try:
                submission = await self._submit_with_retries(route, request)
            except ProviderError as exc:
                if not exc.failover:
                    state.breaker.success()  # the vendor answered; the request was at fault
                    raise
                errors.append(exc)
                state.breaker.failure()
                self._breaker_metric(route)
                nxt = next((r.key for r in routes[i + 1 :]), None)
                self._failover(route, exc, nxt)
                failovers += 1
                continue
            state.breaker.success()
            self._breaker_metric(route)
            return Routed(route, request, submission, failovers)
        raise NoRouteError(errors, "all routes failed")

    async def _submit_with_retries(self, route: RouteSpec, request: GenerationRequest) -> Submission:
        provider = self.providers[route.vendor]
        attempt = 0
        while True:
            try:
                return await self._call(route.vendor, "submit", provider.submit(request))
            except RetryableError as exc:
                wait = exc.retry_after if exc.retry_after is not None else 0.5 * 2**attempt
                if attempt >= self.retries or wait > MAX_RETRY_AFTER:
                    raise
                attempt += 1
                _log.info(
                    "vendor retry route=%s attempt=%d wait=%.1fs status=%s",
                    route.key,
                    attempt,
                    wait,
                    exc.status,
                )
                await self._sleep(wait)

    async def poll(self, route_key: str, handle: JobHandle) -> JobUpdate:
        """One poll through the vendor's concurrency limit; errors are raised for the caller's
        backoff. The breaker counts them, and a refused key or empty wallet opens it at once
        so new jobs go elsewhere, while the job itself keeps being followed on its route."""
        route = self.route(route_key)
        state = self._routes[route.key]
        try:
            update = await self._call(route.vendor, "poll", self.providers[route.vendor].poll(handle))
        except (AuthError, OutOfFundsError) as exc:
            state.breaker.trip()
            self._breaker_metric(route)
            _log.error("route unhealthy route=%s while polling: %s", route.key, exc)
            raise
        except ProviderError:
            state.breaker.failure()
            self._breaker_metric(route)
            raise
        if state.breaker.state == "closed":
            state.breaker.success()  # an open breaker closes on a submit probe, not a poll
        return update

    def fail_over(
        self, spec: JobSpec, update: JobUpdate, tried: list[str], attempts: int, limit: int
    ) -> bool:
        """Whether a job whose vendor job ended FAILED (or cancelled) goes to another route.

        The one failover rule after submission: a failure the vendor did not bill is about its
        system and may succeed elsewhere, a bounded number of times; a billed one is about the
        request itself and is not sent to another vendor."""
        if update.charged and update.state is not JobState.CANCELLED:
            return False
        if attempts >= limit or not self.candidates(spec, exclude=tried):
            return False
        last = tried[-1] if tried else "?"
        _log.warning("failover after vendor failure from route=%s: %s", last, update.error or update.state)
        if self.metrics is not None:
            self.metrics.failovers_total.labels(from_route=last, reason="job_failed").inc()
        return True

    async def cancel(self, route_key: str, handle: JobHandle) -> None:
        """Ask the vendor to stop a job nobody wants any more, where it can; never raises for
        the vendor's refusal (the job is over on our side either way)."""
        route = self.route(route_key)
        try:
            await self._call(route.vendor, "cancel", self.providers[route.vendor].cancel(handle))
        except ProviderError as exc:
            _log.info("vendor cancel refused route=%s job=%s: %s", route.key, handle.job_id, exc)

    def parse_webhook(self, vendor: str, body: bytes, headers: Mapping[str, str]) -> JobUpdate | None:
        """A vendor callback as an update (None when it carries no outcome)."""
        return self.providers[vendor].parse_webhook(body, headers)

    async def _call(self, vendor: str, what: str, coro: Awaitable[Any]) -> Any:
        start = self._clock()
        outcome = "ok"
        try:
            async with self._limits[vendor]:
                return await coro
        except ProviderError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if self.metrics is not None:
                self._requests_metric(vendor, outcome).inc()
                self._latency_metric(vendor).observe(self._clock() - start)

    def _requests_metric(self, vendor: str, outcome: str) -> Any:
        # A labelled child looked up once per (vendor, outcome): every vendor call counts.
        key = (vendor, outcome)
        child = self._metric_children.get(key)
        if child is None:
            assert self.metrics is not None
            child = self._metric_children[key] = self.metrics.vendor_requests_total.labels(
                vendor=vendor, outcome=outcome
            )
        return child

    def _latency_metric(self, vendor: str) -> Any:
        key = (vendor, "")
        child = self._metric_children.get(key)
        if child is None:
            assert self.metrics is not None
            child = self._metric_children[key] = self.metrics.vendor_latency_seconds.labels(vendor=vendor)
        return child

    def _failover(self, route: RouteSpec, exc: ProviderError, nxt: str | None) -> None:
        reason = {AuthError: "auth", OutOfFundsError: "funds"}.get(type(exc), "unavailable")
        level = logging.ERROR if reason in ("auth", "funds") else logging.WARNING
        _log.log(
            level,
            "failover from route=%s reason=%s status=%s next=%s: %s",
            route.key,
            reason,
            exc.status,
            nxt or "none",
            exc.message,
        )
        if self.metrics is not None:
            self.metrics.failovers_total.labels(from_route=route.key, reason=reason).inc()

    def _breaker_metric(self, route: RouteSpec) -> None:
        if self.metrics is not None:
            state = self._routes[route.key].breaker.state
            self.metrics.breaker_open.labels(route=route.key).set(0 if state == "closed" else 1)

    def health(self) -> dict[str, str]:
        """Each route's breaker state, for /healthz and `providers check`."""
        return {key: st.breaker.state for key, st in self._routes.items()}
