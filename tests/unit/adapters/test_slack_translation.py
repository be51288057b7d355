"""The Slack adapter's pure translation and rendering, without Slack: payloads into the core's
Actor and commands, shared wording into mrkdwn and Block Kit."""

from __future__ import annotations

import pytest

from adapters.slack_app import SlackAddress
from adapters.slack_blocks import edit_modal, message_blocks, mrkdwn
from adapters.slack_events import (
    BlockActions,
    EditTarget,
    SlackFile,
    SlashCommand,
    ViewSubmission,
    actor_from,
    authorise_command,
    first_image,
    instruction_from,
    is_trusted_file_url,
    parse_command,
    with_file_token,
)
from bot import messages
from bot.commands import EditCommand, ImageRef, ImagineCommand, ModCommand, Model3DCommand, ModOp
from bot.errors import InvalidInputError
from bot.reply import Button, ButtonAction

API = "http://127.0.0.1:4567/api/"


def _slash(command: str, text: str) -> SlashCommand:
    return SlashCommand.model_validate(
        {"team_id": "T1", "channel_id": "C1", "user_id": "U1", "command": command, "text": text, "extra": "x"}
    )


def test_a_dm_still_belongs_to_the_workspace() -> None:
    actor = actor_from("T1", "U1", "ann", "D123", is_moderator=False)
    assert actor.tenant == "slack:T1" and actor.is_dm


def test_a_channel_command_is_not_a_dm() -> None:
    actor = actor_from("T1", "U1", "ann", "C123", is_moderator=True)
    assert not actor.is_dm and actor.is_moderator and actor.platform == "slack"


def test_imagine_text_is_unescaped_and_left_to_the_core_parser() -> None:
    parsed = parse_command(_slash("/imagine", "cats &amp; dogs --ar 16:9"))
    assert parsed.command == ImagineCommand(prompt="cats & dogs --ar 16:9")


def test_imagine_help_is_recognised() -> None:
    assert parse_command(_slash("/imagine", " help ")).name == "help"


def test_quota_grant_takes_a_slack_mention() -> None:
    parsed = parse_command(_slash("/quota", "grant <@U0ABC|ann> 50 for the contest"))
    assert parsed.command == ModCommand(op=ModOp.GRANT, target="U0ABC", amount=50, reason="for the contest")


def test_quota_without_an_amount_is_a_user_error() -> None:
    with pytest.raises(InvalidInputError):
        parse_command(_slash("/quota", "grant <@U0ABC>"))


def test_edit_takes_a_slack_wrapped_link_then_the_instruction() -> None:
    parsed = parse_command(_slash("/edit", "<https://example.com/a.png|a.png> make it blue"))
    assert parsed.command == EditCommand(
        image=ImageRef(url="https://example.com/a.png"), instruction="make it blue"
    )


def test_model3d_from_a_prompt_or_an_image() -> None:
    assert parse_command(_slash("/model3d", "a chair")).command == Model3DCommand(prompt="a chair")
    from_image = parse_command(_slash("/model3d", "<https://example.com/c.jpg>")).command
    assert isinstance(from_image, Model3DCommand) and from_image.image is not None


def test_the_bot_token_goes_only_to_slack_file_hosts() -> None:
    assert is_trusted_file_url("https://files.slack.com/files-pri/T1-F1/a.png", None)
    assert is_trusted_file_url("http://127.0.0.1:4567/files-pri/T1-F1/a.png", API)
    assert not is_trusted_file_url("http://files.slack.com/files-pri/T1-F1/a.png", None)  # not https
    assert not is_trusted_file_url("https://evil.example/files.slack.com/a.png", None)
    assert not is_trusted_file_url("http://127.0.0.1:9999/a.png", API)  # another port


def test_a_slack_file_link_gets_the_token_and_a_foreign_link_does_not() -> None:
    slack = with_file_token(ImageRef(url="https://files.slack.com/x.png"), "xoxb-1", None)
    foreign = with_file_token(ImageRef(url="https://example.com/x.png"), "xoxb-1", None)
    assert slack is not None and slack.headers == {"Authorization": "Bearer xoxb-1"}
    assert foreign is not None and foreign.headers == {}


