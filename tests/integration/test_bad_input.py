"""Bad input gets one clear message and costs nothing: no credit taken, no job left behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.app import BotApp
from bot.commands import EditCommand, ImageRef, ImagineCommand, ModCommand, ModOp
from bot.errors import (
    BannedError,
    BlockedPromptError,
    InsufficientCreditsError,
    InvalidInputError,
    NotModeratorError,
    UserError,
)
from tests.support.core import MEMBER, MODERATOR, RecordingReply, running_app


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[BotApp]:
    async with running_app(tmp_path) as running:
        yield running


@pytest.fixture
async def files_server() -> AsyncIterator[str]:
    """Serves a text file and a 'huge' image on loopback."""

    async def text(_r: web.Request) -> web.Response:
        return web.Response(text="not an image", content_type="text/plain")

    async def big(_r: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024), content_type="image/png")

    application = web.Application()
    application.router.add_get("/note.txt", text)
    application.router.add_get("/big.png", big)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def _nothing_happened(app: BotApp, balance: int = 100) -> None:
    account = await app.ledger.account(MEMBER.tenant, MEMBER.user_id)
    assert account.balance == balance
    assert account.held == 0
    assert await app.engine.store.recent(MEMBER.tenant, MEMBER.user_id) == []


async def _refused(app: BotApp, command: object, error: type[UserError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        await app.engine.submit(MEMBER, command, RecordingReply())  # type: ignore[arg-type]
    assert "Traceback" not in str(info.value)
    await _nothing_happened(app)


async def test_empty_prompt(app: BotApp) -> None:
    await _refused(app, ImagineCommand(prompt="  "), InvalidInputError, "empty")


async def test_overlong_prompt(app: BotApp) -> None:
    await _refused(app, ImagineCommand(prompt="fox " * 2000), InvalidInputError, "keep it under")


async def test_unknown_flag(app: BotApp) -> None:
    await _refused(app, ImagineCommand(prompt="fox --chaos 50"), InvalidInputError, "--chaos")


async def test_malformed_aspect(app: BotApp) -> None:
    await _refused(app, ImagineCommand(prompt="fox --ar banana"), InvalidInputError, "aspect ratio")


async def test_count_out_of_range(app: BotApp) -> None:
    await _refused(app, ImagineCommand(prompt="fox --n 9"), InvalidInputError, "1 to 4")


async def test_edit_with_no_image(app: BotApp) -> None:
    await _refused(app, EditCommand(instruction="make it blue"), InvalidInputError, "attach the image")


async def test_edit_with_a_non_image_file(app: BotApp, tmp_path: Path) -> None:
    note = tmp_path / "note.png"
    note.write_text("hello, I am text")
    await _refused(
        app,
        EditCommand(image=ImageRef(path=str(note)), instruction="make it blue"),
        InvalidInputError,
        "image",
    )


async def test_edit_with_a_non_image_url(app: BotApp, files_server: str) -> None:
    ref = ImageRef(url=f"{files_server}/note.txt")
    await _refused(app, EditCommand(image=ref, instruction="make it blue"), InvalidInputError, "image")


async def test_edit_with_a_file_over_the_cap(tmp_path: Path, files_server: str) -> None:
    async with running_app(tmp_path, max_input_bytes=1024 * 1024) as app:
        ref = ImageRef(url=f"{files_server}/big.png")
        await _refused(app, EditCommand(image=ref, instruction="make it blue"), InvalidInputError, "MB")


async def test_edit_with_an_unreachable_url(app: BotApp) -> None:
    ref = ImageRef(url="http://127.0.0.1:9/gone.png")  # discard port: nothing listens
    await _refused(
        app, EditCommand(image=ref, instruction="make it blue"), InvalidInputError, "couldn't download"
    )


async def test_edit_with_a_url_on_a_private_address(tmp_path: Path) -> None:
    async with running_app(tmp_path, media_allow_private=False) as app:
        ref = ImageRef(url="http://10.1.2.3/cat.png")
        await _refused(
            app,
            EditCommand(image=ref, instruction="make it blue"),
            InvalidInputError,
            "public internet addresses",
        )


async def test_moderator_command_from_a_member(app: BotApp) -> None:
    with pytest.raises(NotModeratorError, match="Only moderators"):
        await app.engine.moderate(MEMBER, ModCommand(op=ModOp.GRANT, target="u-member", amount=1000))
    await _nothing_happened(app)


@pytest.mark.parametrize("amount", [-5, 0, 10**12])
async def test_granting_a_negative_or_absurd_amount(app: BotApp, amount: int) -> None:
    with pytest.raises(InvalidInputError, match="valid amount"):
        await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.GRANT, target=MEMBER.user_id, amount=amount))
    await _nothing_happened(app)


async def test_a_banned_user(app: BotApp) -> None:
    await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.BAN, target=MEMBER.user_id, reason="spam"))
    await _refused(app, ImagineCommand(prompt="a fox"), BannedError, "not allowed")


async def test_a_blocklisted_word(app: BotApp) -> None:
    await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.BLOCK_ADD, words="gore, zombie"))
    await _refused(app, ImagineCommand(prompt="a Zombie at night"), BlockedPromptError, "zombie")


async def test_a_blocklisted_word_in_the_negative_prompt_too(app: BotApp) -> None:
    await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.BLOCK_ADD, words="gore"))
    await _refused(app, ImagineCommand(prompt="a fox --no gore"), BlockedPromptError, "gore")


async def test_out_of_credits_says_balance_and_cost(app: BotApp) -> None:
    await app.engine.moderate(MODERATOR, ModCommand(op=ModOp.SET, target=MEMBER.user_id, amount=15))
    with pytest.raises(InsufficientCreditsError, match="need 40 credits for this, but you have 15 credits"):
        await app.engine.submit(MEMBER, ImagineCommand(prompt="a fox --n 4"), RecordingReply())
    await _nothing_happened(app, balance=15)
