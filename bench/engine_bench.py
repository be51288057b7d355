"""Push N concurrent jobs through the real engine, ledger and provider clients.

The vendor (Pixazo's emulator, `hunyuan-image`) runs in a separate process on loopback with
a latency drawn from a range (default 2–20 s), so the figures below are the bot's own: jobs per
second, delay from the vendor finishing to the result being delivered (p50/p99), vendor API
requests per job, peak RSS and CPU seconds of the bot process. The same workload runs with
polling, then with webhooks, then through a naive fixed 5-second poller as the baseline.

    python bench/engine_bench.py                 # 2,000 jobs, 2–20 s
    python bench/engine_bench.py --jobs 5000 --latency 1 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.app import BotApp, load_provider  # noqa: E402
from bot.commands import Actor, ImagineCommand  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.reply import Failure, JobResult, Progress  # noqa: E402
from providers.base import GenerationRequest, JobState, Kind, ProviderSettings  # noqa: E402

VENDOR = "pixazo"
MODEL = "hunyuan-image"
KEY = "sandbox-key"


@dataclass
class Figures:
    """What one run measured."""

    mode: str
    jobs: int
    wall: float
    delays: list[float]
    requests: int
    peak_rss_mb: float
    cpu_s: float
    failed: int = 0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall if self.wall else 0.0

    def pct(self, q: float) -> float:
        if not self.delays:
            return float("nan")
        ordered = sorted(self.delays)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class BenchReply:
    """Records when the result arrived."""

    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    at: float = 0.0
    failed: bool = False

    def ref(self) -> dict[str, Any]:
        return {}

    async def progress(self, update: Progress) -> None:
        pass

    async def result(self, result: JobResult) -> None:
        self.at = time.time()
        self.delivered.set()

    async def failure(self, failure: Failure) -> None:
        self.at, self.failed = time.time(), True
        self.delivered.set()


class RssSampler:
    """Samples this process's resident set size (Linux /proc) while a run goes."""

    def __init__(self) -> None:
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def current() -> int:
        with contextlib.suppress(OSError):
            status = Path("/proc/self/status").read_text()
            m = re.search(r"VmRSS:\s+(\d+) kB", status)
            if m:
                return int(m.group(1)) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    async def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, self.current())
            await asyncio.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self.peak = self.current()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _sandbox_stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/_sandbox/{VENDOR}/jobs") as resp:
        return await resp.json()  # type: ignore[no-any-return]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def run_engine(mode: str, jobs: int, sandbox_base: str, session: aiohttp.ClientSession) -> Figures:
    """The real engine, ledger and client; webhooks when mode == 'webhook'."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(tmp),
            pixazo_api_key=KEY,
            pixazo_base_url=f"{sandbox_base}/{VENDOR}",
            route_order=f"{VENDOR}:{MODEL}",
            http_host="127.0.0.1",
            http_port=port,
            public_base_url=f"http://127.0.0.1:{port}" if mode == "webhook" else None,
            workers=jobs,
            queue_size=jobs,
            max_jobs_per_user=jobs,
            progress_interval=3.0,
            log_level="WARNING",
            media_allow_private=True,
        )
        before = (await _sandbox_stats(session, sandbox_base))["requests"]
        cpu0 = _cpu()
        with RssSampler() as rss:
            async with BotApp(settings, platforms=[]) as app:
                replies = [BenchReply() for _ in range(jobs)]
                start = time.time()
                tickets = await asyncio.gather(
                    *(
                        app.engine.submit(
                            Actor(platform="bench", tenant_id="t", user_id=f"u{i}"),
                            ImagineCommand(prompt=f"bench job {i} --size 512x512"),
                            replies[i],
                        )
                        for i in range(jobs)
                    )
                )
                await asyncio.gather(*(r.delivered.wait() for r in replies))
                wall = time.time() - start
                handles = {}
                for t in tickets:
                    job = await app.engine.store.get(t.job_id)
                    handles[t.job_id] = job.handle.job_id if job and job.handle else None
                problems = await app.ledger.check_invariants()
                assert not problems, problems
        cpu = _cpu() - cpu0
        stats = await _sandbox_stats(session, sandbox_base)
        done_at = {k: v["done_at"] for k, v in stats["jobs"].items()}
        delays = [
            r.at - done_at[handles[t.job_id]]
            for t, r in zip(tickets, replies, strict=True)
            if not r.failed and handles.get(t.job_id) in done_at
        ]
        return Figures(
            mode=mode,
            jobs=jobs,
            wall=wall,
            delays=delays,
            requests=stats["requests"] - before,
            peak_rss_mb=rss.peak / 2**20,
            cpu_s=cpu,
            failed=sum(r.failed for r in replies),
        )


async def run_naive(
    jobs: int, sandbox_base: str, session: aiohttp.ClientSession, interval: float = 5.0
) -> Figures:
    """Baseline: submit, then poll every `interval` seconds, then download. No engine."""
    provider = load_provider(VENDOR)(
        session, ProviderSettings(base_url=f"{sandbox_base}/{VENDOR}", api_key=KEY)
    )
    before = (await _sandbox_stats(session, sandbox_base))["requests"]
    delivered: dict[str, float] = {}
    cpu0 = _cpu()

    async def one(i: int) -> None:
        request = GenerationRequest(kind=Kind.IMAGE, model=MODEL, prompt=f"naive {i}", width=512, height=512)
        sub = await provider.submit(request)
        while True:
            await asyncio.sleep(interval)
            update = await provider.poll(sub.handle)
            if update.state in (JobState.SUCCEEDED, JobState.FAILED):
                break
        for artifact in update.artifacts:
            if artifact.url:
                async with session.get(artifact.url) as resp:
                    await resp.read()
        delivered[sub.handle.job_id] = time.time()

    with RssSampler() as rss:
        start = time.time()
        await asyncio.gather(*(one(i) for i in range(jobs)))
        wall = time.time() - start
    cpu = _cpu() - cpu0
    stats = await _sandbox_stats(session, sandbox_base)
    delays = [t - stats["jobs"][jid]["done_at"] for jid, t in delivered.items() if jid in stats["jobs"]]
    return Figures("naive-5s", jobs, wall, delays, stats["requests"] - before, rss.peak / 2**20, cpu)


def _row(f: Figures) -> str:
    return (
        f"{f.mode:<10} {f.jobs:>6} {f.jobs_per_s:>8.1f} {f.pct(0.5):>9.2f} {f.pct(0.99):>9.2f} "
        f"{f.requests / f.jobs:>9.2f} {f.peak_rss_mb:>9.1f} {f.cpu_s:>7.1f} {f.failed:>6}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--latency", type=float, nargs=2, default=[2.0, 20.0], metavar=("MIN", "MAX"))
    parser.add_argument("--modes", default="poll,webhook,naive")
    args = parser.parse_args()

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "providers.sandbox.server",
        "--vendors",
        VENDOR,
        "--latency",
        str(args.latency[0]),
        str(args.latency[1]),
        "--render-cache",
        cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        port = int(line.strip().split("=")[1])
        base = f"http://127.0.0.1:{port}"
        print(f"engine benchmark: {args.jobs} jobs, vendor latency {args.latency[0]:g}–{args.latency[1]:g} s")
        print(
            f"{'mode':<10} {'jobs':>6} {'jobs/s':>8} {'p50 (s)':>9} {'p99 (s)':>9} {'req/job':>9} "
            f"{'RSS (MB)':>9} {'CPU s':>7} {'failed':>6}"
        )
        results: dict[str, Figures] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for mode in args.modes.split(","):
                if mode == "naive":
                    fig = await run_naive(args.jobs, base, session)
                else:
                    fig = await run_engine(mode, args.jobs, base, session)
                results[mode] = fig
                print(_row(fig), flush=True)
        naive = results.get("naive")
        if naive:
            print("\nratios against the naive 5 s poller (lower is better):")
            for mode, f in results.items():
                if mode == "naive":
                    continue
                print(
                    f"  {mode:<8} delay p50 ×{f.pct(0.5) / naive.pct(0.5):.2f}  p99 ×{f.pct(0.99) / naive.pct(0.99):.2f}"
                    f"  requests/job ×{(f.requests / f.jobs) / (naive.requests / naive.jobs):.2f}"
                )
        if results:
            mean = statistics.mean(results[next(iter(results))].delays or [0])
            print(f"\n(mean delay of the first mode: {mean:.2f} s)")
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
