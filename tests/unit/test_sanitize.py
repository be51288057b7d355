"""User text is cleaned at the command models, whichever adapter built them: no control or
invisible direction characters survive, and broken surrogates are refused with one message."""

from __future__ import annotations

import pytest

from bot import messages
from bot.commands import (
    Actor,
    EditCommand,
    ImageRef,
    ImagineCommand,
    ModCommand,
    Model3DCommand,
    ModOp,
    clean_text,
)
from bot.errors import InvalidInputError
from bot.textcommands import parse_text

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_nul_escape_and_c1_controls_are_removed() -> None:
    assert clean_text("a\x00 red\x1b[31m fox\x7f\x85\x9f") == "a red[31m fox"


def test_newlines_are_kept_and_tabs_and_carriage_returns_normalised() -> None:
    assert clean_text("one\r\ntwo\rthree\tfour\n") == "one\ntwo\nthree four\n"


def test_every_bidi_control_is_removed() -> None:
    assert clean_text(f"abc{BIDI}def") == "abcdef"


def test_ordinary_unicode_is_left_alone() -> None:
    text = "un renard roux 🦊 — 狐 👩‍🚀 عربي"  # the emoji keeps its zero-width joiner
    assert clean_text(text) == text


def test_the_cores_mention_mark_cannot_be_typed() -> None:
    assert messages.MENTION_MARK not in clean_text(f"{messages.MENTION_MARK}<@U1>")


def test_a_lone_surrogate_is_refused_with_the_one_message() -> None:
    with pytest.raises(InvalidInputError) as info:
        clean_text("a fox \ud800")
    assert str(info.value) == messages.unreadable_characters()


def test_every_text_field_of_the_command_models_is_cleaned() -> None:
    bad = "x\x00\u202e"
    imagine = ImagineCommand(prompt=bad, aspect=bad, negative=bad, model=bad, size=bad)
    assert {imagine.prompt, imagine.aspect, imagine.negative, imagine.model, imagine.size} == {"x"}
    edit = EditCommand(image=ImageRef(url=bad, path=bad, filename=bad), instruction=bad)
    assert edit.instruction == "x" and edit.image is not None
    assert (edit.image.url, edit.image.path, edit.image.filename) == ("x", "x", "x")
    assert Model3DCommand(prompt=bad).prompt == "x"
    mod = ModCommand(op=ModOp.GRANT, target=bad, kind=bad, words=bad, reason=bad)
    assert {mod.target, mod.kind, mod.words, mod.reason} == {"x"}
    assert Actor(platform="slack", tenant_id="T", user_id="U", display_name=bad).display_name == "x"


@pytest.mark.parametrize(
    "build",
    [
        lambda: ImagineCommand(prompt="\ud800"),
        lambda: ImagineCommand(prompt="fox", negative="\udfff"),
        lambda: EditCommand(image=ImageRef(url="https://x/\ud800.png"), instruction="blue"),
        lambda: Model3DCommand(prompt="chair \ud83d"),
        lambda: ModCommand(op=ModOp.GRANT, target="\ud800", amount=1),
        lambda: ModCommand(op=ModOp.BAN, target="U1", reason="\ud800"),
    ],
)
def test_surrogates_in_any_field_are_refused(build: object) -> None:
    with pytest.raises(InvalidInputError, match="broken characters"):
        build()  # type: ignore[operator]


@pytest.mark.parametrize("line", ["/imagine a fox \ud800", "/quota grant <@U\ud800> 5", "/edit x.png \ud800"])
def test_typed_commands_with_surrogates_are_refused(line: str) -> None:
    with pytest.raises(InvalidInputError, match="broken characters"):
        parse_text(line)
