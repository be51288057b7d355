"""A loopback Discord: gateway websocket + the REST routes a bot uses, enforcing Discord's rules.

The real discord.py client talks to it over sockets (`discord.http.Route.BASE` and
`DiscordWebSocket.DEFAULT_GATEWAY` pointed here). Tests drive it like a person would:
`slash(...)` runs a slash command, `click(...)` presses a button, `submit_modal(...)` fills a
modal, `message_command(...)` runs a message context menu on a `user_message(...)`; then
they assert on the recorded messages, files and callbacks.

Rules enforced so tests catch what production would refuse (facts: docs/platforms.md §1–2):
initial callback after 3 s → 404/10062; a second initial callback → 400/40060; token use after
15 min (injectable clock) → 401/50027; a file over `attachment_size_limit` → 413/40005;
content over 2000 chars, too many/too long embeds or bad components → 400/50035. `inject()`
queues 429s (with the `Via` header discord.py requires to retry) or 5xx answers. `forbid()` takes
the bot's permission to post in a channel (403/50013) and `refuse_dms()` makes a user refuse the
bot's DMs (403/50007); `POST /users/@me/channels` opens a DM, whose messages `dm_messages()` reads.

Sharding: `GET /gateway/bot` recommends `recommended_shards`; each IDENTIFY may carry
`shard: [id, count]` and gets its own session, READY (with `shard`) and the GUILD_CREATEs of its
guilds; events go to the connection of shard `(guild_id >> 22) % count`, DMs to shard 0, as
Discord routes them. `add_guild(shard=…)` makes a guild that lands on a given shard.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import mimetypes
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import WSMsgType, web

__all__ = [
    "ALICE",
    "BOB",
    "MOD",
    "ROLE_MOD",
    "DiscordFake",
    "FakeAttachment",
    "FakeFile",
    "FakeInteraction",
    "FakeMessage",
    "FakeUser",
    "RawJSON",
]

DISCORD_EPOCH_MS = 1_420_070_400_000
TOKEN_TTL = 15 * 60.0
INITIAL_RESPONSE_DEADLINE = 3.0
MAX_REQUEST_BYTES = 25 * 1024 * 1024
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024

# Permission bits (developers/topics/permissions)
P_ADMINISTRATOR = 1 << 3
P_MANAGE_GUILD = 1 << 5
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)

EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Interaction callback types
PONG, MESSAGE, DEFERRED, DEFERRED_UPDATE, UPDATE, AUTOCOMPLETE, MODAL = 1, 4, 5, 6, 7, 8, 9

_NAME = re.compile(r"^[-_\w]{1,32}$")


@dataclass(slots=True)
class _Conn:
    """One identified gateway connection (one shard of the bot)."""

    ws: web.WebSocketResponse
    shard_id: int
    shard_count: int
    session_id: str
    sharded: bool  # IDENTIFY carried `shard` (then READY does too)
    seq: int = 0


def shard_of(guild_id: str | None, count: int) -> int:
    """The shard Discord sends a guild's events to (DMs: shard 0)."""
    return 0 if guild_id is None else (int(guild_id) >> 22) % count


@dataclass(frozen=True, slots=True)
class RawJSON:
    """A value the gateway writes verbatim into its frame, anywhere in a payload (e.g. an
    option value `RawJSON(r'"a fox \\ud800"')`): wire text as a client may send it, such as a
    lone surrogate escape, independent of how Python would serialise a str."""

    text: str


@dataclass(frozen=True, slots=True)
class FakeUser:
    """A member of the fake guild; `permissions` are their resolved channel permissions,
    `global_name` their display name (default: the username, capitalised)."""

    id: str
    username: str
    permissions: int = MEMBER_PERMISSIONS
    roles: tuple[str, ...] = ()
    global_name: str | RawJSON | None = None

    def payload(self) -> dict[str, Any]:
        """The user as Discord's API sends it."""
        return {
            "id": self.id,
            "username": self.username,
            "discriminator": "0",
            "global_name": self.username.title() if self.global_name is None else self.global_name,
            "avatar": None,
        }


ALICE = FakeUser("1000000000000000001", "alice")
BOB = FakeUser("1000000000000000002", "bob")
MOD = FakeUser("1000000000000000003", "mod", permissions=MEMBER_PERMISSIONS | P_MANAGE_GUILD)
ROLE_MOD_ROLE_ID = "1000000000000000901"
ROLE_MOD = FakeUser("1000000000000000004", "rolemod", roles=(ROLE_MOD_ROLE_ID,))


@dataclass(slots=True)
class FakeAttachment:
    """A file a user attached to a slash command, served from the fake's CDN route."""

    id: str
    filename: str
    data: bytes
    content_type: str
    url: str

    def payload(self) -> dict[str, Any]:
        """The attachment as Discord's REST API returns it."""
        return {
            "id": self.id,
            "filename": self.filename,
            "size": len(self.data),
            "content_type": self.content_type,
            "url": self.url,
            "proxy_url": self.url,
        }


@dataclass(slots=True)
class FakeFile:
    """A file the bot uploaded, with its bytes."""

    id: str
    filename: str
    data: bytes
    content_type: str | None

    @property
    def size(self) -> int:
        """Bytes received."""
        return len(self.data)


