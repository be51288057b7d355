"""Prometheus metrics of the bot, in a registry of their own (never the process-global one),
so tests and several apps in one process do not collide.

Labels are bounded sets (kind, state, vendor, route, outcome, reason); never a tenant or user.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["NAMESPACE", "Metrics"]

_log = logging.getLogger(__name__)

NAMESPACE = "imagine"

# Vendors range from sub-second sync calls to multi-minute 3D jobs.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every metric the core and the router update; `render()` is the `/metrics` body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, NAMESPACE
        self.jobs_total = Counter(
            "jobs", "Jobs that reached a terminal state.", ["kind", "state"], namespace=ns, registry=r
        )
        self.jobs_in_state = Gauge(
            "jobs_in_state", "Jobs currently in each state.", ["state"], namespace=ns, registry=r
        )
        self.vendor_latency_seconds = Histogram(
            "vendor_latency_seconds",
            "Duration of vendor API calls.",
            ["vendor"],
            buckets=_LATENCY_BUCKETS,
            namespace=ns,
            registry=r,
        )
        self.vendor_requests_total = Counter(
            "vendor_requests", "Vendor API calls by outcome.", ["vendor", "outcome"], namespace=ns, registry=r
        )
        self.failovers_total = Counter(
            "failovers",
            "Jobs moved off a route, by reason.",
            ["from_route", "reason"],
            namespace=ns,
            registry=r,
        )
        self.credits_spent_total = Counter(
            "credits_spent", "Credits settled for finished jobs.", ["kind"], namespace=ns, registry=r
        )
        self.queue_depth = Gauge("queue_depth", "Jobs waiting for a worker.", namespace=ns, registry=r)
        self.breaker_open = Gauge(
            "breaker_open", "1 while a route's circuit breaker is open.", ["route"], namespace=ns, registry=r
        )
        self.webhooks_total = Counter(
            "webhooks",
            "Vendor webhook deliveries by outcome.",
            ["vendor", "outcome"],
            namespace=ns,
            registry=r,
        )

        self.outbox_sent_total = Counter(
            "outbox_sent", "User messages of finished jobs delivered.", ["kind"], namespace=ns, registry=r
        )
        self.outbox_undeliverable_total = Counter(
            "outbox_undeliverable",
            "Deliveries of finished jobs' messages that no route could make (kept for the next start).",
            ["kind"],
            namespace=ns,
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
