"""What users feel: jobs through the real engine against a vendor emulator, against a naive poller.

    python bench/engine_bench.py --jobs 1000 --dist lognormal --latency 2:20 \\
        --modes naive,poll,webhook --burst --json out.json

Each mode runs in its own process (this script with `--child MODE`), and so does the vendor
(`bench/emulator.py`, Pixazo's sandbox emulator, a fresh one per run; same seed, so the same job
gets the same duration in every mode). Modes: `poll` (the engine's learned schedule), `webhook`
(`PUBLIC_BASE_URL` set: the vendor calls back, polling is the slow fallback), `naive` (the
provider client polled every 5 s by a bare loop: no engine, ledger or database).

Per mode (docs/bench.md): detect_mean_s / detect_p95_s (vendor completion → the poll answer or
callback that first says so returns in the bot), deliver_p99_s (completion → Reply.result
called), requests_per_job (submit + polls + file downloads, counted by the emulator),
rss_peak_mb (VmHWM of the bot process), cpu_cores_avg and cpu_ms_per_job (user + system CPU of
the bot process from the first submit to the last delivery), warm (route history pre-seeded by
a warm-up batch through the same process, `--warm`). Webhook mode adds callback_to_reply_p99_s
(the emulator decided to send the callback → Reply.result) and polls_per_job (fallback polls).

Detection is hooked from outside the engine: the provider class's `submit`, `poll` and
`parse_webhook` are wrapped in the bot process, so the script keeps working with any engine that
keeps `BotApp`, `Engine.submit(actor, command, reply)` and the `Reply` protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.emulator import lognormal_params, parse_range  # noqa: E402

VENDOR = "pixazo"
MODEL = "hunyuan-image"
KEY = "sandbox-key"
NAIVE_EVERY = 5.0
MODES = ("naive", "poll", "webhook")


# --- shared helpers ---------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _rss_peak_mb() -> float:
    """Peak resident set of this process (VmHWM), in MiB."""
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if m:
            return int(m.group(1)) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread name: where
    the process's CPU goes (the event loop, SQLite's thread, the to_thread pool)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), f"tid-{task.name}")
        # Pool threads are numbered (asyncio_0, asyncio_1 …): add them up under one name.
        name = re.sub(r"_\d+$", "", name)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _rss_now_mb() -> float:
    try:
        m = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) / 1024 if m else 0.0
    except OSError:
        return 0.0


class Sampler:
    """(wall time, CPU seconds, RSS MiB) of this process twice a second, for windowed figures."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.samples.append((time.time(), _cpu(), _rss_now_mb()))
            await asyncio.sleep(0.5)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def window(self, start: float, end: float) -> dict[str, float] | None:
        """CPU cores and peak RSS between `start` and `end` (None when too short to tell)."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 3 or inside[-1][0] - inside[0][0] < 2.0:
            return None
        (t0, c0, _), (t1, c1, _) = inside[0], inside[-1]
        return {
            "seconds": t1 - t0,
            "cpu_cores": (c1 - c0) / (t1 - t0),
            "rss_peak_mb": max(s[2] for s in inside),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def arrivals(jobs: int, rate: float | None, seed: int) -> list[float]:
    """Submit offsets in seconds: all 0 for a burst, else a seeded Poisson process at `rate`/s."""
    if not rate:
        return [0.0] * jobs
    rng = random.Random(f"arrivals:{seed}")
    t, out = 0.0, []
    for _ in range(jobs):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def peak_in_flight(spans: list[tuple[float, float]]) -> int:
    """Most jobs between vendor submit and delivery at one moment."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


async def _vendor_stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/_bench/stats") as resp:
        return await resp.json()  # type: ignore[no-any-return]


async def _vendor_reset(session: aiohttp.ClientSession, base: str) -> None:
    async with session.post(f"{base}/_bench/reset") as resp:
        resp.raise_for_status()


@dataclass
class Trace:
    """Bot-side moments per vendor job id, and per bench job index."""

    submitted: dict[str, float] = field(default_factory=dict)  # vendor id -> submit returned
    index_of: dict[str, int] = field(default_factory=dict)  # vendor id -> bench job index
    detected: dict[str, float] = field(default_factory=dict)  # vendor id -> first terminal answer
    by_webhook: set[str] = field(default_factory=set)
    delivered: dict[int, float] = field(default_factory=dict)  # bench index -> Reply.result
    failed: dict[int, str] = field(default_factory=dict)


