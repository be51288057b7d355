"""The environment a chaos test gives its bot child process: the two sandbox vendors, fast
polling, loopback only."""

from __future__ import annotations

import os
from pathlib import Path

from providers.sandbox.server import Sandbox

ROOT = Path(__file__).resolve().parents[2]


def bot_env(tmp_path: Path, sandbox: Sandbox, **overrides: str) -> dict[str, str]:
    """The test's environment without real vendor keys, pointed at `sandbox`; `overrides` win."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        APIINONE_API_KEY="sandbox-key",
        APIINONE_BASE_URL=sandbox.base_url("apiinone"),
        PIXAZO_API_KEY="sandbox-key",
        PIXAZO_BASE_URL=sandbox.base_url("pixazo"),
        POLL_INITIAL="0.2",
        POLL_MAX="0.5",
        MEDIA_ALLOW_PRIVATE="true",
        HTTP_HOST="127.0.0.1",  # a test listens on loopback only, on a port the kernel picks
        HTTP_PORT="0",
        PYTHONPATH=str(ROOT),
    )
    env.update(overrides)
    return env
