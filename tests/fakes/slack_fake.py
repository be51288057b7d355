"""A loopback Slack for end-to-end tests: the Web API methods the bot calls, the file upload
URLs, `response_url` sinks, private file downloads and a Socket Mode websocket.

`chat.delete` and `files.delete` remove a message or a file (and its share) for everyone.
It enforces the platform rules a bot can get wrong (bearer token on every call, `files` in the
upload completion, 5 uses of a `response_url` within 30 minutes, `trigger_id` valid for 3 s,
private files only with the bot token, `not_in_channel`), injects `429 ratelimited` on demand and
records everything so tests assert on what Slack would have shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

__all__ = ["ApiCall", "PostedMessage", "SlackFake", "Upload"]

_log = logging.getLogger(__name__)

LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"
RESPONSE_URL_USES = 5
RESPONSE_URL_TTL = 30 * 60.0
TRIGGER_TTL = 3.0


@dataclass(slots=True)
class ApiCall:
    """One Web API request as the fake understood it (query, form and JSON merged)."""

    method: str
    params: dict[str, Any]
    token: str | None
    status: int = 200


@dataclass(slots=True)
class PostedMessage:
    """A message the bot posted; `updates` keeps every earlier version (chat.update)."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None
    user: str | None = None  # set for ephemeral messages
    updates: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False  # chat.delete: gone for everyone

    def buttons(self) -> list[dict[str, Any]]:
        """Every button element, with its `block_id` added."""
        out = []
        for block in self.blocks:
            if block.get("type") == "actions":
                for element in block.get("elements", []):
                    if element.get("type") == "button":
                        out.append({**element, "block_id": block.get("block_id", "")})
        return out

    def button(self, action_prefix: str) -> dict[str, Any]:
        """The first button whose action id starts with `action_prefix` (e.g. `ib:reroll:`)."""
        for b in self.buttons():
            if b["action_id"].startswith(action_prefix):
                return b
        raise LookupError(f"no button {action_prefix!r} on message {self.ts}: {self.buttons()}")


@dataclass(slots=True)
class Upload:
    """A file uploaded through files_upload_v2; `shared` once completeUploadExternal ran."""

    file_id: str
    filename: str
    length: int
    data: bytes = field(default=b"", repr=False)
    title: str | None = None
    channel: str | None = None
    thread_ts: str | None = None
    initial_comment: str | None = None
    shared: bool = False
    deleted: bool = False  # files.delete: gone, with its share in the channel


