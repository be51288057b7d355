"""The Discord adapter: slash commands, message menus, result buttons and the Edit modal, on
discord.py 2.7.

Every interaction is acknowledged first (Discord drops answers after 3 s), then translated by
small pure functions into the core's `Actor` and command models and handed to the engine. The
buttons carry `ib:<action>:<job id>[:<index>]` custom ids and are handled by one dispatcher in
`on_interaction`, without discord.py views, so they keep working after a restart (the "Edit
image" message menu is the exception: it keeps the picture in memory until its modal comes back,
so a dialog opened before a restart asks to be opened again). Command sync
is not done on every start: only when the command payload's hash changed (or on demand through
`sync_commands`, the CLI's `imagine-bot discord sync`), and of several replicas on one PostgreSQL
database only the one holding the command-sync lock (bot/leader.py) does it.

With DISCORD_SHARD_COUNT set the client is discord.py's `AutoShardedClient`, running the shards
DISCORD_SHARD_IDS names (all of them by default), so replicas split the shards between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from pydantic import ValidationError

from adapters.discord_commands import (
    INSTRUCTION_FIELD,
    actor_for,
    build_tree,
    command_digest,
    command_payload,
    edit_command,
    modal_value,
    model3d_command,
)
from adapters.discord_reply import DiscordReply, ReplyRef, clip
from bot import messages
from bot.adapter import AdapterContext
from bot.commands import Actor, EditCommand, ImageRef, ImagineCommand, ModCommand, Model3DCommand
from bot.config import Settings
from bot.engine import LogReply
from bot.errors import ConfigError, InvalidInputError, UserError
from bot.leader import command_sync_lock
from bot.reply import ButtonAction, Reply, parse_custom_id

__all__ = [
    "COMMANDS_HASH_FILE",
    "DiscordAdapter",
    "apply_endpoints",
    "decode_json_leniently",
    "sync_commands",
]

_log = logging.getLogger(__name__)

COMMANDS_HASH_FILE = "discord-commands.sha256"
_DEFAULT_API_BASE = discord.http.Route.BASE
_DEFAULT_GATEWAY = DiscordWebSocket.DEFAULT_GATEWAY
#: how long stop() lets running handlers finish before cancelling them
_STOP_GRACE = 5.0
_CONNECT_TIMEOUT = 60.0
#: discord.py waits this long before each IDENTIFY after a replica's first shard (Discord's limit)
_IDENTIFY_SPACING = 5.0
#: the "Edit image" modal's custom id prefix (then the menu interaction's id)
_MESSAGE_EDIT = "ib-menu-edit:"
#: how long an opened "Edit image" modal is remembered (Discord's modal timeout)
_MODAL_TTL = 15 * 60.0


def apply_endpoints(settings: Settings) -> None:
    """Point discord.py at DISCORD_API_BASE / DISCORD_GATEWAY_URL, or its defaults when unset."""
    api, gateway = settings.discord_api_base, settings.discord_gateway_url
    if api and not api.startswith(("http://", "https://")):
        raise ConfigError(f"DISCORD_API_BASE must be an http(s) URL, not {api!r}")
    if gateway and not gateway.startswith(("ws://", "wss://")):
        raise ConfigError(f"DISCORD_GATEWAY_URL must be a ws(s) URL, not {gateway!r}")
    # Route builds every URL from this class attribute (platforms.md §1.1–1.2).
    discord.http.Route.BASE = api.rstrip("/") if api else _DEFAULT_API_BASE
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway) if gateway else _DEFAULT_GATEWAY


# discord.py decodes every gateway event and REST answer with orjson whenever that package is
# importable (nothing of ours asks for it; another dependency may bring it), and it has no setting
# to turn that off. orjson refuses JSON that is valid but not valid Unicode, such as the lone
# surrogate escape "\ud800" a client can put in an option value: the refusal escapes discord.py's
# gateway reader and the gateway stops for good. The stdlib decoder accepts such text (the core
# then refuses it with a clear message), so anything orjson refuses gets a second try there.
_STRICT_FROM_JSON: Callable[[Any], Any] = discord.utils._from_json


def _lenient_from_json(data: str | bytes) -> Any:
    try:
        return _STRICT_FROM_JSON(data)
    except ValueError:  # orjson.JSONDecodeError is a ValueError; the stdlib raises its own too
        _log.debug("orjson refused a Discord payload; decoding it with the stdlib json")
        return json.loads(data)


def decode_json_leniently() -> None:
    """Make discord.py fall back to the stdlib JSON decoder for payloads orjson refuses (lone
    surrogate escapes), so one odd event never stops the gateway. Idempotent; a no-op when
    discord.py uses the stdlib decoder already."""
    if discord.utils.HAS_ORJSON:
        # discord.py looks `utils._from_json` up on every call (gateway.py, http.py).
        discord.utils._from_json = _lenient_from_json


async def _sync(tree: app_commands.CommandTree[Any], guild_id: str | None) -> int:
    if guild_id:
        guild = discord.Object(id=int(guild_id))
        tree.copy_global_to(guild=guild)
        return len(await tree.sync(guild=guild))
    return len(await tree.sync())


async def _write_digest(settings: Settings, digest: str) -> None:
    path = settings.data_dir / COMMANDS_HASH_FILE
    await asyncio.to_thread(_write_text, path, digest + "\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _token(settings: Settings) -> str:
    token = settings.discord_token.get_secret_value() if settings.discord_token else ""
    if not token:
        raise ConfigError("DISCORD_TOKEN is not set")
    return token


async def sync_commands(settings: Settings, guild_id: str | None) -> int:
    """Register the slash commands (globally, or in one guild at once); returns how many.

    For the CLI's `imagine-bot discord sync [--guild ID]`; logs in over REST only.
    """
    apply_endpoints(settings)
    decode_json_leniently()
    token = _token(settings)
    client = discord.Client(intents=discord.Intents(guilds=True))  # REST only; never connects
    async with client:
        try:
            await client.login(token)
        except discord.LoginFailure:
            raise ConfigError("DISCORD_TOKEN was refused by Discord; check the bot token") from None
        tree = build_tree(client, None)
        count = await _sync(tree, guild_id)
        await _write_digest(settings, command_digest(command_payload(tree), guild_id or "global"))
    _log.info("synced %d discord command(s) to %s", count, f"guild {guild_id}" if guild_id else "all guilds")
    return count


# --- the adapter -------------------------------------------------------------------------------


def _client_options() -> dict[str, Any]:
    intents = discord.Intents.none()
    intents.guilds = True  # channels and roles in the cache (moderator role by name)
    # The bot has no voice: skip discord.py's warnings about voice libraries.
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    return {"intents": intents, "allowed_mentions": discord.AllowedMentions.none()}


class _Client(discord.Client):
    """One gateway connection (no DISCORD_SHARD_COUNT): what the bot always ran."""

    def __init__(self, adapter: DiscordAdapter) -> None:
        super().__init__(**_client_options())
        self.adapter = adapter

    async def on_connect(self) -> None:  # discord.py dispatches it on READY
        self.adapter.shard_up(None)

    async def on_resumed(self) -> None:
        self.adapter.shard_up(None)

    async def on_disconnect(self) -> None:
        self.adapter.shard_down(None)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.adapter.on_interaction(interaction)


class _ShardedClient(discord.AutoShardedClient):
    """The shards of DISCORD_SHARD_IDS out of DISCORD_SHARD_COUNT (0: Discord's recommended
    count, from GET /gateway/bot), each on its own gateway connection."""

    def __init__(self, adapter: DiscordAdapter, count: int | None, ids: list[int] | None) -> None:
        super().__init__(shard_count=count or None, shard_ids=ids, **_client_options())
        self.adapter = adapter

    def expected_shards(self) -> set[int]:
        """The shard ids this client runs (known once the count is, i.e. after login/launch)."""
        return set(self.shard_ids or range(self.shard_count or 0))

    async def on_shard_connect(self, shard_id: int) -> None:  # READY of that shard
        self.adapter.shard_up(shard_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        self.adapter.shard_up(shard_id)

    async def on_shard_disconnect(self, shard_id: int) -> None:
        self.adapter.shard_down(shard_id)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.adapter.on_interaction(interaction)


class _EditModal(discord.ui.Modal):
    """Asks for an edit instruction. Submissions are handled in `on_interaction` (by custom id),
    so one opened before a restart still works."""

    def __init__(self, custom_id: str) -> None:
        super().__init__(title=messages.edit_dialog_title(), custom_id=custom_id, timeout=900)
        self.add_item(
            discord.ui.Label(
                text=messages.edit_dialog_label(),
                component=discord.ui.TextInput(
                    custom_id=INSTRUCTION_FIELD,
                    style=discord.TextStyle.paragraph,
                    placeholder=messages.edit_dialog_placeholder(),
                    min_length=1,
                    max_length=1000,
                ),
            )
        )


class DiscordAdapter:
    """Connects to Discord and turns interactions into engine calls."""

    name: ClassVar[str] = "discord"

    def __init__(self, ctx: AdapterContext) -> None:
        self.engine = ctx.engine
        self.settings = ctx.settings
        self.session = ctx.session
        self.media = ctx.media
        self.clock: Callable[[], float] = time.time  # tests move it to age tokens
        self.connected = asyncio.Event()
        self.health = ctx.readiness.platform(self.name)
        self.stopping = False
        self.client: _Client | _ShardedClient | None = None
        self.shards_up: set[int | None] = set()  # shard ids whose gateway is connected (None: unsharded)
        self.command_sync_leader = False  # whether this replica holds the command-sync lock
        self._leader = contextlib.AsyncExitStack()
        self._gateway: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        # "Edit image" menus waiting for their modal: interaction id -> (image, monotonic time)
        self._message_edits: dict[str, tuple[ImageRef, float]] = {}
        ctx.engine.register_restorer(self.name, self)

    @classmethod
    def configured(cls, settings: Settings) -> bool:
        """Discord runs when DISCORD_TOKEN is set."""
        return bool(settings.discord_token and settings.discord_token.get_secret_value())

    # --- Platform (for replies) ------------------------------------------------------------

    @property
    def http(self) -> discord.http.HTTPClient:
        """The bot's REST client (channel messages)."""
        if self.client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self.client.http

    def now(self) -> float:
        """Unix time, for the age of interaction tokens."""
        return self.clock()

    def restore(self, ref: dict[str, Any]) -> Reply:
        """A reply that writes where a job's reply wrote before a restart (a log-only one
        when the saved address is unusable, so resuming never fails)."""
        try:
            return DiscordReply(self, ReplyRef.model_validate(ref))
        except ValidationError as err:
            _log.warning(
                "unusable discord reply address (%d problems); job replies go to the log", err.error_count()
            )
            return LogReply(ref)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in, sync commands if they changed, connect the gateway; returns once READY.
        Raises ConfigError for a refused token; undoes what it started on any failure."""
        apply_endpoints(self.settings)
        decode_json_leniently()
        token = _token(self.settings)
        self.stopping = False
        self.shards_up.clear()
        s = self.settings
        client: _Client | _ShardedClient
        if s.discord_sharded:
            client = _ShardedClient(self, s.discord_shard_count, s.discord_shard_id_list)
        else:
            client = _Client(self)
        self.client = client
        try:
            await self._connect(client, token)
        except BaseException:
            await self.stop()
            raise
        _log.info("discord connected as %s%s", client.user, self._shard_text())

    def _shard_text(self) -> str:
        client = self.client
        if not isinstance(client, _ShardedClient):
            return ""
        return f" (shards {sorted(client.expected_shards())} of {client.shard_count})"

    async def _connect(self, client: _Client | _ShardedClient, token: str) -> None:
        tree = build_tree(client, self)
        try:
            await client.login(token)
        except discord.LoginFailure:
            raise ConfigError("DISCORD_TOKEN was refused by Discord; check the bot token") from None
        self.command_sync_leader = await self._leader.enter_async_context(
            command_sync_lock(self.settings.postgres_url)
        )
        if self.command_sync_leader:
            await self._sync_if_changed(tree)
        else:
            _log.info("another replica holds the discord command-sync lock; not syncing commands")
        gateway = self._gateway = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
        gateway.add_done_callback(self._gateway_ended)
        ready = asyncio.create_task(self.connected.wait(), name="discord-ready")
        # discord.py identifies a replica's shards one after another, _IDENTIFY_SPACING apart.
        shards = len(self.settings.discord_shard_id_list or ()) or (self.settings.discord_shard_count or 1)
        timeout = _CONNECT_TIMEOUT + _IDENTIFY_SPACING * (shards - 1)
        try:
            done, _ = await asyncio.wait({gateway, ready}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            ready.cancel()
        if gateway in done:
            exc = gateway.exception()
            if isinstance(exc, discord.LoginFailure):
                raise ConfigError("DISCORD_TOKEN was refused by the Discord gateway") from None
            if exc is not None:
                raise exc
            raise ConfigError("the Discord gateway closed before READY")
        if not done:
            raise ConfigError(f"no READY from the Discord gateway within {timeout:.0f}s")

    def shard_up(self, shard_id: int | None) -> None:
        """A gateway connection got READY or RESUMED; the platform is connected once every
        shard of this replica is."""
        self.shards_up.add(shard_id)
        client = self.client
        expected: set[int | None] = (
            set(client.expected_shards()) if isinstance(client, _ShardedClient) else {None}
        )
        if expected <= self.shards_up:
            self.connected.set()
            self.health.connected()

    def shard_down(self, shard_id: int | None) -> None:
        """A gateway connection dropped (discord.py reconnects it by itself)."""
        self.shards_up.discard(shard_id)
        if not self.stopping:  # our own close is not a lost connection
            self.health.disconnected()

    def _gateway_ended(self, task: asyncio.Task[None]) -> None:
        # discord.py reconnects by itself; it only gives up for good (bad token, intents):
        # report it, so the process exits and the restart policy brings the bot back.
        if task.cancelled() or self.stopping:
            return
        exc = task.exception()
        reason = f"the Discord gateway stopped: {exc!r}" if exc is not None else "the Discord gateway closed"
        if self.connected.is_set():
            _log.error("%s", reason)
        self.health.failed(reason)

    async def stop(self) -> None:
        """Close the gateway and REST client; running handlers get a moment to finish."""
        self.stopping = True
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=_STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        if self._gateway is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._gateway
        await self._leader.aclose()  # another replica may sync commands from now on
        self.command_sync_leader = False
        self.connected.clear()

    async def _sync_if_changed(self, tree: app_commands.CommandTree[Any]) -> None:
        guild = self.settings.discord_dev_guild
        digest = command_digest(command_payload(tree), guild or "global")
        path = self.settings.data_dir / COMMANDS_HASH_FILE
        if await asyncio.to_thread(_read_text, path) == digest:
            return
        try:
            count = await _sync(tree, guild)
        except discord.HTTPException:
            _log.exception("discord command sync failed; Discord keeps the previous commands")
            return
        await _write_digest(self.settings, digest)
        _log.info("synced %d discord command(s) (command set changed)", count)

    # --- translation from discord objects --------------------------------------------------

    def actor(self, interaction: discord.Interaction) -> Actor:
        """The Actor behind an interaction."""
        user = interaction.user
        roles = [(str(r.id), r.name) for r in getattr(user, "roles", [])]
        return actor_for(
            user_id=str(user.id),
            display_name=user.display_name,
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
            permissions=interaction.permissions.value,
            roles=roles,
            moderator_role=self.settings.discord_moderator_role,
        )

    def reply_for(self, interaction: discord.Interaction, head: str = "") -> DiscordReply:
        """A reply on this interaction's token (its original response is the status message)."""
        short = clip(" ".join(head.split()), 100)
        return DiscordReply(
            self,
            ReplyRef(
                app_id=str(interaction.application_id),
                token=interaction.token,
                issued=interaction.created_at.timestamp(),
                channel_id=str(interaction.channel_id),
                guild_id=str(interaction.guild_id) if interaction.guild_id else None,
                user_id=str(interaction.user.id),
                limit=interaction.filesize_limit,
                head=f"<@{interaction.user.id}>" + (f" **{short}**" if short else ""),
            ),
        )

    # --- handling --------------------------------------------------------------------------

    async def _handle(
        self,
        interaction: discord.Interaction,
        what: str,
        work: Callable[[], Awaitable[None]],
        *,
        defer: str | None,
    ) -> None:
        """Acknowledge first (`defer`: "public", "private", "update" or None when `work`
        answers itself), then run `work`; user errors are shown privately, others logged."""
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if defer == "update":
                await interaction.response.defer()
            elif defer is not None:
                interaction.extras["private"] = defer == "private"
                await interaction.response.defer(thinking=True, ephemeral=defer == "private")
            await work()
        except UserError as err:
            await self._tell(interaction, str(err))
        except Exception:
            _log.exception(
                "discord %s failed interaction=%s user=%s guild=%s",
                what,
                interaction.id,
                interaction.user.id,
                interaction.guild_id,
            )
            await self._tell(interaction, messages.something_went_wrong())
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _tell(self, interaction: discord.Interaction, text: str) -> None:
        """Say something only the user sees, whatever state the response is in."""
        response = interaction.response
        try:
            if not response.is_done():
                await response.send_message(clip(text), ephemeral=True)
            elif interaction.extras.get("private"):
                await interaction.edit_original_response(content=clip(text))
            else:
                if response.type is discord.InteractionResponseType.deferred_channel_message:
                    # The public "thinking…" message would show the error to everyone.
                    with contextlib.suppress(discord.HTTPException):
                        await interaction.delete_original_response()
                await interaction.followup.send(clip(text), ephemeral=True)
        except discord.HTTPException as err:
            _log.warning("could not answer interaction=%s: %s", interaction.id, err)

    async def command_failed(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        """The command tree's one error handler, for whatever escaped a command (a failed
        translation, an unknown command): the operator gets a log line, the user a polite
        private answer in the shared wording, never a traceback."""
        cause = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(cause, UserError):
            await self._tell(interaction, str(cause))
            return
        command = interaction.command
        name = command.qualified_name if command else str((interaction.data or {}).get("name", "?"))
        _log.error(
            "discord command %r failed interaction=%s user=%s guild=%s: %r",
            name,
            interaction.id,
            interaction.user.id,
            interaction.guild_id,
            cause,
            exc_info=cause,
        )
        await self._tell(interaction, messages.something_went_wrong())

    async def _say(self, interaction: discord.Interaction, text: str) -> None:
        await interaction.edit_original_response(content=clip(text))

    async def run_job(
        self,
        interaction: discord.Interaction,
        command: ImagineCommand | EditCommand | Model3DCommand,
        head: str,
    ) -> None:
        """/imagine, /edit, /model3d: the deferred response becomes the job's status message."""

        async def work() -> None:
            reply = self.reply_for(interaction, head)
            await self.engine.submit(
                self.actor(interaction), command, reply, request_key=f"discord:{interaction.id}"
            )

        await self._handle(
            interaction, interaction.command.name if interaction.command else "job", work, defer="public"
        )

    async def edit_message_image(self, interaction: discord.Interaction, image: ImageRef | None) -> None:
        """The "Edit image" message menu: a modal asks for the instruction, whose submission
        edits `image` (remembered here under the modal's custom id until then)."""

        async def open_modal() -> None:
            if image is None:
                raise InvalidInputError(messages.no_image_in_message())
            now = time.monotonic()
            for key, (_, opened) in list(self._message_edits.items()):
                if now - opened > _MODAL_TTL:
                    del self._message_edits[key]
            self._message_edits[str(interaction.id)] = (image, now)
            await interaction.response.send_modal(_EditModal(f"{_MESSAGE_EDIT}{interaction.id}"))

        await self._handle(interaction, "edit image menu", open_modal, defer=None)

    async def _edit_submitted(self, interaction: discord.Interaction, key: str, instruction: str) -> None:
        async def edit() -> None:
            pending = self._message_edits.pop(key, None)
            if pending is None:  # opened before a restart, or too long ago
                raise InvalidInputError(messages.edit_dialog_expired())
            image = pending[0]
            command = edit_command(
                url=image.url or "", filename=image.filename or "image", instruction=instruction
            )
            await self.engine.submit(
                self.actor(interaction),
                command,
                self.reply_for(interaction, instruction),
                request_key=f"discord:{interaction.id}",
            )

        await self._handle(interaction, "edit image modal", edit, defer="public")

    async def model3d_message_image(self, interaction: discord.Interaction, image: ImageRef | None) -> None:
        """The "Make 3D model" message menu: /model3d from the message's image."""
        if image is None:

            async def refuse() -> None:
                raise InvalidInputError(messages.no_image_in_message())

            await self._handle(interaction, "make 3d model menu", refuse, defer=None)
            return
        command = model3d_command(url=image.url, filename=image.filename)
        await self.run_job(interaction, command, head=image.filename or "")

    async def show_credits(self, interaction: discord.Interaction) -> None:
        """/credits, privately."""

        async def work() -> None:
            view = await self.engine.credits(self.actor(interaction))
            await self._say(interaction, view.text)

        await self._handle(interaction, "credits", work, defer="private")

    async def show_job(self, interaction: discord.Interaction, job_id: str) -> None:
        """/show: the job's result again, with its buttons."""

        async def work() -> None:
            result = await self.engine.show(self.actor(interaction), job_id)
            await self.reply_for(interaction).result(result)

        await self._handle(interaction, "show", work, defer="public")

    async def cancel_job(self, interaction: discord.Interaction, job_id: str) -> None:
        """/cancel: the job's own status message says "Cancelled" too."""

        async def work() -> None:
            await self._say(interaction, await self.engine.cancel(self.actor(interaction), job_id))

        await self._handle(interaction, "cancel", work, defer="private")

    async def moderate(self, interaction: discord.Interaction, command: ModCommand) -> None:
        """/quota …: answered privately with the new state, logged to the mod-log channel."""

        async def work() -> None:
            result = await self.engine.moderate(self.actor(interaction), command)
            await self._say(interaction, result.text)
            if command.op.changes_state:
                await self._modlog(result.log_line)

        await self._handle(interaction, f"quota {command.op.value}", work, defer="private")

    async def _modlog(self, line: str) -> None:
        channel = self.settings.discord_modlog_channel
        if not channel or self.client is None:
            return
        try:
            await self.client.get_partial_messageable(int(channel)).send(
                clip(line), allowed_mentions=discord.AllowedMentions.none()
            )
        except (discord.HTTPException, ValueError) as err:
            _log.warning("could not write to the moderation log channel %s: %s", channel, err)

    # --- buttons and the Edit modal --------------------------------------------------------

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """The one dispatcher for result/status buttons (Delete removes the message it is on)
        and the Edit modal."""
        if interaction.type not in (discord.InteractionType.component, discord.InteractionType.modal_submit):
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        if interaction.type is discord.InteractionType.modal_submit and custom_id.startswith(_MESSAGE_EDIT):
            instruction = modal_value(data.get("components", [])) or ""
            await self._edit_submitted(interaction, custom_id.removeprefix(_MESSAGE_EDIT), instruction)
            return
        parsed = parse_custom_id(custom_id)
        if parsed is None:
            return
        action, job_id, index = parsed
        key = f"discord:{interaction.id}"
        # The actor is built inside each handler, never out here: a refused display name
        # (broken characters) must get its answer, not leave the press unanswered.

        if interaction.type is discord.InteractionType.modal_submit:
            instruction = modal_value(data.get("components", [])) or ""

            async def edit() -> None:
                reply = self.reply_for(interaction, instruction)
                await self.engine.edit_result(
                    self.actor(interaction), job_id, index, instruction, reply, request_key=key
                )

            await self._handle(interaction, "edit modal", edit, defer="public")
            return

        if action is ButtonAction.EDIT:

            async def open_modal() -> None:
                await interaction.response.send_modal(_EditModal(str(data["custom_id"])))

            await self._handle(interaction, "edit button", open_modal, defer=None)
            return

        if action is ButtonAction.DELETE:

            async def delete() -> None:
                await self.engine.may_delete(self.actor(interaction), job_id)
                # For a button, the interaction's original response is the message it sits on.
                await interaction.delete_original_response()

            await self._handle(interaction, "delete button", delete, defer="update")
            return

        async def press() -> None:
            reply = self.reply_for(interaction)
            await self.engine.press(self.actor(interaction), action, job_id, index, reply, request_key=key)

        # Cancel edits the job's own status message and Confirm turns its prompt into the job's
        # status; the others answer with a new one.
        defer = "update" if action in (ButtonAction.CANCEL, ButtonAction.CONFIRM) else "public"
        await self._handle(interaction, f"{action.value} button", press, defer=defer)
