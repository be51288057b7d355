"""Who moderates a Slack workspace, asked of the loopback Slack through the real slack_sdk client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_app import ModeratorDirectory
from tests.fakes.slack_fake import SlackFake


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake(admins={"U0ADMIN"}, owners={"U0OWNER"}, usergroups={"S0MODS": ["U0GROUP"]}) as f:
        yield f


def _directory(fake: SlackFake, clock: _Clock, **kwargs: object) -> ModeratorDirectory:
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_base)
    return ModeratorDirectory(client, clock=clock, ttl=300.0, **kwargs)  # type: ignore[arg-type]


async def test_admins_and_owners_moderate_and_members_do_not(fake: SlackFake) -> None:
    directory = _directory(fake, _Clock())
    assert await directory.is_moderator("U0ADMIN")
    assert await directory.is_moderator("U0OWNER")
    assert not await directory.is_moderator("U0MEMBER")


async def test_configured_users_moderate_without_asking_slack(fake: SlackFake) -> None:
    directory = _directory(fake, _Clock(), users=["U0LISTED"])
    assert await directory.is_moderator("U0LISTED")
    assert fake.calls == []


async def test_members_of_the_moderator_group_moderate(fake: SlackFake) -> None:
    directory = _directory(fake, _Clock(), group="S0MODS")
    assert await directory.is_moderator("U0GROUP")
    assert not await directory.is_moderator("U0MEMBER")


async def test_answers_are_cached_for_a_few_minutes(fake: SlackFake) -> None:
    clock = _Clock()
    directory = _directory(fake, clock)
    assert not await directory.is_moderator("U0MEMBER")
    fake.admins.add("U0MEMBER")
    assert not await directory.is_moderator("U0MEMBER")  # still cached
    assert len(fake.calls_to("users.info")) == 1
    clock.now += 301
    assert await directory.is_moderator("U0MEMBER")
    assert len(fake.calls_to("users.info")) == 2


async def test_a_failed_lookup_is_not_a_moderator(fake: SlackFake) -> None:
    directory = _directory(fake, _Clock(), group="S0GONE")
    assert not await directory.is_moderator("B0BOT")  # users.info: user_not_found, group unknown
