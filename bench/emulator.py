"""The benchmark's vendor: Pixazo's sandbox emulator in its own process, with the latency mix of
docs/bench.md and a request log the benchmark reads back.

    python bench/emulator.py --dist lognormal --latency 2:20 --seed 1

It prints `SANDBOX_PORT=<port>` once listening. Each job's latency is drawn from a generator
seeded by (seed, the job's "bench job N" / "warm job N" tag in its prompt), so the bot and the
naive baseline get the same duration for the same job whatever order they submit in.

- `lognormal LO:HI`: median √(LO·HI), σ = ln(HI/LO) / 3.92 (so 95 % of the untruncated draws fall
  inside, ~p2.5..p97.5), draws outside [LO, HI] redrawn. For 2:20: median 6.3 s, mean ≈ 7.2 s.
- `uniform LO:HI`: uniform on [LO, HI].

Control API (on top of the sandbox's own): `GET /_bench/stats` → per-job creation, completion
(`done_at` = created + latency, on this process's wall clock) and first callback send time, and
request counts by kind (submit, poll, file) since the last `POST /_bench/reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from providers.sandbox.common import json_response  # noqa: E402
from providers.sandbox.pixazo import PixazoEmulator  # noqa: E402
from providers.sandbox.server import Sandbox  # noqa: E402

VENDOR = "pixazo"
_TAG = re.compile(r"\b(?:bench|warm|naive) job \d+\b")


def lognormal_params(low: float, high: float) -> tuple[float, float]:
    """(μ, σ) of the log-normal whose central 95 % spans [low, high]."""
    return math.log(math.sqrt(low * high)), math.log(high / low) / 3.92


def draw_latency(dist: str, low: float, high: float, key: str, seed: int) -> float:
    """One job's latency, a pure function of (dist, range, key, seed)."""
    rng = random.Random(f"{seed}:{key}")
    if dist == "uniform":
        return rng.uniform(low, high)
    mu, sigma = lognormal_params(low, high)
    while True:
        x = rng.lognormvariate(mu, sigma)
        if low <= x <= high:
            return x


def job_key(prompt: str) -> str:
    """The tag the latency is keyed by: "bench job 17" in both the bot's and the baseline's prompt."""
    m = _TAG.search(prompt)
    return m.group(0).replace("naive", "bench") if m else prompt


class BenchPixazo(PixazoEmulator):
    """Pixazo's emulator with the benchmark's latency mix and callback send times."""

    def __init__(self, *, dist: str, low: float, high: float, seed: int, **options: Any) -> None:
        super().__init__(**options)
        self.dist, self.low, self.high, self.seed = dist, low, high, seed
        self.callback_at: dict[str, float] = {}

    def new_job(self, model: str, request: dict[str, Any], *, prefix: str = "") -> Any:
        job = super().new_job(model, request, prefix=prefix)
        job.latency = draw_latency(
            self.dist, self.low, self.high, job_key(str(request.get("prompt", job.id))), self.seed
        )
        return job

    def send_webhook(self, url: str, payload: dict[str, Any], attempts: int = 3, **kwargs: Any) -> None:
        # The moment the vendor sends the callback, for "callback sent → Reply called" (the
        # sandbox's own callback log says the same where it exists; this works with or without).
        rid = payload.get("request_id")
        if isinstance(rid, str) and payload.get("status") in ("COMPLETED", "FAILED", "ERROR"):
            self.callback_at.setdefault(rid, time.time())
        super().send_webhook(url, payload, attempts, **kwargs)

    # The benchmark injects no faults: skip the base class's scan of every job per file served.
    def is_dead(self, name: str) -> bool:
        return False

    def is_oversize(self, name: str) -> bool:
        return False


class BenchSandbox(Sandbox):
    """The sandbox with the benchmark emulator and a request log by kind."""

    def __init__(self, **emulator_options: Any) -> None:
        super().__init__([VENDOR], api_key=emulator_options.get("api_key", "sandbox-key"))
        log = getattr(self, "callback_log", None)  # the sandbox's shared log, where it has one
        if log is not None:
            emulator_options["callback_log"] = log
        self.emulators[VENDOR] = BenchPixazo(**emulator_options)
        self.counts: Counter[str] = Counter()

    def build_app(self) -> web.Application:
        app = super().build_app()
        app.middlewares.append(self._log)
        app.router.add_get("/_bench/stats", self._stats)
        app.router.add_post("/_bench/reset", self._reset)
        return app

    @web.middleware
    async def _log(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path.startswith(f"/{VENDOR}/"):
            if "/files/" in path:
                self.counts["file"] += 1
            elif request.method == "POST":
                self.counts["submit"] += 1
            elif "/status/" in path:
                self.counts["poll"] += 1
            else:
                self.counts["other"] += 1
        return await handler(request)

    async def _stats(self, _request: web.Request) -> web.Response:
        emu = self.emulators[VENDOR]
        assert isinstance(emu, BenchPixazo)
        jobs = {
            j.id: {
                "created": j.created,
                "done_at": j.created + j.latency,
                "callback_at": emu.callback_at.get(j.id),
            }
            for j in emu.jobs.values()
        }
        return json_response({"jobs": jobs, "counts": dict(self.counts), "now": time.time()})

    async def _reset(self, _request: web.Request) -> web.Response:
        self.counts.clear()
        return json_response({"ok": True})


async def serve(dist: str, low: float, high: float, seed: int, port: int = 0) -> None:
    """Run until killed; print the port once listening."""
    sandbox = BenchSandbox(
        dist=dist,
        low=low,
        high=high,
        seed=seed,
        api_key="sandbox-key",
        clock=time.time,  # wall clock: the bot process compares its own times with it
        render_cache=True,  # one PNG per size: the figures are the bot's, not Pillow's
    )
    sandbox.port = port
    async with sandbox:
        print(f"SANDBOX_PORT={sandbox.port}", flush=True)
        await asyncio.Event().wait()


def parse_range(text: str) -> tuple[float, float]:
    """ "2:20" → (2.0, 20.0)."""
    low, _, high = text.partition(":")
    lo, hi = float(low), float(high or low)
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"expected LO:HI seconds with 0 < LO <= HI, got {text!r}")
    return lo, hi


def main() -> None:
    """`python bench/emulator.py`: the benchmark's vendor process."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dist", choices=["lognormal", "uniform"], default="lognormal")
    parser.add_argument("--latency", type=parse_range, default=(2.0, 20.0), metavar="LO:HI")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.dist, args.latency[0], args.latency[1], args.seed, args.port))


if __name__ == "__main__":
    main()
