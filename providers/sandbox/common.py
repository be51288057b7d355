"""Shared machinery of the vendor emulators: fault injection, job timing, real media, files,
jobs kept across restarts and callbacks sent when a job completes.

Each emulator (`providers/sandbox/<vendor>.py`) subclasses `VendorEmulator` and adds the routes
of its vendor's documented wire format. `Sandbox` (in `server.py`) mounts them all on one
loopback aiohttp server, each under `/<vendor>` so the vendor's base URL is
`http://127.0.0.1:<port>/<vendor>`.

Jobs survive a restart when the emulator has a `state_dir`: each job is one JSON file there,
written before the submit is answered (and again when its outputs or callbacks change), and its
result files sit beside it. We keep state rather than encoding the request in the job id
because ids are not always ours (Runware's taskUUID is the client's), prompts run to 4000
characters, and an edit needs its input image, which the bot's signed link may no longer serve
after a restart. Job times are stored on the wall clock, so a job whose latency passed while the
process was down is finished at its next status call. Nothing stored names the port: vendor
clients join their base URL (the new port) to the documented paths, and result URLs are built
at answer time, so a sandbox on another port after a restart still answers for old jobs.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from providers.sandbox.media import average_colour, render_edit, render_glb, render_png, render_preview

__all__ = [
    "FAL_PRESETS",
    "CallbackSent",
    "Fault",
    "FaultPlan",
    "Phase",
    "SandboxJob",
    "VendorEmulator",
    "json_response",
    "render_edit",
    "render_glb",
    "render_png",
]

_log = logging.getLogger(__name__)

_CONTENT_TYPES = {".png": "image/png", ".glb": "model/gltf-binary"}
#: a timer may fire a hair before its moment; re-arm for at least this long (seconds)
_REARM = 0.001
#: outputs are drawn this long before a job ends, so its callback is not late by the drawing
_DRAW_AHEAD = 2.0
#: jobs older than this (wall clock) are forgotten at the next start, files and all
KEEP_SECONDS = 24 * 3600


class Fault(StrEnum):
    """What an emulator can be told to do wrong, on demand."""

    AUTH = "auth"  # the key is refused (401, or the vendor's own status)
    FUNDS = "funds"  # out of balance (402, or the vendor's own status/body)
    RATE_LIMIT = "rate_limit"  # 429 with Retry-After
    SERVER_ERROR = "server_error"  # 500/503
    TIMEOUT = "timeout"  # no answer for `timeout_seconds`
    MALFORMED = "malformed"  # 200 with a body that is not JSON
    REJECT = "reject"  # 400 invalid request in the vendor's shape
    STUCK = "stuck"  # the job never leaves PROCESSING
    JOB_FAILED = "job_failed"  # the job ends FAILED (charged per vendor rules)
    JOB_ERROR = "job_error"  # the job ends in a system ERROR (not charged)
    DEAD_URL = "dead_url"  # the result URL answers 404
    OVERSIZE = "oversize"  # the result file is larger than any sane cap


#: faults that act on one HTTP request; the others mark the next job created
REQUEST_FAULTS = frozenset(
    {
        Fault.AUTH,
        Fault.FUNDS,
        Fault.RATE_LIMIT,
        Fault.SERVER_ERROR,
        Fault.TIMEOUT,
        Fault.MALFORMED,
        Fault.REJECT,
    }
)


#: pixel sizes of fal's `image_size` presets, which AI/ML API and Pixazo name without sizes (assumed)
FAL_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


class Phase(StrEnum):
    """Where an emulated job is; each emulator maps these to its vendor's status words."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job failed (charged per vendor rules)
    ERROR = "error"  # a system error (not charged)

    @property
    def finished(self) -> bool:
        """True once the job will not change any more."""
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.ERROR)


@dataclass(slots=True)
class FaultPlan:
    """`count` requests (or jobs) in a row suffer `fault`; `stage` limits it to
    "submit", "poll" or "file" requests (None: the next request of any stage)."""

    fault: Fault
    count: int = 1
    stage: str | None = None
    retry_after: float = 1.0


class CallbackSent(NamedTuple):
    """One callback POST: which job, when it was due (the job's completion) and when it went
    out, both on the emulator's clock (monotonic in-process, wall clock for the CLI server)."""

    vendor: str
    job_id: str
    due_at: float
    sent_at: float


