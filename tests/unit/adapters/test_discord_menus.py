"""The pure parts of Discord's message menus and job-id autocomplete."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import discord

from adapters.discord_commands import job_choices, message_image
from bot.reply import JobPhase


def _message(attachments: tuple[dict[str, Any], ...] = (), embeds: tuple[dict[str, Any], ...] = ()) -> Any:
    """What `message_image` reads of a discord.Message: attachments and (real) embeds."""
    return SimpleNamespace(
        attachments=[SimpleNamespace(**{"content_type": None, **a}) for a in attachments],
        embeds=[discord.Embed.from_dict(e) for e in embeds],  # type: ignore[arg-type]
    )


def test_the_first_picture_attachment_is_the_image() -> None:
    msg = _message(
        (
            {"filename": "notes.txt", "url": "https://cdn/x/notes.txt", "content_type": "text/plain"},
            {"filename": "cat.png", "url": "https://cdn/x/cat.png", "content_type": "image/png"},
        )
    )
    image = message_image(msg)
    assert image is not None and (image.url, image.filename) == ("https://cdn/x/cat.png", "cat.png")


def test_an_attachment_without_a_type_counts_by_its_name() -> None:
    msg = _message(({"filename": "photo.JPG", "url": "https://cdn/x/photo.JPG"},))
    assert message_image(msg) is not None
    assert message_image(_message(({"filename": "model.glb", "url": "https://cdn/x/model.glb"},))) is None


def test_a_pasted_image_link_is_found_in_its_embed_thumbnail_through_discords_proxy() -> None:
    embed = {
        "type": "image",
        "url": "https://example.com/pics/owl.webp",
        "thumbnail": {
            "url": "https://example.com/pics/owl.webp",
            "proxy_url": "https://media.proxy/owl.webp",
        },
    }
    image = message_image(_message(embeds=(embed,)))
    assert image is not None and (image.url, image.filename) == ("https://media.proxy/owl.webp", "owl.webp")


def test_a_link_preview_thumbnail_is_not_an_image_to_edit() -> None:
    preview = {"type": "article", "url": "https://news/a", "thumbnail": {"url": "https://news/a.jpg"}}
    assert message_image(_message(embeds=(preview,))) is None
    assert message_image(_message()) is None


def _job(job_id: str, state: JobPhase, prompt: str = "a fox") -> Any:
    return SimpleNamespace(
        id=job_id, state=state, spec=SimpleNamespace(prompt=prompt, kind=SimpleNamespace(value="image"))
    )


def test_job_choices_offer_finished_jobs_to_show_and_unfinished_ones_to_cancel() -> None:
    jobs = [_job("j3", JobPhase.RUNNING), _job("j2", JobPhase.DONE), _job("j1", JobPhase.FAILED)]

    assert [c.value for c in job_choices(jobs, "", running=False)] == ["j2"]
    assert [c.value for c in job_choices(jobs, "", running=True)] == ["j3"]


def test_job_choices_match_the_typed_id_or_prompt_and_fit_discords_limits() -> None:
    jobs = [
        _job(f"j{i}", JobPhase.DONE, "a very long prompt " * 10 if i == 0 else f"owl {i}") for i in range(30)
    ]

    assert [c.value for c in job_choices(jobs, "OWL 7", running=False)] == ["j7"]
    everything = job_choices(jobs, "", running=False)
    assert len(everything) == 25 and all(len(c.name) <= 100 for c in everything)


def test_waiting_requests_come_first_once_each_and_say_they_wait() -> None:
    waiting = [_job("w2", JobPhase.QUEUED, "two owls"), _job("j3", JobPhase.QUEUED, "being confirmed")]
    jobs = [_job("j3", JobPhase.QUEUED, "being confirmed"), _job("j1", JobPhase.RUNNING)]

    choices = job_choices(jobs, "", running=True, waiting=waiting)

    assert [c.value for c in choices] == ["w2", "j3", "j1"]
    assert choices[0].name == "w2 · image · waiting for confirmation · two owls"
    assert [c.value for c in job_choices(jobs, "owl", running=True, waiting=waiting)] == ["w2"]
