"""One loopback aiohttp server hosting every vendor emulator under `/<vendor>`.

Used by the demo, the tests and the benchmark through the real provider clients. Besides the
vendor routes it serves a small control API so another process can inject faults:
`POST /_sandbox/{vendor}/faults {"fault": "rate_limit", "count": 2, "stage": "submit"}`, and read
jobs and callbacks: `GET /_sandbox/{vendor}/jobs` → `{"jobs": {id: {"done_at", "model"}},
"requests": n, "callbacks": [[job_id, due_at, sent_at], …]}` (times on the emulator's clock).

With `state_dir`, each emulator keeps its jobs and files in `state_dir/<vendor>/` and reads them
back on the next start (see `common.py`), so the demo's jobs survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp import web

from providers.sandbox.common import CallbackSent, Fault, VendorEmulator, json_response

__all__ = ["EMULATORS", "Sandbox"]

_log = logging.getLogger(__name__)

#: vendor name -> "module:Class" of its emulator (lazy, explicit; no directory scanning)
EMULATORS: dict[str, str] = {
    "apiinone": "providers.sandbox.apiinone:ApiInOneEmulator",
    "pixazo": "providers.sandbox.pixazo:PixazoEmulator",
    "aimlapi": "providers.sandbox.aimlapi:AimlApiEmulator",
    "novita": "providers.sandbox.novita:NovitaEmulator",
    "runware": "providers.sandbox.runware:RunwareEmulator",
}


def load_emulator(vendor: str) -> type[VendorEmulator]:
    """The emulator class of a vendor; unknown names list the valid ones."""
    try:
        target = EMULATORS[vendor]
    except KeyError:
        raise ValueError(f"unknown sandbox vendor {vendor!r}; known: {', '.join(EMULATORS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


class Sandbox:
    """Starts the emulators on 127.0.0.1 (port 0 by default) as an async context manager.

    `state_dir` keeps jobs across restarts (None: memory only). `callback_log` lists every
    callback sent by any emulator, with its due and send times, for benchmarks and tests.
    """

    def __init__(
        self,
        vendors: Iterable[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sandbox-key",
        state_dir: Path | str | None = None,
        **emulator_options: Any,
    ) -> None:
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.callback_log: list[CallbackSent] = []
        self.emulators: dict[str, VendorEmulator] = {}
        for name in vendors or EMULATORS:
            self.emulators[name] = load_emulator(name)(
                api_key=api_key,
                state_dir=self.state_dir / name if self.state_dir is not None else None,
                callback_log=self.callback_log,
                **emulator_options,
            )
        self.request_counts: dict[str, int] = dict.fromkeys(self.emulators, 0)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def __getitem__(self, vendor: str) -> VendorEmulator:
        return self.emulators[vendor]

    def base_url(self, vendor: str) -> str:
        """The vendor's base URL on this sandbox."""
        return f"http://{self.host}:{self.port}/{vendor}"

    def build_app(self) -> web.Application:
        """The root application with every emulator mounted and the control API."""
        root = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[self._count])
        root.router.add_post("/_sandbox/{vendor}/faults", self._inject)
        root.router.add_get("/_sandbox/{vendor}/jobs", self._jobs)
        root.router.add_get("/_sandbox/health", self._health)
        for name, emu in self.emulators.items():
            root.add_subapp(f"/{name}", emu.build_app())
        return root

    async def _inject(self, request: web.Request) -> web.Response:
        emu = self.emulators.get(request.match_info["vendor"])
        if emu is None:
            return json_response({"error": "unknown vendor"}, 404)
        try:
            body = await request.json()
            emu.inject(
                Fault(body["fault"]),
                int(body.get("count", 1)),
                stage=body.get("stage"),
                retry_after=float(body.get("retry_after", 1.0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            faults = ", ".join(Fault)
            return json_response({"error": f'expected {{"fault": one of {faults}, "count": n}}'}, 400)
        return json_response({"ok": True})

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # Vendor API calls per vendor (file downloads excluded), for the benchmark.
        vendor = request.path.split("/", 2)[1] if request.path.count("/") >= 2 else ""
        if vendor in self.request_counts and "/files/" not in request.path:
            self.request_counts[vendor] += 1
        return await handler(request)

    async def _jobs(self, request: web.Request) -> web.Response:
        emu = self.emulators.get(request.match_info["vendor"])
        if emu is None:
            return json_response({"error": "unknown vendor"}, 404)
        jobs = {j.id: {"done_at": j.done_at, "model": j.model} for j in emu.jobs.values()}
        callbacks = [[c.job_id, c.due_at, c.sent_at] for c in emu.callback_log if c.vendor == emu.name]
        return json_response(
            {"jobs": jobs, "requests": self.request_counts.get(emu.name, 0), "callbacks": callbacks}
        )

    async def _health(self, _request: web.Request) -> web.Response:
        return json_response({"ok": True, "vendors": list(self.emulators)})

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession()
        try:
            await self._start()
        except BaseException:
            # A Ctrl-C (cancellation) or a failure half-way: __aexit__ never runs for a context
            # that did not enter, so undo here, or the session is left unclosed.
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port actually bound (port 0 → any)
        kept = 0
        for name, emu in self.emulators.items():
            emu.base_url = self.base_url(name)
            emu.session = self._session
            kept += await emu.load()
        _log.debug(
            "sandbox listening on http://%s:%s (%s); %d job(s) kept from the last run",
            self.host,
            self.port,
            ", ".join(self.emulators),
            kept,
        )

    async def __aexit__(self, *exc: object) -> None:
        for emu in self.emulators.values():
            await emu.aclose()
        if self._runner:
            await self._runner.cleanup()
        if self._session:
            await self._session.close()


async def _serve(args: Any) -> None:
    import time

    sandbox = Sandbox(
        args.vendors.split(",") if args.vendors else None,
        host="127.0.0.1",
        port=args.port,
        api_key=args.key,
        latency=(args.latency[0], args.latency[1]),
        clock=time.time,  # wall clock, so another process can compare completion times
        render_cache=args.render_cache,
    )
    async with sandbox:
        print(f"SANDBOX_PORT={sandbox.port}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    """`python -m providers.sandbox.server`: run the emulators alone (benchmarks, manual tests)."""
    import argparse

    parser = argparse.ArgumentParser(description="imagine-bot vendor emulators on loopback")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", default="sandbox-key")
    parser.add_argument("--vendors", default="", help="comma-separated; default all")
    parser.add_argument("--latency", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"))
    parser.add_argument("--render-cache", action="store_true", help="draw one image per size and reuse it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