@dataclass(slots=True)
class SandboxJob:
    """One emulated vendor job and how long it takes."""

    id: str
    model: str
    request: dict[str, Any]
    created: float  # on the emulator's clock
    latency: float
    faults: set[Fault] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)  # file names under /files/
    webhook_url: str | None = None
    webhook_sent: bool = False
    cost_usd: float | None = None
    created_at: float = field(default_factory=time.time)  # wall clock, what a restart reads
    rendered: bool = False  # outputs drawn (they are drawn once, at the first look after the end)
    inputs: list[str] = field(default_factory=list)  # stored input images (edits, image→3D)
    extra: dict[str, Any] = field(default_factory=dict)  # vendor-specific state, JSON-able

    @property
    def done_at(self) -> float:
        """When the job ends, on the emulator's clock."""
        return self.created + self.latency

    def phase(self, now: float) -> Phase:
        """The job's phase at time `now`."""
        elapsed = now - self.created
        if elapsed < min(0.25 * self.latency, 1.0):
            return Phase.QUEUED
        if Fault.STUCK in self.faults or elapsed < self.latency:
            return Phase.RUNNING
        return self.outcome()

    def outcome(self) -> Phase:
        """How the job ends once its latency has passed (STUCK aside): ERROR, FAILED or SUCCEEDED."""
        if Fault.JOB_ERROR in self.faults:
            return Phase.ERROR
        if Fault.JOB_FAILED in self.faults:
            return Phase.FAILED
        return Phase.SUCCEEDED

    def progress(self, now: float) -> float:
        """Fraction done, for vendors that report progress."""
        if self.latency <= 0:
            return 1.0
        return max(0.0, min(1.0, (now - self.created) / self.latency))

    def to_record(self) -> dict[str, Any]:
        """The job as JSON (the clock-relative `created` is dropped: `created_at` replaces it)."""
        record = asdict(self)
        record.pop("created")
        record["faults"] = sorted(self.faults)
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], *, clock_now: float, wall_now: float) -> SandboxJob:
        """A stored job on this process's clock: as old as the wall clock says it is."""
        values = dict(record)
        values["faults"] = {Fault(f) for f in values.get("faults", ())}
        values["created"] = clock_now - (wall_now - float(values["created_at"]))
        return cls(**values)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer as vendors send it."""
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class VendorEmulator(abc.ABC):
    """Base of every vendor emulator: key check, fault queue, latency, files, webhooks."""

    name: str  # the path prefix and vendor name, e.g. "pixazo"

    def __init__(
        self,
        *,
        api_key: str = "sandbox-key",
        latency: tuple[float, float] = (0.3, 1.0),
        clock: Callable[[], float] = time.monotonic,
        timeout_seconds: float = 30.0,
        oversize_bytes: int = 64 * 1024 * 1024,
        seed: int | None = None,
        render_cache: bool = False,
        state_dir: Path | str | None = None,
        callback_log: list[CallbackSent] | None = None,
    ) -> None:
        self.api_key = api_key
        self.latency = latency
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self.oversize_bytes = oversize_bytes
        self.rng = random.Random(seed)
        # Benchmarks measure the bot, not Pillow: with the cache on, one image per size is
        # drawn and reused (the prompt is no longer drawn on each).
        self.render_cache = render_cache
        self._rendered: dict[tuple[int, int], bytes] = {}
        self._render_lock = asyncio.Lock()  # many jobs start at once: draw each size once
        #: where jobs and files are kept across restarts (None: in memory only, as benchmarks want)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.jobs: dict[str, SandboxJob] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # name -> (body, content type)
        self.requests: list[tuple[str, str]] = []  # (method, path) log for assertions
        self.webhooks_sent: list[tuple[str, dict[str, Any]]] = []
        #: every callback sent, with its due and send times (the Sandbox shares one list)
        self.callback_log: list[CallbackSent] = callback_log if callback_log is not None else []
        self._plans: deque[FaultPlan] = deque()
        self._job_faults: deque[Fault] = deque()
        self.base_url = ""  # set by the Sandbox once it listens
        self.session: aiohttp.ClientSession | None = None  # set by the Sandbox
        self._bg: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._job_locks: dict[str, asyncio.Lock] = {}

    # --- fault injection --------------------------------------------------------------

    def inject(
        self,
        fault: Fault | str,
        count: int = 1,
        *,
        stage: str | None = None,
        retry_after: float = 1.0,
    ) -> None:
        """Make the next `count` matching requests (or jobs) suffer `fault`."""
        fault = Fault(fault)
        if fault in REQUEST_FAULTS:
            self._plans.append(FaultPlan(fault, count, stage, retry_after))
        else:
            self._job_faults.extend([fault] * count)

    def clear_faults(self) -> None:
        """Forget every pending fault."""
        self._plans.clear()
        self._job_faults.clear()

    def take_fault(self, stage: str) -> FaultPlan | None:
        """The plan that applies to this request, consuming one use of it."""
        for plan in self._plans:
            if plan.stage in (None, stage):
                plan.count -= 1
                if plan.count <= 0:
                    self._plans.remove(plan)
                return plan
        return None

    def take_job_faults(self) -> set[Fault]:
        """Job-level faults for a job being created now."""
        return {self._job_faults.popleft()} if self._job_faults else set()

    async def fault_response(self, stage: str) -> web.Response | None:
        """The answer for an injected request fault at `stage`, or None to proceed."""
        plan = self.take_fault(stage)
        if plan is None:
            return None
        if plan.fault is Fault.TIMEOUT:
            await asyncio.sleep(self.timeout_seconds)
            return json_response({"message": "late"}, 504)
        if plan.fault is Fault.MALFORMED:
            return web.Response(text='{"status": "COMPL', status=200, content_type="application/json")
        resp = self.error_response(plan.fault)
        if plan.fault is Fault.RATE_LIMIT:
            resp.headers["Retry-After"] = f"{plan.retry_after:g}"
        return resp

    async def admit(self, request: web.Request, stage: str) -> web.Response | None:
        """Record a vendor call, then answer it with an injected fault at `stage` or the
        vendor's refusal of a wrong key; None lets the handler go on."""
        self.requests.append((request.method, request.path))
        if (fault := await self.fault_response(stage)) is not None:
            return fault
        if not self.key_ok(request):
            return self.error_response(Fault.AUTH)
        return None

    @abc.abstractmethod
    def error_response(self, fault: Fault) -> web.Response:
        """The vendor's own status and error body for AUTH, FUNDS, RATE_LIMIT, SERVER_ERROR
        and REJECT."""

    @abc.abstractmethod
    def key_ok(self, request: web.Request) -> bool:
        """Whether the request carries the right key in the vendor's header."""

    @abc.abstractmethod
    def add_routes(self, app: web.Application) -> None:
        """Register the vendor's routes (relative to the `/<vendor>` prefix)."""

    # --- jobs ----------------------------------------------------------------------------

    def new_job(self, model: str, request: dict[str, Any], *, prefix: str = "") -> SandboxJob:
        """Create a job with a latency drawn from the configured range and pending job faults."""
        job = SandboxJob(
            id=f"{prefix}{uuid.uuid4()}",
            model=model,
            request=request,
            created=self.clock(),
            latency=self.rng.uniform(*self.latency),
            faults=self.take_job_faults(),
        )
        self.jobs[job.id] = job
        return job

    async def accept(self, job: SandboxJob) -> None:
        """Keep an asynchronous job (before its submit is answered) and arm its callbacks."""
        await self.save(job)
        self.arm(job)

    def job_lock(self, job: SandboxJob) -> asyncio.Lock:
        """One lock per job: polls and callbacks may race to draw its outputs once."""
        return self._job_locks.setdefault(job.id, asyncio.Lock())

    async def hold(self, job: SandboxJob) -> bool:
        """Keep a synchronous call open as the vendor would: the job's latency, or
        `timeout_seconds` for a STUCK job (then False: answer with the vendor's timeout)."""
        if Fault.STUCK in job.faults:
            await asyncio.sleep(self.timeout_seconds)
            return False
        await asyncio.sleep(job.latency)
        return True

    # --- state across restarts --------------------------------------------------------------

    async def save(self, job: SandboxJob) -> None:
        """Write the job's record under `state_dir` (nothing without one)."""
        if self.state_dir is None:
            return
        await asyncio.to_thread(self._write_record, job.id, json.dumps(job.to_record()))

    def _write_record(self, job_id: str, text: str) -> None:
        folder = self.state_dir / "jobs"  # type: ignore[operator]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{job_id}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / f"{job_id}.json")  # a crash leaves the old record or the new

    async def load(self) -> int:
        """Read the jobs kept under `state_dir` and re-arm their callbacks; returns the count."""
        if self.state_dir is None:
            return 0
        records = await asyncio.to_thread(self._read_records)
        clock_now, wall_now = self.clock(), time.time()
        for record in records:
            try:
                job = SandboxJob.from_record(record, clock_now=clock_now, wall_now=wall_now)
            except (KeyError, TypeError, ValueError):
                _log.info("sandbox %s: skipped an unreadable job record", self.name)
                continue
            self.jobs[job.id] = job
            self.restored(job)
            self.arm(job)
        if records:
            _log.debug("sandbox %s: %d job(s) kept from the last run", self.name, len(records))
        return len(records)

    def _read_records(self) -> list[dict[str, Any]]:
        folder = self.state_dir / "jobs"  # type: ignore[operator]
        out = []
        cutoff = time.time() - KEEP_SECONDS
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text(encoding="utf-8"))
                if float(record.get("created_at", 0)) >= cutoff:
                    out.append(record)
                    continue
                # Vendors expire old jobs too; the demo's data dir must not grow for ever.
                for stale in (self.state_dir / "files").glob(f"{path.stem}*"):  # type: ignore[operator]
                    stale.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
        return out

    def restored(self, job: SandboxJob) -> None:  # noqa: B027 - optional hook
        """Called for each job read back after a restart (vendors rebuild their indexes)."""

    # --- files ---------------------------------------------------------------------------

    async def put_file(self, name: str, body: bytes, content_type: str) -> None:
        """Keep a produced or received file (on disk too, with a `state_dir`)."""
        self.files[name] = (body, content_type)
        if self.state_dir is not None:
            await asyncio.to_thread(self._write_file, name, body)

    def _write_file(self, name: str, body: bytes) -> None:
        folder = self.state_dir / "files"  # type: ignore[operator]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, folder / name)

    async def get_file(self, name: str) -> tuple[bytes, str] | None:
        """A kept file, from memory or (after a restart) from `state_dir`."""
        if name in self.files:
            return self.files[name]
        if self.state_dir is None or "/" in name or name.startswith("."):
            return None
        path = self.state_dir / "files" / name
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return None
        return body, _CONTENT_TYPES.get(path.suffix, "application/octet-stream")

    async def fetch_input(self, url: str) -> bytes | None:
        """An input image's bytes, or None when it does not download: vendors fetch edit and
        image→3D inputs themselves, once, at submit."""
        assert self.session is not None
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                body = await resp.read()
                return body if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def fetchable(self, url: str) -> bool:
        """Whether an input URL downloads."""
        return await self.fetch_input(url) is not None

    async def fetch_inputs(self, urls: list[str]) -> list[bytes] | None:
        """Every input image's bytes, or None when one does not download."""
        bodies = []
        for url in urls:
            body = await self.fetch_input(url)
            if body is None:
                return None
            bodies.append(body)
        return bodies

    async def keep_inputs(self, job: SandboxJob, bodies: list[bytes]) -> None:
        """Keep a job's input images with it (an edit is drawn from them, maybe after a restart)."""
        for i, body in enumerate(bodies):
            name = f"{job.id}-input-{i}.png"
            await self.put_file(name, body, "image/png")
            job.inputs.append(name)

    async def _input(self, job: SandboxJob) -> bytes | None:
        if not job.inputs:
            return None
        kept = await self.get_file(job.inputs[0])
        return kept[0] if kept else None

    def file_url(self, name: str) -> str:
        """Where a produced file is served."""
        return f"{self.base_url}/files/{name}"

    def output_urls(self, job: SandboxJob) -> list[str]:
        """The job's result URLs on this process's port."""
        return [self.file_url(name) for name in job.outputs]

    async def produce_images(
        self, job: SandboxJob, prompt: str, width: int, height: int, count: int, seed: int | None
    ) -> list[str]:
        """Draw `count` PNGs for a job once (an edit recolours its kept input), store them and
        return their URLs."""
        async with self.job_lock(job):
            if not job.rendered:
                source = await self._input(job)
                for i in range(count):
                    name = f"{job.id}-{i}.png"
                    if Fault.OVERSIZE not in job.faults:
                        body = await self._png(prompt, width, height, (seed or 0) + i, source)
                        await self.put_file(name, body, "image/png")
                    job.outputs.append(name)
                job.rendered = True
                await self.save(job)
        return self.output_urls(job)

    async def _png(self, prompt: str, width: int, height: int, seed: int, source: bytes | None) -> bytes:
        if source is not None:
            try:
                return await asyncio.to_thread(render_edit, source, prompt, width, height, seed)
            except OSError:  # not an image after all: draw the prompt instead
                _log.debug("sandbox %s: edit input is not an image", self.name)
        if not self.render_cache:
            return await asyncio.to_thread(render_png, prompt, width, height, seed)
        async with self._render_lock:
            if (width, height) not in self._rendered:
                self._rendered[(width, height)] = await asyncio.to_thread(
                    render_png, "sandbox", width, height, 0
                )
        return self._rendered[(width, height)]

    async def produce_model(self, job: SandboxJob, label: str) -> tuple[str, str]:
        """A GLB mesh and a PNG thumbnail for a 3D job, drawn once; returns their URLs. The
        mesh depends on the prompt; an image→3D job is painted with its input's colour."""
        async with self.job_lock(job):
            if not job.rendered:
                glb_name, thumb_name = f"{job.id}.glb", f"{job.id}-thumb.png"
                source = await self._input(job)
                colour = None
                given = job.request.get("seed")
                seed = given if isinstance(given, int) and not isinstance(given, bool) else 0
                if source is not None:
                    # image→3D: the input picks the shape's variation and paints it
                    seed ^= int.from_bytes(hashlib.sha256(source).digest()[:4], "big")
                    with contextlib.suppress(OSError):
                        colour = await asyncio.to_thread(average_colour, source)
                glb = await asyncio.to_thread(render_glb, label, seed, colour)
                await self.put_file(glb_name, glb, "model/gltf-binary")
                thumb = await asyncio.to_thread(render_preview, label, 256, seed, colour)
                await self.put_file(thumb_name, thumb, "image/png")
                job.outputs += [glb_name, thumb_name]
                job.rendered = True
                await self.save(job)
        glb_url, thumb_url = self.output_urls(job)[-2:]
        return glb_url, thumb_url

    def is_dead(self, name: str) -> bool:
        """Whether a file belongs to a job whose result URL must 404."""
        return any(Fault.DEAD_URL in j.faults and name in j.outputs for j in self.jobs.values())

    def is_oversize(self, name: str) -> bool:
        """Whether a file belongs to a job whose result must be huge."""
        return any(Fault.OVERSIZE in j.faults and name in j.outputs for j in self.jobs.values())

    async def serve_file(self, request: web.Request) -> web.StreamResponse:
        """GET /files/{name}: real bytes, a 404 for dead URLs, or a huge stream."""
        self.requests.append((request.method, request.path))
        name = request.match_info["name"]
        if (fault := await self.fault_response("file")) is not None:
            return fault
        if self.is_dead(name):
            return web.Response(status=404, text="NoSuchKey")
        if self.is_oversize(name):
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            resp.content_length = self.oversize_bytes
            await resp.prepare(request)
            chunk = b"\0" * 65536
            sent = 0
            try:
                while sent < self.oversize_bytes:
                    await resp.write(chunk)
                    sent += len(chunk)
            except (ConnectionResetError, aiohttp.ClientConnectionError):
                pass  # the client stopped reading at its cap, as it should
            return resp
        kept = await self.get_file(name)
        if kept is None:
            return web.Response(status=404, text="NoSuchKey")
        body, ctype = kept
        return web.Response(body=body, content_type=ctype)

    def build_app(self) -> web.Application:
        """The vendor's aiohttp sub-application."""
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/files/{name}", self.serve_file)
        self.add_routes(app)
        return app

    # --- callbacks -------------------------------------------------------------------------
    #
    # Each job with a webhook gets one loop timer per moment a callback is due (its end; each
    # image for Runware; each status change in Pixazo's sync mode), so a callback leaves when
    # the job completes rather than on the next tick of a sweep. A timer that fires a hair
    # early re-arms itself; `send_due` is idempotent, so a duplicate timer is harmless.

    def callback_moments(self, job: SandboxJob) -> list[float]:
        """When (on the emulator's clock) this job's callbacks are due: by default its end."""
        return [job.done_at]

    async def send_due(self, job: SandboxJob) -> None:
        """Send whatever callback of `job` is due now and not sent yet; by default the one
        terminal callback, with `callback_payload`'s body."""
        if job.webhook_sent or not job.webhook_url or not job.phase(self.clock()).finished:
            return
        job.webhook_sent = True
        payload = await self.callback_payload(job)
        self.send_webhook(job.webhook_url, payload, job=job, due_at=job.done_at)
        await self.save(job)

    async def callback_payload(self, job: SandboxJob) -> dict[str, Any]:
        """The body of the job's terminal callback (vendors with webhooks override it)."""
        raise NotImplementedError

    async def render(self, job: SandboxJob) -> None:  # noqa: B027 - optional hook
        """Draw the job's outputs now (vendors with asynchronous jobs override it)."""

    def arm(self, job: SandboxJob) -> None:
        """Schedule the job's drawing ahead of its end, then its callbacks (a job without a
        webhook, or STUCK, has none): the callback then carries ready outputs at the end."""
        if Fault.STUCK in job.faults:
            return
        moments = self.callback_moments(job)
        # A job that ended long ago (read back after a restart) is drawn only if asked about.
        recent = min(moments) > self.clock() - _DRAW_AHEAD
        if not job.rendered and job.outcome() is Phase.SUCCEEDED and recent:
            self._arm_at(job.id, max(job.created, min(moments) - _DRAW_AHEAD), self._render_logged)
        if job.webhook_url and not job.webhook_sent:
            for moment in moments:
                self._arm_at(job.id, moment, self._send_due_logged)

    def _arm_at(
        self, job_id: str, moment: float, action: Callable[[SandboxJob], Coroutine[Any, Any, None]]
    ) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, moment - self.clock())
        holder: list[asyncio.TimerHandle] = []
        handle = loop.call_later(delay, self._fire, job_id, moment, action, holder)
        holder.append(handle)
        self._timers.add(handle)

    def _fire(
        self,
        job_id: str,
        moment: float,
        action: Callable[[SandboxJob], Coroutine[Any, Any, None]],
        holder: list[asyncio.TimerHandle],
    ) -> None:
        for handle in holder:
            self._timers.discard(handle)
        job = self.jobs.get(job_id)
        if job is None:
            return
        if self.clock() < moment:
            self._arm_at(job_id, max(moment, self.clock() + _REARM), action)
            return
        task = asyncio.get_running_loop().create_task(action(job))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _send_due_logged(self, job: SandboxJob) -> None:
        try:
            await self.send_due(job)
        except Exception:  # a broken callback must not stop the others
            _log.exception("sandbox %s: callback for %s failed", self.name, job.id)

    async def _render_logged(self, job: SandboxJob) -> None:
        try:
            await self.render(job)
        except Exception:  # the status call will try again and answer with the error
            _log.exception("sandbox %s: drawing %s failed", self.name, job.id)

    def send_webhook(
        self,
        url: str,
        payload: dict[str, Any],
        attempts: int = 3,
        *,
        job: SandboxJob | None = None,
        due_at: float | None = None,
    ) -> None:
        """POST a callback in the background, retrying non-2xx answers like vendors do."""
        if job is not None:
            self.callback_log.append(
                CallbackSent(self.name, job.id, due_at if due_at is not None else job.done_at, self.clock())
            )
        task = asyncio.get_running_loop().create_task(self._deliver(url, payload, attempts))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _deliver(self, url: str, payload: dict[str, Any], attempts: int) -> None:
        assert self.session is not None
        for attempt in range(attempts):
            try:
                async with self.session.post(url, json=payload) as resp:
                    self.webhooks_sent.append((url, payload))
                    if resp.status < 300:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2 * (attempt + 1))

    async def aclose(self) -> None:
        """Stop pending callback timers and background deliveries."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
