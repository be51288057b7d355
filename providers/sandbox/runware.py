"""Loopback emulator of Runware's REST task API for `runware:180@1` (docs §5).

`POST /v1` takes a JSON array of tasks (`authentication`, `imageInference`, `getResponse`,
`accountManagement`) and answers `{"data": […]}` and/or `{"errors": […]}`. Sync inference
holds the call for the job's latency; async inference acknowledges at once, finishes its
images one by one over the latency (cumulative in `getResponse`) and, with a `webhookURL`,
posts each finished image separately. Job faults: JOB_FAILED is a per-item `status: "error"`
(`inferenceError`), JOB_ERROR a top-level `errors[]` entry (`timeoutProvider`).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from providers.sandbox.common import Fault, Phase, SandboxJob, VendorEmulator, json_response

__all__ = ["SIZES", "RunwareEmulator"]

_log = logging.getLogger(__name__)

MODEL = "runware:180@1"
SIZES = frozenset(
    {
        (1536, 512),
        (1472, 576),
        (1408, 640),
        (1344, 704),
        (1280, 768),
        (1216, 832),
        (1152, 896),
        (1088, 960),
        (1024, 1024),
        (960, 1088),
        (896, 1152),
        (832, 1216),
        (768, 1280),
        (704, 1344),
        (640, 1408),
        (576, 1472),
        (512, 1536),
    }
)
_INFERENCE = "imageInference"
_STAGES = {_INFERENCE: "submit", "getResponse": "poll"}


@dataclass(slots=True)
class _Result:
    image_uuid: str
    file: str
    seed: int
    cost: float


class _TaskError(Exception):
    """A task-scoped error: code, message, parameter and the HTTP status it implies."""

    def __init__(self, status: int, code: str, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.parameter = status, code, message, parameter


def _error_obj(
    code: str, message: str, *, task_type: str | None, task_uuid: str | None, parameter: str | None = None
) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "taskType": task_type}
    if parameter:
        err["parameter"] = parameter
    if task_uuid:
        err["taskUUID"] = task_uuid
    err["documentation"] = "https://runware.ai/docs/platform/errors"
    return err


def _errors(status: int, code: str, message: str, **fields: Any) -> web.Response:
    task_type = fields.pop("task_type", None)
    return json_response(
        {"errors": [_error_obj(code, message, task_type=task_type, task_uuid=None, **fields)]}, status
    )


class RunwareEmulator(VendorEmulator):
    """Runware on loopback: task arrays, bearer or in-band auth, sync and async inference."""

    name = "runware"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.balance = 2450.75  # USD
        self.tasks: dict[str, str] = {}  # taskUUID -> sandbox job id

    # --- errors and auth -----------------------------------------------------------------

    def error_response(self, fault: Fault) -> web.Response:
        """The vendor's status and body for a request-level fault."""
        match fault:
            case Fault.AUTH:
                return self.auth_error()
            case Fault.FUNDS:
                return _errors(
                    402,
                    "insufficientCredits",
                    "Insufficient credits. Add funds at https://my.runware.ai/wallet",
                    task_type=_INFERENCE,
                )
            case Fault.RATE_LIMIT:
                return _errors(429, "rateLimitExceeded", "Queue capacity exceeded, retry later.")
            case Fault.REJECT:
                return _errors(
                    400,
                    "invalidParameter",
                    "Invalid value for positivePrompt.",
                    parameter="positivePrompt",
                    task_type=_INFERENCE,
                )
            case _:
                return _errors(503, "serviceUnavailable", "Service temporarily unavailable.")

    def auth_error(self) -> web.Response:
        """401 invalidApiKey, the vendor's documented body."""
        return _errors(
            401,
            "invalidApiKey",
            "Invalid API key. Get one at https://my.runware.ai/signup",
            parameter="apiKey",
            task_type="authentication",
        )

    def key_ok(self, request: web.Request) -> bool:
        """`Authorization: Bearer <key>` (the in-band `authentication` task is checked in
        `handle`, which sees the body)."""
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    # --- the one endpoint ----------------------------------------------------------------

    async def render(self, job: SandboxJob) -> None:
        """Draw an asynchronous job's outputs (ahead of its end)."""
        await self._produce(job)

    def add_routes(self, app: web.Application) -> None:
        """`POST /v1`."""
        app.router.add_post("/v1", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        """Run every task of the array; task-scoped errors go to `errors[]`."""
        self.requests.append((request.method, request.path))
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        tasks = [t for t in body if isinstance(t, dict)] if isinstance(body, list) else []
        first = next((t for t in tasks if t.get("taskType") != "authentication"), {})
        stage = _STAGES.get(str(first.get("taskType")), "check")
        if (fault := await self.fault_response(stage)) is not None:
            return fault
        authed = self.key_ok(request)
        if tasks and tasks[0].get("taskType") == "authentication":
            authed = authed or tasks[0].get("apiKey") == self.api_key
        if not authed:
            return self.auth_error()
        if not isinstance(body, list) or len(tasks) != len(body) or not tasks:
            return _errors(
                400, "invalidParameter", "The request body must be a non-empty array of task objects."
            )
        data: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        status = 200
        for task in tasks:
            task_type = task.get("taskType")
            task_uuid = task.get("taskUUID") if isinstance(task.get("taskUUID"), str) else None
            try:
                match task_type:
                    case "authentication":
                        data.append(
                            {"taskType": "authentication", "connectionSessionUUID": str(uuid.uuid4())}
                        )
                    case "imageInference":
                        got_data, got_errors = await self.inference(task)
                        data += got_data
                        errors += got_errors
                    case "getResponse":
                        got_data, got_errors = await self.get_response(task)
                        data += got_data
                        errors += got_errors
                    case "accountManagement":
                        data.append(self.account(task))
                    case _:
                        raise _TaskError(
                            400, "invalidParameter", f"Unsupported taskType {task_type!r}.", "taskType"
                        )
            except _TaskError as exc:
                errors.append(
                    _error_obj(
                        exc.code,
                        exc.message,
                        task_type=task_type if isinstance(task_type, str) else None,
                        task_uuid=task_uuid,
                        parameter=exc.parameter,
                    )
                )
                status = exc.status if status == 200 else status
        if errors and not data and status != 200:
            return json_response({"errors": errors}, status)
        out: dict[str, Any] = {"data": data}
        if errors:
            out["errors"] = errors
        return json_response(out)

    # --- tasks ---------------------------------------------------------------------------

    def account(self, task: dict[str, Any]) -> dict[str, Any]:
        """accountManagement / getDetails."""
        if task.get("operation") != "getDetails":
            raise _TaskError(400, "invalidParameter", "Unsupported operation.", "operation")
        return {
            "taskType": "accountManagement",
            "taskUUID": task.get("taskUUID"),
            "operation": "getDetails",
            "organizationUUID": "a6379343-9ff2-46a0-996b-e4a7b3057c88",
            "organizationName": "Sandbox Org",
            "balance": round(self.balance, 4),
        }

    async def inference(self, task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """imageInference: validate, then answer at once (async) or after the latency (sync)."""
        _validate(task)
        task_uuid = task["taskUUID"]
        if task_uuid in self.tasks:
            raise _TaskError(400, "invalidParameter", "taskUUID must be unique per task.", "taskUUID")
        job = self.new_job(MODEL, task)
        self.tasks[task_uuid] = job.id
        if task.get("deliveryMethod", "sync") == "async":
            job.webhook_url = task.get("webhookURL")
            await self.accept(job)
            return [{"taskType": _INFERENCE, "taskUUID": task_uuid, "status": "processing"}], []
        if not await self.hold(job):
            raise _TaskError(504, "timeoutProvider", "The task exceeded the maximum queue wait.")
        if (failure := self._failure(job)) is not None:
            return [], [failure]
        results = await self._produce(job)
        return [self._item(job, r, with_status=False) for r in results], []

    async def get_response(self, task: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """getResponse: the task's results so far, cumulative, plus what is still running."""
        task_uuid = task.get("taskUUID")
        job_id = self.tasks.get(task_uuid) if isinstance(task_uuid, str) else None
        if job_id is None:
            raise _TaskError(400, "taskFailedOrNotFound", "The task failed or was not found.", "taskUUID")
        job = self.jobs[job_id]
        head = {"taskType": _INFERENCE, "taskUUID": task_uuid}
        phase = job.phase(self.clock())
        if phase in (Phase.FAILED, Phase.ERROR):
            failure = self._failure(job)
            assert failure is not None
            if phase is Phase.FAILED:
                return [
                    {
                        **head,
                        "status": "error",
                        "error": {"code": failure["code"], "message": failure["message"]},
                    }
                ], []
            return [], [failure]
        ready = self._ready(job)
        items = (
            [self._item(job, r, with_status=True) for r in (await self._produce(job))[:ready]]
            if ready
            else []
        )
        if ready < _count(job):
            items.append({**head, "status": "processing"})
        return items, []

    # --- job mechanics -------------------------------------------------------------------

    def _ready(self, job: SandboxJob) -> int:
        """How many of the job's images are finished: one every latency/n seconds."""
        if Fault.STUCK in job.faults or job.phase(self.clock()) in (Phase.QUEUED, Phase.FAILED, Phase.ERROR):
            return 0
        n = _count(job)
        elapsed = self.clock() - job.created
        return min(n, math.floor(elapsed / (job.latency / n) + 1e-9)) if job.latency > 0 else n

    def _failure(self, job: SandboxJob) -> dict[str, Any] | None:
        uuid_ = job.request["taskUUID"]
        match job.outcome():
            case Phase.FAILED:
                return _error_obj(
                    "inferenceError", "Inference failed for this task.", task_type=_INFERENCE, task_uuid=uuid_
                )
            case Phase.ERROR:
                return _error_obj(
                    "timeoutProvider",
                    "The inference provider timed out.",
                    task_type=_INFERENCE,
                    task_uuid=uuid_,
                )
            case _:
                return None

    async def _produce(self, job: SandboxJob) -> list[_Result]:
        """Draw every image of a job once (they are revealed one by one)."""
        async with self.job_lock(job):
            if "results" not in job.extra:
                task = job.request
                width, height = int(task.get("width", 1024)), int(task.get("height", 1024))
                seed = task.get("seed")
                base_seed = seed if isinstance(seed, int) else self.rng.randrange(2**32)
                cost = round(0.12 + 0.05 * width * height / 1_000_000, 4)
                # Kept with the job, so a restart answers with the same images.
                job.extra["results"] = [
                    {
                        "image_uuid": str(uuid.uuid4()),
                        "file": f"{job.id}-{i}.png",
                        "seed": base_seed + i,
                        "cost": cost,
                    }
                    for i in range(_count(job))
                ]
                self.balance -= cost * _count(job)
        results = [_Result(**r) for r in job.extra["results"]]
        await self.produce_images(
            job,
            job.request["positivePrompt"],
            int(job.request.get("width", 1024)),
            int(job.request.get("height", 1024)),
            _count(job),
            results[0].seed,
        )
        return results

    def restored(self, job: SandboxJob) -> None:
        """A job read back after a restart answers for its taskUUID again."""
        task_uuid = job.request.get("taskUUID")
        if isinstance(task_uuid, str):
            self.tasks[task_uuid] = job.id

    def _item(self, job: SandboxJob, result: _Result, *, with_status: bool) -> dict[str, Any]:
        task = job.request
        item: dict[str, Any] = {
            "taskType": _INFERENCE,
            "taskUUID": task["taskUUID"],
            "imageUUID": result.image_uuid,
            "seed": result.seed,
        }
        output = task.get("outputType", "URL")
        stored = self.files.get(result.file)
        if output != "URL" and stored is not None:
            b64 = base64.b64encode(stored[0]).decode()
            if output == "dataURI":
                item["imageDataURI"] = f"data:image/png;base64,{b64}"
            else:
                item["imageBase64Data"] = b64
        else:
            item["imageURL"] = self.file_url(result.file)
        if task.get("includeCost"):
            item["cost"] = result.cost
        if with_status:
            item["status"] = "success"
        return item

    def callback_moments(self, job: SandboxJob) -> list[float]:
        """Each image as it finishes (one every latency/n seconds); a failure at the end."""
        n = _count(job)
        return [job.created + job.latency * k / n for k in range(1, n + 1)]

    async def send_due(self, job: SandboxJob) -> None:
        """Post each newly finished image (or the failure) of an async job with a webhook."""
        if not job.webhook_url or job.webhook_sent:
            return
        phase = job.phase(self.clock())
        if phase in (Phase.FAILED, Phase.ERROR):
            job.webhook_sent = True
            failure = self._failure(job)
            assert failure is not None
            self.send_webhook(job.webhook_url, {"errors": [failure]}, job=job)
            await self.save(job)
            return
        ready = self._ready(job)
        sent = int(job.extra.get("delivered", 0))
        if ready <= sent:
            return
        job.extra["delivered"] = ready  # claimed before the await: a racing timer sends nothing
        results = await self._produce(job)
        n = len(results)
        for k, result in enumerate(results[sent:ready], start=sent + 1):
            item = {"data": [self._item(job, result, with_status=False)]}
            self.send_webhook(job.webhook_url, item, job=job, due_at=job.created + job.latency * k / n)
        job.webhook_sent = ready >= n
        await self.save(job)


def _count(job: SandboxJob) -> int:
    return int(job.request.get("numberResults", 1))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(task: dict[str, Any]) -> None:
    """Raise `_TaskError` for a task Runware would refuse."""

    def bad(parameter: str, message: str) -> _TaskError:
        return _TaskError(400, "invalidParameter", message, parameter)

    task_uuid = task.get("taskUUID")
    try:
        uuid.UUID(str(task_uuid))
    except ValueError:
        raise bad("taskUUID", "taskUUID must be a UUID v4 string.") from None
    if task.get("model") != MODEL:
        raise _TaskError(400, "unknownModel", f"Unknown model {task.get('model')!r}.", "model")
    prompt = task.get("positivePrompt")
    if not isinstance(prompt, str) or not 2 <= len(prompt) <= 3000:
        raise bad("positivePrompt", "positivePrompt must be a string of 2 to 3000 characters.")
    negative = task.get("negativePrompt")
    if negative is not None and (not isinstance(negative, str) or not 2 <= len(negative) <= 3000):
        raise bad("negativePrompt", "negativePrompt must be a string of 2 to 3000 characters.")
    width, height = task.get("width"), task.get("height")
    if (width is None) != (height is None):
        raise bad("width" if width is None else "height", "width and height must be sent together.")
    if width is not None and (width, height) not in SIZES:
        raise bad("width", f"Unsupported dimensions {width}x{height} for this model.")
    number = task.get("numberResults", 1)
    if not _is_int(number) or not 1 <= number <= 20:
        raise bad("numberResults", "numberResults must be an integer from 1 to 20.")
    seed = task.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= 2**63 - 1):
        raise bad("seed", "seed must be an integer from 0 to 9223372036854775807.")
    if task.get("outputType", "URL") not in ("URL", "base64Data", "dataURI"):
        raise bad("outputType", "outputType must be URL, base64Data or dataURI.")
    if task.get("outputFormat", "JPG") not in ("JPG", "PNG", "WEBP"):
        raise bad("outputFormat", "outputFormat must be JPG, PNG or WEBP.")
    delivery = task.get("deliveryMethod", "sync")
    if delivery not in ("sync", "async"):
        raise bad("deliveryMethod", "deliveryMethod must be sync or async.")
    hook = task.get("webhookURL")
    if hook is not None and (not isinstance(hook, str) or not hook.startswith(("http://", "https://"))):
        raise bad("webhookURL", "webhookURL must be an http(s) URL.")