def test_authorise_command_leaves_imagine_alone() -> None:
    command = ImagineCommand(prompt="https://files.slack.com/x.png")
    assert authorise_command(command, "xoxb-1", None) is command


def test_first_image_skips_other_files() -> None:
    files = [
        SlackFile(id="F1", name="notes.txt", mimetype="text/plain", url_private="https://files.slack.com/1"),
        SlackFile(
            id="F2", name="cat.png", mimetype="image/png", url_private_download="https://files.slack.com/2"
        ),
    ]
    image = first_image(files)
    assert image is not None and image.id == "F2"
    assert first_image(files[:1]) is None


def test_block_actions_know_their_channel_thread_and_team() -> None:
    press = BlockActions.model_validate(
        {
            "type": "block_actions",
            "user": {"id": "U1", "team_id": "T9"},
            "container": {"channel_id": "C7", "message_ts": "1.2"},
            "message": {"ts": "1.2", "thread_ts": "1.0"},
            "actions": [{"action_id": "ib:reroll:abc", "action_ts": "3.4"}],
            "unknown_field": {"ignored": True},
        }
    )
    assert (press.team_id, press.channel_id, press.thread_ts) == ("T9", "C7", "1.0")


def test_the_edit_modal_round_trips_its_target() -> None:
    target = EditTarget(channel="C1", thread_ts="1.0", job_id="abc", index=2)
    view = edit_modal(target, "Image 3 of job `abc`")
    assert EditTarget.load(view["private_metadata"]) == target
    assert len(view["title"]["text"]) <= 24


def test_foreign_modal_metadata_is_refused() -> None:
    with pytest.raises(ValueError):
        EditTarget.load('{"channel": "C1", "evil": 1}')


def test_the_instruction_is_read_from_the_modal_state() -> None:
    submission = ViewSubmission.model_validate(
        {
            "user": {"id": "U1"},
            "view": {
                "id": "V1",
                "state": {
                    "values": {
                        "instruction": {"instruction": {"type": "plain_text_input", "value": " blue "}}
                    }
                },
            },
        }
    )
    assert instruction_from(submission.view) == "blue"


def test_mrkdwn_turns_bold_into_slack_bold_and_escapes_user_text() -> None:
    assert mrkdwn("**a <b> & c**") == "*a &lt;b&gt; &amp; c*"


def test_mrkdwn_keeps_the_cores_own_mentions() -> None:
    text = messages.mod_balance("grant", "U123", 5, 105)
    assert mrkdwn(text) == "Granted 5 credits to <@U123>. Their balance is now 105 credits."


@pytest.mark.parametrize(
    "typed", ["<!channel>", "<!here>", "<!everyone>", "<@U0ADMIN>", "<#C0001>", "<https://evil.example|bank>"]
)
def test_mrkdwn_escapes_markup_typed_by_a_user(typed: str) -> None:
    rendered = mrkdwn(messages.result_caption("j1", "image", f"fox {typed}", (8, 8), None, 1, 1))
    assert "<" not in rendered and ">" not in rendered
    assert typed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in rendered


def test_buttons_are_split_into_blocks_of_at_most_25() -> None:
    buttons = [Button(ButtonAction.SINGLE, "job1", f"U{i + 1}", i) for i in range(30)]
    blocks = message_blocks("done", buttons)
    actions = [b for b in blocks if b["type"] == "actions"]
    assert [len(b["elements"]) for b in actions] == [25, 5]
    assert len({b["block_id"] for b in actions}) == 2
    assert actions[0]["elements"][0]["action_id"] == "ib:single:job1:0"


def test_the_cancel_button_is_marked_dangerous() -> None:
    [_, actions] = message_blocks("running", [Button(ButtonAction.CANCEL, "job1", "Cancel")])
    assert actions["elements"][0]["style"] == "danger"


def test_long_text_is_cut_to_the_section_limit() -> None:
    [section] = message_blocks("x" * 5000)
    assert len(section["text"]["text"]) == 3000


def test_a_saved_address_from_another_version_still_restores() -> None:
    address = SlackAddress.from_json({"channel": "C1", "user": "U1", "status_ts": "1.1", "future_key": 1})
    assert address.status_ts == "1.1"
    assert SlackAddress.from_json(address.to_json()) == address
