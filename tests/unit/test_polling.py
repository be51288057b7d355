"""The poll schedule: a backoff without history, then shaped by the route's recent jobs.

The model tests drive `RouteTimes` and `PollSchedule` the way the engine does (schedule at
submit, first poll at `first`, `next_wait` after each unfinished poll, `record` when a poll sees
the job finished) against seeded log-normal latencies, the benchmark's image mix
(docs/bench.md), and compare with a poller asking every 5 s. No sleeping: time is simulated.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

import pytest

from bot.polling import PollSchedule, RouteTimes

ROUTE = "v:m"
LOW, HIGH = 2.0, 20.0  # the image mix: log-normal, 95 % inside [2 s, 20 s], truncated


def image_mix(rng: random.Random) -> float:
    """One job's latency: median √(2·20), σ = ln(20/2)/3.92, draws outside [2, 20] redrawn."""
    mu, sigma = math.log(math.sqrt(LOW * HIGH)), math.log(HIGH / LOW) / 3.92
    while True:
        x = rng.lognormvariate(mu, sigma)
        if LOW <= x <= HIGH:
            return x


@dataclass
class Outcome:
    """Detection delays and vendor requests (submit + polls + one result file) per job."""

    delays: list[float]
    requests: list[int]

    @property
    def mean(self) -> float:
        return statistics.mean(self.delays)

    @property
    def p95(self) -> float:
        return sorted(self.delays)[int(0.95 * len(self.delays))]

    @property
    def per_job(self) -> float:
        return statistics.mean(self.requests)


def follow(times: RouteTimes, latency: float) -> tuple[float, int, PollSchedule]:
    """Poll one job as the engine does; (elapsed at the poll that saw it done, polls, schedule)."""
    schedule = times.schedule(ROUTE, initial=1.0, maximum=10.0)
    elapsed, polls = schedule.first, 1
    while elapsed < latency:
        elapsed += schedule.next_wait(elapsed)
        polls += 1
    return elapsed, polls, schedule


def run_engine(times: RouteTimes, latencies: list[float], in_flight: int = 64) -> Outcome:
    """Jobs in waves of `in_flight` (the default workers): each wave learns from the earlier ones."""
    out = Outcome([], [])
    for start in range(0, len(latencies), in_flight):
        seen = []
        for latency in latencies[start : start + in_flight]:
            elapsed, polls, _ = follow(times, latency)
            out.delays.append(elapsed - latency)
            out.requests.append(1 + polls + 1)
            seen.append(elapsed)
        for elapsed in seen:
            times.record(ROUTE, elapsed)
    return out


def run_naive(latencies: list[float], every: float = 5.0) -> Outcome:
    """The baseline: poll every 5 s."""
    polls = [math.ceil(x / every) for x in latencies]
    return Outcome([n * every - x for n, x in zip(polls, latencies, strict=True)], [1 + n + 1 for n in polls])


def warmed(rng: random.Random, jobs: int = 400) -> RouteTimes:
    """A route that started cold and learned from its own polls over `jobs` jobs."""
    times = RouteTimes()
    run_engine(times, [image_mix(rng) for _ in range(jobs)])
    return times


# --- without history ---------------------------------------------------------------------------


def test_without_history_it_is_a_capped_backoff() -> None:
    s = RouteTimes().schedule(ROUTE, initial=1.0, maximum=10.0)
    assert s.first == 1.0 and s.step is None
    waits = [s.next_wait(elapsed) for elapsed in range(8)]
    assert waits[:3] == [1.5, 2.25, 3.375]
    assert max(waits) == 10.0


def test_fewer_samples_than_the_minimum_leave_the_route_cold() -> None:
    times = RouteTimes(min_samples=20)
    for _ in range(19):
        times.record(ROUTE, 6.0)
    assert times.schedule(ROUTE, initial=1.0, maximum=10.0).step is None


# --- the shape --------------------------------------------------------------------------------


def test_history_of_the_image_mix_puts_the_first_poll_at_its_quick_fifth_then_a_short_step() -> None:
    rng = random.Random(3)
    latencies = sorted(image_mix(rng) for _ in range(500))
    times = RouteTimes()
    times.restore({ROUTE: latencies})
    s = times.schedule(ROUTE, initial=1.0, maximum=10.0)
    q20, q10, q90 = (latencies[int(p * 500)] for p in (0.2, 0.1, 0.9))
    assert s.first == pytest.approx(q20, rel=0.1)  # ≈ 4.0 s
    assert s.step == pytest.approx((q90 - q10) / 6, rel=0.15)  # ≈ 1.6 s
    assert s.next_wait(elapsed=10.0) == s.step


def test_unusually_slow_jobs_back_off_again_from_the_step() -> None:
    times = RouteTimes(min_samples=20)
    times.restore({ROUTE: [5.0 + i * 0.1 for i in range(50)]})
    s = times.schedule(ROUTE, initial=1.0, maximum=10.0)
    assert s.step is not None and s.usual_until < 60.0
    late = [s.next_wait(elapsed=60.0) for _ in range(8)]
    assert late[0] > s.step and late == sorted(late) and late[-1] == 10.0


def test_the_step_never_goes_below_half_the_initial_delay() -> None:
    times = RouteTimes()
    times.restore({ROUTE: [0.2] * 50})
    s = times.schedule(ROUTE, initial=1.0, maximum=10.0)
    assert s.first == 0.5 and s.step == 0.5


