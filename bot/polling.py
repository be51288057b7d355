"""When to ask a vendor about a job: a schedule learned from the route's recent jobs.

Polling is cheap at scale when it asks at the right moments. Each route remembers how long its
recent jobs took; a new job's first poll goes out around the time the quickest tenth of them
finished, then at a step sized to the spread of the rest, and with growing gaps once the job
is slower than nearly all of them. A vendor's own ETA, when it gives one, wins. Until a route
has history, the schedule is a plain backoff from `initial` to `maximum`.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["PollSchedule", "RouteTimes"]


@dataclass(slots=True)
class PollSchedule:
    """The waits for one job; `next_wait` is asked after every poll that found it unfinished."""

    initial: float
    maximum: float
    first: float
    step: float | None = None  # learned steady step while the job is in the usual range
    usual_until: float = 0.0  # elapsed seconds after which the job is unusually slow
    growth: float = 1.5
    _delay: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self._delay = self.initial

    def next_wait(self, elapsed: float, eta: float | None = None) -> float:
        """Seconds until the next poll, `elapsed` seconds after submitting."""
        if eta is not None and eta > 0:
            return max(self.initial / 2, min(self.maximum, eta * 0.5))
        if self.step is not None and elapsed < self.usual_until:
            return self.step
        self._delay = min(self.maximum, self._delay * self.growth)
        return self._delay


class RouteTimes:
    """How long recent jobs took on each route (submit to result seen)."""

    def __init__(self, keep: int = 200, min_samples: int = 20) -> None:
        self._keep = keep
        self._min = min_samples
        self._times: dict[str, deque[float]] = {}

    def record(self, route: str, seconds: float) -> None:
        """One finished job's duration."""
        self._times.setdefault(route, deque(maxlen=self._keep)).append(max(0.0, seconds))

    def snapshot(self) -> dict[str, list[float]]:
        """Every route's recent durations, to persist across restarts."""
        return {route: list(times) for route, times in self._times.items()}

    def restore(self, data: dict[str, list[float]]) -> None:
        """Start from saved durations (a restart does not start cold)."""
        for route, times in data.items():
            self._times[route] = deque((max(0.0, float(t)) for t in times), maxlen=self._keep)

    def usual(self, route: str) -> float | None:
        """The route's median duration, once it has enough history to mean something."""
        times = self._times.get(route)
        if times is None or len(times) < self._min:
            return None
        return statistics.median(times)

    def schedule(self, route: str, initial: float, maximum: float) -> PollSchedule:
        """A schedule for a job just submitted to `route`."""
        times = self._times.get(route)
        if times is None or len(times) < self._min:
            return PollSchedule(initial=initial, maximum=maximum, first=initial)
        ordered = sorted(times)
        p10 = ordered[len(ordered) // 10]
        p90 = ordered[(len(ordered) * 9) // 10]
        # 0.9 × p10: a little early, so the learned times drift down rather than up.
        first = max(initial / 2, 0.9 * p10)
        step = max(initial / 2, min(maximum, (p90 - p10) / 6))
        return PollSchedule(initial=initial, maximum=maximum, first=first, step=step, usual_until=p90)