def figures(
    trace: Trace,
    stats: dict[str, Any],
    jobs: int,
    cpu_s: float,
    wall_s: float,
) -> dict[str, Any]:
    """The per-mode figures from the bot's trace and the emulator's stats."""
    vjobs = stats["jobs"]
    vid_of = {i: vid for vid, i in trace.index_of.items()}
    detect, deliver, callback = [], [], []
    spans = []
    for i, at in trace.delivered.items():
        vid = vid_of.get(i)
        if vid is None or vid not in vjobs:
            continue
        done = vjobs[vid]["done_at"]
        deliver.append(at - done)
        spans.append((vjobs[vid]["created"], at))
        if vid in trace.detected:
            detect.append(trace.detected[vid] - done)
        if (cb := vjobs[vid].get("callback_at")) is not None:
            callback.append(at - cb)
    # The naive poller on paper, from these very jobs' durations: no queueing at either end.
    model_delays, model_requests = [], []
    for vid in trace.index_of:
        if vid in vjobs:
            latency = vjobs[vid]["done_at"] - vjobs[vid]["created"]
            polls = max(1, math.ceil(latency / NAIVE_EVERY))
            model_delays.append(polls * NAIVE_EVERY - latency)
            model_requests.append(1 + polls + 1)
    counts = stats["counts"]
    total = sum(counts.get(k, 0) for k in ("submit", "poll", "file"))
    out: dict[str, Any] = {
        "jobs": jobs,
        "delivered": len(trace.delivered),
        "failed": len(trace.failed),
        "missing": jobs - len(trace.delivered) - len(trace.failed),
        "detect_mean_s": _mean(detect),
        "detect_p50_s": _pct(detect, 0.5),
        "detect_p95_s": _pct(detect, 0.95),
        "deliver_p50_s": _pct(deliver, 0.5),
        "deliver_p99_s": _pct(deliver, 0.99),
        "requests_per_job": total / jobs if jobs else None,
        "polls_per_job": counts.get("poll", 0) / jobs if jobs else None,
        "files_per_job": counts.get("file", 0) / jobs if jobs else None,
        "cpu_ms_per_job": cpu_s * 1000 / jobs if jobs else None,
        "cpu_cores_avg": cpu_s / wall_s if wall_s > 0 else None,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "rss_peak_mb": _rss_peak_mb(),
        "in_flight_peak": peak_in_flight(spans),
        "detected_by_webhook": len(trace.by_webhook),
        "naive_model": {
            "detect_mean_s": _mean(model_delays),
            "detect_p95_s": _pct(model_delays, 0.95),
            "requests_per_job": _mean([float(r) for r in model_requests]),
        },
    }
    if callback:
        out["callback_to_reply_p50_s"] = _pct(callback, 0.5)
        out["callback_to_reply_p99_s"] = _pct(callback, 0.99)
    if trace.failed:
        out["failures_sample"] = sorted(set(trace.failed.values()))[:5]
    return out


def _start_profile() -> Any:
    """cProfile of the event loop thread while measuring, when BENCH_PROFILE names a file prefix."""
    if not os.environ.get("BENCH_PROFILE"):
        return None
    import cProfile

    profiler = cProfile.Profile(time.thread_time)  # CPU time: a send that yields to the vendor is not ours
    profiler.enable()
    return profiler


def _spawn(coros: Iterable[Coroutine[Any, Any, None]]) -> set[asyncio.Task[None]]:
    """The submitting tasks, each dropped when done: the harness keeps no finished task (10,000
    of them would be ~10 MB of the bot process's RSS that is not the bot's)."""
    tasks: set[asyncio.Task[None]] = set()
    for coro in coros:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    return tasks


async def _memory_snapshot(trace: Trace, jobs: int) -> None:
    """When BENCH_TRACEMALLOC names a file, write the Python heap's top allocation sites once
    every job is at the vendor (tracemalloc runs from the start of measuring: slow, for
    diagnosis only)."""
    import tracemalloc

    out = os.environ["BENCH_TRACEMALLOC"]
    while len(trace.submitted) < jobs:  # noqa: ASYNC110 (diagnostic only: the trace has no event)
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    snap = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    with open(out, "w") as f:
        f.write(
            f"traced now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB, rss {_rss_now_mb():.1f}\n"
        )
        for stat in snap.statistics("lineno")[:60]:
            f.write(f"{stat}\n")


def _stop_profile(profiler: Any, mode: str) -> None:
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(f"{os.environ['BENCH_PROFILE']}.{mode}.prof")


# --- child: the real bot ----------------------------------------------------------------------


