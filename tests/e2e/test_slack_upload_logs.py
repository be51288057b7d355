"""A failed Slack file upload is logged precisely (job, channel, what failed) but without the
presigned upload URL's credentials that slack_sdk copies into its exception text."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.slack_harness import CHANNEL, SlackBot, slack_bot
from tests.fakes.slack_fake import SlackFake

pytestmark = pytest.mark.slow

# What an S3-style presigned upload URL looks like: the path is a one-time ticket and the query
# carries the signature; neither may reach the operator's log.
_TICKET = "CwABAAAAXgoAAZnBg8sKAAIAAAAAAAAAAAsAAwAAAAxhYmMxMjM"
_SIGNATURE = "d3adb33fc0ffee0123456789abcdef"
_TOKEN = "xoxe-1-My0xLTEyMzQ1Njc4OTAtc2VjcmV0"
_PRESIGNED = (
    f"https://files.slack.com/upload/v1/{_TICKET}"
    f"?X-Amz-Credential=AKIAFAKE%2F20261202&X-Amz-Signature={_SIGNATURE}&token={_TOKEN}"
)


@pytest.fixture
async def fake() -> AsyncIterator[SlackFake]:
    async with SlackFake() as f:
        yield f


@pytest.fixture
async def bot(tmp_path: Path, fake: SlackFake) -> AsyncIterator[SlackBot]:
    async with slack_bot(tmp_path, fake) as b:
        yield b


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured line as an operator would read it, tracebacks included."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return "\n".join(handler.format(r) for r in caplog.records)


async def test_a_failed_upload_logs_job_and_channel_but_no_presigned_url(
    bot: SlackBot, fake: SlackFake, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_uploads(f"<Error>SignatureDoesNotMatch for {_PRESIGNED}</Error>", status=403)

    with caplog.at_level(logging.INFO):
        await bot.slash("/imagine", "a fox behind a firewall")
        await bot.card()  # the result still arrives (as links) after the failed upload
    [job] = await bot.job_rows()

    logged = _logged(caplog)
    failures = [r for r in caplog.records if r.name == "adapters.slack_reply" and "upload" in r.getMessage()]
    assert failures, logged
    line = failures[0].getMessage()
    assert f"job={job['id']}" in line and f"channel={CHANNEL}" in line, line
    assert "403" in line and "files.slack.com/upload/v1/" in line, line  # still says what failed
    assert "?" not in line, line  # no query string of any URL
    for secret in (_TICKET, _SIGNATURE, _TOKEN, "X-Amz-"):
        assert secret not in logged, (secret, logged)
    assert fake.shared_uploads(CHANNEL) == []
