"""Signed media links work from any replica that shares MEDIA_ROOT and SECRET_KEY: two real bots
(own DATA_DIR each, one media volume), a link one signs is served by the other's HTTP server."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.support.core import running_app

KEY = "the-same-secret-key-on-every-replica"


def _on(link: str, base: str) -> str:
    """The same link, asked of another replica's server (a load balancer would pick any)."""
    return base + link[link.index("/media/") :]


async def _fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.read()


async def test_a_link_signed_by_one_replica_is_served_by_another(tmp_path: Path) -> None:
    shared = tmp_path / "media"
    async with (
        running_app(tmp_path / "a", media_root=shared, secret_key=KEY) as a,
        running_app(tmp_path / "b", media_root=shared, secret_key=KEY) as b,
    ):
        assert a.media.files_dir == b.media.files_dir == shared.resolve()
        path = shared / "jobs" / "j1" / "j1-0.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\nresult")
        link = a.media.link_for(path)
        assert link is not None and link.startswith(a.web.base_url)

        assert await _fetch(_on(link, b.web.base_url)) == (200, b"\x89PNG\r\n\x1a\nresult")


async def test_without_a_shared_secret_key_the_other_replica_refuses_the_link(tmp_path: Path) -> None:
    # What SECRET_KEY being required with PostgreSQL prevents: each DATA_DIR generated its own key.
    shared = tmp_path / "media"
    async with (
        running_app(tmp_path / "a", media_root=shared) as a,
        running_app(tmp_path / "b", media_root=shared) as b,
    ):
        path = shared / "inputs" / "in.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\ninput")
        link = a.media.link_for(path)
        assert link is not None

        assert (await _fetch(link))[0] == 200
        assert (await _fetch(_on(link, b.web.base_url)))[0] == 403
