"""Random and adversarial command text through the shared parser and the real engine's admission
(sandbox vendors): the only exceptions are the user-facing ones, a refusal takes no credit and
leaves no job, and an admitted job holds nothing a vendor should not get."""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.app import BotApp
from bot.catalog import SEED_MAX, Catalog
from bot.commands import (
    Actor,
    CreditsCommand,
    EditCommand,
    ImagineCommand,
    ModCommand,
    Model3DCommand,
)
from bot.errors import UserError
from bot.params import JobSpec, parse_edit, parse_imagine, parse_model3d
from bot.reply import JobPhase
from bot.textcommands import parse_text
from tests.support.core import RecordingReply, running_app
from tests.unit.test_params import CATALOG

MEMBER = Actor(platform="slack", tenant_id="TFUZZ", user_id="U1", display_name="fuzz")
MODERATOR = Actor(platform="slack", tenant_id="TMOD", user_id="U2", display_name="mod", is_moderator=True)

COMMANDS = ["/imagine", "/edit", "/model3d", "/quota", "/show", "/cancel", "/credits", "/help", "/bogus", ""]
# Things people (and attackers) type: every flag in its dashes, values at and past the limits,
# quotes, markup, paths and URLs (loopback only: the tests may not leave this machine).
TOKENS = [
    *(
        "--ar",
        "--aspect",
        "--seed",
        "--no",
        "--n",
        "--count",
        "--model",
        "--size",
        "—ar",
        "–n",
        "--chaos",
        "--",
    ),
    *("16:9", "1:1", "0:1", "1:0", "3:1", "4:1", "999:1", "1024x576", "10x10", "99999x99999", "1024×1024"),
    *("0", "-1", "4", "5", "2147483647", "2147483648", "99999999999999999999999", "1e9", "0x10", "٣"),
    *("pixazo", "runware", "apiinone", "alpha", "PIXAZO", "nope"),
    *('"', "'", "\\", '"unbalanced', "a'b", "``", "**", "|", ";", "&&", "$(id)"),
    *("<!channel>", "<!here>", "<@U0ADMIN>", "<#C1>", "<https://127.0.0.1/x|x>", "&amp;", "&lt;"),
    *("\x00", "\x1b[31m", "\x7f", "\x85", "\u202e", "\u2066", "\u200f", "\u061c", "\u2060", "\ufeff", "\n"),
    *("\ud800", "\udfff", "🦊", "👩\u200d🚀", "é", "狐"),
    *("/etc/passwd", "/etc/hostname.png", "~/x.png", "./a.png", "../../secret.png", "x.png", "file:///x.png"),
    *(
        "http://127.0.0.1:9/x.png",
        "https://127.0.0.1:9/a.png",
        "http://[::1]:9/x.png",
        "http://10.0.0.1/x.png",
    ),
    *("grant", "take", "set", "freeze", "ban", "allowance", "cost", "budget", "blocklist", "add", "history"),
    *("top", "spend", "image", "edit", "model3d", "off", "@ann", "<@U1|ann>", "<@U1>", "50", "-50", "1,000"),
    *("help", "a red fox", "x" * 600, "fox " * 700),
]
ANY_CHAR = st.characters(codec=None, categories=None)  # surrogates and controls included
words = st.one_of(st.sampled_from(TOKENS), st.text(ANY_CHAR, max_size=12))
lines = st.tuples(st.sampled_from(COMMANDS), st.lists(words, max_size=14)).map(
    lambda parts: " ".join([parts[0], *parts[1]])
)

FORBIDDEN = {"Cc", "Cs"}  # controls and surrogates
BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c\u2060")


def _clean(text: str | None) -> bool:
    return not text or not any(unicodedata.category(c) in FORBIDDEN or c in BIDI for c in text)


def _check_spec(spec: JobSpec, catalog: Catalog) -> None:
    limits = catalog.limits(spec.kind)
    assert _clean(spec.prompt) and _clean(spec.negative) and _clean(spec.model), spec
    assert len(spec.prompt) <= limits.max_prompt
    assert spec.negative is None or len(spec.negative) <= limits.max_prompt
    assert 1 <= spec.count <= limits.max_count
    assert spec.seed is None or 0 <= spec.seed <= SEED_MAX
    assert 8 <= spec.width <= limits.max_side and 8 <= spec.height <= limits.max_side


@settings(max_examples=300, deadline=None)
@given(lines)
def test_the_parser_answers_every_line_with_a_command_or_a_user_error(line: str) -> None:
    try:
        parsed = parse_text(line)
        match parsed.command:
            case ImagineCommand():
                _check_spec(parse_imagine(parsed.command, CATALOG), CATALOG)
            case EditCommand():
                _check_spec(parse_edit(parsed.command, CATALOG), CATALOG)
            case Model3DCommand():
                _check_spec(parse_model3d(parsed.command, CATALOG), CATALOG)
    except UserError as err:
        assert str(err) and _clean(str(err).replace("\n", " "))


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[BotApp]:
    # Production's media rule: no private address is fetched for a user.
    async with running_app(tmp_path, media_allow_private=False) as running:
        yield running


async def _books(app: BotApp) -> tuple[int, int, int]:
    account = await app.ledger.account(MEMBER.tenant, MEMBER.user_id)
    jobs = await app.db.fetchall("SELECT id FROM jobs")
    return account.balance, account.held, len(jobs)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=lines)
async def test_admission_refuses_with_user_errors_only_and_takes_nothing_when_it_does(
    app: BotApp, line: str
) -> None:
    engine = app.engine
    try:
        parsed = parse_text(line)
    except UserError:
        event("refused by the parser")
        return
    before = await _books(app)
    try:
        match parsed.command:
            case ImagineCommand() | EditCommand() | Model3DCommand() as command:
                ticket = await engine.submit(MEMBER, command, RecordingReply())
                job = await engine.store.get(ticket.job_id)
                assert job is not None
                _check_spec(job.spec, engine.catalog)
                event(f"admitted: {job.spec.kind.value}")
                with contextlib.suppress(UserError):  # it may be done already
                    await engine.cancel(MEMBER, ticket.job_id)
                await engine.drain()
                ended = await engine.store.get(ticket.job_id)
                if ended is not None and ended.state is JobPhase.CANCELLED:
                    after = await _books(app)
                    assert after[:2] == before[:2], "a cancelled job gave its credits back"
            case ModCommand() as command:
                await engine.moderate(MODERATOR, command)
            case CreditsCommand():
                await engine.credits(MEMBER)
            case None if parsed.name in ("show", "cancel"):
                await getattr(engine, parsed.name)(MEMBER, parsed.arg)
    except UserError as err:
        event(f"refused at admission: {type(err).__name__}")
        assert str(err)
        assert await _books(app) == before, "a refusal took credits or left a job behind"