@dataclass(slots=True)
class FakeMessage:
    """A message as the fake stores it; `history` keeps every content it had."""

    id: str
    channel_id: str
    author_id: str
    content: str = ""
    components: list[dict[str, Any]] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    files: list[FakeFile] = field(default_factory=list)
    flags: int = 0
    interaction_id: str | None = None
    via: str = "channel"  # "callback" | "webhook" | "channel"
    deleted: bool = False
    mentions: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        """Whether only the invoking user sees it."""
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        """Whether it is a deferred "thinking…" placeholder."""
        return bool(self.flags & LOADING)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """Every button in the message's action rows."""
        return [c for row in self.components for c in row.get("components", []) if c.get("type") == 2]

    @property
    def custom_ids(self) -> list[str]:
        """The custom ids of its buttons."""
        return [b["custom_id"] for b in self.buttons if "custom_id" in b]

    def button(self, label: str) -> dict[str, Any]:
        """The button with this label (AssertionError if there is none)."""
        for b in self.buttons:
            if b.get("label") == label:
                return b
        raise AssertionError(
            f"no button {label!r} on message {self.id}: {[b.get('label') for b in self.buttons]}"
        )

    def payload(self, bot: dict[str, Any], cdn: str = "http://fake") -> dict[str, Any]:
        """The message as Discord's API shows it, with `bot` as its author and its files at
        `cdn`/attachments/<id>/<name>."""
        return {
            "id": self.id,
            "channel_id": self.channel_id,
            "type": 0 if self.interaction_id is None else 20,
            "content": self.content,
            "author": bot,
            "attachments": [
                {
                    "id": f.id,
                    "filename": f.filename,
                    "size": f.size,
                    "url": f"{cdn}/attachments/{f.id}/{f.filename}",
                    "proxy_url": f"{cdn}/attachments/{f.id}/{f.filename}",
                    **({"content_type": kind} if (kind := _content_type(f)) else {}),
                }
                for f in self.files
            ],
            "embeds": self.embeds,
            "components": self.components,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
            "timestamp": "2024-01-01T00:00:00+00:00",
            "edited_timestamp": None,
            "flags": self.flags,
        }


@dataclass(slots=True)
class FakeInteraction:
    """One dispatched interaction and what the bot did with it."""

    id: str
    token: str
    type: int  # 2 command, 3 component, 4 autocomplete, 5 modal submit
    user: FakeUser
    channel_id: str
    guild_id: str | None
    issued: float  # fake clock
    dispatched_mono: float  # real clock, for latency
    attachment_size_limit: int
    name: str = ""
    custom_id: str = ""
    message_id: str | None = None  # the message a component sits on
    ack_type: int | None = None
    ack_latency: float | None = None
    original_id: str | None = None
    modal: dict[str, Any] | None = None
    choices: list[dict[str, Any]] | None = None
    followups: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # error codes the fake answered

    @property
    def acked(self) -> bool:
        """Whether the bot answered the interaction's callback."""
        return self.ack_type is not None


