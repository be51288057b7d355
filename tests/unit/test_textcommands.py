"""Typed commands (console, Slack) become the same core models as typed options."""

from __future__ import annotations

import pytest

from bot.commands import CreditsCommand, EditCommand, ImagineCommand, ModCommand, Model3DCommand, ModOp
from bot.errors import InvalidInputError
from bot.textcommands import TextCommand, mention_id, parse_mod, parse_text


def test_imagine_keeps_inline_flags_for_the_core_parser() -> None:
    cmd = parse_text("/imagine a red fox --ar 16:9").command
    assert cmd == ImagineCommand(prompt="a red fox --ar 16:9")


def test_text_without_a_slash_is_a_hint_not_a_paid_imagine() -> None:
    with pytest.raises(InvalidInputError, match=r"start with a slash: `/imagine hello there`"):
        parse_text("hello there")


def test_imagine_help_is_a_meta_command() -> None:
    assert parse_text("/imagine help").name == "help"


def test_edit_takes_an_image_url_then_the_instruction() -> None:
    cmd = parse_text("/edit https://example.com/cat.png make it a tiger").command
    assert isinstance(cmd, EditCommand)
    assert cmd.image is not None and cmd.image.url == "https://example.com/cat.png"
    assert cmd.instruction == "make it a tiger"


def test_edit_takes_a_local_path() -> None:
    cmd = parse_text("/edit ./pics/cat.jpg add a hat").command
    assert isinstance(cmd, EditCommand) and cmd.image is not None and cmd.image.path == "./pics/cat.jpg"


def test_slack_wraps_links_in_angle_brackets() -> None:
    cmd = parse_text("/edit <https://example.com/a.png> brighter").command
    assert (
        isinstance(cmd, EditCommand)
        and cmd.image is not None
        and cmd.image.url == "https://example.com/a.png"
    )


def test_model3d_from_text_or_image() -> None:
    assert parse_text("/model3d a chair").command == Model3DCommand(prompt="a chair")
    cmd = parse_text("/model3d https://e.com/chair.png").command
    assert isinstance(cmd, Model3DCommand) and cmd.image is not None and cmd.prompt is None


def test_credits() -> None:
    assert parse_text("/credits").command == CreditsCommand()


@pytest.mark.parametrize(
    "token,user", [("<@U123ABC>", "U123ABC"), ("<@U9|ann>", "U9"), ("@ann", "ann"), ("ann", "ann")]
)
def test_mentions_in_every_shape(token: str, user: str) -> None:
    assert mention_id(token) == user


def test_quota_grant_with_reason() -> None:
    assert parse_mod("grant <@U1|ann> 50 welcome gift") == ModCommand(
        op=ModOp.GRANT, target="U1", amount=50, reason="welcome gift"
    )


def test_quota_cost_and_budget_off() -> None:
    assert parse_mod("cost image 5") == ModCommand(op=ModOp.COST, kind="image", amount=5)
    assert parse_mod("budget off") == ModCommand(op=ModOp.BUDGET, amount=None)


def test_quota_blocklist_words() -> None:
    assert parse_mod("blocklist add gore, blood") == ModCommand(op=ModOp.BLOCK_ADD, words="gore, blood")
    assert parse_mod("blocklist") == ModCommand(op=ModOp.BLOCK_LIST)


def test_quota_amount_must_be_a_number() -> None:
    with pytest.raises(InvalidInputError, match="isn't a whole number"):
        parse_mod("grant @ann lots")


def test_quota_unknown_subcommand_shows_usage() -> None:
    with pytest.raises(InvalidInputError, match="/quota grant"):
        parse_mod("launch @ann")


def test_unknown_slash_command_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="/imagine, /edit"):
        parse_text("/dream big")


def test_quota_confirm_above_and_off_and_settings() -> None:
    assert parse_mod("confirm-above 30 big jobs") == ModCommand(
        op=ModOp.CONFIRM_ABOVE, amount=30, reason="big jobs"
    )
    for off in ("off", "0", "none"):
        assert parse_mod(f"confirm-above {off}") == ModCommand(op=ModOp.CONFIRM_ABOVE, amount=None)
    with pytest.raises(InvalidInputError):
        parse_mod("confirm-above")
    assert parse_mod("settings") == ModCommand(op=ModOp.SETTINGS)
    assert not ModOp.SETTINGS.changes_state and ModOp.CONFIRM_ABOVE.changes_state


def test_confirm_with_or_without_a_request_id() -> None:
    assert parse_text("/confirm 3f9a1c02de") == TextCommand("confirm", arg="3f9a1c02de")
    assert parse_text("/confirm") == TextCommand("confirm", arg="")
