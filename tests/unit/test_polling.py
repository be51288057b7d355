"""The poll schedule: plain backoff without history, learned from a route's recent jobs."""

from __future__ import annotations

import random

from bot.polling import PollSchedule, RouteTimes


def test_without_history_it_is_a_capped_backoff() -> None:
    s = RouteTimes().schedule("v:m", initial=1.0, maximum=10.0)
    assert s.first == 1.0
    waits = [s.next_wait(elapsed) for elapsed in range(8)]
    assert waits[:3] == [1.5, 2.25, 3.375]
    assert max(waits) == 10.0


def test_history_moves_the_first_poll_near_the_quick_jobs() -> None:
    times = RouteTimes(min_samples=20)
    rng = random.Random(7)
    for _ in range(200):
        times.record("v:m", rng.uniform(2.0, 20.0))
    s = times.schedule("v:m", initial=1.0, maximum=10.0)
    assert 2.5 <= s.first <= 4.0  # ≈ 0.9 × p10 of 2–20 s (≈ 3.2)
    assert 2.0 <= s.step <= 2.8  # (p90 − p10) / 6
    assert s.next_wait(elapsed=10.0) == s.step


def test_unusually_slow_jobs_back_off_again() -> None:
    times = RouteTimes(min_samples=20)
    for i in range(50):
        times.record("v:m", 5.0 + i * 0.1)
    s = times.schedule("v:m", initial=1.0, maximum=10.0)
    late = [s.next_wait(elapsed=60.0) for _ in range(6)]
    assert late == sorted(late) and late[-1] == 10.0


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