def _hook_provider(trace: Trace) -> None:
    """Wrap the provider class so the bot's own moments are seen without touching the engine."""
    from bot.app import load_provider

    cls: Any = load_provider(VENDOR)
    submit, poll, parse_webhook = cls.submit, cls.poll, cls.parse_webhook
    tag = re.compile(r"\bbench job (\d+)\b")

    async def hooked_submit(self: Any, request: Any) -> Any:
        sub = await submit(self, request)
        m = tag.search(request.prompt or "")
        if m:
            trace.index_of[sub.handle.job_id] = int(m.group(1))
            trace.submitted[sub.handle.job_id] = time.time()
            if sub.update is not None and sub.update.terminal:
                trace.detected.setdefault(sub.handle.job_id, time.time())
        return sub

    async def hooked_poll(self: Any, handle: Any) -> Any:
        update = await poll(self, handle)
        if update.terminal:
            trace.detected.setdefault(handle.job_id, time.time())
        return update

    def hooked_parse_webhook(self: Any, body: bytes, headers: Any) -> Any:
        update = parse_webhook(self, body, headers)
        if update is not None and update.terminal:
            try:
                rid = json.loads(body).get("request_id")
            except ValueError:
                rid = None
            if isinstance(rid, str) and rid not in trace.detected:
                trace.detected[rid] = time.time()
                trace.by_webhook.add(rid)
        return update

    cls.submit, cls.poll, cls.parse_webhook = hooked_submit, hooked_poll, hooked_parse_webhook


def _track_route_times() -> list[Any]:
    """Every RouteTimes the engine creates, to report how much history it had."""
    from bot import polling

    made: list[Any] = []
    init = polling.RouteTimes.__init__

    def tracked(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    polling.RouteTimes.__init__ = tracked  # type: ignore[method-assign]
    return made


def _history_samples(made: list[Any]) -> int | None:
    total = None
    for times in made:
        snap = getattr(times, "snapshot", None)
        if snap is not None:
            total = (total or 0) + sum(len(v) for v in snap().values())
    return total


class BenchReply:
    """A Reply that records when the result (or failure) arrived."""

    def __init__(self, index: int, trace: Trace, done: Callable[[], None]) -> None:
        self.index, self.trace, self._done = index, trace, done

    def ref(self) -> dict[str, Any]:
        return {"index": self.index}  # another replica rebuilds the reply from it

    async def progress(self, update: Any) -> None:
        pass

    async def result(self, result: Any) -> None:
        if self.index >= 0:
            self.trace.delivered.setdefault(self.index, time.time())
        self._done()

    async def failure(self, failure: Any) -> None:
        if self.index >= 0:
            self.trace.failed.setdefault(self.index, str(getattr(failure, "message", failure))[:120])
        self._done()


class _Countdown:
    def __init__(self, n: int) -> None:
        self.left = n
        self.last = time.time()
        self.event = asyncio.Event()
        if n <= 0:
            self.event.set()

    def tick(self) -> None:
        self.left -= 1
        self.last = time.time()
        if self.left <= 0:
            self.event.set()


def _engine_sizes(args: argparse.Namespace) -> tuple[int, int, bool]:
    """Workers and queue bound of a bot process: production's, `--workers` if given; a burst
    larger than workers + queue would be refused, so only then is the queue raised (and said)."""
    from bot.config import Settings

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    workers = args.workers or defaults.workers
    queue_size = defaults.queue_size
    queue_raised = args.jobs + args.warm_jobs * args.warm > workers + queue_size
    if queue_raised:
        queue_size = args.jobs + args.warm_jobs
    return workers, queue_size, queue_raised


async def run_bot(args: argparse.Namespace) -> dict[str, Any]:
    """One mode ('poll' or 'webhook') through BotApp; returns its figures."""
    trace = Trace()
    _hook_provider(trace)
    route_times = _track_route_times()
    from bot.app import BotApp
    from bot.commands import Actor, ImagineCommand
    from bot.config import Settings

    workers, queue_size, queue_raised = _engine_sizes(args)
    port = _free_port()
    offsets = arrivals(args.jobs, None if args.burst else args.rate, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(tmp),
            pixazo_api_key=KEY,
            pixazo_base_url=f"{args.vendor_url}/{VENDOR}",
            route_order=f"{VENDOR}:{MODEL}",
            http_host="127.0.0.1",
            http_port=port,
            public_base_url=f"http://127.0.0.1:{port}" if args.child == "webhook" else None,
            workers=workers,
            queue_size=queue_size,
            log_level="WARNING",
            media_allow_private=True,
        )
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            BotApp(settings, platforms=[]) as app,
        ):

            async def submit(i: int, label: str, index: int, done: _Countdown, at: float = 0.0) -> None:
                if at:
                    await asyncio.sleep(max(0.0, at - time.time()))
                reply = BenchReply(index, trace, done.tick)
                try:
                    await app.engine.submit(
                        Actor(platform="bench", tenant_id="bench", user_id=f"{label}{i}"),
                        ImagineCommand(prompt=f"{label} job {i} --size 512x512"),
                        reply,
                    )
                except Exception as exc:  # refused at admission: counted, not fatal
                    if index >= 0:
                        trace.failed[index] = f"refused: {type(exc).__name__}"
                    done.tick()

            history = None
            if args.warm:
                warm = _Countdown(args.warm_jobs)
                await asyncio.gather(*(submit(i, "warm", -1, warm) for i in range(args.warm_jobs)))
                await asyncio.wait_for(warm.event.wait(), args.timeout)
                history = _history_samples(route_times)
            await _vendor_reset(session, args.vendor_url)
            done = _Countdown(args.jobs)
            sampler = Sampler()
            sampler.start()
            if os.environ.get("BENCH_TRACEMALLOC"):
                import tracemalloc

                tracemalloc.start()
                asyncio.get_running_loop().create_task(_memory_snapshot(trace, args.jobs))
            threads0 = _thread_cpu()
            profiler = _start_profile()
            cpu0, start = _cpu(), time.time()
            tasks = _spawn(
                submit(i, "bench", i, done, start + off if off else 0.0) for i, off in enumerate(offsets)
            )
            try:
                await asyncio.wait_for(done.event.wait(), args.timeout)
            except TimeoutError:
                pass  # reported as missing
            end, cpu = done.last, _cpu() - cpu0
            _stop_profile(profiler, args.child)
            threads1 = _thread_cpu()
            await sampler.stop()
            if os.environ.get("BENCH_SAMPLES"):  # (wall, CPU s, RSS MiB) twice a second, to plot
                Path(f"{os.environ['BENCH_SAMPLES']}.{args.child}.json").write_text(
                    json.dumps(sampler.samples)
                )
            for t in list(tasks):
                t.cancel()
            stats = await _vendor_stats(session, args.vendor_url)
            out = figures(trace, stats, args.jobs, cpu, end - start)
            # "In flight": every job submitted to the vendor, none finished yet (long mixes only).
            dones = [stats["jobs"][v]["done_at"] for v in trace.index_of if v in stats["jobs"]]
            if trace.submitted and dones:
                steady = sampler.window(max(trace.submitted.values()), min(dones))
                if steady is not None:
                    out["in_flight_window"] = steady | {"jobs_in_flight": len(trace.submitted)}
            out["cpu_s_by_thread"] = {
                k: round(v - threads0.get(k, 0.0), 2) for k, v in sorted(threads1.items())
            }
            out |= {
                "mode": args.child,
                "warm": bool(args.warm),
                "warm_jobs": args.warm_jobs if args.warm else 0,
                "history_samples_at_start": history,
                "history_samples_at_end": _history_samples(route_times),
                "workers": workers,
                "queue_size": queue_size,
                "queue_size_raised": queue_raised,
            }
            ledger = getattr(app, "ledger", None)
            if ledger is not None and hasattr(ledger, "check_invariants"):
                problems = await ledger.check_invariants()
                out["ledger_invariants_ok"] = not problems
    return out


