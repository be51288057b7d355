"""Settings are bounded, and every invalid one is reported at once, one line each."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.config import Settings, settings_problems


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("vendor_concurrency", 0),
        ("daily_allowance", -1),
        ("workers", 0),
        ("queue_size", 0),
        ("max_jobs_per_user", 0),
        ("http_port", 70000),
        ("vendor_timeout", 0),
        ("job_timeout", -5),
        ("poll_initial", 0),
        ("submit_retries", -1),
        ("cost_image", -10),
        ("max_grant", 0),
        ("max_result_bytes", 0),
        ("media_link_ttl", 0),
        ("breaker_failures", 0),
        ("progress_interval", -1),
        ("platform_grace_seconds", 0),
        ("log_level", "LOUD"),
        ("log_format", "xml"),
        ("public_base_url", "ftp://example.org"),
        ("novita_base_url", "api.novita.ai"),
    ],
)
def test_an_out_of_bounds_setting_is_refused(name: str, value: object) -> None:
    with pytest.raises(ValidationError):
        _settings(**{name: value})


def test_log_level_is_case_insensitive_and_normalised() -> None:
    assert _settings(log_level="debug").log_level == "DEBUG"


def test_poll_max_below_poll_initial_is_refused() -> None:
    with pytest.raises(ValidationError):
        _settings(poll_initial=5.0, poll_max=1.0)


def test_give_up_shorter_than_the_grace_period_is_refused() -> None:
    with pytest.raises(ValidationError):
        _settings(platform_grace_seconds=120, platform_give_up_seconds=60)


def test_the_defaults_are_valid() -> None:
    _settings()


def test_every_problem_is_one_line_naming_its_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENDOR_CONCURRENCY", "0")
    monkeypatch.setenv("DAILY_ALLOWANCE", "-1")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ValidationError) as caught:
        _settings()
    lines = settings_problems(caught.value)
    assert len(lines) == 3
    assert [line.split(" ", 2)[1] for line in lines] == ["LOG_LEVEL", "VENDOR_CONCURRENCY", "DAILY_ALLOWANCE"]
    assert all("\n" not in line for line in lines)


def test_a_bad_secret_is_named_but_its_value_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TOKEN", "short")
    with pytest.raises(ValidationError) as caught:
        _settings()
    (line,) = settings_problems(caught.value)
    assert "METRICS_TOKEN" in line and "short" not in line
