"""`imagine-bot` (and `python -m bot`): the demo, the bot, one-off jobs and operator tools.

imagine-bot demo                       console chat on the sandbox vendors
imagine-bot run                        the configured Discord/Slack adapters
imagine-bot imagine|edit|model3d …     one job through the engine and ledger
imagine-bot credits show|grant|take|set|history USER [AMOUNT]
imagine-bot providers check            try each configured vendor's key
imagine-bot discord sync [--guild ID]  push slash commands to Discord
imagine-bot db backup PATH             a consistent copy of the SQLite database, safe while the bot runs

Every command works on SQLite and on PostgreSQL (DATABASE_URL=postgresql://…) except `db backup`,
which copies the SQLite file (PostgreSQL has pg_dump).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import io
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bot.config import Settings, settings_problems
from bot.errors import ConfigError, UserError
from bot.logs import setup_logging as _setup_logging

if TYPE_CHECKING:
    from bot.app import BotApp

__all__ = ["main"]

_log = logging.getLogger("bot")

# The ledger tenant of one-off jobs, and so the default of `credits`: one operator, one account.
CLI_TENANT_ID = "local"
CLI_TENANT = f"cli:{CLI_TENANT_ID}"

NOTHING_TO_RUN = (
    "imagine-bot run: no platform configured — set DISCORD_TOKEN, and/or SLACK_BOT_TOKEN with "
    "SLACK_SIGNING_SECRET (HTTP) or SLACK_APP_TOKEN (Socket Mode)"
)
NO_VENDOR = (
    "no vendor configured — set at least one of APIINONE_API_KEY, PIXAZO_API_KEY, AIMLAPI_API_KEY, "
    "NOVITA_API_KEY, RUNWARE_API_KEY (or SANDBOX=true for the loopback emulators)"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imagine-bot", description="Hunyuan Image 3 / Hunyuan3D chat bot.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = _Commands(p.add_subparsers(dest="cmd", required=True))

    demo = sub.add_parser("demo", help="Console chat against the embedded sandbox vendors.")
    demo.add_argument("--data-dir", help="Where the database and output go (default: ./data).")

    sub.add_parser("run", help="Start the configured Discord/Slack adapters and the HTTP server.")

    for name, helptext in (
        ("imagine", "text to image"),
        ("edit", "change an image by instruction"),
        ("model3d", "text or image to a 3D model"),
    ):
        job = sub.add_parser(name, help=f"One {helptext} job, printing where the files went.")
        job.add_argument(
            "args",
            nargs="+",
            help="The same text you would type after the slash command, flags like --ar 16:9 included.",
        )
        job.add_argument("--sandbox", action="store_true", help="Use the loopback emulators.")
        job.add_argument("--user", default="operator", help="Ledger user to charge (default: operator).")
        job.add_argument(
            "--tenant",
            default=CLI_TENANT_ID,
            help=f"Charged to ledger tenant cli:TENANT (default: {CLI_TENANT}).",
        )

    credits = sub.add_parser("credits", help="Read and change the ledger.")
    credits.add_argument(
        "action", choices=["show", "grant", "take", "set", "history", "spend"], help="What to do."
    )
    credits.add_argument("user", nargs="?", help="User id (not needed for spend).")
    credits.add_argument("amount", nargs="?", type=int, help="Credits, for grant, take and set.")
    credits.add_argument(
        "--tenant",
        default=CLI_TENANT,
        help=f"Tenant, e.g. discord:GUILD_ID or slack:TEAM_ID (default: {CLI_TENANT}, the one-off jobs').",
    )
    credits.add_argument("--reason", default="operator CLI", help="Why, for the audit trail.")

    prov = sub.add_parser("providers", help="Vendor tools.")
    prov.add_argument("action", choices=["check"], help="Try each configured vendor's key.")
    prov.add_argument("--sandbox", action="store_true", help="Check the loopback emulators instead.")

    jobs = sub.add_parser("jobs", help="Unfinished jobs.")
    jobs.add_argument(
        "action",
        choices=["list", "resume"],
        help="List them, or resume: finish or refund them all, then exit.",
    )

    db = sub.add_parser("db", help="Database tools.")
    db.add_argument(
        "action",
        choices=["backup"],
        help="Backup: a consistent copy of the SQLite database, safe while the bot runs.",
    )
    db.add_argument("path", help="The backup file, or a directory for a timestamped one.")

    dc = sub.add_parser("discord", help="Discord tools.")
    dc.add_argument("action", choices=["sync"], help="Push the slash commands to Discord.")
    dc.add_argument("--guild", help="Sync to one guild (instant) instead of globally.")
    return p


class _Commands:
    """Subcommands whose one-line help is also their `--help` description."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    def add_parser(self, name: str, *, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._sub.add_parser(name, help=help, description=help)
        return parser


