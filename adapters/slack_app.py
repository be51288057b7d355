"""The Slack adapter: slash commands, buttons, the edit modal and the message shortcut.

Runs slack-bolt's AsyncApp over HTTP (Slack's request URL `POST /slack/events`, mounted on the
bot's one HTTP server) and/or Socket Mode. Every listener acknowledges first — Slack drops a
request after 3 s — and hands the work to a task this adapter tracks. No business rule lives
here: the engine decides; this module translates and renders.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_blocks import HELP, delete_targets, edit_modal, mrkdwn, plain
from adapters.slack_events import (
    EDIT_VIEW,
    INSTRUCTION_BLOCK,
    BlockActions,
    EditTarget,
    MessageShortcut,
    SlashCommand,
    ViewSubmission,
    actor_from,
    authorise_command,
    first_image,
    instruction_from,
    parse_command,
    request_key,
    unescape,
    with_file_token,
)
from adapters.slack_moderators import ModeratorDirectory
from adapters.slack_reply import UNREACHABLE, SlackAddress, SlackReply, slack_error
from bot import messages
from bot.adapter import AdapterContext
from bot.commands import Actor, CommandModel, CreditsCommand, EditCommand, ImageRef, ModCommand
from bot.config import Settings
from bot.engine import LogReply
from bot.errors import ConfigError, InvalidInputError, UserError
from bot.reply import ButtonAction, JobResult, Reply, parse_custom_id

__all__ = ["COMMANDS", "EDIT_SHORTCUT", "ModeratorDirectory", "SlackAdapter", "SlackAddress", "SlackReply"]

_log = logging.getLogger(__name__)

COMMANDS = ("/imagine", "/edit", "/model3d", "/credits", "/quota")
EDIT_SHORTCUT = "edit_image"
FILE_LIMIT = 1024**3  # Slack's per-file upload limit (1 GB)


class SlackAdapter:
    """Slack for the engine. HTTP mode when SLACK_SIGNING_SECRET is set (route mounted on the
    bot's server), Socket Mode when SLACK_APP_TOKEN is set; both may run at once."""

    name: ClassVar[str] = "slack"

    def __init__(self, ctx: AdapterContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        s = ctx.settings
        if s.slack_bot_token is None or not s.slack_bot_token.get_secret_value():
            raise ConfigError("SLACK_BOT_TOKEN is not set; Slack needs the bot token (xoxb-…).")
        if not (s.slack_signing_secret or s.slack_app_token):
            raise ConfigError(
                "Set SLACK_SIGNING_SECRET (HTTP mode) or SLACK_APP_TOKEN (Socket Mode) for Slack."
            )
        self.engine = ctx.engine
        self.media = ctx.media
        self._session = ctx.session
        self._settings = s
        self._token = s.slack_bot_token.get_secret_value()
        self._api_base = s.slack_api_base
        self.file_limit = FILE_LIMIT
        self.client = AsyncWebClient(
            token=self._token,
            base_url=s.slack_api_base or AsyncWebClient.BASE_URL,
            session=ctx.session,
            logger=logging.getLogger(f"{__name__}.web"),
        )
        # slack_sdk retries connection errors only; Slack's 429s carry Retry-After.
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=3))
        secret = s.slack_signing_secret.get_secret_value() if s.slack_signing_secret else ""
        self.bolt = AsyncApp(
            name="imagine-bot",
            client=self.client,
            signing_secret=secret,
            # Without a signing secret only Socket Mode runs, and no HTTP route is mounted.
            request_verification_enabled=bool(secret),
            logger=logging.getLogger(f"{__name__}.bolt"),
        )
        self.moderators = ModeratorDirectory(
            self.client,
            users=[u for u in s.slack_moderators.split(",") if u],
            group=s.slack_moderator_group,
            clock=clock,
        )
        self._socket: AsyncSocketModeHandler | None = None
        self.health = ctx.readiness.platform(self.name)
        self._watcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.bot_user: str | None = None
        self.team_id: str | None = None
        self._register()
        self.engine.register_restorer(self.name, self)
        if secret:
            ctx.web.add_route("POST", "/slack/events", self.handle_http)

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """A bot token plus a signing secret (HTTP) or an app token (Socket Mode)."""
        return bool(settings.slack_bot_token) and bool(
            settings.slack_signing_secret or settings.slack_app_token
        )

    def restore(self, ref: dict[str, Any]) -> Reply:
        """A reply that edits the same status message as before the restart (a log-only one
        when the saved address is unusable, so resuming never fails)."""
        try:
            return SlackReply(self, SlackAddress.from_json(ref))
        except TypeError:  # a required field (channel, user) is missing
            _log.warning("unusable slack reply address (keys %s); job replies go to the log", sorted(ref))
            return LogReply(ref)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, *, connect_timeout: float = 30.0) -> None:
        """Check the token with auth.test, then connect Socket Mode when configured."""
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise ConfigError(f"SLACK_BOT_TOKEN was refused by Slack ({slack_error(exc)}).") from None
        self.bot_user, self.team_id = auth.get("user_id"), auth.get("team_id")
        app_token = self._settings.slack_app_token
        if app_token is not None and app_token.get_secret_value():
            handler = AsyncSocketModeHandler(self.bolt, app_token=app_token.get_secret_value())
            try:
                # The client retries a failed connect forever; startup must fail instead.
                await asyncio.wait_for(handler.connect_async(), connect_timeout)
            except BaseException:
                await handler.close_async()
                raise
            self._socket = handler
            self._watch_socket(handler)
        self.health.connected()  # HTTP mode has no connection to lose; Socket Mode just connected
        _log.info(
            "slack ready team=%s bot=%s http=%s socket=%s",
            self.team_id,
            self.bot_user,
            bool(self._settings.slack_signing_secret),
            self._socket is not None,
        )

    def _watch_socket(self, handler: AsyncSocketModeHandler) -> None:
        # slack_sdk reconnects by itself and reports nothing while it retries (its close
        # listeners run only after a reconnect succeeded), so its own connection state is read
        # every few seconds; Slack's "hello" on a new connection marks it connected at once.
        async def message(_message: Any) -> None:
            self.health.connected()

        async def watch() -> None:
            interval = min(2.0, self._settings.platform_grace_seconds / 4)
            while True:
                await asyncio.sleep(interval)
                if await handler.client.is_connected():
                    self.health.connected()
                else:
                    self.health.disconnected()

        handler.client.on_message_listeners.append(message)
        self._watcher = asyncio.get_running_loop().create_task(watch(), name="slack-socket-watch")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Close Socket Mode, let handler tasks finish (then cancel stragglers)."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until every acknowledged request has been handled (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle_http(self, request: web.Request) -> web.Response:
        """`POST /slack/events`: Bolt verifies the signature (401 otherwise) and dispatches."""
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not (timestamp.isascii() and timestamp.isdigit()):
            # slack_sdk's verifier calls int() on it and would answer 500 with a traceback.
            return web.json_response({"error": "invalid request"}, status=401)
        bolt_request = await to_bolt_request(request)
        return await to_aiohttp_response(await self.bolt.async_dispatch(bolt_request))

    def _register(self) -> None:
        for command in COMMANDS:
            self.bolt.command(command)(self._on_command)
        self.bolt.action(re.compile(r"^ib:"))(self._on_button)
        self.bolt.view(EDIT_VIEW)(self._on_edit_submitted)
        self.bolt.shortcut(EDIT_SHORTCUT)(self._on_edit_shortcut)

    # --- talking to users ------------------------------------------------------------------

    async def tell(self, response_url: str | None, text: str, target: tuple[str, str] | None) -> None:
        """An ephemeral note to one user: through the response_url when there is one, else
        chat.postEphemeral in (channel, user), else their DM."""
        body = mrkdwn(text)
        if response_url:
            try:
                async with self._session.post(
                    response_url,
                    json={"text": body, "response_type": "ephemeral", "replace_original": False},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    if resp.status == 200:
                        return
                    _log.info("response_url refused (%s)", resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                _log.warning("response_url failed: %s", type(exc).__name__)  # its URL is a credential
        if target is None:
            return
        channel, user = target
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, text=body)
        except SlackApiError as exc:
            if slack_error(exc) not in UNREACHABLE:
                _log.warning("ephemeral failed user=%s: %s", user, slack_error(exc))
                return
            try:
                await self.client.chat_postMessage(channel=await self.open_dm(user), text=body)
            except SlackApiError as dm_exc:
                _log.warning("DM failed user=%s: %s", user, slack_error(dm_exc))

    async def open_dm(self, user: str) -> str:
        """The channel id of the bot's DM with `user`."""
        response = await self.client.conversations_open(users=user)
        return str(response["channel"]["id"])

    async def prepare_files(self, result: JobResult) -> tuple[list[dict[str, Any]], list[str]]:
        """The uploads for a result (the grid alone when there are several images) and links
        for files over Slack's limit (uploaded as a small preview instead)."""
        chosen = [result.preview] if result.preview is not None else list(result.files)
        uploads: list[dict[str, Any]] = []
        links: list[str] = []
        for f in chosen:
            if f.size > self.file_limit:
                if f.url:
                    links.append(f.url)
                if f.role not in ("image", "grid", "thumbnail"):
                    continue
                try:
                    f = await self.media.thumbnail_under(
                        f, self.file_limit, f.path.with_name(f"{f.path.stem}-preview")
                    )
                except (ValueError, OSError) as exc:
                    _log.info("no preview for %s: %s", f.filename, exc)
                    continue  # the link alone
            try:
                data = await asyncio.to_thread(f.path.read_bytes)
            except OSError as exc:  # e.g. the output folder was cleaned: link instead
                _log.warning("result file unreadable job=%s: %s", result.job_id, exc)
                if f.url:
                    links.append(f.url)
                continue
            uploads.append({"file": data, "filename": f.filename, "title": f.filename})
        return uploads, links

    async def _actor(self, team_id: str, user: str, name: str, channel: str) -> Actor:
        is_moderator = await self.moderators.is_moderator(user)
        return actor_from(team_id or self.team_id or "", user, name, channel, is_moderator=is_moderator)

    async def _run(
        self,
        what: str,
        work: Awaitable[None],
        response_url: str | None,
        target: tuple[str, str] | None,
    ) -> None:
        """Run one request's work; user errors are shown, anything else logged and apologised for."""
        try:
            await work
        except UserError as err:
            await self.tell(response_url, str(err), target)
        except Exception:
            _log.exception("slack %s failed", what)
            await self.tell(response_url, messages.something_went_wrong(), target)

    # --- slash commands --------------------------------------------------------------------

    async def _on_command(self, ack: AsyncAck, body: dict[str, Any], request: AsyncBoltRequest) -> None:
        command = SlashCommand.model_validate(body)
        if retry := request.headers.get("x-slack-retry-num"):
            # The request key makes a retried delivery return the first job, not start another.
            _log.info("slack retry %s of %s", retry[0], command.command)
        try:
            parsed = parse_command(command)
        except UserError as err:
            await ack(text=mrkdwn(str(err)))
            return
        if parsed.name == "help":
            await ack(text=HELP)
            return
        await ack()
        self._spawn(
            self._run(
                command.command,
                self._command(command, parsed.command),
                command.response_url,
                (command.channel_id, command.user_id),
            ),
            name=f"slack-{command.command.strip('/')}",
        )

    async def _command(
        self, body: SlashCommand, command: CommandModel | CreditsCommand | ModCommand | None
    ) -> None:
        actor = await self._actor(body.team_id, body.user_id, body.user_name, body.channel_id)
        target = (body.channel_id, body.user_id)
        match command:
            case CreditsCommand():
                view = await self.engine.credits(actor)
                await self.tell(body.response_url, view.text, target)
            case ModCommand():
                outcome = await self.engine.moderate(actor, command)
                await self.tell(body.response_url, outcome.text, target)
            case None:
                raise InvalidInputError(messages.unknown_command())
            case _:
                command = authorise_command(command, self._token, self._api_base)
                reply = SlackReply(
                    self,
                    SlackAddress(
                        channel=body.channel_id,
                        user=body.user_id,
                        response_url=body.response_url,
                        headline=_headline(body.user_id, f"{body.command} {unescape(body.text)}"),
                    ),
                )
                key = request_key("cmd", body.team_id, body.trigger_id) if body.trigger_id else None
                await self.engine.submit(actor, command, reply, request_key=key)

    # --- buttons ---------------------------------------------------------------------------

    async def _on_button(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        press = BlockActions.model_validate(body)
        parsed = parse_custom_id(press.actions[0].action_id)
        if parsed is None:
            return
        action, job_id, index = parsed
        self._spawn(
            self._run(
                f"button {action.value}",
                self._button(press, action, job_id, index),
                press.response_url,
                (press.channel_id, press.user.id),
            ),
            name=f"slack-button-{action.value}",
        )

    async def _button(
        self, press: BlockActions, action: ButtonAction, job_id: str, index: int | None
    ) -> None:
        if action is ButtonAction.EDIT:
            # views.open must use the trigger within 3 s: open the modal before anything else.
            target = EditTarget(
                channel=press.channel_id,
                thread_ts=press.thread_ts,
                response_url=press.response_url,
                job_id=job_id,
                index=index,
            )
            subject = messages.single_caption(job_id, index or 0, "")
            await self.client.views_open(trigger_id=press.trigger_id, view=edit_modal(target, subject))
            return
        user = press.user
        actor = await self._actor(press.team_id, user.id, user.username or user.name, press.channel_id)
        if action is ButtonAction.DELETE:
            await self.engine.may_delete(actor, job_id)
            await self._delete_result(press)
            return
        reply = SlackReply(
            self,
            SlackAddress(
                channel=press.channel_id,
                user=user.id,
                thread_ts=press.thread_ts,
                response_url=press.response_url,
                headline=_headline(user.id, messages.button_request(action.value, job_id)),
            ),
        )
        key = request_key("action", press.team_id, user.id, press.actions[0].action_ts)
        await self.engine.press(actor, action, job_id, index, reply, request_key=key)

    async def _delete_result(self, press: BlockActions) -> None:
        """Delete a result card and the files shared with it (named by its Delete button)."""
        for file_id in delete_targets(press.actions[0].value):
            try:
                await self.client.files_delete(file=file_id)
            except SlackApiError as exc:  # already gone, or not the bot's: the card still goes
                _log.info("could not delete slack file %s: %s", file_id, slack_error(exc))
        ts = press.container.message_ts or (press.message.ts if press.message else None)
        if ts:
            await self.client.chat_delete(channel=press.channel_id, ts=ts)

    # --- the edit modal and the message shortcut -------------------------------------------

    async def _on_edit_shortcut(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        shortcut = MessageShortcut.model_validate(body)
        self._spawn(
            self._run(
                "edit shortcut",
                self._open_file_edit(shortcut),
                shortcut.response_url,
                (shortcut.channel.id, shortcut.user.id),
            ),
            name="slack-edit-shortcut",
        )

    async def _open_file_edit(self, shortcut: MessageShortcut) -> None:
        image = first_image(shortcut.message.files)
        if image is None:
            raise InvalidInputError(messages.no_image())
        target = EditTarget(
            channel=shortcut.channel.id,
            thread_ts=shortcut.message.thread_ts or shortcut.message.ts,
            response_url=shortcut.response_url,
            file_url=image.url_private_download or image.url_private,
            file_name=image.name or None,
        )
        await self.client.views_open(
            trigger_id=shortcut.trigger_id, view=edit_modal(target, messages.edit_file_subject(image.name))
        )

    async def _on_edit_submitted(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        submission = ViewSubmission.model_validate(body)
        instruction = instruction_from(submission.view)
        if not instruction:
            await ack(
                response_action="errors", errors={INSTRUCTION_BLOCK: messages.edit_instruction_missing()}
            )
            return
        await ack()
        try:
            target = EditTarget.load(submission.view.private_metadata)
        except ValueError:
            _log.warning("edit modal with foreign metadata view=%s", submission.view.id)
            return
        self._spawn(
            self._run(
                "edit",
                self._edit(submission, target, instruction),
                target.response_url,
                (target.channel, submission.user.id),
            ),
            name="slack-edit",
        )

    async def _edit(self, submission: ViewSubmission, target: EditTarget, instruction: str) -> None:
        user = submission.user
        actor = await self._actor(submission.team_id, user.id, user.username or user.name, target.channel)
        reply = SlackReply(
            self,
            SlackAddress(
                channel=target.channel,
                user=user.id,
                thread_ts=target.thread_ts,
                response_url=target.response_url,
                headline=_headline(
                    user.id,
                    messages.edit_request(instruction, job_id=target.job_id, filename=target.file_name),
                ),
            ),
        )
        key = request_key("view", submission.team_id, submission.view.id)
        if target.job_id:
            await self.engine.edit_result(
                actor, target.job_id, target.index, instruction, reply, request_key=key
            )
            return
        image = with_file_token(
            ImageRef(url=target.file_url, filename=target.file_name), self._token, self._api_base
        )
        await self.engine.submit(
            actor, EditCommand(image=image, instruction=instruction), reply, request_key=key
        )


def _headline(user: str, what: str) -> str:
    # `what` holds the member's raw command text: rendered with no mention surviving.
    return f"<@{user}> · {plain(mrkdwn(what.strip(), mentions=False), 280)}"
