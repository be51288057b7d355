"""Webhook tokens and media signatures: HMAC over one key, domain-separated, expiring links."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.signing import Signer, load_or_create_key

KEY = b"k" * 32


def test_webhook_token_is_accepted_for_its_job() -> None:
    signer = Signer(KEY)
    assert signer.check_webhook_token("job1", signer.webhook_token("job1"))


def test_webhook_token_of_another_job_is_refused() -> None:
    signer = Signer(KEY)
    assert not signer.check_webhook_token("job2", signer.webhook_token("job1"))


@pytest.mark.parametrize("token", [None, "", "x", "0" * 43])
def test_missing_or_forged_webhook_token_is_refused(token: str | None) -> None:
    assert not Signer(KEY).check_webhook_token("job1", token)


def test_webhook_token_is_url_safe() -> None:
    token = Signer(KEY).webhook_token("job1")
    assert token.replace("-", "").replace("_", "").isalnum()


def test_tokens_from_another_key_are_refused() -> None:
    assert not Signer(KEY).check_webhook_token("job1", Signer(b"other" * 8).webhook_token("job1"))


def test_a_webhook_token_never_passes_as_a_media_signature() -> None:
    signer = Signer(KEY)
    assert signer.webhook_token("a") != signer.sign_media("a", 0)
    assert not signer.check_media("job1", 0, signer.webhook_token("job1"), now=0)


def test_media_signature_is_valid_until_it_expires() -> None:
    signer = Signer(KEY)
    sig = signer.sign_media("jobs/j1/a.png", 1000)
    assert signer.check_media("jobs/j1/a.png", 1000, sig, now=999.5)
    assert signer.check_media("jobs/j1/a.png", 1000, sig, now=1000)
    assert not signer.check_media("jobs/j1/a.png", 1000, sig, now=1000.1)


def test_media_signature_is_bound_to_name_and_expiry() -> None:
    signer = Signer(KEY)
    sig = signer.sign_media("jobs/j1/a.png", 1000)
    assert not signer.check_media("jobs/j1/b.png", 1000, sig, now=0)
    assert not signer.check_media("jobs/j1/a.png", 2000, sig, now=0)
    assert not signer.check_media("jobs/j1/a.png", 1000, None, now=0)


def test_signer_repr_hides_the_key() -> None:
    assert "k" * 8 not in repr(Signer(KEY))


def test_configured_secret_wins(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_bytes(b"f" * 32)
    assert (
        load_or_create_key(tmp_path / "secret.key", "configured-secret-value") == b"configured-secret-value"
    )


def test_key_file_is_created_once_with_owner_only_permissions(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    first = load_or_create_key(path, None)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path, None) == first


def test_a_damaged_key_file_stops_startup_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_or_create_key(path, None)
