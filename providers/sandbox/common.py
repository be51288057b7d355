"""Shared machinery of the vendor emulators: fault injection, job timing, real media, files.

Each emulator (`providers/sandbox/<vendor>.py`) subclasses `VendorEmulator` and adds the routes
of its vendor's documented wire format. `Sandbox` (in `server.py`) mounts them all on one
loopback aiohttp server, each under `/<vendor>` so the vendor's base URL is
`http://127.0.0.1:<port>/<vendor>`.
"""

from __future__ import annotations

import abc
import asyncio
import io
import json
import logging
import math
import random
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "FAL_PRESETS",
    "Fault",
    "FaultPlan",
    "Phase",
    "SandboxJob",
    "VendorEmulator",
    "json_response",
    "render_glb",
    "render_png",
]

_log = logging.getLogger(__name__)


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


@dataclass(slots=True)
class SandboxJob:
    """One emulated vendor job and how long it takes."""

    id: str
    model: str
    request: dict[str, Any]
    created: float
    latency: float
    faults: set[Fault] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)  # file names under /files/
    webhook_url: str | None = None
    webhook_sent: bool = False
    cost_usd: float | None = None

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
        self.jobs: dict[str, SandboxJob] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # name -> (body, content type)
        self.requests: list[tuple[str, str]] = []  # (method, path) log for assertions
        self.webhooks_sent: list[tuple[str, dict[str, Any]]] = []
        self._plans: deque[FaultPlan] = deque()
        self._job_faults: deque[Fault] = deque()
        self.base_url = ""  # set by the Sandbox once it listens
        self.session: aiohttp.ClientSession | None = None  # set by the Sandbox
        self._bg: set[asyncio.Task[None]] = set()

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

    # --- jobs and files ------------------------------------------------------------------

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

    async def hold(self, job: SandboxJob) -> bool:
        """Keep a synchronous call open as the vendor would: the job's latency, or
        `timeout_seconds` for a STUCK job (then False: answer with the vendor's timeout)."""
        if Fault.STUCK in job.faults:
            await asyncio.sleep(self.timeout_seconds)
            return False
        await asyncio.sleep(job.latency)
        return True

    async def fetchable(self, url: str) -> bool:
        """Whether an input URL downloads: vendors fetch edit and image→3D inputs themselves."""
        assert self.session is not None
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    def file_url(self, name: str) -> str:
        """Where a produced file is served."""
        return f"{self.base_url}/files/{name}"

    async def produce_images(
        self, job: SandboxJob, prompt: str, width: int, height: int, count: int, seed: int | None
    ) -> list[str]:
        """Draw `count` PNGs for a job, store them and return their URLs."""
        urls = []
        for i in range(count):
            name = f"{job.id}-{i}.png"
            if Fault.OVERSIZE not in job.faults:
                self.files[name] = (await self._png(prompt, width, height, (seed or 0) + i), "image/png")
            job.outputs.append(name)
            urls.append(self.file_url(name))
        return urls

    async def _png(self, prompt: str, width: int, height: int, seed: int) -> bytes:
        if not self.render_cache:
            return await asyncio.to_thread(render_png, prompt, width, height, seed)
        if (width, height) not in self._rendered:
            self._rendered[(width, height)] = await asyncio.to_thread(render_png, "sandbox", width, height, 0)
        return self._rendered[(width, height)]

    async def produce_model(self, job: SandboxJob, label: str) -> tuple[str, str]:
        """A GLB mesh and a PNG thumbnail for a 3D job; returns (glb_url, thumbnail_url)."""
        glb_name, thumb_name = f"{job.id}.glb", f"{job.id}-thumb.png"
        self.files[glb_name] = (render_glb(), "model/gltf-binary")
        thumb = await asyncio.to_thread(render_png, label, 256, 256, 3)
        self.files[thumb_name] = (thumb, "image/png")
        job.outputs += [glb_name, thumb_name]
        return self.file_url(glb_name), self.file_url(thumb_name)

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
        if name not in self.files:
            return web.Response(status=404, text="NoSuchKey")
        body, ctype = self.files[name]
        return web.Response(body=body, content_type=ctype)

    def build_app(self) -> web.Application:
        """The vendor's aiohttp sub-application."""
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/files/{name}", self.serve_file)
        self.add_routes(app)
        return app

    # --- webhooks ------------------------------------------------------------------------

    def send_webhook(self, url: str, payload: dict[str, Any], attempts: int = 3) -> None:
        """POST a callback in the background, retrying non-2xx answers like vendors do."""
        task = asyncio.get_running_loop().create_task(self._deliver(url, payload, attempts))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def claim_webhooks(self, now: float) -> list[tuple[SandboxJob, str]]:
        """Finished jobs whose one terminal callback is due, with its URL; marks them sent."""
        due = [
            (job, job.webhook_url)
            for job in self.jobs.values()
            if job.webhook_url and not job.webhook_sent and job.phase(now).finished
        ]
        for job, _url in due:
            job.webhook_sent = True
        return due

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
        """Stop background webhook deliveries."""
        for task in list(self._bg):
            task.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)

    async def tick(self) -> None:  # noqa: B027 - optional hook
        """Called periodically by the Sandbox: send callbacks for jobs that just finished."""


