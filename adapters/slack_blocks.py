"""Outbound Slack: the shared wording rendered as mrkdwn, and Block Kit for status messages,
result cards and the edit modal. Pure functions; Slack's limits are applied here."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from adapters.slack_events import EDIT_VIEW, INSTRUCTION_BLOCK, EditTarget
from bot.params import FLAGS_HELP
from bot.reply import Button, ButtonAction

__all__ = ["HELP", "edit_modal", "message_blocks", "mrkdwn", "plain"]

SECTION_LIMIT = 3000  # characters of one section's text
TEXT_LIMIT = 4000  # what we send as a message's notification text
BUTTONS_PER_BLOCK = 25

HELP = (
    "*imagine-bot* makes images and 3D models with Hunyuan.\n"
    "• `/imagine <prompt>` — images, e.g. `/imagine a red fox --ar 16:9 --seed 7 --no text --n 4`\n"
    "• `/edit <image link> <instruction>` — change an image; or press *Edit* on a result, or use the "
    "message shortcut *Edit this image* on any message with an image\n"
    "• `/model3d <prompt>` or `/model3d <image link>` — a 3D model (.glb); or press *Make 3D* on a result\n"
    "• `/credits` — your balance and recent jobs\n"
    "• `/quota …` — moderators: grant, take, set, freeze, ban, allowance, cost, budget, blocklist, "
    "history, top\n" + FLAGS_HELP
)

_BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)
# Slack's own markup that must pass through unescaped: mentions, channels, specials, links.
_CONTROL = re.compile(r"<(?:[@#!][A-Za-z0-9^|._-]+(?:\|[^<>]*)?|(?:https?|mailto):[^<>\s]+)>")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(text: str) -> str:
    """Shared wording (`**bold**`, `code`) as Slack mrkdwn; user text is escaped so a prompt
    with `<` or `&` cannot turn into a mention or a link."""
    text = _BOLD.sub(r"*\1*", text)
    out: list[str] = []
    last = 0
    for m in _CONTROL.finditer(text):
        out.append(_escape(text[last : m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_escape(text[last:]))
    return "".join(out)


def plain(text: str, limit: int) -> str:
    """Text cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _button(button: Button) -> dict[str, Any]:
    element: dict[str, Any] = {
        "type": "button",
        "action_id": button.custom_id,
        "text": {"type": "plain_text", "text": plain(button.label, 75)},
        "value": button.job_id,
    }
    if button.action is ButtonAction.CANCEL:
        element["style"] = "danger"
    return element


def message_blocks(text: str, buttons: Sequence[Button] = ()) -> list[dict[str, Any]]:
    """A section with `text` (already mrkdwn) and the buttons in actions blocks."""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": plain(text, SECTION_LIMIT)}}
    ]
    for start in range(0, len(buttons), BUTTONS_PER_BLOCK):
        chunk = buttons[start : start + BUTTONS_PER_BLOCK]
        blocks.append(
            {
                "type": "actions",
                "block_id": f"ib-actions-{start // BUTTONS_PER_BLOCK}",
                "elements": [_button(b) for b in chunk],
            }
        )
    return blocks


def edit_modal(target: EditTarget, subject: str) -> dict[str, Any]:
    """The modal that asks for an edit instruction; `subject` names the image."""
    return {
        "type": "modal",
        "callback_id": EDIT_VIEW,
        "private_metadata": target.dump(),
        "title": {"type": "plain_text", "text": "Edit image"},
        "submit": {"type": "plain_text", "text": "Edit"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "context", "elements": [{"type": "mrkdwn", "text": plain(mrkdwn(subject), 300)}]},
            {
                "type": "input",
                "block_id": INSTRUCTION_BLOCK,
                "label": {"type": "plain_text", "text": "What should change?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": INSTRUCTION_BLOCK,
                    "multiline": True,
                    "max_length": 1000,
                    "placeholder": {"type": "plain_text", "text": "e.g. make the sky stormy"},
                },
            },
        ],
    }
