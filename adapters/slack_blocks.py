"""Outbound Slack: the shared wording rendered as mrkdwn, and Block Kit for status messages,
result cards and the edit modal. Pure functions; Slack's limits are applied here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adapters.slack_events import EDIT_VIEW, INSTRUCTION_BLOCK, EditTarget
from bot import messages
from bot.params import FLAGS_HELP
from bot.reply import Button, ButtonAction, per_image_rows

__all__ = ["HELP", "delete_targets", "edit_modal", "escape", "message_blocks", "mrkdwn", "plain"]

SECTION_LIMIT = 3000  # characters of one section's text
TEXT_LIMIT = 4000  # what we send as a message's notification text
BUTTONS_PER_BLOCK = 25

_FILE_ID = re.compile(r"F[A-Z0-9]+")  # Slack file ids; job ids are lower-case hex
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)
# Everything the bot posts to Slack goes through `mrkdwn`, which escapes every `&`, `<` and `>`:
# no user text (a prompt in a caption or headline, a file name, a flag value echoed in an
# error) can become a mention, a channel ping (`<!channel>`, `<!here>`, `<!everyone>`) or a
# disguised link. The one markup that survives is a mention the core wrote itself, marked by
# `messages.mention` with a word joiner that user text never holds (the command models strip
# it). Links the adapter adds (files over the upload limit) are appended after rendering.
_CORE_MENTION = re.compile(re.escape(messages.MENTION_MARK) + r"(<[@#][^\s<>&|]+>)")


def escape(text: str) -> str:
    """Slack's three escapes; the one function every echoed string passes through."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(text: str, *, mentions: bool = True) -> str:
    """Shared wording (`**bold**`, `code`) as Slack mrkdwn, every `&`, `<`, `>` escaped except
    the core's own marked mentions. `mentions=False` for text that carries raw Slack input the
    command models never cleaned (a headline, a file name): then nothing survives."""
    text = _BOLD.sub(r"*\1*", text)
    out: list[str] = []
    last = 0
    for m in _CORE_MENTION.finditer(text) if mentions else ():
        out.append(escape(text[last : m.start()]))
        out.append(m.group(1))
        last = m.end()
    out.append(escape(text[last:]))
    return "".join(out).replace(messages.MENTION_MARK, "")


#: `/imagine help` as mrkdwn: escaped, or Slack would read `<prompt>` as a link
HELP = mrkdwn(messages.slack_help(FLAGS_HELP))


def plain(text: str, limit: int) -> str:
    """Text cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _button(button: Button, files: Sequence[str]) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": button.custom_id,
        "text": {"type": "plain_text", "text": plain(button.label, 75)},
        # Delete carries the ids of the files shared with this card, to remove them too
        # (no state kept: it works after a restart).
        "value": ",".join(files) if button.action is ButtonAction.DELETE and files else button.job_id,
    }
    if button.action in (ButtonAction.CANCEL, ButtonAction.DELETE):
        element["style"] = "danger"
    elif button.action is ButtonAction.CONFIRM:
        element["style"] = "primary"
    return element


def delete_targets(value: str | None) -> list[str]:
    """The file ids a Delete button's value names (see `message_blocks`)."""
    return [f for f in (value or "").split(",") if _FILE_ID.fullmatch(f)]


def message_blocks(
    text: str, buttons: Sequence[Button] = (), files: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """A section with `text` (already mrkdwn) and the buttons in actions blocks; `files` are
    the ids of the files uploaded with this message (its Delete button removes them too)."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": plain(text, SECTION_LIMIT)}}
    ]
    # The job's actions, then U1…U4 and V1…V4 each in an actions block of their own, so the
    # rows read like Midjourney's (a block wraps its buttons; 25 at most in one).
    singles, varies = per_image_rows(buttons)
    main = [b for b in buttons if b not in singles and b not in varies]
    for group in (main, singles, varies):
        for start in range(0, len(group), BUTTONS_PER_BLOCK):
            chunk = group[start : start + BUTTONS_PER_BLOCK]
            blocks.append(
                {
                    "type": "actions",
                    "block_id": f"ib-actions-{sum(b['type'] == 'actions' for b in blocks)}",
                    "elements": [_button(b, files) for b in chunk],
                }
            )
    return blocks


def edit_modal(target: EditTarget, subject: str) -> dict[str, Any]:
    """The modal that asks for an edit instruction; `subject` names the image."""
    return {
        "type": "modal",
        "callback_id": EDIT_VIEW,
        "private_metadata": target.dump(),
        "title": {"type": "plain_text", "text": messages.edit_dialog_title()},
        "submit": {"type": "plain_text", "text": messages.edit_dialog_submit()},
        "close": {"type": "plain_text", "text": messages.edit_dialog_close()},
        "blocks": [
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": plain(mrkdwn(subject, mentions=False), 300)}],
            },
            {
                "type": "input",
                "block_id": INSTRUCTION_BLOCK,
                "label": {"type": "plain_text", "text": messages.edit_dialog_label()},
                "element": {
                    "type": "plain_text_input",
                    "action_id": INSTRUCTION_BLOCK,
                    "multiline": True,
                    "max_length": 1000,
                    "placeholder": {"type": "plain_text", "text": messages.edit_dialog_placeholder()},
                },
            },
        ],
    }