# --- child: one replica of several on one database ------------------------------------------


class BenchRestorer:
    """Rebuilds the Reply of a job another replica admitted, recording into this one's trace."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def restore(self, ref: dict[str, Any]) -> BenchReply:
        return BenchReply(int(ref.get("index", -1)), self.trace, lambda: None)


async def _all_over(url: str, jobs: int, timeout: float, every: float = 0.2) -> bool:
    """Until the shared database holds `jobs` jobs, none open and no message unsent (whichever
    replica holds them); False on timeout."""
    from bot.sql import open_database

    deadline = time.time() + timeout
    async with open_database(url) as db:
        while time.time() < deadline:
            total = await db.fetchval("SELECT COUNT(*) FROM jobs")
            left = await db.fetchval(
                "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('done', 'failed', 'cancelled')"
            )
            unsent = await db.fetchval("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            if total >= jobs and left == 0 and unsent == 0:
                return True
            await asyncio.sleep(every)
    return False


def _say(line: str) -> None:
    print(f"BENCH {line}", flush=True)


async def _hear() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def run_replica(args: argparse.Namespace) -> dict[str, Any]:
    """Replica K of R ('poll' or 'webhook') on the shared `--database-url`: admits every R-th
    job, delivers whatever it holds (any replica's), and reports its raw trace and CPU. The
    parent paces the phases over stdin/stdout (READY → WARM → WARMED → GO t → the output)."""
    k, r = (int(x) for x in args.replica.split("/"))
    trace = Trace()
    _hook_provider(trace)
    route_times = _track_route_times()
    from bot.app import BotApp
    from bot.commands import Actor, ImagineCommand
    from bot.config import Settings

    workers, queue_size, queue_raised = _engine_sizes(args)
    port = _free_port()
    offsets = arrivals(args.jobs, None if args.burst else args.rate, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=Path(tmp),
            database_url=args.database_url,
            secret_key=os.environ["BENCH_SECRET_KEY"],
            media_root=Path(args.media_root),
            pixazo_api_key=KEY,
            pixazo_base_url=f"{args.vendor_url}/{VENDOR}",
            route_order=f"{VENDOR}:{MODEL}",
            http_host="127.0.0.1",
            http_port=port,
            public_base_url=f"http://127.0.0.1:{port}" if args.child == "webhook" else None,
            workers=workers,
            queue_size=queue_size,
            log_level="WARNING",
            media_allow_private=True,
        )
        async with BotApp(settings, platforms=[]) as app:
            app.engine.register_restorer("bench", BenchRestorer(trace))

            async def submit(i: int, label: str, index: int, at: float = 0.0) -> None:
                if at:
                    await asyncio.sleep(max(0.0, at - time.time()))
                try:
                    await app.engine.submit(
                        Actor(platform="bench", tenant_id="bench", user_id=f"{label}{i}"),
                        ImagineCommand(prompt=f"{label} job {i} --size 512x512"),
                        BenchReply(index, trace, lambda: None),
                    )
                except Exception as exc:  # refused at admission: counted, not fatal
                    if index >= 0:
                        trace.failed[index] = f"refused: {type(exc).__name__}"

            _say("READY")
            history = None
            command = await _hear()
            warm_jobs = args.warm_jobs if args.warm else 0
            if command == "WARM":
                await asyncio.gather(*(submit(i, "warm", -1) for i in range(k, warm_jobs, r)))
                await _all_over(args.database_url, warm_jobs, args.timeout)
                history = _history_samples(route_times)
                _say("WARMED")
                command = await _hear()
            start = float(command.split()[1])  # GO <wall time to start at>
            await asyncio.sleep(max(0.0, start - time.time()))
            sampler = Sampler()
            sampler.start()
            threads0 = _thread_cpu()
            profiler = _start_profile()
            cpu0 = _cpu()
            tasks = _spawn(
                submit(i, "bench", i, start + offsets[i] if offsets[i] else 0.0)
                for i in range(k, args.jobs, r)
            )
            finished = await _all_over(args.database_url, warm_jobs + args.jobs, args.timeout)
            cpu = _cpu() - cpu0
            _stop_profile(profiler, f"{args.child}.{k}")
            threads1 = _thread_cpu()
            await sampler.stop()
            for t in list(tasks):
                t.cancel()
    return {
        "replica": k,
        "pid": os.getpid(),
        "finished": finished,
        "start": start,
        "cpu_s": cpu,
        "rss_peak_mb": _rss_peak_mb(),
        "cpu_s_by_thread": {
            name: round(v - threads0.get(name, 0.0), 2) for name, v in sorted(threads1.items())
        },
        "history_samples_at_start": history,
        "history_samples_at_end": _history_samples(route_times),
        "workers": workers,
        "queue_size": queue_size,
        "queue_size_raised": queue_raised,
        "trace": {
            "submitted": trace.submitted,
            "index_of": trace.index_of,
            "detected": trace.detected,
            "by_webhook": sorted(trace.by_webhook),
            "delivered": trace.delivered,
            "failed": trace.failed,
        },
    }


# --- child: the naive 5 s poller --------------------------------------------------------------


async def run_naive(args: argparse.Namespace) -> dict[str, Any]:
    """Baseline: the provider client, submit, poll every 5 s, download. No engine."""
    from bot.app import load_provider
    from providers.base import GenerationRequest, Kind, ProviderSettings

    trace = Trace()
    offsets = arrivals(args.jobs, None if args.burst else args.rate, args.seed)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        provider = load_provider(VENDOR)(
            session, ProviderSettings(base_url=f"{args.vendor_url}/{VENDOR}", api_key=KEY)
        )
        await _vendor_reset(session, args.vendor_url)

        async def one(i: int, at: float) -> None:
            if at:
                await asyncio.sleep(max(0.0, at - time.time()))
            request = GenerationRequest(
                kind=Kind.IMAGE, model=MODEL, prompt=f"naive job {i}", width=512, height=512
            )
            try:
                sub = await provider.submit(request)
                trace.index_of[sub.handle.job_id] = i
                while True:
                    await asyncio.sleep(NAIVE_EVERY)
                    update = await provider.poll(sub.handle)
                    if update.terminal:
                        trace.detected[sub.handle.job_id] = time.time()
                        break
                for artifact in update.artifacts:
                    if artifact.url:
                        async with session.get(artifact.url) as resp:
                            await resp.read()
                trace.delivered[i] = time.time()
            except Exception as exc:  # a baseline has no retries: count it
                trace.failed[i] = type(exc).__name__

        cpu0, start = _cpu(), time.time()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(one(i, start + off if off else 0.0) for i, off in enumerate(offsets))),
                args.timeout,
            )
        except TimeoutError:
            pass
        end = max([start, *trace.delivered.values()])
        cpu = _cpu() - cpu0
        stats = await _vendor_stats(session, args.vendor_url)
    out = figures(trace, stats, args.jobs, cpu, end - start)
    out |= {"mode": "naive", "warm": False, "poll_every_s": NAIVE_EVERY}
    return out


# --- parent: several replicas of one mode on one database -----------------------------------


def merge_replicas(parts: list[dict[str, Any]], stats: dict[str, Any], jobs: int) -> dict[str, Any]:
    """One mode's figures from its replicas' raw traces: a job's moments from whichever replica
    saw them (first detection wins), CPU summed over the replicas, wall time from the common
    start to the last delivery anywhere, RSS the largest replica's (each listed)."""
    trace = Trace()
    for part in parts:
        t = part["trace"]
        trace.submitted.update(t["submitted"])
        trace.index_of.update(t["index_of"])
        for vid, at in t["detected"].items():
            trace.detected[vid] = min(at, trace.detected.get(vid, at))
        trace.by_webhook.update(t["by_webhook"])
        for i, at in t["delivered"].items():
            trace.delivered[int(i)] = min(at, trace.delivered.get(int(i), at))
        trace.failed.update({int(i): why for i, why in t["failed"].items()})
    for i in trace.delivered:
        trace.failed.pop(i, None)  # refused by one replica's first try, delivered all the same
    start = min(p["start"] for p in parts)
    end = max([start, *trace.delivered.values()])
    cpu = sum(p["cpu_s"] for p in parts)
    out = figures(trace, stats, jobs, cpu, end - start)
    out["rss_peak_mb"] = max(p["rss_peak_mb"] for p in parts)
    out["replica_figures"] = [
        {
            "replica": p["replica"],
            "rss_peak_mb": p["rss_peak_mb"],
            "cpu_s": p["cpu_s"],
            "cpu_ms_per_job": p["cpu_s"] * 1000 / jobs if jobs else None,
            "delivered": len(p["trace"]["delivered"]),
            "submitted_to_vendor": len(p["trace"]["submitted"]),
            "cpu_s_by_thread": p["cpu_s_by_thread"],
            "history_samples_at_start": p["history_samples_at_start"],
        }
        for p in parts
    ]
    first = parts[0]
    out |= {
        "workers": first["workers"],
        "queue_size": first["queue_size"],
        "queue_size_raised": first["queue_size_raised"],
        "finished": all(p["finished"] for p in parts),
    }
    return out


async def _expect(proc: asyncio.subprocess.Process, word: str, timeout: float) -> None:
    """Until the child says `BENCH word` (its other output is skipped)."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"replica exited before {word} (exit {await proc.wait()})")
        if line.decode().strip() == f"BENCH {word}":
            return


async def _tell(procs: list[asyncio.subprocess.Process], line: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{line}\n".encode())
        await proc.stdin.drain()


async def run_replicas(args: argparse.Namespace, mode: str, vendor_url: str) -> dict[str, Any]:
    """`--replicas` processes of one bot mode on a scratch database of `--database-url`, paced
    together: all up, the warm-up (if any) done everywhere, the vendor's counters reset, then one
    common start. The figures are merged from their traces (`merge_replicas`)."""
    import secrets

    from bench.ledger_bench import scratch_database
    from bot.ledger import CreditLedger
    from bot.sql import open_database, sqlite_path

    with tempfile.TemporaryDirectory() as tmp:
        # A fresh database per run: PostgreSQL's scratch database, or a temp SQLite file.
        server = "" if sqlite_path(args.database_url) is not None else args.database_url
        async with scratch_database(server, tmp) as (url, where):
            media = Path(tmp) / "media"
            media.mkdir()
            env = dict(os.environ, BENCH_SECRET_KEY=secrets.token_hex(16))
            procs = []
            try:
                for k in range(args.replicas):
                    out = Path(tmp) / f"out{k}.json"
                    argv = _child_argv(args, mode, vendor_url, out)
                    argv += ["--replica", f"{k}/{args.replicas}", "--database-url", url]
                    argv += ["--media-root", str(media)]
                    procs.append(
                        await asyncio.create_subprocess_exec(
                            *argv,
                            cwd=str(ROOT),
                            env=env,
                            stdin=asyncio.subprocess.PIPE,
                            stdout=asyncio.subprocess.PIPE,
                        )
                    )
                for proc in procs:
                    await _expect(proc, "READY", 120)
                if args.warm:
                    await _tell(procs, "WARM")
                    for proc in procs:
                        await _expect(proc, "WARMED", args.timeout)
                async with aiohttp.ClientSession() as session:
                    await _vendor_reset(session, vendor_url)
                    await _tell(procs, f"GO {time.time() + 0.5}")
                    codes = [await asyncio.wait_for(p.wait(), args.timeout + 120) for p in procs]
                    stats = await _vendor_stats(session, vendor_url)
            finally:
                for proc in procs:
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
            parts = []
            for k, code in enumerate(codes):
                out = Path(tmp) / f"out{k}.json"
                if code != 0 or not out.exists():
                    return {"mode": mode, "error": f"replica {k} exited {code}"}
                parts.append(json.loads(out.read_text()))
            async with open_database(url) as db:
                problems = await CreditLedger(db).check_invariants()
    result = merge_replicas(parts, stats, args.jobs)
    result |= {
        "mode": mode,
        "warm": bool(args.warm),
        "warm_jobs": args.warm_jobs if args.warm else 0,
        "replicas": args.replicas,
        "database": where,
        "ledger_invariants_ok": not problems,
    }
    return result


# --- parent: one process per mode -------------------------------------------------------------


def _start_vendor(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    lo, hi = args.latency
    argv = [sys.executable, str(ROOT / "bench" / "emulator.py"), "--dist", args.dist]
    argv += ["--latency", f"{lo}:{hi}", "--seed", str(args.seed)]
    proc = subprocess.Popen(
        argv,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("SANDBOX_PORT="):
        proc.kill()
        raise SystemExit(f"vendor emulator did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.strip().split('=')[1])}"


def _child_argv(args: argparse.Namespace, mode: str, vendor_url: str, out: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--vendor-url", vendor_url]
    argv += ["--child-out", str(out), "--jobs", str(args.jobs), "--seed", str(args.seed)]
    argv += ["--timeout", str(args.timeout), "--warm-jobs", str(args.warm_jobs)]
    argv += ["--burst"] if args.burst else ["--rate", str(args.rate)]
    if args.warm:
        argv.append("--warm")
    if args.workers:
        argv += ["--workers", str(args.workers)]
    return argv


def run_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One mode in its own process, against a fresh vendor process."""
    vendor, url = _start_vendor(args)
    try:
        if mode != "naive" and args.database_url:
            return asyncio.run(run_replicas(args, mode, url))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out.json"
            child = subprocess.run(_child_argv(args, mode, url, out), cwd=str(ROOT), check=False)
            if child.returncode != 0 or not out.exists():
                return {"mode": mode, "error": f"child exited {child.returncode}"}
            return json.loads(out.read_text())  # type: ignore[no-any-return]
    finally:
        vendor.terminate()
        vendor.wait(10)


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric figure over the repeats (and its min), other fields from run 1."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    mins: dict[str, float] = {}
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and all(isinstance(v, int | float) for v in values)
        ):
            out[key] = statistics.median(values)  # type: ignore[type-var]
            mins[key] = min(values)  # type: ignore[type-var]
    out["min"] = mins
    out["repeats"] = len(runs)
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Baseline detection / mode detection (higher better), mode requests / baseline (lower better)."""
    naive = results.get("naive")
    out: dict[str, dict[str, float | None]] = {}

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for mode, f in results.items():
        if mode == "naive" or "error" in f:
            continue
        model = f.get("naive_model") or {}
        out[mode] = {
            # against the naive process measured in this run (it queues at the emulator in a burst)
            "detect_mean_x": div((naive or {}).get("detect_mean_s"), f.get("detect_mean_s")),
            "detect_p95_x": div((naive or {}).get("detect_p95_s"), f.get("detect_p95_s")),
            "requests_x": div(f.get("requests_per_job"), (naive or {}).get("requests_per_job")),
            # against a 5 s poller on paper over the same jobs (no queueing: the stricter bar)
            "model_detect_mean_x": div(model.get("detect_mean_s"), f.get("detect_mean_s")),
            "model_detect_p95_x": div(model.get("detect_p95_s"), f.get("detect_p95_s")),
            "model_requests_x": div(f.get("requests_per_job"), model.get("requests_per_job")),
        }
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


COLUMNS = [
    ("mode", "mode"),
    ("jobs", "jobs"),
    ("warm", "warm"),
    ("detect_mean_s", "detect mean s"),
    ("detect_p95_s", "detect p95 s"),
    ("deliver_p99_s", "deliver p99 s"),
    ("requests_per_job", "req/job"),
    ("rss_peak_mb", "RSS MB"),
    ("cpu_cores_avg", "cores"),
    ("cpu_ms_per_job", "CPU ms/job"),
    ("callback_to_reply_p99_s", "callback→Reply p99 s"),
    ("failed", "failed"),
    ("missing", "missing"),
]


def markdown(results: dict[str, dict[str, Any]], rat: dict[str, dict[str, float | None]]) -> str:
    """The README table for this run."""
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for f in results.values():
        lines.append(
            "| " + " | ".join(_fmt(f.get(k), 1 if k == "rss_peak_mb" else 2) for k, _ in COLUMNS) + " |"
        )
    lines.append("")
    for mode, f in results.items():
        for part in f.get("replica_figures", []):
            lines.append(
                f"- {mode} replica {part['replica']} of {f['replicas']} ({f['database']}): "
                f"delivered {part['delivered']}, submitted {part['submitted_to_vendor']} to the vendor, "
                f"CPU {_fmt(part['cpu_s'])} s ({_fmt(part['cpu_ms_per_job'])} ms per job of all), "
                f"RSS {_fmt(part['rss_peak_mb'], 1)} MB"
            )
    for mode, r in rat.items():
        lines.append(
            f"- {mode} vs the naive process: detection ×{_fmt(r['detect_mean_x'])} sooner on the mean, "
            f"×{_fmt(r['detect_p95_x'])} at p95, requests ×{_fmt(r['requests_x'])}; vs a 5 s poller on "
            f"paper over the same jobs: ×{_fmt(r['model_detect_mean_x'])}, ×{_fmt(r['model_detect_p95_x'])}, "
            f"requests ×{_fmt(r['model_requests_x'])}"
        )
    return "\n".join(lines)


def _redact(arg: str) -> str:
    """A database URL's password never goes into the printed command or the JSON."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", arg)


