"""The shipped Slack app manifest declares exactly what the adapter handles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from adapters.slack_app import COMMANDS, EDIT_SHORTCUT

MANIFEST = Path(__file__).resolve().parents[3] / "slack" / "manifest.yml"


def _manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_manifest_declares_every_command_the_adapter_handles() -> None:
    commands = [c["command"] for c in _manifest()["features"]["slash_commands"]]
    assert sorted(commands) == sorted(COMMANDS)


def test_the_manifest_declares_the_edit_message_shortcut() -> None:
    [shortcut] = _manifest()["features"]["shortcuts"]
    assert shortcut["type"] == "message" and shortcut["callback_id"] == EDIT_SHORTCUT


def test_every_request_url_is_the_bots_slack_events_route() -> None:
    m = _manifest()
    urls = [c["url"] for c in m["features"]["slash_commands"]] + [
        m["settings"]["interactivity"]["request_url"]
    ]
    assert all(url == "https://YOUR_HOST/slack/events" for url in urls)
    assert m["settings"]["interactivity"]["is_enabled"] is True
    assert m["settings"]["socket_mode_enabled"] is False


def test_quota_gets_mentions_as_user_ids() -> None:
    quota = next(c for c in _manifest()["features"]["slash_commands"] if c["command"] == "/quota")
    assert quota["should_escape"] is True


def test_the_manifest_requests_the_scopes_the_adapter_uses() -> None:
    scopes = set(_manifest()["oauth_config"]["scopes"]["bot"])
    assert {
        "commands",
        "chat:write",
        "files:write",
        "files:read",
        "users:read",
        "usergroups:read",
        "im:write",
    } <= scopes
