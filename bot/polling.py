"""When to ask a vendor about a job: a schedule learned from the route's recent jobs.

Polling is cheap at scale when it asks at the right moments. Vendor latencies are roughly
log-normal (most jobs near the median, a long slow tail), so each route remembers when its recent
jobs finished and a new job is asked first around the route's quick quantile (a fifth of jobs
done), then at a short steady step sized to the spread of the rest, and with growing gaps once
the job is slower than nearly all of them. A vendor's own ETA, when it gives one, wins. Until a
route has history, the schedule is a plain backoff from `initial` to `maximum`.

What is remembered is an estimate of each job's completion, not the poll that saw it: a poll only
says the job finished somewhere since the previous one, so the sample is the middle of that gap.
Without that correction the history would drift later by half a step with every generation of
jobs. For the same reason a poll that went out well after its planned moment (a loop busy with a
burst) teaches nothing: its answer would say the job ended later than it did. `tests/unit/test_polling.py` simulates the schedule against the benchmark's latency mix.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from statistics import NormalDist

__all__ = ["PollSchedule", "RouteTimes"]

_Z = NormalDist()
_Z90 = _Z.inv_cdf(0.9)

#: the first poll goes out when this share of the route's jobs is usually done
QUICK_QUANTILE = 0.2
#: the steady step is the spread between the 10th and 90th percentiles divided by this
STEP_DIVISOR = 6.0
#: past this quantile a job is unusually slow and the gaps grow again
SLOW_QUANTILE = 0.99
#: a poll this share of its planned wait (and at least LATE_FLOOR s) past its moment was late
LATE_SHARE = 0.25
LATE_FLOOR = 0.25


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
    _last_poll: float = field(init=False, default=0.0)
    _due: float = field(init=False, default=0.0)  # elapsed seconds the next poll was planned at
    _wait: float = field(init=False, default=0.0)  # and the wait that led there

    def __post_init__(self) -> None:
        self._delay = self.initial
        self._due = self._wait = self.first

    @property
    def last_unfinished(self) -> float:
        """Elapsed seconds of the latest poll that found the job unfinished (0 before any)."""
        return self._last_poll

    def next_wait(self, elapsed: float, eta: float | None = None) -> float:
        """Seconds until the next poll, `elapsed` seconds after submitting."""
        self._last_poll = max(self._last_poll, elapsed)
        wait = self._next(elapsed, eta)
        self._due, self._wait = elapsed + wait, wait
        return wait

    def late(self, elapsed: float) -> bool:
        """Whether a poll at `elapsed` went out well after its planned moment (a loop busy with a
        burst, an error's backoff in between): its answer bounds the job's end loosely, and late."""
        return elapsed - self._due > max(LATE_FLOOR, LATE_SHARE * self._wait)

    def _next(self, elapsed: float, eta: float | None) -> float:
        if eta is not None and eta > 0:
            return max(self.initial / 2, min(self.maximum, eta * 0.5))
        if self.step is not None and elapsed < self.usual_until:
            return self.step
        if self.step is not None and self._delay < self.step:
            self._delay = self.step  # the slow tail starts from the usual step, not from `initial`
        self._delay = min(self.maximum, self._delay * self.growth)
        return self._delay


@dataclass(slots=True)
class _Learned:
    first: float
    step: float
    usual_until: float


class RouteTimes:
    """When recent jobs finished on each route (seconds after submit, estimated), per route."""

    def __init__(self, keep: int = 500, min_samples: int = 20, growth: float = 1.5) -> None:
        self._keep = keep
        self._min = min_samples
        self._growth = growth
        self._times: dict[str, deque[float]] = {}
        self._learned: dict[str, _Learned | None] = {}  # cache, dropped on every new sample
        self._usual: dict[str, float | None] = {}  # the same for the median
        self._bounds = (1.0, 10.0)  # the (initial, maximum) last asked for, to size the gaps

    def record(self, route: str, seconds: float, *, since: float | None = None) -> None:
        """A job was seen finished `seconds` after submit by a poll; `since` is the previous poll
        that saw it unfinished, when the caller knows it (else the route's current gap is assumed;
        a first poll's answer also uses the gap: "done before the first poll" says too little)."""
        seconds = max(0.0, seconds)
        if since is not None and 0.0 < since <= seconds:
            estimate = (since + seconds) / 2
        else:
            estimate = seconds - self._gap(route, seconds) / 2
        self._times.setdefault(route, deque(maxlen=self._keep)).append(max(0.0, estimate))
        self._learned.pop(route, None)
        self._usual.pop(route, None)

    def observed(self, route: str, schedule: PollSchedule, elapsed: float) -> None:
        """A poll following `schedule` saw its job finished `elapsed` seconds after submit: learn
        from it, unless the poll was late. Late answers would teach the route later and later
        first polls while a burst keeps the loop busy (the drift feeds itself), and lateness says
        nothing about the vendor, so skipping them leaves the history unbiased."""
        if not schedule.late(elapsed):
            self.record(route, elapsed, since=schedule.last_unfinished or None)

    def usual(self, route: str) -> float | None:
        """The route's median duration, once it has enough history to mean something."""
        if route in self._usual:  # asked on every poll: sorted once per new sample at most
            return self._usual[route]
        times = self._times.get(route)
        usual = None if times is None or len(times) < self._min else statistics.median(times)
        self._usual[route] = usual
        return usual

    def schedule(self, route: str, initial: float, maximum: float) -> PollSchedule:
        """A schedule for a job just submitted to `route`."""
        self._bounds = (initial, maximum)
        learned = self._learn(route)
        if learned is None:
            return PollSchedule(initial=initial, maximum=maximum, first=initial, growth=self._growth)
        floor = initial / 2  # never hammer a vendor, however quick its recent jobs were
        return PollSchedule(
            initial=initial,
            maximum=maximum,
            first=max(floor, learned.first),
            step=max(floor, min(maximum, learned.step)),
            usual_until=learned.usual_until,
            growth=self._growth,
        )

    def snapshot(self) -> dict[str, list[float]]:
        """Every route's history, oldest first, JSON-able (to persist across restarts)."""
        return {route: list(times) for route, times in self._times.items() if times}

    def restore(self, data: dict[str, list[float]]) -> None:
        """Load histories saved by `snapshot`; routes not in `data` keep theirs, junk is skipped."""
        for route, values in data.items():
            clean = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v) and v >= 0]
            self._times[route] = deque(clean[-self._keep :], maxlen=self._keep)
            self._learned.pop(route, None)
            self._usual.pop(route, None)

    # --- internals ---------------------------------------------------------------------------

    def _learn(self, route: str) -> _Learned | None:
        if route in self._learned:
            return self._learned[route]
        times = self._times.get(route)
        learned = None
        if times is not None and len(times) >= self._min:
            ordered = sorted(times)

            def q(p: float) -> float:
                return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

            # The median and the 90th percentile lie above the first poll, so a poll's coarse
            # answer does not bias them; the quick quantile and the spread follow from them by
            # the log-normal shape (log-quantiles are linear in the normal score).
            median, p90 = q(0.5), q(0.9)
            sigma = max(0.05, math.log(max(p90, 1e-3) / max(median, 1e-3)) / _Z90)
            p10 = median * math.exp(-_Z90 * sigma)
            learned = _Learned(
                first=median * math.exp(_Z.inv_cdf(QUICK_QUANTILE) * sigma),
                step=(p90 - p10) / STEP_DIVISOR,
                usual_until=max(q(SLOW_QUANTILE), median * math.exp(_Z.inv_cdf(SLOW_QUANTILE) * sigma)),
            )
        self._learned[route] = learned
        return learned

    def _gap(self, route: str, seconds: float) -> float:
        """The gap between polls around `seconds` for this route's current schedule."""
        initial, maximum = self._bounds
        learned = self._learn(route)
        if learned is not None and seconds < learned.usual_until:
            return min(max(initial / 2, min(maximum, learned.step)), seconds)
        # A ×growth backoff capped at `maximum`: the last gap is about (1 - 1/growth) of the
        # time elapsed until the cap.
        return min(maximum, seconds * (1 - 1 / self._growth))
