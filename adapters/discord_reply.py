"""Where one Discord job's messages go: its interaction token while it lives, the channel after.

A job shows one status message: the interaction's original response, edited as the job moves
and finally replaced by the result. Interaction tokens die after 15 minutes (and an edit after
that answers 401/50027), so a reply switches to the channel a minute early — or at once when
Discord says the token is gone — and posts the result there with a mention instead. When the
bot may not post in that channel either (missing access or permissions, channel deleted), the
messages go to the requester's DM, which the saved address remembers; when DMs are refused
too, one warning is logged and the job's messages are dropped. Files over the interaction's
`attachment_size_limit` go out as links with a small preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import discord
from discord.http import handle_message_parameters
from discord.webhook.async_ import async_context
from pydantic import BaseModel, ConfigDict, Field

from bot import messages
from bot.reply import Button, ButtonAction, Failure, JobResult, OutputFile, Progress, per_image_rows

__all__ = [
    "DEFAULT_ATTACHMENT_LIMIT",
    "MAX_CONTENT",
    "TOKEN_TTL",
    "DiscordReply",
    "FilePlan",
    "ReplyRef",
    "button_rows",
    "clip",
    "plan_files",
    "status_text",
    "token_fresh",
]

_log = logging.getLogger(__name__)

TOKEN_TTL = 15 * 60.0
#: switch to the channel this long before the token dies, so no edit races its expiry
TOKEN_MARGIN = 60.0
MAX_CONTENT = 2000
MAX_REQUEST_BYTES = 25 * 1024 * 1024
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024
#: error codes that mean "this token (or its message) can no longer be used"
_TOKEN_GONE = {50027, 10015, 10008, 10062}
#: error codes that mean "the bot may not post in this channel": Missing Access, Missing
#: Permissions, Unknown Channel, Cannot send messages to this user (a DM)
_NO_POSTING = {50001, 50013, 10003, 50007}
_IMAGE_ROLES = {"image", "grid", "thumbnail"}


class ReplyRef(BaseModel):
    """The saved address of a Discord reply (JSON in the job row); tolerant of older rows."""

    model_config = ConfigDict(extra="ignore")

    v: int = 1
    app_id: str
    token: str | None = Field(default=None, repr=False)  # lets anyone edit the message: keep out of logs
    issued: float  # unix time the interaction was created
    channel_id: str
    guild_id: str | None = None
    user_id: str
    limit: int = DEFAULT_ATTACHMENT_LIMIT
    head: str = ""
    message_id: str | None = None  # the token's status message (its original response)
    channel_message_id: str | None = None  # the status message posted later (channel, or the DM)
    token_dead: bool = False
    dm_channel_id: str | None = None  # the requester's DM, once the channel refused a message
    channel_refusal: int | None = None  # the code the channel answered with then
    unreachable: bool = False  # the DM refused too: the job's messages are dropped


class Platform(Protocol):
    """What a reply needs from the running adapter."""

    session: aiohttp.ClientSession
    media: Any

    @property
    def http(self) -> discord.http.HTTPClient:
        """The bot's REST client, for channel messages."""

    def now(self) -> float:
        """Unix time (injectable, to age interaction tokens in tests)."""


# --- pure helpers ------------------------------------------------------------------------------


def clip(text: str, limit: int = MAX_CONTENT) -> str:
    """Text that fits a Discord message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_text(head: str, text: str) -> str:
    """A status line under the job's header."""
    return clip(f"{head}\n{text}" if head else text)


def token_fresh(issued: float, now: float, margin: float = TOKEN_MARGIN) -> bool:
    """Whether an interaction token issued at `issued` may still be used at `now`."""
    return now - issued < TOKEN_TTL - margin


def button_rows(buttons: Sequence[Button]) -> list[list[Button]]:
    """Action rows: the job's actions first, then U1…U4 on a row, then V1…V4 (5 to a row)."""
    singles, varies = per_image_rows(buttons)
    main = [b for b in buttons if b not in singles and b not in varies]
    rows: list[list[Button]] = []
    for group in (main, singles, varies):
        rows += [group[i : i + 5] for i in range(0, len(group), 5)]
    return rows[:5]


@dataclass(frozen=True, slots=True)
class FilePlan:
    """Which files go up as attachments and which only as links."""

    uploads: tuple[OutputFile, ...]
    links: tuple[OutputFile, ...]


