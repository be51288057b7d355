"""The shared parameter parser: inline flags, structured options, limits from the catalog."""

from __future__ import annotations

import pytest

from bot.catalog import Catalog
from bot.commands import EditCommand, ImageRef, ImagineCommand, Model3DCommand
from bot.errors import InvalidInputError
from bot.params import parse_edit, parse_flags, parse_imagine, parse_model3d
from providers.base import Kind, RouteSpec

ROUTES = [
    RouteSpec("alpha", "img", Kind.IMAGE, max_images=4, max_prompt=1000, supports_negative=True),
    RouteSpec("beta", "img-small", Kind.IMAGE, sizes=((1024, 1024), (1280, 768)), max_prompt=2000),
    RouteSpec("alpha", "edit", Kind.EDIT, accepts_image=True, needs_image=True),
    RouteSpec("gamma", "t3d", Kind.MODEL3D),
    RouteSpec("gamma", "i3d", Kind.MODEL3D, needs_image=True, accepts_image=True),
]
CATALOG = Catalog(ROUTES)


def imagine(prompt: str, **kw: object) -> object:
    return parse_imagine(ImagineCommand(prompt=prompt, **kw), CATALOG)


def test_inline_flags_are_parsed_out_of_the_prompt() -> None:
    spec = imagine("a red fox --ar 16:9 --seed 7 --no text, blur --n 4 --model alpha")
    assert spec.prompt == "a red fox"
    assert (spec.width, spec.height, spec.aspect) == (1024, 576, "16:9")
    assert spec.seed == 7
    assert spec.negative == "text, blur"
    assert spec.count == 4
    assert spec.model == "alpha"


def test_no_takes_every_word_until_the_next_flag() -> None:
    spec = imagine("castle --no people cars and birds --seed 1")
    assert spec.negative == "people cars and birds"
    assert spec.seed == 1


def test_words_after_a_flag_value_return_to_the_prompt() -> None:
    assert imagine("a fox --seed 3 in the snow").prompt == "a fox in the snow"


def test_structured_options_win_over_inline_flags() -> None:
    spec = imagine("a fox --ar 16:9 --seed 1", aspect="9:16", seed=99)
    assert (spec.width, spec.height) == (576, 1024)
    assert spec.seed == 99


def test_size_flag_sets_exact_pixels() -> None:
    spec = imagine("a fox --size 1280x768")
    assert (spec.width, spec.height, spec.aspect) == (1280, 768, "5:3")


def test_phone_dashes_count_as_flags() -> None:
    assert imagine("a fox —ar 3:2").aspect == "3:2"


@pytest.mark.parametrize("prompt", ["", "   ", "--seed 4"])
def test_empty_prompt_is_refused_with_an_example(prompt: str) -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        imagine(prompt)


def test_overlong_prompt_names_the_limit() -> None:
    with pytest.raises(InvalidInputError, match="under 2,000"):
        imagine("x" * 2001)


def test_unknown_flag_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"--stylize.*--ar, --size, --seed, --no, --n or --model"):
        imagine("a fox --stylize 100")


@pytest.mark.parametrize("value", ["wide", "16", "0:9", "16:0", "1:5"])
def test_malformed_or_extreme_aspect_is_refused(value: str) -> None:
    with pytest.raises(InvalidInputError, match="--ar"):
        imagine(f"a fox --ar {value}")


def test_flag_without_value_says_what_it_needs() -> None:
    with pytest.raises(InvalidInputError, match=r"needs a value.*--seed 42"):
        imagine("a fox --seed")


@pytest.mark.parametrize("count", ["0", "5", "-1"])
def test_count_out_of_range_names_the_range(count: str) -> None:
    with pytest.raises(InvalidInputError, match="1 to 4"):
        imagine(f"a fox --n {count}")


def test_count_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="whole number"):
        imagine("a fox --n four")


@pytest.mark.parametrize("seed", ["-1", "2147483648"])
def test_seed_out_of_range_is_refused(seed: str) -> None:
    with pytest.raises(InvalidInputError, match="0 to 2147483647"):
        imagine(f"a fox --seed {seed}")