@dataclass(slots=True)
class RecordedRequest:
    """A REST request as received (after fault injection)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    files: list[str]
    status: int = 0


@dataclass(slots=True)
class _Fault:
    status: int
    count: int
    method: str | None
    path: str | None
    retry_after: float


class _Refusal(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _content_type(f: FakeFile) -> str | None:
    # Discord derives an attachment's type from the file, not from the multipart header.
    if f.content_type and f.content_type != "application/octet-stream":
        return f.content_type
    return mimetypes.guess_type(f.filename)[0] or f.content_type


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only for exactly "application/json" (no charset; platforms.md §1.1).
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers
    )


class DiscordFake:
    """The loopback Discord. Use as an async context manager; `api_base` and `gateway_url` are
    what the bot's settings point at. `clock` (unix seconds) drives the 3 s / 15 min rules."""

    def __init__(
        self,
        *,
        token: str = "test-token",
        clock: Callable[[], float] | None = None,
        attachment_size_limit: int = DEFAULT_ATTACHMENT_LIMIT,
    ) -> None:
        self.token = token
        self._offset = 0.0
        self._clock = clock or time.time
        self.attachment_size_limit = attachment_size_limit
        self._seq_ids = itertools.count(1)
        self.app_id = self.snowflake()
        self.bot_user = {
            "id": self.snowflake(),
            "username": "imaginebot",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
        }
        self.guild_id = self.snowflake()
        self.channel_id = self.snowflake()
        self.guild_channels: dict[str, str] = {self.guild_id: self.channel_id}  # guild -> #general
        self.modlog_channel_id = self.snowflake()
        self.moderator_role_id = ROLE_MOD_ROLE_ID
        self.dm_channels: dict[str, str] = {}  # user id -> DM channel id
        self.users = {u.id: u for u in (ALICE, BOB, MOD, ROLE_MOD)}
        self.forbidden: set[str] = set()  # channels the bot may not post or edit in
        self.dms_refused: set[str] = set()  # users who do not accept the bot's DMs
        self.refused: list[tuple[str, int]] = []  # (channel id, code) of refused channel requests
        self.messages: dict[str, FakeMessage] = {}
        self.interactions: dict[str, FakeInteraction] = {}
        self.requests: list[RecordedRequest] = []
        self.commands: dict[str, list[dict[str, Any]]] = {}  # "global" or guild id -> payload
        self.command_puts = 0
        self.identifies = 0
        self.identified: list[tuple[int, int]] = []  # (shard id, shard count) of every IDENTIFY
        self.recommended_shards = 1  # what GET /gateway/bot answers
        self.resumes = 0
        self.gateway_refused = False  # while set, new gateway connections get HTTP 503
        self.cdn: dict[str, tuple[bytes, str]] = {}
        self._faults: list[_Fault] = []
        self._conns: dict[int, _Conn] = {}  # shard id -> its open connection
        self._ended: dict[str, _Conn] = {}  # session id -> a closed connection, for RESUME
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._middleware])
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/cdn/{name}", self._cdn)
        r.add_get("/attachments/{file_id}/{filename}", self._attachment)
        api = "/api/v10"
        r.add_get(api + "/users/@me", self._me)
        r.add_get(api + "/gateway/bot", self._gateway_bot)
        r.add_post(api + "/users/@me/channels", self._open_dm)
        r.add_get(api + "/oauth2/applications/@me", self._application)
        r.add_put(api + "/applications/{app}/commands", self._put_commands)
        r.add_put(api + "/applications/{app}/guilds/{guild}/commands", self._put_commands)
        r.add_post(api + "/interactions/{id}/{token}/callback", self._callback)
        r.add_post(api + "/webhooks/{app}/{token}", self._followup)
        r.add_route("*", api + "/webhooks/{app}/{token}/messages/{message}", self._webhook_message)
        r.add_post(api + "/channels/{channel}/messages", self._channel_post)
        r.add_route("*", api + "/channels/{channel}/messages/{message}", self._channel_message)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in list(self._conns.values()):
            if not conn.ws.closed:
                await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        """The REST base to give the bot (DISCORD_API_BASE)."""
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The gateway URL to give the bot (DISCORD_GATEWAY_URL)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- clock and ids ---------------------------------------------------------------------

    def now(self) -> float:
        """The fake's clock (unix seconds)."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (tokens age, nothing sleeps)."""
        self._offset += seconds

    def snowflake(self) -> str:
        """A time-based snowflake (discord.py derives created_at/expires_at from it)."""
        ms = int(self.now() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._seq_ids) & 0x3FFFFF))

    # --- faults ----------------------------------------------------------------------------

    def inject(
        self,
        status: int,
        *,
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: float = 0.2,
    ) -> None:
        """Answer the next `count` matching REST requests with `status` (429 or 5xx)."""
        self._faults.append(_Fault(status, count, method, path, retry_after))

    def _take_fault(self, request: web.Request) -> _Fault | None:
        for fault in self._faults:
            if fault.method and fault.method != request.method:
                continue
            if fault.path and not re.search(fault.path, request.path):
                continue
            fault.count -= 1
            if fault.count <= 0:
                self._faults.remove(fault)
            return fault
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)  # type: ignore[no-any-return]
        fault = self._take_fault(request)
        if fault is not None:
            self.requests.append(
                RecordedRequest(request.method, request.path, dict(request.query), None, [], fault.status)
            )
            if fault.status == 429:
                return _json(
                    {
                        "message": "You are being rate limited.",
                        "retry_after": fault.retry_after,
                        "global": False,
                    },
                    429,
                    headers={"Via": "1.1 google", "Retry-After": str(fault.retry_after)},
                )
            return _json({"message": f"{fault.status}: Server Error", "code": 0}, fault.status)
        try:
            response: web.StreamResponse = await handler(request)
        except _Refusal as err:
            response = _json({"message": err.message, "code": err.code}, err.status)
        await self._notify()
        return response

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked whenever the fake records something)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while not (value := predicate()):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError("condition not met in time")
                try:
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
                except TimeoutError:
                    pass
            return value

    # --- gateway ---------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.gateway_refused:
            return web.Response(status=503, text="gateway unavailable")
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        conn: _Conn | None = None
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            op = data.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                if data["d"].get("token") != self.token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                sharded = "shard" in data["d"]
                shard_id, count = data["d"]["shard"] if sharded else (0, 1)
                if not 0 <= shard_id < count:
                    await ws.close(code=4010, message=b"Invalid shard.")
                    break
                self.identifies += 1
                self.identified.append((shard_id, count))
                # The unsharded session keeps its old id; each shard gets one of its own.
                session = f"fake-session-{shard_id}" if sharded else "fake-session"
                conn = self._conns[shard_id] = _Conn(ws, shard_id, count, session, sharded)
                await self._send(conn, "READY", self._ready_payload(conn))
                for guild_id in self._guilds_of(conn):
                    await self._send(conn, "GUILD_CREATE", self._guild_payload(guild_id))
                await self._notify()
            elif op == 6:
                old = next(
                    (c for c in self._all_sessions() if c.session_id == data["d"].get("session_id")), None
                )
                if old is None:
                    await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
                    continue
                self.resumes += 1
                conn = self._conns[old.shard_id] = _Conn(
                    ws, old.shard_id, old.shard_count, old.session_id, old.sharded, old.seq
                )
                await self._send(conn, "RESUMED", {})
                await self._notify()
        if conn is not None and self._conns.get(conn.shard_id) is conn:
            del self._conns[conn.shard_id]
            self._ended[conn.session_id] = conn  # may be resumed
        return ws

    def _all_sessions(self) -> Iterator[_Conn]:
        yield from self._conns.values()
        yield from self._ended.values()

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        # Only AutoShardedClient without a shard count asks (platforms.md §1.2).
        self._record(request)
        self._require_bot(request)
        return _json(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            }
        )

    async def _send(self, conn: _Conn, event: str, data: Any) -> None:
        conn.seq += 1
        raws: list[str] = []

        def placeholder(value: Any) -> str:
            if not isinstance(value, RawJSON):
                raise TypeError(f"not JSON serialisable: {value!r}")
            raws.append(value.text)
            return f"\x00raw{len(raws) - 1}\x00"

        frame = json.dumps({"op": 0, "t": event, "s": conn.seq, "d": data}, default=placeholder)
        for i, text in enumerate(raws):
            frame = frame.replace(json.dumps(f"\x00raw{i}\x00"), text)
        await conn.ws.send_str(frame)

    @property
    def connected(self) -> bool:
        """Whether a gateway websocket of the bot is open (any shard)."""
        return any(not c.ws.closed for c in self._conns.values())

    def shard_connected(self, shard_id: int) -> bool:
        """Whether the connection of `shard_id` is open."""
        conn = self._conns.get(shard_id)
        return conn is not None and not conn.ws.closed

    @property
    def shard_count(self) -> int:
        """The shard count the bot identified with (1 unsharded or before any IDENTIFY)."""
        return next(iter(self._conns.values())).shard_count if self._conns else 1

    async def drop_connection(self, code: int = 4000, shard_id: int | None = None) -> None:
        """Close the gateway socket(s) the way Discord does before a resume (all shards, or one)."""
        for conn in list(self._conns.values()):
            if shard_id is None or conn.shard_id == shard_id:
                await conn.ws.close(code=code)
                if self._conns.get(conn.shard_id) is conn:
                    del self._conns[conn.shard_id]
                    self._ended[conn.session_id] = conn

    def add_guild(self, shard: tuple[int, int] | None = None) -> str:
        """Another guild with its #general; `shard=(id, count)` makes one whose events go to that
        shard. Connections identified before see it only after they reconnect."""
        guild_id = self.snowflake()
        if shard is not None:
            shard_id, count = shard
            # The shard comes from the snowflake's timestamp: move it on a few milliseconds.
            ahead = (shard_id - shard_of(guild_id, count)) % count
            guild_id = str(int(guild_id) + (ahead << 22))
        self.guild_channels[guild_id] = self.snowflake()
        return guild_id

    def _guilds_of(self, conn: _Conn) -> list[str]:
        return [g for g in self.guild_channels if shard_of(g, conn.shard_count) == conn.shard_id]

    def _ready_payload(self, conn: _Conn) -> dict[str, Any]:
        ready: dict[str, Any] = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": g, "unavailable": True} for g in self._guilds_of(conn)],
            "session_id": conn.session_id,
            # Must be loopback: discord.py resumes to this URL (platforms.md §1.2).
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.app_id, "flags": 0},
        }
        if conn.sharded:
            ready["shard"] = [conn.shard_id, conn.shard_count]
        return ready

    def _guild_payload(self, guild_id: str) -> dict[str, Any]:
        role = {"position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False}
        if guild_id != self.guild_id:  # an added guild: one channel, no mod-log
            channels = [self._channel_payload(self.guild_channels[guild_id], "general", guild_id)]
        else:
            channels = [
                self._channel_payload(self.channel_id, "general"),
                self._channel_payload(self.modlog_channel_id, "mod-log"),
            ]
        return {
            "id": guild_id,
            "name": "Test Guild",
            "unavailable": False,
            "owner_id": MOD.id,
            "member_count": 4,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [
                {"id": guild_id, "name": "@everyone", "permissions": str(MEMBER_PERMISSIONS), **role},
                {"id": self.moderator_role_id, "name": "Moderators", "permissions": "0", **role},
            ],
            "channels": channels,
            "threads": [],
            "members": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _channel_payload(self, channel_id: str, name: str, guild_id: str | None = None) -> dict[str, Any]:
        return {
            "id": channel_id,
            "type": 0,
            "name": name,
            "position": 0,
            "guild_id": guild_id or self.guild_id,
            "permission_overwrites": [],
        }

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        # To the shard Discord would pick; waits (10 s) for that shard to be connected.
        def conn() -> _Conn | None:
            if not self._conns:
                return None
            target = self._conns.get(shard_of(data.get("guild_id"), self.shard_count))
            return target if target is not None and not target.ws.closed else None

        target: _Conn = await self.wait_for(conn, timeout=10)
        await self._send(target, event, data)

    # --- the test API: what users do -------------------------------------------------------

    def add_attachment(self, filename: str, data: bytes, content_type: str = "image/png") -> FakeAttachment:
        """A file a user will attach to a command; downloadable from the CDN route."""
        att_id = self.snowflake()
        name = f"{att_id}-{filename}"
        self.cdn[name] = (data, content_type)
        return FakeAttachment(
            att_id, filename, data, content_type, f"http://127.0.0.1:{self.port}/cdn/{name}"
        )

    def forbid(self, channel_id: str | None = None) -> None:
        """Take the bot's permission to post in a channel (default: #general)."""
        self.forbidden.add(channel_id or self.channel_id)

    def refuse_dms(self, user: FakeUser) -> None:
        """`user` no longer accepts DMs from the bot (privacy setting or a block)."""
        self.dms_refused.add(user.id)

    def dm_channel(self, user: FakeUser) -> str:
        """The DM channel between the bot and `user` (created on first use)."""
        if user.id not in self.dm_channels:
            self.dm_channels[user.id] = self.snowflake()
        return self.dm_channels[user.id]

    def _new_interaction(
        self,
        type_: int,
        user: FakeUser,
        *,
        dm: bool,
        limit: int | None,
        guild_id: str | None = None,
        **extra: Any,
    ) -> tuple[FakeInteraction, dict[str, Any]]:
        guild_id = guild_id or self.guild_id
        channel_id = self.guild_channels[guild_id]
        ix = FakeInteraction(
            id=self.snowflake(),
            token=f"itok-{self.snowflake()}",
            type=type_,
            user=user,
            channel_id=self.dm_channel(user) if dm else channel_id,
            guild_id=None if dm else guild_id,
            issued=self.now(),
            dispatched_mono=time.monotonic(),
            attachment_size_limit=limit or self.attachment_size_limit,
            **extra,
        )
        self.interactions[ix.id] = ix
        payload: dict[str, Any] = {
            "id": ix.id,
            "application_id": self.app_id,
            "type": type_,
            "token": ix.token,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": ix.attachment_size_limit,
            "app_permissions": str(MEMBER_PERMISSIONS),
        }
        if dm:
            payload |= {
                "channel_id": ix.channel_id,
                "channel": {"id": ix.channel_id, "type": 1, "recipients": [user.payload()]},
                "user": user.payload(),
                "context": 1,
                "authorizing_integration_owners": {"0": self.guild_id},
            }
        else:
            payload |= {
                "guild_id": guild_id,
                "guild_locale": "en-US",
                "channel_id": channel_id,
                "channel": self._channel_payload(channel_id, "general", guild_id),
                "member": {
                    "user": user.payload(),
                    "roles": list(user.roles),
                    "flags": 0,
                    "joined_at": "2024-01-01T00:00:00+00:00",
                    "permissions": str(user.permissions),
                    "deaf": False,
                    "mute": False,
                },
                "context": 0,
                "authorizing_integration_owners": {"0": guild_id},
            }
        return ix, payload

    def _command_schema(self, name: str, kind: int = 1) -> dict[str, Any]:
        for scope in (self.guild_id, "global"):
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == kind:
                    return cmd
        raise AssertionError(f"{name!r} (type {kind}) was never synced; synced: {self.command_names()}")

    def command_names(self) -> list[str]:
        """Names of every synced command (global and guild)."""
        return sorted({c["name"] for cmds in self.commands.values() for c in cmds})

    def _options(
        self, schema: dict[str, Any], values: dict[str, Any], resolved: dict[str, Any]
    ) -> list[dict[str, Any]]:
        known = {o["name"]: o for o in schema.get("options", [])}
        out = []
        for name, value in values.items():
            if name not in known:
                raise AssertionError(f"option {name!r} is not in the synced schema {sorted(known)}")
            opt_type = known[name]["type"]
            if isinstance(value, FakeAttachment):
                resolved.setdefault("attachments", {})[value.id] = value.payload()
                out.append({"name": name, "type": 11, "value": value.id})
            elif isinstance(value, FakeUser):
                resolved.setdefault("users", {})[value.id] = value.payload()
                resolved.setdefault("members", {})[value.id] = {
                    "roles": list(value.roles),
                    "joined_at": "2024-01-01T00:00:00+00:00",
                    "permissions": str(value.permissions),
                    "flags": 0,
                }
                out.append({"name": name, "type": 6, "value": value.id})
            else:
                out.append({"name": name, "type": opt_type, "value": value})
        missing = [o["name"] for o in known.values() if o.get("required") and o["name"] not in values]
        if missing and all(o["type"] > 2 for o in known.values()):
            raise AssertionError(f"required options missing: {missing}")
        return out

    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser = ALICE,
        dm: bool = False,
        attachment_size_limit: int | None = None,
        guild_id: str | None = None,
    ) -> FakeInteraction:
        """Run `/name` (`name` may be "quota grant" or "quota blocklist add"); in `guild_id`
        (one from `add_guild`) instead of the test guild if given."""
        parts = name.split()
        schema = self._command_schema(parts[0])
        resolved: dict[str, Any] = {}
        node = schema
        chain: list[dict[str, Any]] = []
        for sub in parts[1:]:
            node = next((o for o in node.get("options", []) if o["name"] == sub), None)  # type: ignore[assignment]
            if node is None:
                raise AssertionError(f"/{name}: no subcommand {sub!r}")
            chain.append(node)
        leaf_options = self._options(node, options or {}, resolved)
        opts = leaf_options
        for sub in reversed(chain):
            opts = [{"name": sub["name"], "type": sub["type"], "options": opts}]
        data: dict[str, Any] = {"id": schema["id"], "name": parts[0], "type": 1, "options": opts}
        if resolved:
            data["resolved"] = resolved
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        ix, payload = self._new_interaction(
            2, user, dm=dm, limit=attachment_size_limit, guild_id=guild_id, name=name
        )
        payload["data"] = data
        await self._dispatch("INTERACTION_CREATE", payload)
        return ix

    def user_message(
        self,
        user: FakeUser = BOB,
        content: str = "",
        *,
        attachments: tuple[FakeAttachment, ...] = (),
        embeds: tuple[dict[str, Any], ...] = (),
    ) -> dict[str, Any]:
        """A message a member posted in #general, as Discord's API shows it (for context menus)."""
        return {
            "id": self.snowflake(),
            "channel_id": self.channel_id,
            "guild_id": self.guild_id,
            "type": 0,
            "content": content,
            "author": user.payload(),
            "attachments": [a.payload() for a in attachments],
            "embeds": list(embeds),
            "components": [],
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
            "timestamp": "2024-01-01T00:00:00+00:00",
            "edited_timestamp": None,
            "flags": 0,
        }

    def image_embed(self, attachment: FakeAttachment) -> dict[str, Any]:
        """The embed Discord adds to a message that links to an image (type "image": the
        picture is in `thumbnail`); `attachment` only provides a CDN URL for it."""
        return {
            "type": "image",
            "url": attachment.url,
            "thumbnail": {"url": attachment.url, "proxy_url": attachment.url, "width": 64, "height": 48},
        }

    async def message_command(
        self, name: str, target: dict[str, Any] | FakeMessage, *, user: FakeUser = ALICE
    ) -> FakeInteraction:
        """Run the message context menu `name` ("Apps" menu of a message) on `target`: a
        `user_message(...)` or a message the bot posted."""
        schema = self._command_schema(name, kind=3)
        message = target.payload(self.bot_user, self._cdn_base) if isinstance(target, FakeMessage) else target
        data: dict[str, Any] = {
            "id": schema["id"],
            "name": name,
            "type": 3,
            "target_id": message["id"],
            "resolved": {"messages": {message["id"]: message}},
        }
        if schema.get("guild_id"):
            data["guild_id"] = schema["guild_id"]
        ix, payload = self._new_interaction(2, user, dm=False, limit=None, name=name)
        payload["data"] = data
        await self._dispatch("INTERACTION_CREATE", payload)
        return ix

    async def autocomplete(
        self, name: str, options: dict[str, Any], focused: str, *, user: FakeUser = ALICE
    ) -> list[dict[str, Any]]:
        """Type into option `focused` of `/name`; returns the choices the bot offered."""
        schema = self._command_schema(name)
        opts = self._options(schema, options, {})
        for o in opts:
            if o["name"] == focused:
                o["focused"] = True
        ix, payload = self._new_interaction(4, user, dm=False, limit=None, name=name)
        payload["data"] = {"id": schema["id"], "name": name, "type": 1, "options": opts}
        await self._dispatch("INTERACTION_CREATE", payload)
        await self.wait_for(lambda: ix.choices is not None, timeout=5)
        return ix.choices or []

    async def click(
        self,
        message_id: str,
        custom_id: str,
        *,
        user: FakeUser = ALICE,
        attachment_size_limit: int | None = None,
    ) -> FakeInteraction:
        """Press the button `custom_id` on message `message_id`."""
        msg = self.messages[message_id]
        if msg.deleted:
            raise AssertionError(f"message {message_id} was deleted")
        if custom_id not in msg.custom_ids:
            raise AssertionError(f"no button {custom_id!r} on message {message_id}: {msg.custom_ids}")
        dm = msg.channel_id in self.dm_channels.values()
        ix, payload = self._new_interaction(
            3,
            user,
            dm=dm,
            limit=attachment_size_limit,
            custom_id=custom_id,
            message_id=message_id,
        )
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        payload["message"] = msg.payload(self.bot_user, self._cdn_base)
        await self._dispatch("INTERACTION_CREATE", payload)
        return ix

    async def submit_modal(
        self, opened_by: FakeInteraction, values: dict[str, str], *, user: FakeUser | None = None
    ) -> FakeInteraction:
        """Fill and submit the modal the bot opened in answer to `opened_by`."""
        modal = opened_by.modal
        if modal is None:
            raise AssertionError(f"interaction {opened_by.id} opened no modal")

        def filled(component: dict[str, Any]) -> dict[str, Any]:
            kind = component.get("type")
            if kind == 1:
                return {"type": 1, "components": [filled(c) for c in component.get("components", [])]}
            if kind == 18:
                return {"type": 18, "component": filled(component["component"])}
            if kind == 4:
                return {
                    "type": 4,
                    "custom_id": component["custom_id"],
                    "value": values[component["custom_id"]],
                }
            return component

        ix, payload = self._new_interaction(
            5,
            user or opened_by.user,
            dm=opened_by.guild_id is None,
            limit=None,
            custom_id=modal["custom_id"],
            message_id=opened_by.message_id,
        )
        payload["data"] = {
            "custom_id": modal["custom_id"],
            "components": [filled(c) for c in modal["components"]],
        }
        if opened_by.message_id:
            payload["message"] = self.messages[opened_by.message_id].payload(self.bot_user, self._cdn_base)
        await self._dispatch("INTERACTION_CREATE", payload)
        return ix

    # --- the test API: what to assert on ---------------------------------------------------

    def original(self, ix: FakeInteraction) -> FakeMessage | None:
        """The interaction's original response message, if any."""
        return self.messages.get(ix.original_id) if ix.original_id else None

    def replies(self, ix: FakeInteraction) -> list[FakeMessage]:
        """The original response and the followups of an interaction, oldest first."""
        ids = ([ix.original_id] if ix.original_id else []) + ix.followups
        return [self.messages[i] for i in dict.fromkeys(ids) if not self.messages[i].deleted]

    def channel_messages(self, channel_id: str | None = None) -> list[FakeMessage]:
        """Live messages in a channel (default: #general), oldest first."""
        ch = channel_id or self.channel_id
        return [m for m in self.messages.values() if m.channel_id == ch and not m.deleted]

    def dm_messages(self, user: FakeUser) -> list[FakeMessage]:
        """Live messages in the bot's DM with `user`, oldest first."""
        return self.channel_messages(self.dm_channel(user)) if user.id in self.dm_channels else []

    def texts(self, ix: FakeInteraction) -> str:
        """Every reply's content joined, for `in` assertions."""
        return "\n".join(m.content for m in self.replies(ix))

    async def wait_ack(self, ix: FakeInteraction, timeout: float = 5.0) -> FakeInteraction:
        """Wait until the bot acknowledges `ix`; returns it."""
        await self.wait_for(lambda: ix.acked, timeout)
        return ix

    def ack_latencies(self) -> list[float]:
        """Seconds from dispatch to the initial callback, per acknowledged interaction."""
        return [ix.ack_latency for ix in self.interactions.values() if ix.ack_latency is not None]

    def unanswered(self) -> list[FakeInteraction]:
        """Interactions the bot never acknowledged."""
        return [ix for ix in self.interactions.values() if not ix.acked]

    # --- REST: identity and commands -------------------------------------------------------

    def _record(self, request: web.Request, body: Any = None, files: list[str] | None = None) -> None:
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), body, files or [])
        )

    def _require_bot(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise _Refusal(401, 0, "401: Unauthorized")

    async def _me(self, request: web.Request) -> web.Response:
        self._record(request)
        self._require_bot(request)
        return _json(self.bot_user)

    async def _open_dm(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        body = await request.json()
        self._record(request, body)
        user = self.users.get(str(body.get("recipient_id")))
        if user is None:
            raise _Refusal(400, 50033, "Invalid Recipient(s)")
        # Discord opens the channel even for a user who refuses DMs; sending there fails.
        return _json(
            {
                "id": self.dm_channel(user),
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [user.payload()],
            }
        )

    async def _application(self, request: web.Request) -> web.Response:
        self._record(request)
        self._require_bot(request)
        return _json(
            {
                "id": self.app_id,
                "name": "imagine-bot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": {"id": MOD.id, "username": "owner", "discriminator": "0", "avatar": None},
                "verify_key": "00" * 32,
                "flags": 0,
            }
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        self._require_bot(request)
        body = await request.json()
        self._record(request, body)
        if request.match_info["app"] != self.app_id:
            raise _Refusal(403, 50001, "Missing Access")
        problems = [p for cmd in body for p in _command_problems(cmd)]
        if problems:
            raise _Refusal(400, 50035, "Invalid Form Body: " + "; ".join(problems))
        scope = request.match_info.get("guild", "global")
        stored = []
        for cmd in body:
            cmd = dict(cmd)
            cmd.setdefault("description", "")  # Discord stores "" for user and message commands
            cmd.update(id=self.snowflake(), application_id=self.app_id, version=self.snowflake())
            if scope != "global":
                cmd["guild_id"] = scope
            stored.append(cmd)
        self.commands[scope] = stored
        self.command_puts += 1
        return _json(stored)

    # --- REST: interaction callbacks and webhooks ------------------------------------------

    async def _read_message_body(
        self, request: web.Request, limit: int
    ) -> tuple[dict[str, Any], list[FakeFile]]:
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            raw = form.get("payload_json", "{}")
            # aiohttp hands non-text parts over as bytes
            body = json.loads(raw.decode() if isinstance(raw, bytes | bytearray) else str(raw))
            files: list[FakeFile] = []
            total = 0
            for key, value in form.items():
                if not key.startswith("files[") or not hasattr(value, "file"):
                    continue
                data = value.file.read()
                total += len(data)
                if len(data) > limit:
                    raise _Refusal(413, 40005, "Request entity too large")
                files.append(FakeFile(key[6:-1], value.filename, data, value.content_type))
            if total > MAX_REQUEST_BYTES:
                raise _Refusal(413, 40005, "Request entity too large")
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else {}), []

    def _check_message(self, body: dict[str, Any]) -> None:
        problems = list(_message_problems(body))
        if problems:
            raise _Refusal(400, 50035, "Invalid Form Body: " + "; ".join(problems))

    def _interaction_for_token(self, token: str) -> FakeInteraction:
        for ix in self.interactions.values():
            if ix.token == token:
                if self.now() - ix.issued > TOKEN_TTL:
                    ix.refused.append(50027)
                    raise _Refusal(401, 50027, "Invalid Webhook Token")
                if not ix.acked:
                    raise _Refusal(404, 10015, "Unknown Webhook")
                return ix
        raise _Refusal(401, 50027, "Invalid Webhook Token")

    def _new_message(
        self,
        channel_id: str,
        body: dict[str, Any],
        files: list[FakeFile],
        *,
        via: str,
        ix: FakeInteraction | None,
    ) -> FakeMessage:
        msg = FakeMessage(
            id=self.snowflake(),
            channel_id=channel_id,
            author_id=self.bot_user["id"],
            interaction_id=ix.id if ix else None,
            via=via,
            flags=int(body.get("flags") or 0) & EPHEMERAL,
        )
        self._apply(msg, body, files)
        self.messages[msg.id] = msg
        return msg

    def _apply(self, msg: FakeMessage, body: dict[str, Any], files: list[FakeFile]) -> None:
        if "content" in body:
            msg.content = body["content"] or ""
        if "components" in body:
            msg.components = body["components"] or []
        if "embeds" in body:
            msg.embeds = body["embeds"] or []
        if files or any(k in body for k in ("content", "embeds", "components", "attachments")):
            msg.flags &= ~LOADING  # visibility (EPHEMERAL) is fixed when a message is created
        if "attachments" in body:
            by_index = {f.id: f for f in files}
            kept: list[FakeFile] = []
            for att in body["attachments"] or []:
                ref = str(att.get("id"))
                if ref in by_index:
                    new = by_index[ref]
                    kept.append(
                        FakeFile(
                            self.snowflake(), att.get("filename") or new.filename, new.data, new.content_type
                        )
                    )
                else:
                    kept.extend(f for f in msg.files if f.id == ref)
            msg.files = kept
        elif files:
            msg.files = msg.files + [
                FakeFile(self.snowflake(), f.filename, f.data, f.content_type) for f in files
            ]
        allowed = body.get("allowed_mentions")
        mentioned = re.findall(r"<@!?(\d+)>", msg.content)
        if allowed is not None and "users" not in allowed.get("parse", []):
            users = {str(u) for u in allowed.get("users", [])}  # ints from discord.py, strings from others
            mentioned = [u for u in mentioned if u in users]
        msg.mentions = mentioned
        msg.history.append(msg.content)

    async def _callback(self, request: web.Request) -> web.Response:
        ix = self.interactions.get(request.match_info["id"])
        if ix is None or ix.token != request.match_info["token"]:
            raise _Refusal(404, 10062, "Unknown interaction")
        body, files = await self._read_message_body(request, ix.attachment_size_limit)
        self._record(request, body, [f.filename for f in files])
        if self.now() - ix.issued > INITIAL_RESPONSE_DEADLINE:
            ix.refused.append(10062)
            raise _Refusal(404, 10062, "Unknown interaction")
        if ix.acked:
            ix.refused.append(40060)
            raise _Refusal(400, 40060, "Interaction has already been acknowledged.")
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        message: FakeMessage | None = None
        if kind in (DEFERRED_UPDATE, UPDATE) and ix.type not in (3, 5):
            raise _Refusal(400, 50035, "Invalid Form Body: update types need a component interaction")
        if kind == AUTOCOMPLETE:
            if ix.type != 4:
                raise _Refusal(400, 50035, "Invalid Form Body: autocomplete result outside autocomplete")
            ix.choices = list(data.get("choices", []))
            if len(ix.choices) > 25:
                raise _Refusal(400, 50035, "Invalid Form Body: more than 25 choices")
        elif kind == MODAL:
            if ix.type == 5:
                raise _Refusal(400, 50035, "Invalid Form Body: a modal cannot answer a modal")
            ix.modal = data
        elif kind in (MESSAGE, DEFERRED):
            self._check_message(data)
            message = self._new_message(ix.channel_id, data, files, via="callback", ix=ix)
            if kind == DEFERRED:
                message.flags |= LOADING
                message.history.clear()
            ix.original_id = message.id
        elif kind in (DEFERRED_UPDATE, UPDATE):
            ix.original_id = ix.message_id
            if kind == UPDATE and ix.message_id:
                self._check_message(data)
                message = self.messages[ix.message_id]
                self._apply(message, data, files)
        else:
            raise _Refusal(400, 50035, f"Invalid Form Body: unknown callback type {kind}")
        ix.ack_type = kind
        ix.ack_latency = time.monotonic() - ix.dispatched_mono
        answer: dict[str, Any] = {
            "interaction": {
                "id": ix.id,
                "type": ix.type,
                "response_message_loading": kind == DEFERRED,
                "response_message_ephemeral": bool(message and message.ephemeral),
                **({"response_message_id": ix.original_id} if ix.original_id else {}),
            },
            "resource": {"type": kind},
        }
        if message is not None and kind in (MESSAGE, UPDATE):
            answer["resource"]["message"] = message.payload(self.bot_user, self._cdn_base)
        return _json(answer)

    async def _followup(self, request: web.Request) -> web.Response:
        ix = self._interaction_for_token(request.match_info["token"])
        body, files = await self._read_message_body(request, ix.attachment_size_limit)
        self._record(request, body, [f.filename for f in files])
        self._check_message(body)
        original = self.original(ix)
        if original is not None and original.loading and not original.deleted:
            # Discord: the first followup after a "thinking" defer becomes that message, and keeps
            # the defer's visibility.
            self._apply(original, body, files)
            msg = original
        else:
            msg = self._new_message(ix.channel_id, body, files, via="webhook", ix=ix)
            ix.followups.append(msg.id)
        return _json(msg.payload(self.bot_user, self._cdn_base))

    async def _webhook_message(self, request: web.Request) -> web.StreamResponse:
        ix = self._interaction_for_token(request.match_info["token"])
        ref = request.match_info["message"]
        msg_id = ix.original_id if ref == "@original" else ref
        msg = self.messages.get(msg_id or "")
        if msg is None or msg.deleted or (msg_id != ix.original_id and msg_id not in ix.followups):
            self._record(request)
            raise _Refusal(404, 10008, "Unknown Message")
        if request.method == "GET":
            self._record(request)
            return _json(msg.payload(self.bot_user, self._cdn_base))
        if request.method == "DELETE":
            self._record(request)
            msg.deleted = True
            return web.Response(status=204)
        if request.method != "PATCH":
            raise _Refusal(405, 0, "405: Method Not Allowed")
        body, files = await self._read_message_body(request, ix.attachment_size_limit)
        self._record(request, body, [f.filename for f in files])
        self._check_message(body)
        self._apply(msg, body, files)
        return _json(msg.payload(self.bot_user, self._cdn_base))

    # --- REST: channel messages (bot token) ------------------------------------------------

    def _channel(self, request: web.Request) -> str:
        self._require_bot(request)
        ch = request.match_info["channel"]
        if ch not in (self.channel_id, self.modlog_channel_id, *self.dm_channels.values()):
            raise _Refusal(404, 10003, "Unknown Channel")
        return ch

    def _check_posting(self, ch: str) -> None:
        if ch in self.forbidden:
            self.refused.append((ch, 50013))
            raise _Refusal(403, 50013, "Missing Permissions")
        if any(self.dm_channels.get(u) == ch for u in self.dms_refused):
            self.refused.append((ch, 50007))
            raise _Refusal(403, 50007, "Cannot send messages to this user")

    async def _channel_post(self, request: web.Request) -> web.Response:
        ch = self._channel(request)
        body, files = await self._read_message_body(request, self.attachment_size_limit)
        self._record(request, body, [f.filename for f in files])
        self._check_posting(ch)
        self._check_message(body)
        if not (body.get("content") or files or body.get("embeds")):
            raise _Refusal(400, 50006, "Cannot send an empty message")
        msg = self._new_message(ch, body, files, via="channel", ix=None)
        return _json(msg.payload(self.bot_user, self._cdn_base))

    async def _channel_message(self, request: web.Request) -> web.StreamResponse:
        ch = self._channel(request)
        msg = self.messages.get(request.match_info["message"])
        if msg is None or msg.deleted or msg.channel_id != ch:
            self._record(request)
            raise _Refusal(404, 10008, "Unknown Message")
        if msg.via != "channel":
            # Interaction responses belong to the interaction's webhook: edit them with its token.
            self._record(request)
            raise _Refusal(403, 50005, "Cannot edit a message authored by another user")
        if request.method == "DELETE":
            self._record(request)
            msg.deleted = True
            return web.Response(status=204)
        if request.method == "GET":
            self._record(request)
            return _json(msg.payload(self.bot_user, self._cdn_base))
        if request.method != "PATCH":
            raise _Refusal(405, 0, "405: Method Not Allowed")
        body, files = await self._read_message_body(request, self.attachment_size_limit)
        self._record(request, body, [f.filename for f in files])
        self._check_posting(ch)
        self._check_message(body)
        self._apply(msg, body, files)
        return _json(msg.payload(self.bot_user, self._cdn_base))

    # --- CDN -------------------------------------------------------------------------------

    async def _cdn(self, request: web.Request) -> web.Response:
        item = self.cdn.get(request.match_info["name"])
        if item is None:
            return web.Response(status=404, text="not found")
        data, content_type = item
        return web.Response(body=data, content_type=content_type)

    @property
    def _cdn_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _attachment(self, request: web.Request) -> web.Response:
        """A file the bot posted, downloadable while its message lives (as on Discord's CDN)."""
        for f in self.uploads():
            if f.id == request.match_info["file_id"]:
                return web.Response(body=f.data, content_type=f.content_type or "application/octet-stream")
        return web.Response(status=404, text="not found")

    def uploads(self) -> Iterator[FakeFile]:
        """Every file on every live message."""
        for m in self.messages.values():
            if not m.deleted:
                yield from m.files


# --- validation (message.mdx limits; application-commands.mdx) ---------------------------------


def _message_problems(body: dict[str, Any]) -> Iterator[str]:
    content = body.get("content")
    if content is not None and len(content) > 2000:
        yield f"content: must be 2000 or fewer in length ({len(content)})"
    embeds = body.get("embeds") or []
    if len(embeds) > 10:
        yield "embeds: must be 10 or fewer"
    total = 0
    for e in embeds:
        for key, limit in (("title", 256), ("description", 4096)):
            n = len(e.get(key) or "")
            total += n
            if n > limit:
                yield f"embeds.{key}: must be {limit} or fewer in length"
        fields = e.get("fields") or []
        if len(fields) > 25:
            yield "embeds.fields: must be 25 or fewer"
        for f in fields:
            total += len(f.get("name", "")) + len(f.get("value", ""))
            if len(f.get("name", "")) > 256 or len(f.get("value", "")) > 1024:
                yield "embeds.fields: name/value too long"
        total += len((e.get("footer") or {}).get("text", "")) + len((e.get("author") or {}).get("name", ""))
    if total > 6000:
        yield "embeds: total length must be 6000 or fewer"
    rows = body.get("components") or []
    if len(rows) > 5:
        yield "components: must be 5 or fewer action rows"
    seen: set[str] = set()
    for row in rows:
        items = row.get("components", [])
        if row.get("type") == 1 and not 1 <= len(items) <= 5:
            yield "components: an action row holds 1 to 5 buttons"
        for c in items:
            cid = c.get("custom_id")
            if c.get("type") == 2 and c.get("style") != 5 and not cid:
                yield "components: a button needs a custom_id"
            if cid is not None:
                if len(cid) > 100:
                    yield "components.custom_id: must be 100 or fewer in length"
                if cid in seen:
                    yield f"components.custom_id: duplicate {cid!r}"
                seen.add(cid)
            if len(c.get("label") or "") > 80:
                yield "components.label: must be 80 or fewer in length"


def _command_problems(cmd: dict[str, Any], depth: int = 0) -> Iterator[str]:
    name = cmd.get("name", "")
    if depth == 0 and cmd.get("type", 1) in (2, 3):
        # User and message commands (inside a command, type 2 is a subcommand group): any 1-32 character name, no description, no options.
        if not 1 <= len(name) <= 32:
            yield f"context menu name {name!r} must be 1-32 characters"
        if cmd.get("description") or cmd.get("options"):
            yield f"{name}: context menu commands take no description or options"
        return
    if not _NAME.match(name) or name != name.lower():
        yield f"name {name!r} is not a valid command name"
    if cmd.get("type", 1) == 1 and not 1 <= len(cmd.get("description") or "") <= 100:
        yield f"{name}: description must be 1-100 characters"
    options = cmd.get("options") or []
    if len(options) > 25:
        yield f"{name}: at most 25 options"
    seen_optional = False
    for opt in options:
        if opt.get("type") in (1, 2):
            if depth >= 2:
                yield f"{name}: subcommands nest at most two levels"
            yield from _command_problems(opt, depth + 1)
            continue
        if not _NAME.match(opt.get("name", "")):
            yield f"{name}: bad option name {opt.get('name')!r}"
        if not 1 <= len(opt.get("description") or "") <= 100:
            yield f"{name}.{opt.get('name')}: description must be 1-100 characters"
        if opt.get("required"):
            if seen_optional:
                yield f"{name}: required options must come before optional ones"
        else:
            seen_optional = True
        if len(opt.get("choices") or []) > 25:
            yield f"{name}.{opt.get('name')}: at most 25 choices"
        if opt.get("choices") and opt.get("autocomplete"):
            yield f"{name}.{opt.get('name')}: choices and autocomplete exclude each other"