class SlackFake:
    """The fake Slack, an async context manager listening on 127.0.0.1:0.

    `api_base` is what the bot's SLACK_API_BASE should be. `admins` are workspace admins in
    `users.info`; `usergroups` maps a group id to its members; `closed_channels` answer
    `not_in_channel`.
    """

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        team_id: str = "T0001",
        bot_user: str = "U0BOT",
        admins: set[str] | None = None,
        owners: set[str] | None = None,
        usergroups: dict[str, list[str]] | None = None,
        closed_channels: set[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user = bot_user
        self.admins = set(admins or ())
        self.owners = set(owners or ())
        self.usergroups = dict(usergroups or {})
        self.closed_channels = set(closed_channels or ())
        self.clock = clock
        self.port = 0
        self.calls: list[ApiCall] = []
        self.messages: list[PostedMessage] = []
        self.ephemerals: list[PostedMessage] = []
        self.views: list[dict[str, Any]] = []
        self.uploads: dict[str, Upload] = {}
        self.responses: dict[str, list[dict[str, Any]]] = {}
        self.rejected_responses: dict[str, int] = {}
        self.private_files: dict[str, tuple[bytes, str]] = {}
        self.file_downloads: list[tuple[str, bool]] = []  # (path, authorised)
        self.socket_acks: dict[str, dict[str, Any]] = {}
        self.socket_connections = 0
        self.socket_refused = False
        self._response_issued: dict[str, float] = {}
        self._triggers: dict[str, float] = {}
        self._rate_limits: dict[str, list[float]] = {}
        self._upload_failures: list[tuple[int, str]] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self._hello = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The Web API base URL to give slack_sdk."""
        return f"{self.base_url}/api/"

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/response/{rid}", self._response)
        app.router.add_get("/files-pri/{path:.*}", self._private_file)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- test controls ---------------------------------------------------------------------

    def rate_limit(self, method: str, count: int = 1, retry_after: float = 0) -> None:
        """Answer the next `count` calls of `method` with 429 ratelimited + Retry-After."""
        self._rate_limits.setdefault(method, []).extend([retry_after] * count)

    def fail_uploads(self, body: str, count: int = 1, status: int = 500) -> None:
        """Answer the next `count` posts to an upload URL with `status` and `body`."""
        self._upload_failures.extend([(status, body)] * count)

    def new_response_url(self) -> str:
        """A fresh response_url (5 uses within 30 minutes from now)."""
        rid = f"r{next(self._ids)}"
        self.responses[rid] = []
        self._response_issued[rid] = self.clock()
        return f"{self.base_url}/response/{rid}"

    def new_trigger_id(self) -> str:
        """A trigger id valid for views.open during the next 3 seconds."""
        trigger = f"{next(self._ids)}.{int(self.clock() * 1000)}.t{next(self._ids):04x}"
        self._triggers[trigger] = self.clock()
        return trigger

    def add_private_file(
        self, name: str, data: bytes, mimetype: str = "image/png", file_id: str | None = None
    ) -> dict[str, Any]:
        """Host a private file and return its Slack file object (as in message `files[]`)."""
        file_id = file_id or f"F{next(self._ids):08d}"
        path = f"{self.team_id}-{file_id}/{name}"
        self.private_files[path] = (data, mimetype)
        url = f"{self.base_url}/files-pri/{path}"
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(data),
            "url_private": url,
            "url_private_download": f"{url}?download=1",
            "is_external": False,
        }

    def responses_to(self, response_url: str) -> list[dict[str, Any]]:
        """Everything posted to one response_url."""
        return self.responses[response_url.rsplit("/", 1)[-1]]

    def calls_to(self, method: str) -> list[ApiCall]:
        """Recorded calls of one Web API method (429 answers included)."""
        return [c for c in self.calls if c.method == method]

    def message(self, channel: str, ts: str) -> PostedMessage:
        """A live posted message by address."""
        for m in self.messages:
            if m.channel == channel and m.ts == ts and not m.deleted:
                return m
        raise LookupError(f"no message {channel}/{ts}")

    def shared_uploads(self, channel: str | None = None) -> list[Upload]:
        """Live uploads completed into a channel, oldest first."""
        return [
            u
            for u in self.uploads.values()
            if u.shared and not u.deleted and (channel is None or u.channel == channel)
        ]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
        """Wait until `predicate()` is truthy (re-checked whenever the fake records something)."""

        async def _wait() -> Any:
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value

        return await asyncio.wait_for(_wait(), timeout)

    async def _touch(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- Socket Mode -----------------------------------------------------------------------

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Until a Socket Mode client got its hello."""
        await asyncio.wait_for(self._hello.wait(), timeout)

    async def send_envelope(
        self, kind: str, payload: dict[str, Any], *, retry_attempt: int | None = None
    ) -> str:
        """Push one envelope (`slash_commands`, `interactive`, `events_api`) to the client."""
        if not self._sockets:
            raise RuntimeError("no Socket Mode client connected")
        envelope_id = f"env-{next(self._ids)}"
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        if retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = "timeout"
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The client's acknowledgement of an envelope."""
        return await self.wait_for(lambda: self.socket_acks.get(envelope_id), timeout)  # type: ignore[no-any-return]

    async def drop_sockets(self, *, refuse: bool = False) -> None:
        """Close every Socket Mode connection; with `refuse`, new ones get HTTP 503 until
        `socket_refused` is cleared."""
        self.socket_refused = refuse
        for ws in list(self._sockets):
            await ws.close()

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if self.socket_refused:
            return web.Response(status=503, text="socket unavailable")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        if request.query.get("ticket") != "fake-ticket":
            await ws.close(code=4001, message=b"invalid ticket")
            return ws
        self._sockets.append(ws)
        self.socket_connections += 1
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": "A0001"},
                }
            )
        )
        self._hello.set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if "envelope_id" in data:
                        self.socket_acks[data["envelope_id"]] = data
                        await self._touch()
        finally:
            self._sockets.remove(ws)
        return ws

    # --- Web API ---------------------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            raw = await request.read()
            if request.content_type == "application/json":
                params.update(json.loads(raw or b"{}"))
            elif raw:
                params.update(parse_qsl(raw.decode(), keep_blank_values=True))
        for key in ("blocks", "view", "files"):
            if isinstance(params.get(key), str) and params[key].startswith(("[", "{")):
                params[key] = json.loads(params[key])
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else params.get("token")
        call = ApiCall(method=method, params=params, token=token)
        self.calls.append(call)
        pending = self._rate_limits.get(method)
        if pending:
            retry_after = pending.pop(0)
            call.status = 429
            await self._touch()
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(int(retry_after))},
            )
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if not token:
            body: dict[str, Any] = {"ok": False, "error": "not_authed"}
        elif token != expected:
            body = {"ok": False, "error": "invalid_auth"}
        else:
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            body = handler(params) if handler else {"ok": False, "error": "unknown_method"}
        await self._touch()
        return web.json_response(body)

    def _ts(self) -> str:
        return f"{int(self.clock())}.{next(self._ids):06d}"

    def _m_auth_test(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake Team",
            "user": "imagine",
            "team_id": self.team_id,
            "user_id": self.bot_user,
            "bot_id": "B0001",
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket=fake-ticket"}

    def _channel_error(self, channel: str | None) -> dict[str, Any] | None:
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.closed_channels:
            return {"ok": False, "error": "not_in_channel"}
        return None

    @staticmethod
    def _text_error(p: dict[str, Any]) -> dict[str, Any] | None:
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if len(str(p.get("text") or "")) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        for block in p.get("blocks") or []:
            text = (block.get("text") or {}).get("text", "")
            if len(text) > 3000:
                return {"ok": False, "error": "invalid_blocks"}
            if block.get("type") == "actions" and len(block.get("elements", [])) > 25:
                return {"ok": False, "error": "invalid_blocks"}
        return None

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel")
        if err := self._channel_error(channel) or self._text_error(p):
            return err
        assert channel is not None
        msg = PostedMessage(
            channel=channel,
            ts=self._ts(),
            text=p.get("text") or "",
            blocks=list(p.get("blocks") or []),
            thread_ts=p.get("thread_ts") or None,
        )
        self.messages.append(msg)
        return {"ok": True, "channel": channel, "ts": msg.ts, "message": {"text": msg.text, "ts": msg.ts}}

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        if err := self._text_error(p):
            return err
        try:
            msg = self.message(p.get("channel", ""), p.get("ts", ""))
        except LookupError:
            return {"ok": False, "error": "message_not_found"}
        msg.updates.append({"text": msg.text, "blocks": msg.blocks})
        msg.text = p.get("text") or ""
        if "blocks" in p:
            msg.blocks = list(p.get("blocks") or [])
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": msg.text}

    def _m_chat_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            msg = self.message(p.get("channel", ""), p.get("ts", ""))
        except LookupError:
            return {"ok": False, "error": "message_not_found"}
        msg.deleted = True
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel")
        if err := self._channel_error(channel) or self._text_error(p):
            return err
        if not p.get("user"):
            return {"ok": False, "error": "user_not_found"}
        assert channel is not None
        msg = PostedMessage(
            channel=channel,
            ts=self._ts(),
            text=p.get("text") or "",
            blocks=list(p.get("blocks") or []),
            thread_ts=p.get("thread_ts") or None,
            user=p["user"],
        )
        self.ephemerals.append(msg)
        return {"ok": True, "message_ts": msg.ts}

    def _m_views_open(self, p: dict[str, Any]) -> dict[str, Any]:
        trigger = p.get("trigger_id")
        issued = self._triggers.get(trigger or "")
        if issued is None:
            return {"ok": False, "error": "invalid_trigger_id"}
        if self.clock() - issued > TRIGGER_TTL:
            return {"ok": False, "error": "expired_trigger_id"}
        view = p.get("view")
        if not isinstance(view, dict) or view.get("type") != "modal":
            return {"ok": False, "error": "invalid_arguments"}
        if len(view.get("private_metadata") or "") > 3000 or len(view["title"]["text"]) > 24:
            return {"ok": False, "error": "invalid_arguments"}
        del self._triggers[trigger or ""]  # one view per trigger
        opened = {**view, "id": f"V{next(self._ids):08d}", "team_id": self.team_id, "hash": "h1"}
        self.views.append(opened)
        return {"ok": True, "view": opened}

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = p.get("user") or ""
        if not user.startswith(("U", "W")):
            return {"ok": False, "error": "user_not_found"}
        owner = user in self.owners
        return {
            "ok": True,
            "user": {
                "id": user,
                "team_id": self.team_id,
                "name": user.lower(),
                "real_name": f"User {user}",
                "is_admin": user in self.admins or owner,
                "is_owner": owner,
                "is_primary_owner": owner,
                "is_bot": False,
                "profile": {"display_name": user.lower()},
            },
        }

    def _m_usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        group = p.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _m_conversations_open(self, p: dict[str, Any]) -> dict[str, Any]:
        users = str(p.get("users") or "")
        if not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": "D" + users.split(",")[0].lstrip("UW")}}

    def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        filename, length = p.get("filename"), p.get("length")
        if not filename or not length:
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ids):08d}"
        self.uploads[file_id] = Upload(file_id=file_id, filename=filename, length=int(length))
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel_id") or p.get("channels")
        if channel and (err := self._channel_error(channel)):
            return err
        out = []
        for item in p.get("files") or []:
            upload = self.uploads.get(item.get("id", ""))
            if upload is None or len(upload.data) != upload.length:
                return {"ok": False, "error": "file_not_found"}
            upload.title = item.get("title")
            upload.channel = channel
            upload.thread_ts = p.get("thread_ts") or None
            upload.initial_comment = p.get("initial_comment") or None
            upload.shared = bool(channel)
            out.append({"id": upload.file_id, "name": upload.filename, "title": upload.title})
        if not out:
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "files": out}

    def _m_files_delete(self, p: dict[str, Any]) -> dict[str, Any]:
        upload = self.uploads.get(str(p.get("file") or ""))
        if upload is None or upload.deleted:
            return {"ok": False, "error": "file_not_found"}
        upload.deleted = True
        return {"ok": True}

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404, text="not found")
        if self._upload_failures:
            status, body = self._upload_failures.pop(0)
            await self._touch()
            return web.Response(status=status, text=body)
        upload.data = await request.read()
        await self._touch()
        return web.Response(text=f"OK - {len(upload.data)}")

    # --- response_url and private files ----------------------------------------------------

    async def _response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if rid not in self.responses:
            return web.Response(status=404, text="invalid_url")
        if self.clock() - self._response_issued[rid] > RESPONSE_URL_TTL:
            self.rejected_responses[rid] = self.rejected_responses.get(rid, 0) + 1
            return web.Response(status=404, text="expired_url")
        if len(self.responses[rid]) >= RESPONSE_URL_USES:
            self.rejected_responses[rid] = self.rejected_responses.get(rid, 0) + 1
            return web.Response(status=404, text="used_url")
        self.responses[rid].append(await request.json())
        await self._touch()
        return web.Response(text="ok")

    async def _private_file(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        authorised = request.headers.get("Authorization") == f"Bearer {self.bot_token}"
        self.file_downloads.append((path, authorised))
        stored = self.private_files.get(path)
        # Slack answers an unauthorised download with its sign-in page, not with a 401.
        if not authorised or stored is None:
            return web.Response(body=LOGIN_PAGE, content_type="text/html")
        data, mimetype = stored
        return web.Response(body=data, content_type=mimetype)
