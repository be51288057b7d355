"""Vendor limits are not the user's fault: each route declares the prompt lengths it takes, the
router skips a route that cannot take a request, and the user hears one clear message only when
no configured route can."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.catalog import Catalog, accepts
from bot.commands import EditCommand, ImageRef, ImagineCommand
from bot.errors import InvalidInputError
from bot.params import JobSpec, parse_edit, parse_imagine
from providers.apiinone import ApiInOneProvider
from providers.base import Kind, RouteSpec
from providers.runware import RunwareProvider
from tests.support.core import MEMBER, RecordingReply, fast_sandbox, running_app


def route(vendor: str, *, min_prompt: int = 0, max_prompt: int = 2000, max_images: int = 1) -> RouteSpec:
    return RouteSpec(
        vendor,
        f"{vendor}-model",
        Kind.IMAGE,
        min_prompt=min_prompt,
        max_prompt=max_prompt,
        max_images=max_images,
    )


def test_vendors_declare_their_documented_minimum_prompt_lengths() -> None:
    assert {r.kind: r.min_prompt for r in ApiInOneProvider.routes()} == {Kind.IMAGE: 3, Kind.EDIT: 3}
    assert [r.min_prompt for r in RunwareProvider.routes()] == [2]


def test_a_route_accepts_prompts_only_within_its_length_bounds() -> None:
    r = route("a", min_prompt=3, max_prompt=10)
    assert not accepts(r, JobSpec(kind=Kind.IMAGE, prompt="ab"))
    assert accepts(r, JobSpec(kind=Kind.IMAGE, prompt="abc"))
    assert accepts(r, JobSpec(kind=Kind.IMAGE, prompt="a" * 10))
    assert not accepts(r, JobSpec(kind=Kind.IMAGE, prompt="a" * 11))


def test_a_route_refuses_more_images_than_it_makes_and_another_kind() -> None:
    r = route("a", max_images=2)
    assert accepts(r, JobSpec(kind=Kind.IMAGE, prompt="fox", count=2))
    assert not accepts(r, JobSpec(kind=Kind.IMAGE, prompt="fox", count=3))
    assert not accepts(r, JobSpec(kind=Kind.EDIT, prompt="fox"))


def test_image_to_3d_routes_take_only_requests_with_an_image() -> None:
    from_image = RouteSpec("v", "img3d", Kind.MODEL3D, needs_image=True)
    from_text = RouteSpec("v", "txt3d", Kind.MODEL3D)
    spec = JobSpec(kind=Kind.MODEL3D, prompt="")
    assert accepts(from_image, spec, has_image=True) and not accepts(from_text, spec, has_image=True)
    with_input = spec.model_copy(update={"input_name": "inputs/x.png"})
    assert accepts(from_image, with_input) and not accepts(from_text, with_input)


def test_a_short_prompt_passes_when_one_route_takes_it() -> None:
    catalog = Catalog([route("strict", min_prompt=3), route("lenient", min_prompt=2)])
    spec = parse_imagine(ImagineCommand(prompt="ox"), catalog)
    assert spec.prompt == "ox"


def test_a_prompt_no_route_takes_gets_one_message_naming_the_minimum() -> None:
    catalog = Catalog([route("strict", min_prompt=3), route("lenient", min_prompt=2)])
    with pytest.raises(InvalidInputError) as caught:
        parse_imagine(ImagineCommand(prompt="x"), catalog)
    assert str(caught.value) == (
        "Your prompt is 1 character long; the models here need at least 2. Please say a little more."
    )


def test_the_minimum_counts_only_the_model_the_user_chose() -> None:
    catalog = Catalog([route("strict", min_prompt=3), route("lenient", min_prompt=2)])
    with pytest.raises(InvalidInputError, match="at least 3"):
        parse_imagine(ImagineCommand(prompt="ox --model strict"), catalog)


def test_an_edit_instruction_too_short_for_every_edit_route_is_refused() -> None:
    catalog = Catalog(ApiInOneProvider.routes())
    with pytest.raises(InvalidInputError, match="Your instruction is 2 characters long"):
        parse_edit(EditCommand(image=ImageRef(url="https://example.com/a.png"), instruction="hi"), catalog)


def test_options_no_single_route_combines_get_one_message() -> None:
    # One route makes 4 images but wants 3 characters; the other takes 2 but makes one image.
    catalog = Catalog([route("many", min_prompt=3, max_images=4), route("short", min_prompt=2)])
    with pytest.raises(InvalidInputError) as caught:
        parse_imagine(ImagineCommand(prompt="ox --n 4"), catalog)
    assert "No model here can make images with these options" in str(caught.value)


async def test_a_two_character_prompt_goes_to_a_route_that_takes_it_not_api_in_one(tmp_path: Path) -> None:
    async with running_app(tmp_path, fast_sandbox(["apiinone", "runware"])) as app:
        first = app.router.catalog.for_kind(Kind.IMAGE)[0]
        assert first.vendor == "apiinone"  # the preferred route, which needs 3 characters
        reply = RecordingReply()
        ticket = await app.engine.submit(MEMBER, ImagineCommand(prompt="ox"), reply)
        await reply.wait()
        assert reply.results and not reply.failures
        job = await app.engine.store.get(ticket.job_id)
        assert job is not None and job.route is not None
        assert job.route.startswith("runware:")
        assert job.routes_tried == [job.route]


async def test_a_one_character_prompt_no_route_takes_is_refused_before_any_credit_is_held(
    tmp_path: Path,
) -> None:
    async with running_app(tmp_path, fast_sandbox(["apiinone", "runware"])) as app:
        before = await app.ledger.account(MEMBER.tenant, MEMBER.user_id)
        with pytest.raises(InvalidInputError, match="at least 2"):
            await app.engine.submit(MEMBER, ImagineCommand(prompt="x"), RecordingReply())
        after = await app.ledger.account(MEMBER.tenant, MEMBER.user_id)
        assert (after.balance, after.held) == (before.balance, before.held)
        assert await app.engine.store.ids() == set()
