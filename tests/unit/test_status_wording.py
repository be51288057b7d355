"""The status wording (issue 10): ordinals and what each line states."""

from __future__ import annotations

from bot import messages


def test_ordinals_follow_english() -> None:
    assert [messages.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th", "112th",
    ]  # fmt: skip


def test_a_queued_status_states_the_place_and_the_credits_held() -> None:
    assert messages.queued(3, 10) == "Queued — 3rd in line · 10 credits held."
    assert messages.queued(1, 1) == "Queued — 1st in line · 1 credit held."


def test_a_running_status_states_elapsed_percent_and_usual_time() -> None:
    assert messages.running(4.7, 0.42, 8.2, 10) == "Generating… 42% (4 s, usually ~8 s) · 10 credits held"
    assert messages.running(4.7, None, None, 10) == "Generating… (4 s) · 10 credits held"
