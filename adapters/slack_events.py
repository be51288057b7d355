"""Inbound Slack: payloads parsed tolerantly, then turned into the core's Actor and commands.

Everything here is pure (no I/O), so the translation is tested without Slack. Slack escapes
`&`, `<` and `>` in command text and wraps links and mentions in `<…>`; the core's text parser
(`bot.textcommands`) understands the mention and link syntax.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from bot.commands import Actor, CommandModel, EditCommand, ImageRef, Model3DCommand, Platform
from bot.textcommands import TextCommand, parse_text

__all__ = [
    "BlockActions",
    "EditTarget",
    "MessageShortcut",
    "SlackFile",
    "SlashCommand",
    "ViewSubmission",
    "actor_from",
    "authorise_command",
    "first_image",
    "instruction_from",
    "is_trusted_file_url",
    "parse_command",
    "request_key",
    "unescape",
    "with_file_token",
]

#: where Slack serves private files in production; the API base host is trusted too (tests, proxies)
SLACK_FILE_HOSTS = frozenset({"files.slack.com"})
#: the edit modal's callback id and its one input
EDIT_VIEW = "edit_instruction"
INSTRUCTION_BLOCK = "instruction"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SlashCommand(_Payload):
    """The form fields of a slash command."""

    team_id: str
    channel_id: str
    user_id: str
    user_name: str = ""
    command: str
    text: str = ""
    trigger_id: str = ""
    response_url: str | None = None


class _Team(_Payload):
    id: str


class _User(_Payload):
    id: str
    username: str = ""
    name: str = ""
    team_id: str | None = None


class _Channel(_Payload):
    id: str


class SlackFile(_Payload):
    """A file attached to a message (`files[]`)."""

    id: str
    name: str = ""
    mimetype: str = ""
    url_private: str | None = None
    url_private_download: str | None = None
    size: int | None = None


class _Message(_Payload):
    ts: str
    thread_ts: str | None = None
    files: list[SlackFile] = Field(default_factory=list)


class _Container(_Payload):
    channel_id: str | None = None
    message_ts: str | None = None
    thread_ts: str | None = None


class _Action(_Payload):
    action_id: str
    action_ts: str = ""
    value: str | None = None


class BlockActions(_Payload):
    """A button press (`block_actions`)."""

    team: _Team | None = None
    user: _User
    channel: _Channel | None = None
    container: _Container = Field(default_factory=_Container)
    message: _Message | None = None
    trigger_id: str = ""
    response_url: str | None = None
    actions: list[_Action]

    @property
    def team_id(self) -> str:
        """The workspace the press came from."""
        return self.team.id if self.team else self.user.team_id or ""

    @property
    def channel_id(self) -> str:
        """The channel of the message the button is on."""
        return self.channel.id if self.channel else self.container.channel_id or ""

    @property
    def thread_ts(self) -> str | None:
        """The thread the message is in, if any: follow-ups go to the same thread."""
        return (self.message.thread_ts if self.message else None) or self.container.thread_ts


class MessageShortcut(_Payload):
    """The "Edit this image" message shortcut (`message_action`)."""

    callback_id: str
    team: _Team | None = None
    user: _User
    channel: _Channel
    message: _Message
    trigger_id: str
    response_url: str | None = None
    action_ts: str = ""

    @property
    def team_id(self) -> str:
        """The workspace the shortcut came from."""
        return self.team.id if self.team else self.user.team_id or ""


class _View(_Payload):
    id: str
    callback_id: str = ""
    private_metadata: str = ""
    state: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)


class ViewSubmission(_Payload):
    """A submitted modal (`view_submission`)."""

    team: _Team | None = None
    user: _User
    view: _View

    @property
    def team_id(self) -> str:
        """The workspace the modal was submitted in."""
        return self.team.id if self.team else self.user.team_id or ""


class EditTarget(BaseModel):
    """What the edit modal edits and where the answer goes; its `private_metadata`.

    Either a finished job's image (`job_id`, `index`) or a Slack file (`file_url`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    thread_ts: str | None = None
    response_url: str | None = None
    job_id: str | None = None
    index: int | None = None
    file_url: str | None = None
    file_name: str | None = None

    def dump(self) -> str:
        """Compact JSON for `private_metadata` (Slack allows 3000 characters)."""
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def load(cls, raw: str) -> EditTarget:
        """Parse `private_metadata`; ValueError if it is not ours."""
        return cls.model_validate(json.loads(raw or "{}"))  # ValidationError is a ValueError


def unescape(text: str) -> str:
    """Undo Slack's escaping of `&`, `<` and `>` in message and command text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def actor_from(
    team_id: str, user_id: str, name: str, channel_id: str, *, is_moderator: bool = False
) -> Actor:
    """The Actor of a Slack user. A DM with the bot still belongs to the workspace: its
    moderators, bans and budget apply there too (unlike Discord DMs, which have no guild)."""
    return Actor(
        platform=Platform.SLACK.value,
        tenant_id=team_id,
        user_id=user_id,
        display_name=name,
        is_moderator=is_moderator,
        is_dm=channel_id.startswith("D"),
    )


def parse_command(body: SlashCommand) -> TextCommand:
    """A slash command into the core's command (or `help`); InvalidInputError if unknown."""
    return parse_text(f"{body.command} {unescape(body.text)}")


def is_trusted_file_url(url: str, api_base: str | None) -> bool:
    """Whether the bot token may be sent to `url`: Slack's file host, or the configured API
    host (a proxy or a test fake). Never to any other host."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname in SLACK_FILE_HOSTS:
        return True
    if api_base:
        base = urlsplit(api_base)
        return (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
    return False


def with_file_token(image: ImageRef | None, token: str, api_base: str | None) -> ImageRef | None:
    """The same image, with the bot token attached when it is a private Slack file."""
    if image is None or not image.url or not is_trusted_file_url(image.url, api_base):
        return image
    return image.model_copy(update={"headers": {"Authorization": f"Bearer {token}"}})


def authorise_command(command: CommandModel, token: str, api_base: str | None) -> CommandModel:
    """`/edit` and `/model3d` with a Slack file link get the bot token for that one download."""
    if isinstance(command, EditCommand | Model3DCommand) and command.image is not None:
        return command.model_copy(update={"image": with_file_token(command.image, token, api_base)})
    return command


def first_image(files: list[SlackFile]) -> SlackFile | None:
    """The first image file of a message, if any."""
    for f in files:
        if f.mimetype.startswith("image/") and (f.url_private_download or f.url_private):
            return f
    return None


def instruction_from(view: _View) -> str:
    """The text typed into the edit modal."""
    block = view.state.get("values", {}).get(INSTRUCTION_BLOCK, {})
    value = (block.get(INSTRUCTION_BLOCK) or {}).get("value") or ""
    return str(value).strip()


def request_key(kind: str, team_id: str, *parts: str) -> str:
    """A jobs-table request key: retries of one Slack delivery map to one job."""
    return ":".join(("slack", kind, team_id, *parts))