def plan_files(files: Sequence[OutputFile], limit: int, max_request: int = MAX_REQUEST_BYTES) -> FilePlan:
    """Attach what fits the per-file limit and the request's total; link the rest."""
    uploads: list[OutputFile] = []
    links: list[OutputFile] = []
    total = 0
    for f in files:
        if f.size <= limit and total + f.size <= max_request and len(uploads) < 10:
            uploads.append(f)
            total += f.size
        else:
            links.append(f)
    return FilePlan(tuple(uploads), tuple(links))


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(1, n // 1024)} KB"


def link_line(f: OutputFile) -> str:
    """A masked link to a file too big to attach (or a note when there is no link)."""
    if f.url:
        return f"[{f.filename}](<{f.url}>) ({_size(f.size)})"
    return messages.file_too_big(f.filename, _size(f.size))


def _view(buttons: Sequence[Button]) -> discord.ui.View | None:
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for row, group in enumerate(button_rows(buttons)):
        for b in group:
            style = {
                ButtonAction.CANCEL: discord.ButtonStyle.danger,
                ButtonAction.DELETE: discord.ButtonStyle.danger,
                ButtonAction.SINGLE: discord.ButtonStyle.primary,
                ButtonAction.CONFIRM: discord.ButtonStyle.success,
            }.get(b.action, discord.ButtonStyle.secondary)
            view.add_item(discord.ui.Button(label=b.label, custom_id=b.custom_id, style=style, row=row))
    return view


def _gone(err: discord.HTTPException) -> bool:
    return err.code in _TOKEN_GONE or err.status == 401


def _no_posting(err: discord.HTTPException) -> bool:
    return err.code in _NO_POSTING or err.status == 403


# --- the reply ---------------------------------------------------------------------------------


class DiscordReply:
    """A job's messages on Discord (implements `bot.reply.Reply`)."""

    def __init__(self, platform: Platform, ref: ReplyRef) -> None:
        self._p = platform
        self.address = ref

    def ref(self) -> dict[str, Any]:
        """The JSON-able address (token, issue time, channel, status message ids)."""
        return self.address.model_dump()

    async def progress(self, update: Progress) -> None:
        """Show or edit the job's status message (with a Cancel button while it runs)."""
        await self._show(
            update.job_id, status_text(self.address.head, update.text), update.buttons, (), final=False
        )

    async def result(self, result: JobResult) -> None:
        """Replace the status with the result: files (links when too big) and buttons."""
        shown = (result.preview,) if result.preview is not None else result.files
        plan = plan_files(shown, self.address.limit)
        uploads = list(plan.uploads)
        notes: list[str] = []
        for f in plan.links:
            notes.append(link_line(f))
            preview = await self._preview(f)
            if preview is not None and sum(u.size for u in uploads) + preview.size <= MAX_REQUEST_BYTES:
                uploads.append(preview)
        text = "\n".join([result.text, *notes])
        try:
            await self._show(result.job_id, clip(text), result.buttons, uploads, final=True)
        except discord.HTTPException as err:
            if err.status != 413:
                raise
            # Never lose a result to a refused upload: send every file as a link instead.
            _log.warning("upload refused (413) job=%s; sending links", result.job_id)
            links = "\n".join(link_line(f) for f in shown)
            await self._show(result.job_id, clip(f"{result.text}\n{links}"), result.buttons, (), final=True)

    async def failure(self, failure: Failure) -> None:
        """Turn the status message into the failure text (buttons removed)."""
        text = status_text(self.address.head, failure.text)
        await self._show(failure.job_id, text, (), (), final=False, ping=True)

    async def _preview(self, f: OutputFile) -> OutputFile | None:
        if f.role not in _IMAGE_ROLES:
            return None
        dest = f.path.with_name(f"{f.path.stem}-preview")
        try:
            return await self._p.media.thumbnail_under(f, min(self.address.limit, 2 * 1024 * 1024), dest)
        except (ValueError, OSError) as exc:
            _log.info("no preview for %s: %s", f.filename, exc)
            return None

    # --- transport -----------------------------------------------------------------------

    async def _show(
        self,
        job_id: str,
        content: str,
        buttons: Sequence[Button],
        files: Sequence[OutputFile],
        *,
        final: bool,
        ping: bool = False,
    ) -> None:
        a = self.address
        if a.token and not a.token_dead:
            if token_fresh(a.issued, self._p.now()):
                try:
                    data = await self._token_edit(content, buttons, files)
                    a.message_id = str(data["id"])
                    return
                except discord.HTTPException as err:
                    if not _gone(err):
                        raise
                    _log.info("interaction token unusable (%s); continuing in the channel", err.code)
            elif a.message_id and self._p.now() - a.issued < TOKEN_TTL:
                # The token still works for a moment: remove its status message, which is about
                # to become uneditable, before a new one appears in the channel.
                with contextlib.suppress(discord.HTTPException):
                    await self._token_delete()
            a.token_dead = True
        await self._channel_show(job_id, content, buttons, files, new_message=final, ping=final or ping)

    async def _channel_show(
        self,
        job_id: str,
        content: str,
        buttons: Sequence[Button],
        files: Sequence[OutputFile],
        *,
        new_message: bool,
        ping: bool,
    ) -> None:
        """Post in the channel; once it refuses, in the requester's DM; once that refuses, nowhere."""
        a = self.address
        if a.unreachable:
            _log.debug("job=%s: the requester is unreachable; message dropped", job_id)
            return
        if a.dm_channel_id is None:
            try:
                await self._post(a.channel_id, content, buttons, files, new_message=new_message, ping=ping)
                return
            except discord.HTTPException as err:
                if not _no_posting(err):
                    raise
                a.channel_refusal = err.code
            _log.info(
                "job=%s: cannot post in channel %s (%s); moving to a DM",
                job_id,
                a.channel_id,
                a.channel_refusal,
            )
            if a.channel_message_id:
                # A status message posted before the channel closed: remove it if Discord lets us.
                with contextlib.suppress(discord.HTTPException):
                    await self._p.http.delete_message(int(a.channel_id), int(a.channel_message_id))
                a.channel_message_id = None
            try:
                dm = await self._p.http.start_private_message(int(a.user_id))
            except discord.HTTPException as err:
                if not _no_posting(err):
                    raise
                self._give_up(job_id, err)
                return
            a.dm_channel_id = str(dm["id"])
        note = messages.discord_sent_by_dm(a.channel_id)
        try:
            await self._post(
                a.dm_channel_id,
                clip(f"{note}\n{content}"),
                buttons,
                files,
                new_message=new_message,
                ping=False,
            )
        except discord.HTTPException as err:
            if not _no_posting(err):
                raise
            self._give_up(job_id, err)

    def _give_up(self, job_id: str, err: discord.HTTPException) -> None:
        a = self.address
        a.unreachable = True
        _log.warning(
            "discord job=%s undeliverable: user=%s channel=%s refused with code %s, their DM with "
            "code %s (HTTP %s); the job's messages are dropped",
            job_id,
            a.user_id,
            a.channel_id,
            a.channel_refusal,
            err.code,
            err.status,
        )

    async def _post(
        self,
        channel_id: str,
        content: str,
        buttons: Sequence[Button],
        files: Sequence[OutputFile],
        *,
        new_message: bool,
        ping: bool,
    ) -> None:
        """Edit this reply's message in `channel_id`, or post a new one (deleting the old)."""
        a = self.address
        http = self._p.http
        old = a.channel_message_id
        if old and not new_message:
            try:
                with await self._params(content, buttons, files, ping=False) as params:
                    await http.edit_message(int(channel_id), int(old), params=params)
                return
            except discord.NotFound as err:
                if err.code == 10003:
                    raise
                a.channel_message_id = None
        mention = f"<@{a.user_id}> " if ping and f"<@{a.user_id}>" not in content else ""
        with await self._params(clip(mention + content), buttons, files, ping=ping) as params:
            data = await http.send_message(int(channel_id), params=params)
        if new_message and old:
            with contextlib.suppress(discord.HTTPException):
                await http.delete_message(int(channel_id), int(old))
        a.channel_message_id = str(data["id"])

    async def _params(
        self, content: str, buttons: Sequence[Button], files: Sequence[OutputFile], *, ping: bool
    ) -> Any:
        attachments = [await _file(f) for f in files]
        mentions = (
            discord.AllowedMentions(users=[discord.Object(int(self.address.user_id))])
            if ping
            else discord.AllowedMentions.none()
        )
        return handle_message_parameters(
            content=content, attachments=attachments, view=_view(buttons), allowed_mentions=mentions
        )

    async def _token_edit(
        self, content: str, buttons: Sequence[Button], files: Sequence[OutputFile]
    ) -> dict[str, Any]:
        a = self.address
        assert a.token is not None
        with await self._params(content, buttons, files, ping=False) as params:
            data: dict[str, Any] = await async_context.get().edit_original_interaction_response(
                int(a.app_id),
                a.token,
                session=self._p.session,
                payload=params.payload,
                multipart=params.multipart,
                files=params.files,
            )
        return data

    async def _token_delete(self) -> None:
        a = self.address
        assert a.token is not None
        await async_context.get().delete_original_interaction_response(
            int(a.app_id), a.token, session=self._p.session
        )


async def _file(f: OutputFile) -> discord.File:
    # Results can be several MB: read them off the event loop.
    data = await asyncio.to_thread(Path(f.path).read_bytes)
    return discord.File(io.BytesIO(data), filename=f.filename)