def parent(args: argparse.Namespace) -> None:
    """Run every mode `--repeat` times, print the table, write the JSON."""
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; known: {', '.join(MODES)}")
    lo, hi = args.latency
    config: dict[str, Any] = {
        "command": " ".join(["python", "bench/engine_bench.py", *map(_redact, sys.argv[1:])]),
        "jobs": args.jobs,
        "dist": args.dist,
        "latency_s": [lo, hi],
        "arrivals": "burst" if args.burst else f"poisson {args.rate}/s",
        "seed": args.seed,
        "warm": bool(args.warm),
        "warm_jobs": args.warm_jobs if args.warm else 0,
        "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "replicas": args.replicas if args.database_url else 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.dist == "lognormal":
        mu, sigma = lognormal_params(lo, hi)
        config["lognormal"] = {"median_s": math.exp(mu), "sigma": sigma, "truncated_to": [lo, hi]}
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs = []
        for r in range(args.repeat):
            print(
                f"[{time.strftime('%H:%M:%S')}] {mode} run {r + 1}/{args.repeat}…",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run_mode(args, mode))
        results[mode] = _aggregate(runs)
    rat = ratios(results)
    report = {"config": config, "modes": results, "ratios": rat}
    print(f"engine benchmark: {config['command']}")
    print(markdown(results, rat))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--dist", choices=["lognormal", "uniform"], default="lognormal")
    p.add_argument(
        "--latency", type=parse_range, default=(2.0, 20.0), metavar="LO:HI", help="seconds, e.g. 2:20"
    )
    p.add_argument("--modes", default="naive,poll,webhook")
    p.add_argument(
        "--burst", action="store_true", help="submit every job at t = 0 (default: Poisson arrivals)"
    )
    p.add_argument("--rate", type=float, default=5.0, help="Poisson arrivals per second (default 5)")
    p.add_argument("--warm", action="store_true", help="pre-seed the route history with a warm-up batch")
    p.add_argument("--warm-jobs", type=int, default=200, help="size of the warm-up batch (default 200)")
    p.add_argument("--workers", type=int, default=0, help="override Settings.workers (default: production)")
    p.add_argument("--repeat", type=int, default=1, help="runs per mode; the JSON holds median and min")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take")
    p.add_argument("--json", metavar="OUT.json")
    p.add_argument(
        "--database-url",
        default="",
        help="run the bot modes as --replicas processes on a scratch database of this server "
        "(postgresql://…; or sqlite:///ANY for a temp SQLite file, where replicas share no work)",
    )
    p.add_argument("--replicas", type=int, default=2, help="bot processes with --database-url (default 2)")
    p.add_argument("--replica", help=argparse.SUPPRESS)
    p.add_argument("--media-root", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--vendor-url", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p


def main() -> None:
    """Entry point: the parent by default, one mode with `--child`."""
    args = build_parser().parse_args()
    if not args.child:
        parent(args)
        return
    if args.child == "naive":
        result = asyncio.run(run_naive(args))
    else:
        result = asyncio.run(run_replica(args) if args.replica else run_bot(args))
    Path(args.child_out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
