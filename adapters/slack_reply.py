"""Slack's Reply: one job's status message, edited as the job moves, then the files uploaded
into the same channel/thread and the status message turned into the result card.

The address (`SlackAddress`) is what the engine saves with the job, so after a restart the
same status message is edited and the same thread receives the files.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_blocks import TEXT_LIMIT, message_blocks, mrkdwn, plain
from bot import messages
from bot.logs import redact_urls
from bot.reply import Button, Failure, JobResult, OutputFile, Progress

__all__ = ["SlackAddress", "SlackReply", "slack_error"]

_log = logging.getLogger(__name__)

# Errors after which a channel is out of reach for the bot; it then writes to the user's DM.
UNREACHABLE = frozenset({"not_in_channel", "channel_not_found", "is_archived", "restricted_action"})
_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
#: what a Web API call raises when Slack or the network fails (slack_sdk has retried already)
_PLATFORM_ERRORS = (SlackApiError, SlackRequestError, aiohttp.ClientError, TimeoutError)


class _Host(Protocol):
    """What a reply needs from the adapter (kept apart to avoid an import cycle)."""

    client: AsyncWebClient

    async def tell(self, response_url: str | None, text: str, target: tuple[str, str] | None) -> None: ...

    async def open_dm(self, user: str) -> str: ...

    async def prepare_files(self, result: JobResult) -> tuple[list[dict[str, Any]], list[str]]: ...


@dataclasses.dataclass(slots=True)
class SlackAddress:
    """Where one job's messages go; its JSON form is the Reply's `ref()`."""

    channel: str
    user: str
    thread_ts: str | None = None
    status_ts: str | None = None  # the job's one status message, edited with chat.update
    response_url: str | None = None  # for ephemeral notes (5 uses, 30 minutes)
    headline: str = ""  # first line of the status message: who asked for what

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, ref: dict[str, Any]) -> SlackAddress:
        """Tolerant of keys from older or newer versions."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in ref.items() if k in names})


class SlackReply:
    """One job's messages in Slack: a status message (edited as the job moves), then the files
    uploaded into the same channel/thread and the status message turned into the result card
    with its buttons. Platform hiccups are logged, never raised."""

    def __init__(self, adapter: _Host, address: SlackAddress) -> None:
        self._adapter = adapter
        self.address = address

    def ref(self) -> dict[str, Any]:
        """The address, saved with the job after every call."""
        return self.address.to_json()

    def _with_headline(self, text: str) -> str:
        head = self.address.headline
        return f"{head}\n{mrkdwn(text)}" if head else mrkdwn(text)

    async def progress(self, update: Progress) -> None:
        """Post the status message the first time, edit it afterwards."""
        await self._guard(
            "progress", update.job_id, self._show(self._with_headline(update.text), update.buttons)
        )

    async def failure(self, failure: Failure) -> None:
        """The status message becomes the failure text (no buttons)."""
        await self._guard("failure", failure.job_id, self._show(self._with_headline(failure.text), ()))

    async def result(self, result: JobResult) -> None:
        """Upload the files, then turn the status message into the result card."""
        await self._guard("result", result.job_id, self._deliver(result))

    async def _guard(self, what: str, job_id: str, work: Awaitable[None]) -> None:
        try:
            await work
        except _PLATFORM_ERRORS as exc:
            _log.warning(
                "slack %s failed job=%s channel=%s: %s", what, job_id, self.address.channel, _describe(exc)
            )

    async def _show(self, text: str, buttons: Iterable[Button], files: Sequence[str] = ()) -> None:
        blocks = message_blocks(text, tuple(buttons), files)
        client = self._adapter.client
        if self.address.status_ts is not None:
            try:
                await client.chat_update(
                    channel=self.address.channel,
                    ts=self.address.status_ts,
                    text=plain(text, TEXT_LIMIT),
                    blocks=blocks,
                )
                return
            except SlackApiError as exc:
                if slack_error(exc) not in _GONE:
                    raise
                _log.info("status message gone (%s); posting a new one", slack_error(exc))
        self.address.status_ts = await self._post(text, blocks)

    async def _post(self, text: str, blocks: list[dict[str, Any]]) -> str:
        async def post() -> str:
            response = await self._adapter.client.chat_postMessage(
                channel=self.address.channel,
                thread_ts=self.address.thread_ts,
                text=plain(text, TEXT_LIMIT),
                blocks=blocks,
            )
            return str(response["ts"])

        return await self._in_reach(post)

    async def _in_reach(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run `call`; if the channel is out of the bot's reach, move to the user's DM once."""
        try:
            return await call()
        except SlackApiError as exc:
            if slack_error(exc) not in UNREACHABLE or self.address.channel.startswith("D"):
                raise
            _log.info("channel %s unreachable (%s); moving to a DM", self.address.channel, slack_error(exc))
        await self._adapter.tell(self.address.response_url, messages.slack_cannot_post_here(), None)
        self.address.channel = await self._adapter.open_dm(self.address.user)
        self.address.thread_ts = None
        self.address.status_ts = None
        return await call()

    async def _deliver(self, result: JobResult) -> None:
        adapter = self._adapter
        uploads, links = await adapter.prepare_files(result)
        shared: list[str] = []  # file ids, for the card's Delete button
        if uploads:

            async def upload() -> None:
                # No initial_comment: the caption lives on the result card (with the buttons),
                # so it is shown once, not again above the files.
                response = await adapter.client.files_upload_v2(
                    channel=self.address.channel,
                    thread_ts=self.address.thread_ts,
                    file_uploads=uploads,
                )
                shared[:] = [str(f["id"]) for f in response.get("files") or [] if f.get("id")]

            try:
                await self._in_reach(upload)
            except _PLATFORM_ERRORS as exc:
                # Never lose a result to a failed upload: the card below carries links instead.
                _log.warning(
                    "slack upload failed job=%s channel=%s: %s",
                    result.job_id,
                    self.address.channel,
                    _describe(exc),
                )
                links = [f.url for f in result.files if f.url] or links
        text = self._with_headline(result.text)
        if links:
            text += "\n" + "\n".join(f"<{url}|{name}>" for name, url in _named(links, result.files))
        await self._show(text, result.buttons, shared)


def slack_error(exc: SlackApiError) -> str:
    """The `error` code of a Web API failure (`not_in_channel`, `ratelimited`…)."""
    try:
        return str(exc.response.get("error", ""))
    except AttributeError:
        return ""


#: how much of an exception's text a log line keeps (slack_sdk quotes whole response bodies)
_DESCRIBE_LIMIT = 300


def _describe(exc: BaseException) -> str:
    """A platform failure for the log: its type and text, without URL queries, upload tickets
    or tokens (slack_sdk's upload errors quote the presigned URL's response body)."""
    if isinstance(exc, SlackApiError) and (code := slack_error(exc)):
        return f"{type(exc).__name__}: {code}"
    text = redact_urls(str(exc))
    if len(text) > _DESCRIBE_LIMIT:
        text = text[: _DESCRIBE_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _named(links: list[str], files: tuple[OutputFile, ...]) -> list[tuple[str, str]]:
    names = {f.url: f.filename for f in files if f.url}
    return [(names.get(url, "download"), url) for url in links]