# --- real media -------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def render_png(prompt: str, width: int, height: int, seed: int = 0) -> bytes:
    """A real PNG of the requested size: a gradient keyed by the seed with the prompt on it."""
    rnd = random.Random(seed)
    a = (rnd.randrange(40, 200), rnd.randrange(40, 200), rnd.randrange(40, 200))
    b = (rnd.randrange(40, 200), rnd.randrange(40, 200), rnd.randrange(40, 200))
    # Draw the gradient as a 1-pixel-wide strip and stretch it: fast for any size.
    strip = Image.new("RGB", (1, 256))
    for y in range(256):
        t = y / 255
        strip.putpixel((0, y), tuple(int(a[i] + (b[i] - a[i]) * t) for i in range(3)))
    img = strip.resize((width, height))
    draw = ImageDraw.Draw(img)
    size = max(12, min(width, height) // 18)
    font = _font(size)
    words, lines, line = prompt.split(), [], ""
    per_line = max(8, int(width / (size * 0.6)))
    for w in words:
        if len(line) + len(w) + 1 > per_line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    y = max(4, height // 2 - len(lines[:8]) * size // 2)
    for text in lines[:8]:
        draw.text((max(4, width // 20), y), text, fill=(255, 255, 255), font=font)
        y += int(size * 1.2)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def render_glb(segments: int = 12) -> bytes:
    """A real binary glTF 2.0 file: a small UV-sphere-ish mesh (positions + indices)."""
    positions: list[tuple[float, float, float]] = []
    for i in range(segments + 1):
        lat = math.pi * i / segments - math.pi / 2
        for j in range(segments):
            lon = 2 * math.pi * j / segments
            positions.append((math.cos(lat) * math.cos(lon), math.sin(lat), math.cos(lat) * math.sin(lon)))
    indices: list[int] = []
    for i in range(segments):
        for j in range(segments):
            a = i * segments + j
            b = i * segments + (j + 1) % segments
            c = a + segments
            d = b + segments
            indices += [a, c, b, b, c, d]
    pos_bytes = b"".join(struct.pack("<3f", *p) for p in positions)
    idx_bytes = b"".join(struct.pack("<H", i) for i in indices)
    pad = (4 - len(idx_bytes) % 4) % 4
    buffer = pos_bytes + idx_bytes + b"\0" * pad
    gltf = {
        "asset": {"version": "2.0", "generator": "imagine-bot sandbox"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "buffers": [{"byteLength": len(buffer)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes), "target": 34962},
            {
                "buffer": 0,
                "byteOffset": len(pos_bytes),
                "byteLength": len(idx_bytes),
                "target": 34963,
            },
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,
                "count": len(positions),
                "type": "VEC3",
                "min": [-1.0, -1.0, -1.0],
                "max": [1.0, 1.0, 1.0],
            },
            {"bufferView": 1, "componentType": 5123, "count": len(indices), "type": "SCALAR"},
        ],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * ((4 - len(js) % 4) % 4)
    total = 12 + 8 + len(js) + 8 + len(buffer)
    return (
        struct.pack("<4sII", b"glTF", 2, total)
        + struct.pack("<I4s", len(js), b"JSON")
        + js
        + struct.pack("<I4s", len(buffer), b"BIN\0")
        + buffer
    )