def _version() -> str:
    try:
        return importlib.metadata.version("imagine-bot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


_JOB_COMMANDS = ("imagine", "edit", "model3d")
_JOB_OPTIONS = {"--sandbox": 0, "--user": 1, "--tenant": 1, "-h": 0, "--help": 0}


def _job_argv(argv: Sequence[str]) -> list[str]:
    """`imagine a cat --ar 16:9 --sandbox` → `imagine --sandbox -- a cat --ar 16:9`.

    The CLI's own options are taken out wherever they are; every other word, inline flags
    included, is the prompt, in order (a `--` still ends the CLI's options explicitly).
    """
    own: list[str] = []
    text: list[str] = []
    rest = list(argv[1:])
    while rest:
        token = rest.pop(0)
        if token == "--":
            text += rest
            break
        name = token.split("=", 1)[0]
        if name in _JOB_OPTIONS:
            own.append(token)
            if _JOB_OPTIONS[name] and "=" not in token and rest:
                own.append(rest.pop(0))
        else:
            text.append(token)
    return [argv[0], *own, "--", *text] if text else [argv[0], *own]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _JOB_COMMANDS:
        argv = _job_argv(argv)
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        return _report_bad_settings(exc)
    try:
        return asyncio.run(_dispatch(args, settings))
    except ConfigError as exc:
        print(f"imagine-bot: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _report_bad_settings(exc: ValidationError) -> int:
    # Every problem at once, so the operator fixes the .env in one go.
    for line in settings_problems(exc):
        print(f"imagine-bot: {line}", file=sys.stderr)
    return 2


async def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    match args.cmd:
        case "demo":
            return await _demo(args, settings)
        case "run":
            return await _run(settings)
        case "imagine" | "edit" | "model3d":
            return await _one_job(args, settings)
        case "credits":
            return await _credits(args, settings)
        case "providers":
            return await _providers(args, settings)
        case "jobs":
            return await _jobs(args, settings)
        case "discord":
            return await _discord(args, settings)
        case "db":
            return await _db(args, settings)
    return 2


def _demo_settings(settings: Settings, data_dir: str | None = None) -> Settings:
    update: dict[str, Any] = {
        "sandbox": True,
        "media_allow_private": True,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "progress_interval": min(settings.progress_interval, 1.0),
        "poll_initial": 0.3,
        "poll_max": 1.0,
        # one local user typing (or piping) several commands in a row
        "max_jobs_per_user": max(settings.max_jobs_per_user, 8),
    }
    if data_dir:
        update["data_dir"] = Path(data_dir)  # model_copy does not validate: give the field's type
    return settings.model_copy(update=update)


def _local_settings(settings: Settings) -> Settings:
    # One-off commands must not collide with a running bot's port; without a public URL their
    # HTTP server (media links for vendors) only needs loopback.
    if settings.public_base_url:
        return settings
    return settings.model_copy(update={"http_host": "127.0.0.1", "http_port": 0})


async def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from bot.adapter import load_adapter
    from bot.app import BotApp

    settings = _demo_settings(settings, args.data_dir)
    _setup_logging(settings, "WARNING")
    console_cls = load_adapter("console")
    async with BotApp(settings, platforms=[], extra_adapters=[console_cls], single_instance=True) as app:
        banner = f"imagine-bot demo: sandbox vendors on loopback, files under {settings.files_dir.resolve()}"
        return await _console_until_interrupted(app.adapters["console"], banner)


async def _run(settings: Settings) -> int:
    from bot.app import BotApp

    _setup_logging(settings)
    app = BotApp(settings, single_instance=True)
    if not app.adapter_names():
        print(NOTHING_TO_RUN, file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with app:
        return await _serve(app, stop)


async def _serve(app: BotApp, stop: asyncio.Event) -> int:
    """Until a signal (exit 0) or a platform gone for good (exit 1: the restart policy
    brings the bot back with a fresh connection)."""
    stopped = asyncio.create_task(stop.wait(), name="stop-signal")
    gone = asyncio.create_task(app.readiness.gone(), name="platform-watch")
    try:
        await asyncio.wait({stopped, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, gone):
            task.cancel()
        await asyncio.gather(stopped, gone, return_exceptions=True)
    if gone.done() and not gone.cancelled() and gone.exception() is None:
        _log.error("exiting: %s; unfinished jobs will resume on the next start", gone.result())
        return 1
    _log.info("stopping: unfinished jobs will resume on the next start")
    return 0


async def _one_job(args: argparse.Namespace, settings: Settings) -> int:
    from bot.adapter import load_adapter
    from bot.app import BotApp
    from bot.commands import Actor

    settings = _local_settings(_demo_settings(settings) if args.sandbox else settings)
    _setup_logging(settings, "WARNING")
    line = f"/{args.cmd} " + " ".join(args.args)
    actor = Actor(
        platform="cli", tenant_id=args.tenant, user_id=args.user, display_name=args.user, is_moderator=True
    )
    console_cls = load_adapter("console")

    def cli_console(ctx: Any) -> Any:
        return console_cls(ctx, stdin=io.StringIO(line + "\n"), actor=actor, strict=True)  # type: ignore[call-arg]

    resume = await asyncio.to_thread(_no_bot_running, settings)
    app = BotApp(settings, platforms=[], extra_adapters=[cli_console], resume=resume)
    async with app:
        if not app.router.providers:
            raise ConfigError(NO_VENDOR)
        return await _console_until_interrupted(app.adapters["console"])


async def _console_until_interrupted(console: Any, banner: str | None = None) -> int:
    """Run the console; the first Ctrl-C stops it politely, a second one at once.

    The `banner` is printed once Ctrl-C is ours, so whoever sees it can rely on a polite stop.
    """
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        console.interrupt()
        # Back to Python's own handler: a second Ctrl-C raises KeyboardInterrupt (exit 130).
        loop.remove_signal_handler(signal.SIGINT)

    installed = False
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals off-main
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
        installed = True
    try:
        if banner:
            with contextlib.suppress(BrokenPipeError):  # `demo | head` may close before this line
                print(banner, flush=True)
        return int(await console.run())
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


async def _credits(args: argparse.Namespace, settings: Settings) -> int:
    from bot import messages
    from bot.ledger import CreditLedger
    from bot.sql import open_database
    from bot.store import JobStore

    _setup_logging(settings, "WARNING")
    async with open_database(settings.db_url) as db:
        ledger = CreditLedger(
            db,
            default_allowance=settings.daily_allowance,
            default_costs={
                "image": settings.cost_image,
                "edit": settings.cost_edit,
                "model3d": settings.cost_model3d,
            },
            max_amount=settings.max_grant,
        )
        tenant, who = args.tenant, "operator:cli"
        if args.action == "spend":
            print(messages.spend_view(await JobStore(db).spend(None if args.tenant == "all" else tenant)))
            return 0
        if not args.user:
            print("imagine-bot credits: name the user id", file=sys.stderr)
            return 2
        unknown = await _unknown_account(ledger, tenant, args.user, args.action)
        if unknown:
            print(f"imagine-bot credits {args.action}: {unknown}", file=sys.stderr)
            return 1
        try:
            match args.action:
                case "grant" | "take" | "set":
                    if args.amount is None:
                        print(f"imagine-bot credits {args.action}: give an amount", file=sys.stderr)
                        return 2
                    fn = {"grant": ledger.grant, "take": ledger.take, "set": ledger.set_balance}[args.action]
                    await fn(tenant, args.user, args.amount, actor=who, reason=args.reason)
                    account = await ledger.account(tenant, args.user)
                    text = messages.mod_balance(args.action, args.user, args.amount, account.balance)
                    print(messages.for_platform(text, "cli"))
                case "history":
                    text = messages.history_view(args.user, await ledger.history(tenant, args.user, limit=50))
                    print(messages.for_platform(text, "cli"))
                case _:
                    a = await ledger.account(tenant, args.user)
                    flags = [f for f, on in (("frozen", a.frozen), ("banned", a.banned)) if on]
                    print(
                        f"{tenant} {args.user}: balance {a.balance}, held {a.held}, allowance {a.allowance}"
                        + (f" ({', '.join(flags)})" if flags else "")
                    )
        except UserError as err:
            return _exit_user_error(err)
    return 0


async def _unknown_account(ledger: Any, tenant: str, user: str, action: str) -> str | None:
    """Why `user` in `tenant` cannot be read (a typo must not look like a fresh account), or None.

    Granting to or setting a member the ledger has not seen yet is how an operator funds them
    before their first job, so only reading and taking need an account that exists.
    """
    if action in ("grant", "set"):
        return None
    if not await ledger.known(tenant):
        return (
            f"unknown tenant {tenant} (tenants look like discord:GUILD_ID, slack:TEAM_ID, "
            f"console:local or {CLI_TENANT})"
        )
    if not await ledger.known(tenant, user):
        return f"unknown user {user} in {tenant}"
    return None


async def _providers(args: argparse.Namespace, settings: Settings) -> int:
    import aiohttp

    from bot.app import SANDBOX_KEY, build_providers

    _setup_logging(settings, "WARNING")
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        urls = None
        if args.sandbox or settings.sandbox:
            from providers.sandbox.server import Sandbox

            sandbox = await stack.enter_async_context(Sandbox(api_key=SANDBOX_KEY))
            urls = {v: sandbox.base_url(v) for v in sandbox.emulators}
        providers = build_providers(settings, session, urls)
        if not providers:
            raise ConfigError(NO_VENDOR)
        rows: list[tuple[str, str, str]] = []
        failed = 0
        for name, provider in providers.items():
            base = urls[name] if urls else settings.vendor_url(name)
            try:
                status = await provider.check()
            except Exception as exc:  # each vendor's failure is a row, not a crash
                status = f"FAILED: {type(exc).__name__}: {exc}"
                failed += 1
            rows.append((name, base, status))
        width = max(len(r[0]) for r in rows)
        bwidth = max(len(r[1]) for r in rows)
        print(f"{'vendor':<{width}}  {'base URL':<{bwidth}}  status")
        for name, base, status in rows:
            print(f"{name:<{width}}  {base:<{bwidth}}  {status}")
    return 1 if failed else 0


async def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from bot.adapter import load_adapter
    from bot.app import BotApp
    from bot.sql import open_database
    from bot.store import JobStore

    _setup_logging(settings, "WARNING")
    if args.action == "list":
        async with open_database(settings.db_url) as db:
            jobs = await JobStore(db).unfinished()
        for job in jobs:
            print(
                f"{job.id}  {job.state.value:<10} {job.actor.platform}:{job.actor.tenant_id}  {job.route or '-'}"
            )
        print(f"{len(jobs)} unfinished job(s)")
        return 0
    # resume: start the engine (and the console for local jobs), wait for every resumed job
    async with open_database(settings.db_url) as db:
        before = [job.id for job in await JobStore(db).unfinished()]
    console_cls = load_adapter("console")

    def quiet_console(ctx: Any) -> Any:
        return console_cls(ctx, stdin=io.StringIO(""))  # type: ignore[call-arg]

    async with BotApp(
        _local_settings(settings), platforms=[], extra_adapters=[quiet_console], single_instance=True
    ) as app:
        code = int(await app.adapters["console"].run())  # type: ignore[attr-defined]
        await app.engine.drain()
        after = [await app.engine.store.get(job_id) for job_id in before]
    print(_resume_report([job for job in after if job is not None]))
    return code


def _resume_report(jobs: Sequence[Any]) -> str:
    """One line per job `jobs resume` picked up (finished, refunded or left), then the totals."""
    from bot.reply import JobPhase

    lines, counts = [], {"finished": 0, "refunded": 0, "left": 0}
    for job in jobs:
        match job.state:
            case JobPhase.DONE:
                outcome, detail = "finished", f"charged {job.cost} credit(s)"
            case JobPhase.FAILED | JobPhase.CANCELLED:
                outcome, detail = "refunded", job.error or job.state.value
            case _:
                outcome, detail = "left", f"still {job.state.value}, for the bot running {job.actor.platform}"
        counts[outcome] += 1
        lines.append(f"{job.id}  {outcome}: {detail}")
    lines.append(", ".join(f"{n} {what}" for what, n in counts.items()))
    return "\n".join(lines)


async def _discord(args: argparse.Namespace, settings: Settings) -> int:
    import importlib

    _setup_logging(settings)
    if settings.discord_token is None:
        raise ConfigError("imagine-bot discord sync: set DISCORD_TOKEN")
    module = importlib.import_module("adapters.discord_bot")  # the one platform the command is for
    count = await module.sync_commands(settings, args.guild)
    print(f"synced {count} command(s) " + (f"to guild {args.guild}" if args.guild else "globally"))
    return 0


async def _db(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from bot.backup import backup_database

    _setup_logging(settings, "WARNING")
    if settings.database_kind == "postgresql":
        print(
            "imagine-bot db backup: copies the SQLite database only; back up PostgreSQL with pg_dump",
            file=sys.stderr,
        )
        return 2
    target = Path(args.path)
    if args.path.endswith("/"):  # a directory the operator means, even if it does not exist yet
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    written = await backup_database(settings.db_path, target)
    print(f"backed up {settings.db_path} to {written}")
    return 0


def _no_bot_running(settings: Settings) -> bool:
    # A one-off job next to a running bot follows only its own job, never the bot's.
    if settings.database_kind == "postgresql":
        return False  # replicas may be running: they take over each other's jobs by lease
    from bot.instance import InstanceLock

    return not InstanceLock(settings.db_path).held_elsewhere()


def _exit_user_error(err: UserError) -> int:
    print(f"imagine-bot: {err}", file=sys.stderr)
    return 1