def test_vendor_eta_wins() -> None:
    s = PollSchedule(initial=1.0, maximum=10.0, first=1.0, step=2.0, usual_until=100.0)
    assert s.next_wait(elapsed=1.0, eta=8.0) == 4.0
    assert s.next_wait(elapsed=1.0, eta=100.0) == 10.0


def test_each_route_learns_alone() -> None:
    times = RouteTimes(min_samples=5)
    for _ in range(10):
        times.record("fast:m", 1.0)
    assert times.schedule("slow:m", initial=1.0, maximum=10.0).step is None
    assert times.schedule("fast:m", initial=1.0, maximum=10.0).step is not None


# --- what is remembered -----------------------------------------------------------------------


def test_a_sample_is_the_middle_of_the_gap_in_which_the_job_finished() -> None:
    times = RouteTimes()
    times.record(ROUTE, 10.0, since=8.0)
    times.record(ROUTE, 9.0)  # no previous poll known: the cold backoff's last gap, 1/3 of 9 s
    assert times.snapshot() == {ROUTE: [9.0, 7.5]}


def test_snapshot_and_restore_carry_the_schedule_across_a_restart() -> None:
    before = warmed(random.Random(5))
    saved = before.snapshot()
    after = RouteTimes()
    after.restore(saved)
    assert after.snapshot() == saved
    assert after.schedule(ROUTE, 1.0, 10.0) == before.schedule(ROUTE, 1.0, 10.0)


def test_restore_keeps_other_routes_skips_junk_and_keeps_the_newest() -> None:
    times = RouteTimes(keep=3)
    times.record("other:m", 5.0, since=5.0)
    times.restore({ROUTE: [1.0, float("nan"), -2.0, 2.0, 3.0, 4.0]})
    assert times.snapshot() == {"other:m": [5.0], ROUTE: [2.0, 3.0, 4.0]}


# --- the model: against a 5 s poller on the image mix ------------------------------------------


def test_warm_schedule_notices_2_5x_sooner_on_the_mean_and_2x_at_p95_within_1_5x_the_requests() -> None:
    rng = random.Random(9)
    times = warmed(rng)
    latencies = [image_mix(rng) for _ in range(2000)]
    bot, naive = run_engine(times, latencies), run_naive(latencies)
    assert naive.mean / bot.mean >= 2.5  # ≈ ×2.7
    assert naive.p95 / bot.p95 >= 2.0  # ≈ ×2.6
    assert bot.per_job / naive.per_job <= 1.5  # ≈ ×1.4 (submit, polls and the file, as the bench counts)


def test_the_learned_first_poll_does_not_drift_over_generations() -> None:
    rng = random.Random(11)
    times = warmed(rng)
    firsts = []
    for _ in range(10):
        run_engine(times, [image_mix(rng) for _ in range(1000)])
        firsts.append(times.schedule(ROUTE, 1.0, 10.0).first)
    true_q20 = 6.325 * math.exp(-0.8416 * math.log(10) / 3.92)  # ≈ 3.85 s before truncation
    assert all(0.85 * true_q20 <= f <= 1.3 * true_q20 for f in firsts), firsts
    assert abs(firsts[-1] - firsts[0]) < 0.2 * true_q20


def test_cold_is_only_a_backoff_worse_than_warm() -> None:
    rng = random.Random(13)
    latencies = [image_mix(rng) for _ in range(500)]
    cold = run_engine(RouteTimes(min_samples=10**9), latencies)
    warm = run_engine(warmed(random.Random(14)), latencies)
    assert warm.mean < cold.mean / 1.5 and warm.per_job < cold.per_job


def test_a_long_job_seen_by_the_capped_backoff_is_corrected_by_at_most_half_the_cap() -> None:
    times = RouteTimes()
    times.schedule("slow:m", initial=1.0, maximum=10.0)
    times.record("slow:m", 120.0)  # the cold backoff polls every 10 s by then, not every 40 s
    assert times.snapshot() == {"slow:m": [115.0]}


def test_answers_of_late_polls_are_not_learned() -> None:
    # A bot busy with a burst sends every poll 5 s after its moment: those answers say the jobs
    # ended later than they did, and learning them would push the first poll later and later.
    rng = random.Random(5)
    times = warmed(rng)
    before = times.schedule(ROUTE, 1.0, 10.0).first
    for _ in range(500):
        latency = image_mix(rng)
        schedule = times.schedule(ROUTE, initial=1.0, maximum=10.0)
        elapsed = schedule.first + 5.0
        while elapsed < latency:
            elapsed += schedule.next_wait(elapsed) + 5.0
        times.observed(ROUTE, schedule, elapsed)
    assert times.schedule(ROUTE, 1.0, 10.0).first == before


def test_an_on_time_poll_is_learned_as_the_middle_of_the_gap_it_closed() -> None:
    times = RouteTimes()
    schedule = times.schedule(ROUTE, initial=1.0, maximum=10.0)  # cold: 1 s, then ×1.5
    assert schedule.next_wait(1.0) == 1.5
    times.observed(ROUTE, schedule, 2.6)  # due at 2.5, 0.1 s late: on time
    assert times.snapshot() == {ROUTE: [pytest.approx(1.8)]}
    assert schedule.late(2.5 + 0.38) and not schedule.late(2.5 + 0.37)  # a quarter of its 1.5 s wait
