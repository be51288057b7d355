"""Runs the real bot (BotApp: engine, ledger, sandbox vendors, web server, Slack adapter) against
the loopback Slack fake, and plays Slack's part: signed HTTP deliveries to `/slack/events`, or
Socket Mode envelopes. Payloads have the fields Slack sends (docs/platforms.md §3)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

from bot.app import BotApp
from providers.sandbox.server import Sandbox
from tests.fakes.slack_fake import PostedMessage, SlackFake
from tests.support.core import core_settings, fast_sandbox

__all__ = [
    "ADMIN",
    "CHANNEL",
    "MEMBER",
    "OTHER",
    "SECRET",
    "TEAM",
    "Delivery",
    "SlackBot",
    "slack_bot",
]

SECRET = "test-signing-secret"
TEAM = "T0001"
CHANNEL = "C0001"
MEMBER = "U0MEMBER"
OTHER = "U0OTHER"
ADMIN = "U0ADMIN"

Mode = Literal["http", "socket"]


@dataclass(slots=True)
class Delivery:
    """What Slack got back for one delivery: HTTP status (200 for a Socket Mode ack), the ack
    body, how long the ack took, and the response_url / trigger id that went with it."""

    status: int
    body: Any
    elapsed: float
    response_url: str | None = None
    trigger_id: str | None = None


class SlackBot:
    """The running bot plus Slack's side of the conversation."""

    def __init__(self, app: BotApp, fake: SlackFake, mode: Mode, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.fake = fake
        self.mode = mode
        self._session = session
        self._n = 0

    @property
    def events_url(self) -> str:
        """The bot's Slack request URL."""
        return f"{self.app.web.base_url}/slack/events"

    # --- transport -------------------------------------------------------------------------

    async def post_signed(
        self,
        body: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        retry_num: int | None = None,
    ) -> tuple[int, str, float]:
        """POST a form body signed as Slack signs it (v0 HMAC of `v0:{ts}:{body}`)."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature
            or SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        started = time.monotonic()
        async with self._session.post(self.events_url, data=body.encode(), headers=headers) as resp:
            text = await resp.text()
            return resp.status, text, time.monotonic() - started

    async def _deliver(
        self, kind: str, payload: dict[str, Any], form: str, **http: Any
    ) -> tuple[int, Any, float]:
        if self.mode == "http":
            return await self.post_signed(form, **http)
        started = time.monotonic()
        envelope = await self.fake.send_envelope(kind, payload, retry_attempt=http.get("retry_num"))
        ack = await self.fake.wait_ack(envelope)
        return 200, ack.get("payload"), time.monotonic() - started

    def _next(self) -> int:
        self._n += 1
        return self._n

    # --- what users do ---------------------------------------------------------------------

    async def slash(
        self,
        command: str,
        text: str = "",
        *,
        user: str = MEMBER,
        channel: str = CHANNEL,
        trigger_id: str | None = None,
        response_url: str | None = None,
        **http: Any,
    ) -> Delivery:
        """A slash command as Slack delivers it (form fields; `&`, `<`, `>` escaped in text)."""
        trigger_id = trigger_id or self.fake.new_trigger_id()
        response_url = response_url or self.fake.new_response_url()
        fields = {
            "token": "legacy-verification-token",
            "team_id": TEAM,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "directmessage" if channel.startswith("D") else "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text.replace("&", "&amp;"),
            "api_app_id": "A0001",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
        status, body, elapsed = await self._deliver("slash_commands", fields, urlencode(fields), **http)
        return Delivery(status, body, elapsed, response_url, trigger_id)

    async def press(
        self, message: PostedMessage, action_prefix: str, *, user: str = MEMBER, **http: Any
    ) -> Delivery:
        """Press a button the bot posted (found on `message` by its action id prefix)."""
        button = message.button(action_prefix)
        trigger_id = self.fake.new_trigger_id()
        response_url = self.fake.new_response_url()
        payload = {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": "A0001",
            "token": "legacy-verification-token",
            "trigger_id": trigger_id,
            "container": {
                "type": "message",
                "message_ts": message.ts,
                "channel_id": message.channel,
                "is_ephemeral": False,
                **({"thread_ts": message.thread_ts} if message.thread_ts else {}),
            },
            "channel": {"id": message.channel, "name": "general"},
            "message": {
                "type": "message",
                "ts": message.ts,
                "text": message.text,
                "user": self.fake.bot_user,
                "bot_id": "B0001",
                "blocks": message.blocks,
                **({"thread_ts": message.thread_ts} if message.thread_ts else {}),
            },
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [
                {
                    "type": "button",
                    "action_id": button["action_id"],
                    "block_id": button["block_id"],
                    "value": button.get("value"),
                    "text": button["text"],
                    "action_ts": f"{int(time.time())}.{self._next():06d}",
                }
            ],
        }
        status, body, elapsed = await self._deliver(
            "interactive", payload, urlencode({"payload": json.dumps(payload)}), **http
        )
        return Delivery(status, body, elapsed, response_url, trigger_id)

    async def message_shortcut(
        self,
        message: dict[str, Any],
        *,
        callback_id: str = "edit_image",
        user: str = MEMBER,
        channel: str = CHANNEL,
    ) -> Delivery:
        """Run a message shortcut on `message` (a Slack message object, `files[]` included)."""
        trigger_id = self.fake.new_trigger_id()
        response_url = self.fake.new_response_url()
        payload = {
            "type": "message_action",
            "callback_id": callback_id,
            "trigger_id": trigger_id,
            "team": {"id": TEAM, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "channel": {"id": channel, "name": "general"},
            "message": message,
            "message_ts": message["ts"],
            "action_ts": f"{int(time.time())}.{self._next():06d}",
            "response_url": response_url,
            "token": "legacy-verification-token",
            "api_app_id": "A0001",
        }
        status, body, elapsed = await self._deliver(
            "interactive", payload, urlencode({"payload": json.dumps(payload)})
        )
        return Delivery(status, body, elapsed, response_url, trigger_id)

    async def submit_view(
        self, view: dict[str, Any], values: dict[str, str], *, user: str = MEMBER
    ) -> Delivery:
        """Submit a modal the bot opened, with `values` typed into its inputs (block id → text)."""
        state = {
            block["block_id"]: {
                block["element"]["action_id"]: {
                    "type": block["element"]["type"],
                    "value": values.get(block["block_id"]),
                }
            }
            for block in view.get("blocks", [])
            if block.get("type") == "input"
        }
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": "A0001",
            "token": "legacy-verification-token",
            "trigger_id": self.fake.new_trigger_id(),
            "view": {**view, "state": {"values": state}},
            "response_urls": [],
        }
        status, body, elapsed = await self._deliver(
            "interactive", payload, urlencode({"payload": json.dumps(payload)})
        )
        return Delivery(status, body, elapsed)

    # --- what the bot did ------------------------------------------------------------------

    async def job_rows(self) -> list[dict[str, Any]]:
        """Every job in the database (id, state, request key)."""
        rows = await self.app.db.fetchall(
            "SELECT id, state, request_key, parent_id FROM jobs ORDER BY created"
        )
        return [dict(r) for r in rows]

    async def card(
        self, channel: str = CHANNEL, *, with_button: str = "ib:reroll:", timeout: float = 15.0
    ) -> PostedMessage:
        """The latest bot message in `channel` that carries a given button (a result card)."""

        def find() -> PostedMessage | None:
            for m in reversed(self.fake.messages):
                if (
                    m.channel == channel
                    and not m.deleted
                    and any(b["action_id"].startswith(with_button) for b in m.buttons())
                ):
                    return m
            return None

        return await self.fake.wait_for(find, timeout)  # type: ignore[no-any-return]


def settings_for(tmp_path: Path, fake: SlackFake, mode: Mode, **overrides: Any) -> Any:
    """Core test settings plus Slack pointed at the fake."""
    slack: dict[str, Any] = {"slack_bot_token": fake.bot_token, "slack_api_base": fake.api_base}
    if mode == "http":
        slack["slack_signing_secret"] = SECRET
    else:
        slack["slack_app_token"] = fake.app_token
    return core_settings(tmp_path, **{**slack, **overrides})


@asynccontextmanager
async def slack_bot(
    tmp_path: Path,
    fake: SlackFake,
    *,
    mode: Mode = "http",
    sandbox: Sandbox | None = None,
    **overrides: Any,
) -> AsyncIterator[SlackBot]:
    """BotApp with only the Slack adapter, on the sandbox vendors and the fake Slack.

    A given `sandbox` is borrowed (left running on exit) so a test can restart the bot.
    """
    app = BotApp(
        settings_for(tmp_path, fake, mode, **overrides),
        platforms=["slack"],
        sandbox=nullcontext(sandbox) if sandbox is not None else fast_sandbox(),
    )
    async with aiohttp.ClientSession() as session, app:
        if mode == "socket":
            await fake.wait_connected()
        yield SlackBot(app, fake, mode, session)