def test_size_outside_catalog_limits_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="from 256 to 1536"):
        imagine("a fox --size 4096x4096")


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="`alpha`"):
        imagine("a fox --model dalle")


def test_catalog_limits_are_the_most_generous_route() -> None:
    limits = CATALOG.limits(Kind.IMAGE)
    assert (limits.max_prompt, limits.max_count) == (2000, 4)


def test_flags_parser_keeps_quoted_words_together() -> None:
    flags = parse_flags('"a red fox" --no "blurry text"')
    assert flags.prompt == "a red fox"
    assert flags.values["negative"] == "blurry text"


def test_edit_without_image_asks_for_one() -> None:
    with pytest.raises(InvalidInputError, match="attach the image"):
        parse_edit(EditCommand(instruction="make it blue"), CATALOG)


def test_edit_without_instruction_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="instruction is empty"):
        parse_edit(EditCommand(image=ImageRef(url="https://example.com/a.png"), instruction=" "), CATALOG)


def test_model3d_needs_a_prompt_or_an_image() -> None:
    with pytest.raises(InvalidInputError, match="Tell me what to build"):
        parse_model3d(Model3DCommand(), CATALOG)


def test_model3d_face_count_range() -> None:
    with pytest.raises(InvalidInputError, match="40,000 to 1,500,000"):
        parse_model3d(Model3DCommand(prompt="a chair", face_count=10), CATALOG)


def test_model3d_from_text_or_image() -> None:
    assert parse_model3d(Model3DCommand(prompt="a chair"), CATALOG).kind is Kind.MODEL3D
    spec = parse_model3d(Model3DCommand(image=ImageRef(path="/tmp/x.png"), geometry_only=True), CATALOG)
    assert spec.geometry_only and spec.prompt == ""


def test_kinds_without_routes_are_explained() -> None:
    only_images = Catalog([ROUTES[0]])
    with pytest.raises(InvalidInputError, match="editing isn't configured"):
        parse_edit(EditCommand(image=ImageRef(url="https://e.com/a.png"), instruction="x"), only_images)


@pytest.mark.parametrize("text", ["a fox --n=4 --seed=7", "a fox --n 4 --seed 7"])
def test_flag_equals_value_is_the_same_as_flag_space_value(text: str) -> None:
    spec = imagine(text)
    assert (spec.prompt, spec.count, spec.seed) == ("a fox", 4, 7)


def test_flag_equals_value_leaves_the_next_words_to_the_prompt() -> None:
    assert imagine("a fox --ar=16:9 in the snow").prompt == "a fox in the snow"


def test_flag_with_an_empty_equals_value_says_what_it_needs() -> None:
    with pytest.raises(InvalidInputError, match=r"--seed` needs a value"):
        imagine("a fox --seed=")


@pytest.mark.parametrize(
    "text", ["a fox --seed 1 --seed 2", "a fox --n 2 --count 3", "a fox --ar 1:1 --aspect=2:3"]
)
def test_a_repeated_flag_is_refused_with_one_message(text: str) -> None:
    with pytest.raises(InvalidInputError, match="more than once"):
        imagine(text)


@pytest.mark.parametrize(
    "text,kw", [("a fox --ar 16:9 --size 1024x576", {}), ("a fox --size 1024x576", {"aspect": "16:9"})]
)
def test_aspect_and_size_together_are_refused(text: str, kw: dict[str, str]) -> None:
    with pytest.raises(InvalidInputError, match=r"`--ar` and `--size`.*Use one"):
        imagine(text, **kw)


def test_an_edit_with_both_ar_and_size_gets_the_same_clear_message() -> None:
    command = EditCommand(
        image=ImageRef(url="https://example.com/a.png"), instruction="night --ar 16:9 --size 1024x576"
    )
    with pytest.raises(InvalidInputError, match=r"`--ar` and `--size`.*Use one"):
        parse_edit(command, CATALOG)
