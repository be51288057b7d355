"""The composition root: builds every long-lived part from Settings, in one AsyncExitStack.

The only place that names concrete vendors (through `providers.PROVIDERS`) and adapters
(through `bot.adapter.ADAPTERS`), both by lazy import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any, Self

import aiohttp

from bot.adapter import Adapter, AdapterContext, load_adapter
from bot.catalog import Catalog
from bot.config import Settings
from bot.confirm import ConfirmStore
from bot.engine import Engine, EngineConfig
from bot.events import event_bus_for
from bot.health import Readiness, database_probe
from bot.instance import InstanceLock
from bot.jobstore import new_job_id
from bot.leader import LIVE_OWNER_PREFIX, ReplicaLiveness
from bot.ledger import CreditLedger
from bot.media import MediaStore
from bot.metrics import Metrics
from bot.registry import load
from bot.router import Router
from bot.signing import Signer, load_or_create_key
from bot.sql import SqlDatabase, open_database
from bot.store import JobStore
from bot.web import WebServer
from providers import PROVIDERS
from providers.base import Provider, ProviderSettings

__all__ = ["BotApp", "build_providers", "load_provider"]

_log = logging.getLogger(__name__)

SANDBOX_KEY = "sandbox-key"


def load_provider(vendor: str) -> type[Provider]:
    """The client class of a vendor; unknown names list the valid ones."""
    return load(PROVIDERS, vendor, "vendor")


def build_providers(
    settings: Settings, session: aiohttp.ClientSession, urls: dict[str, str] | None = None
) -> dict[str, Provider]:
    """A client for every vendor that has a key (every vendor, on the sandbox)."""
    out: dict[str, Provider] = {}
    for vendor in PROVIDERS:
        if urls is not None:
            if vendor not in urls:
                continue
            base, key = urls[vendor], SANDBOX_KEY
        else:
            secret = settings.vendor_key(vendor)
            if secret is None or not secret.get_secret_value():
                continue
            base, key = settings.vendor_url(vendor), secret.get_secret_value()
        try:
            cls = load_provider(vendor)
        except ModuleNotFoundError:
            _log.warning("vendor %s has no client module yet; skipped", vendor)
            continue
        out[vendor] = cls(
            session, ProviderSettings(base_url=base, api_key=key, timeout=settings.vendor_timeout)
        )
    return out


class BotApp:
    """Everything the bot runs, started and stopped together.

    `platforms` overrides which adapters start (default: every configured one); `extra`
    adapters (the console) are started too, after the configured ones. `single_instance`
    takes the database's instance lock first (ConfigError when another bot holds it);
    `resume=False` follows only the jobs this process admits.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        platforms: Sequence[str] | None = None,
        extra_adapters: Sequence[Any] = (),
        sandbox: Any = None,
        single_instance: bool = False,
        resume: bool = True,
    ) -> None:
        self.settings = settings
        self._single_instance = single_instance
        self._resume = resume
        self._given_sandbox = sandbox  # tests pass their own (latency, faults)
        self._platforms = platforms
        self._extra = extra_adapters
        self._stack = AsyncExitStack()
        self.adapters: dict[str, Adapter] = {}
        self.sandbox: Any = None
        self.engine: Engine
        self.ledger: CreditLedger
        self.web: WebServer
        self.db: SqlDatabase
        self.media: MediaStore
        self.metrics: Metrics
        self.router: Router
        self.readiness = Readiness(
            grace=settings.platform_grace_seconds,
            give_up=settings.platform_give_up_seconds,
            db_probe=database_probe(settings.db_url),
        )

    def adapter_names(self) -> list[str]:
        """The platforms that will start."""
        if self._platforms is not None:
            return list(self._platforms)
        from bot.adapter import ADAPTERS

        names = []
        for name in ADAPTERS:
            with contextlib.suppress(ModuleNotFoundError):
                if load_adapter(name).configured(self.settings):
                    names.append(name)
        return names

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()  # undo whatever started
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        stack = self._stack
        if self._single_instance and s.database_kind == "sqlite":
            # One process per SQLite file; on PostgreSQL replicas share the database by design.
            lock = InstanceLock(s.db_path)
            await asyncio.to_thread(lock.acquire)
            stack.callback(lock.release)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        signer = Signer(
            load_or_create_key(
                s.data_dir / "secret.key", s.secret_key.get_secret_value() if s.secret_key else None
            )
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        urls = None
        if s.sandbox:
            from providers.sandbox.server import Sandbox  # the demo's vendors; never in production

            # Jobs kept under the data dir survive a restart; nothing kept names the port.
            latency = (s.sandbox_latency,) * 2 if s.sandbox_latency is not None else (0.5, 2.0)
            self.sandbox = await stack.enter_async_context(
                self._given_sandbox
                or Sandbox(api_key=SANDBOX_KEY, latency=latency, state_dir=s.data_dir / "sandbox")
            )
            urls = {v: self.sandbox.base_url(v) for v in self.sandbox.emulators}
        providers = build_providers(s, session, urls)
        routes = [r for p in providers.values() for r in p.routes()]
        order = [p for p in s.route_order.split(",") if p]
        catalog = Catalog(routes).ordered(order, cheapest=s.routing == "cheapest")
        self.metrics = Metrics()
        self.router = Router(
            providers,
            catalog,
            retries=s.submit_retries,
            vendor_concurrency=s.vendor_concurrency,
            breaker_failures=s.breaker_failures,
            breaker_reset=s.breaker_reset_seconds,
            metrics=self.metrics,
        )
        self.db = await stack.enter_async_context(open_database(s.db_url))
        events = await stack.enter_async_context(event_bus_for(self.db))
        liveness = None
        if s.postgres_url is not None:
            # Held until after the engine stopped: while it is, no other replica takes this
            # one's jobs before their leases run out; once the process dies, at once.
            liveness = await stack.enter_async_context(
                ReplicaLiveness(s.postgres_url, LIVE_OWNER_PREFIX + new_job_id())
            )
        self.ledger = CreditLedger(
            self.db,
            default_allowance=s.daily_allowance,
            default_costs={"image": s.cost_image, "edit": s.cost_edit, "model3d": s.cost_model3d},
            max_amount=s.max_grant,
        )
        self.media = MediaStore(
            session=session,
            files_dir=s.files_dir,
            signer=signer,
            max_input_bytes=s.max_input_bytes,
            max_result_bytes=s.max_result_bytes,
            allow_private=s.media_allow_private,
            result_allow_private=s.sandbox or s.media_allow_private,  # the sandbox vendors live on loopback
            link_base_url=s.public_base_url,
            link_ttl=s.media_link_ttl,
        )
        public = s.public_base_url.rstrip("/") if s.public_base_url else None

        def webhook_url(vendor: str, job_id: str) -> str | None:
            return (
                f"{public}/webhooks/{vendor}/{job_id}?token={signer.webhook_token(job_id)}"
                if public
                else None
            )

        self.engine = Engine(
            store=JobStore(self.db, ledger=self.ledger, liveness=liveness, lease=s.lease_seconds),
            ledger=self.ledger,
            confirms=ConfirmStore(self.db),
            router=self.router,
            media=self.media,
            config=EngineConfig(
                workers=s.workers,
                queue_size=s.queue_size,
                max_jobs_per_user=s.max_jobs_per_user,
                admissions=s.admissions,
                progress_interval=s.progress_interval,
                job_timeout=s.job_timeout,
                poll_initial=s.poll_initial,
                poll_max=s.poll_max,
            ),
            metrics=self.metrics,
            webhook_url=webhook_url if public else None,
            events=events,
        )

        async def health() -> dict[str, Any]:
            return {"ok": True, **self.engine.snapshot()}

        self.web = WebServer(
            host=s.http_host,
            port=s.http_port,
            signer=signer,
            metrics=self.metrics,
            files_dir=s.files_dir,
            health=health,
            readiness=self.readiness.check,
            on_webhook=self.engine.handle_webhook,
            vendors=providers,
            metrics_token=s.metrics_token.get_secret_value() if s.metrics_token else None,
        )
        ctx = AdapterContext(
            engine=self.engine,
            settings=s,
            web=self.web,
            session=session,
            media=self.media,
            readiness=self.readiness,
        )
        adapters: list[Any] = [load_adapter(name)(ctx) for name in self.adapter_names()]
        adapters += [cls(ctx) for cls in self._extra]
        await stack.enter_async_context(self.web)
        if not public:
            # Vendors on loopback (sandbox, tests) fetch inputs from our own server.
            self.media.link_base_url = self.web.base_url if s.sandbox or s.media_allow_private else None
        await stack.enter_async_context(self.engine)
        for adapter in adapters:
            await adapter.start()
            stack.push_async_callback(adapter.stop)
            self.adapters[adapter.name] = adapter
        if self._resume:
            await self.engine.resume()
        _log.info(
            "imagine-bot up: platforms=%s vendors=%s http=%s",
            ",".join(self.adapters) or "none",
            ",".join(providers) or "none",
            self.web.base_url,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
