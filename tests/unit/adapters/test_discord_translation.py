"""The Discord adapter's pure pieces, without a gateway: translation into core models, the
command payload, file planning, token age and the saved reply address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import discord
import pytest
from discord.gateway import DiscordWebSocket

from adapters.discord_bot import apply_endpoints
from adapters.discord_commands import (
    actor_for,
    build_tree,
    command_digest,
    command_payload,
    edit_command,
    imagine_command,
    mod_command,
    modal_value,
    model3d_command,
)
from adapters.discord_reply import (
    MAX_CONTENT,
    TOKEN_TTL,
    ReplyRef,
    button_rows,
    clip,
    plan_files,
    status_text,
    token_fresh,
)
from bot.commands import ModOp
from bot.errors import ConfigError
from bot.reply import Button, ButtonAction, OutputFile
from tests.fakes.discord_fake import _command_problems, _message_problems
from tests.support.core import core_settings

MANAGE_GUILD = 1 << 5


def _actor(**kw: Any) -> Any:
    base: dict[str, Any] = {"user_id": "42", "display_name": "Alice", "guild_id": "7", "permissions": 0}
    return actor_for(**(base | kw))


def test_a_guild_member_is_a_member_of_the_guild_tenant() -> None:
    actor = _actor()
    assert (actor.platform, actor.tenant_id, actor.user_id, actor.is_moderator, actor.is_dm) == (
        "discord",
        "7",
        "42",
        False,
        False,
    )


def test_manage_server_or_administrator_makes_a_moderator() -> None:
    assert _actor(permissions=MANAGE_GUILD).is_moderator
    assert _actor(permissions=1 << 3).is_moderator


def test_the_moderator_role_matches_by_name_or_id() -> None:
    roles = [("900", "Moderators")]
    assert _actor(roles=roles, moderator_role="moderators").is_moderator
    assert _actor(roles=roles, moderator_role="@Moderators").is_moderator
    assert _actor(roles=roles, moderator_role="900").is_moderator
    assert not _actor(roles=roles, moderator_role="Admins").is_moderator
    assert not _actor(roles=roles, moderator_role=None).is_moderator


def test_a_dm_is_its_own_tenant_without_moderators() -> None:
    actor = _actor(guild_id=None, permissions=MANAGE_GUILD)
    assert actor.tenant_id == "dm:42" and actor.is_dm and not actor.is_moderator


def test_imagine_options_keep_inline_flags_and_drop_blank_options() -> None:
    cmd = imagine_command("  a fox --ar 16:9 ", aspect="", negative="  ", seed=3, model=" pixazo ")
    assert (cmd.prompt, cmd.aspect, cmd.negative, cmd.seed, cmd.model) == (
        "a fox --ar 16:9",
        None,
        None,
        3,
        "pixazo",
    )


def test_edit_and_model3d_take_the_attachment_url() -> None:
    edit = edit_command(url="http://cdn/x.png", filename="x.png", instruction=" add snow ")
    assert edit.image is not None and edit.image.url == "http://cdn/x.png" and edit.instruction == "add snow"
    assert model3d_command(prompt="a chair").image is None
    m3 = model3d_command(url="http://cdn/y.png", filename="y.png", geometry_only=None)
    assert m3.image is not None and m3.geometry_only is False


def test_quota_subcommands_become_mod_commands() -> None:
    cmd = mod_command(ModOp.GRANT, member="42", amount=50, reason=" contest ")
    assert (cmd.op, cmd.target, cmd.amount, cmd.reason) == (ModOp.GRANT, "42", 50, "contest")
    assert mod_command(ModOp.BLOCK_ADD, words=" gore ").words == "gore"


def test_modal_value_reads_action_rows_and_labels() -> None:
    rows = [{"type": 1, "components": [{"type": 4, "custom_id": "instruction", "value": "snow"}]}]
    labels = [{"type": 18, "component": {"type": 4, "custom_id": "instruction", "value": "rain"}}]
    assert modal_value(rows) == "snow"
    assert modal_value(labels) == "rain"
    assert modal_value([{"type": 18, "component": {"type": 4, "custom_id": "other", "value": "x"}}]) is None


def test_the_command_digest_changes_with_the_commands_or_the_scope() -> None:
    payload = [{"name": "imagine", "description": "x"}]
    assert command_digest(payload, "global") == command_digest([dict(payload[0])], "global")
    assert command_digest(payload, "global") != command_digest(payload, "123")
    assert command_digest(payload, "global") != command_digest(
        [{"name": "imagine", "description": "y"}], "global"
    )


async def test_the_command_set_is_valid_for_discord() -> None:
    client = discord.Client(intents=discord.Intents.none())
    tree = build_tree(client, None)
    payload = command_payload(tree)

    assert sorted(c["name"] for c in payload) == [
        "Edit image",
        "Make 3D model",
        "cancel",
        "credits",
        "edit",
        "imagine",
        "model3d",
        "quota",
        "show",
    ]
    assert [p for c in payload for p in _command_problems(c)] == []
    imagine = next(c for c in payload if c["name"] == "imagine")
    options = {o["name"]: o for o in imagine["options"]}
    assert [c["value"] for c in options["aspect"]["choices"]][:2] == ["1:1", "4:3"]
    assert options["model"]["autocomplete"] is True
    assert (options["count"]["min_value"], options["count"]["max_value"]) == (1, 4)
    quota = next(c for c in payload if c["name"] == "quota")
    subs = {o["name"] for o in quota["options"]}
    assert {
        "grant",
        "take",
        "set",
        "freeze",
        "unfreeze",
        "ban",
        "unban",
        "allowance",
        "cost",
        "budget",
    } <= subs
    assert {"blocklist", "history", "top"} <= subs
    await client.close()


def test_endpoints_default_to_discord_and_follow_the_settings(tmp_path: Path) -> None:
    apply_endpoints(core_settings(tmp_path))
    assert discord.http.Route.BASE == "https://discord.com/api/v10"
    assert str(DiscordWebSocket.DEFAULT_GATEWAY).startswith("wss://gateway.discord.gg")

    apply_endpoints(
        core_settings(
            tmp_path,
            discord_api_base="http://127.0.0.1:9/api/v10/",
            discord_gateway_url="ws://127.0.0.1:9/gw",
        )
    )
    assert discord.http.Route.BASE == "http://127.0.0.1:9/api/v10"
    assert str(DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9/gw"
    apply_endpoints(core_settings(tmp_path))


@pytest.mark.parametrize(
    ("setting", "value"), [("discord_api_base", "discord.com/api"), ("discord_gateway_url", "http://x/gw")]
)
def test_a_malformed_endpoint_is_a_config_error_naming_it(tmp_path: Path, setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=setting.upper()):
        apply_endpoints(core_settings(tmp_path, **{setting: value}))


def _file(name: str, size: int, role: str = "image") -> OutputFile:
    return OutputFile(path=Path(name), filename=name, content_type="image/png", size=size, role=role)


def test_files_over_the_limit_become_links() -> None:
    plan = plan_files([_file("a.png", 5), _file("b.png", 50), _file("c.glb", 10, "model")], limit=10)
    assert [f.filename for f in plan.uploads] == ["a.png", "c.glb"]
    assert [f.filename for f in plan.links] == ["b.png"]


def test_files_beyond_the_request_total_become_links() -> None:
    plan = plan_files([_file("a.png", 8), _file("b.png", 8)], limit=10, max_request=12)
    assert [f.filename for f in plan.links] == ["b.png"]


def test_buttons_are_laid_out_actions_first_then_one_per_image() -> None:
    buttons = [Button(ButtonAction.REROLL, "j", "Reroll"), Button(ButtonAction.EDIT, "j", "Edit", 0)]
    buttons += [Button(ButtonAction.SINGLE, "j", f"U{i + 1}", i) for i in range(4)]
    rows = button_rows(buttons)
    assert [[b.label for b in row] for row in rows] == [["Reroll", "Edit"], ["U1", "U2", "U3", "U4"]]


def test_text_is_clipped_to_what_discord_accepts() -> None:
    long = "x" * 5000
    assert len(clip(long)) == MAX_CONTENT
    assert list(_message_problems({"content": status_text("<@1>", long)})) == []
    assert status_text("", "Queued") == "Queued"


def test_a_token_is_used_until_a_minute_before_it_expires() -> None:
    assert token_fresh(issued=1000.0, now=1000.0 + TOKEN_TTL - 61)
    assert not token_fresh(issued=1000.0, now=1000.0 + TOKEN_TTL - 59)


def test_a_saved_reply_address_round_trips_and_tolerates_unknown_fields() -> None:
    ref = ReplyRef(app_id="1", token="t", issued=5.0, channel_id="2", user_id="3", head="<@3>")
    saved = ref.model_dump() | {"future_field": True}
    assert ReplyRef.model_validate(saved) == ref
