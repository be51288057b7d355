"""Who moderates a Slack workspace (the core re-checks every moderator operation)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_reply import slack_error

__all__ = ["ModeratorDirectory"]

_log = logging.getLogger(__name__)


class ModeratorDirectory:
    """Who moderates a workspace: configured user ids, members of a configured user group, and
    workspace admins/owners (from `users.info`). Answers are cached for `ttl` seconds; lookup
    failures count as "not a moderator" (the core still checks every moderator operation)."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        users: Iterable[str] = (),
        group: str | None = None,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._users = frozenset(users)
        self._group = group
        self._ttl = ttl
        self._clock = clock
        self._admins: dict[str, tuple[float, bool]] = {}
        self._members: tuple[float, frozenset[str]] | None = None

    async def is_moderator(self, user_id: str) -> bool:
        """Whether `user_id` moderates this workspace."""
        if user_id in self._users:
            return True
        if self._group and user_id in await self._group_members():
            return True
        return await self._is_admin(user_id)

    async def _is_admin(self, user_id: str) -> bool:
        now = self._clock()
        cached = self._admins.get(user_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        try:
            user = (await self._client.users_info(user=user_id))["user"]
        except SlackApiError as exc:
            _log.warning("users.info failed user=%s: %s", user_id, slack_error(exc))
            return False
        admin = bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
        self._admins[user_id] = (now, admin)
        return admin

    async def _group_members(self) -> frozenset[str]:
        now = self._clock()
        if self._members is not None and now - self._members[0] < self._ttl:
            return self._members[1]
        try:
            users = (await self._client.usergroups_users_list(usergroup=self._group))["users"]
        except SlackApiError as exc:
            _log.warning("usergroups.users.list failed group=%s: %s", self._group, slack_error(exc))
            return frozenset()
        self._members = (now, frozenset(users))
        return self._members[1]
