"""Settings: environment variables (and an optional `.env`), with defaults that run the demo.

Every vendor base URL and the Discord/Slack API bases are settings, so the same code runs
against production, a proxy or a loopback fake. Secrets are `SecretStr` and never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

__all__ = ["LOG_LEVELS", "VENDOR_DEFAULT_URLS", "DatabaseKind", "Settings", "settings_problems"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DatabaseKind = Literal["sqlite", "postgresql"]

_SQLITE_SCHEME = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: the shortest SECRET_KEY accepted where replicas must share it (bot/signing.py warns below it)
_MIN_SHARED_KEY = 16

#: production base URLs; the vendor clients append their documented paths
VENDOR_DEFAULT_URLS: dict[str, str] = {
    "apiinone": "https://apiin.one",
    "pixazo": "https://gateway.pixazo.ai",
    "aimlapi": "https://api.aimlapi.com",
    "novita": "https://api.novita.ai",
    "runware": "https://api.runware.ai",
}


class Settings(BaseSettings):
    """All of the bot's configuration. Names are the env vars, upper-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,  # a blank line in .env means "use the default"
        populate_by_name=True,  # MEDIA_ROOT by its name, or by its old one (OUTPUT_DIR)
    )

    # --- storage and process ------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Where the SQLite database and files live.")
    database_path: Path | None = Field(None, description="SQLite file; default DATA_DIR/imagine-bot.sqlite3.")
    database_url: SecretStr | None = Field(
        None,
        description="sqlite:///PATH (relative; sqlite:////PATH absolute) or postgresql://USER:PASS@HOST/DB "
        "for several replicas; default the SQLite file. Not together with DATABASE_PATH.",
    )
    media_root: Path | None = Field(
        None,
        validation_alias=AliasChoices("media_root", "output_dir"),
        description="Result and input files (OUTPUT_DIR is its old name); default DATA_DIR/output. "
        "One shared volume for several replicas.",
    )
    log_level: LogLevel = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (json)."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="HMAC key for webhook tokens and media links; default: generated once "
        "and kept in DATA_DIR/secret.key. Required (16+ characters, the same on every replica) "
        "with PostgreSQL.",
    )

    # --- HTTP server ---------------------------------------------------------------------
    http_host: str = Field("0.0.0.0", description="Bind address of the bot's one HTTP server.")
    http_port: int = Field(
        8080, ge=0, le=65535, description="Port of the HTTP server (health, metrics, webhooks, Slack)."
    )
    public_base_url: str | None = Field(
        None,
        description="Public https URL of the HTTP server; enables vendor webhooks and media links.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="Bearer token /metrics requires; unset, /metrics is open (for loopback scraping).",
    )
    platform_grace_seconds: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="Seconds a platform may stay disconnected before /readyz answers 503.",
    )
    platform_give_up_seconds: float = Field(
        900.0,
        gt=0,
        le=7 * 86400,
        description="Seconds of disconnection after which the bot exits non-zero (the restart policy restarts it).",
    )

    # --- vendors -------------------------------------------------------------------------
    sandbox: bool = Field(False, description="Use the embedded loopback vendor emulators (the demo does).")
    sandbox_latency: float | None = Field(
        None,
        ge=0.0,
        le=3600.0,
        description="Seconds each sandbox job takes, to watch progress, cancel or kill mid-job; "
        "default 0.5-2 s at random.",
    )
    apiinone_api_key: SecretStr | None = Field(
        None, description="API in One API key; the vendor is used when set."
    )
    apiinone_base_url: str = Field(VENDOR_DEFAULT_URLS["apiinone"], description="API in One base URL.")
    pixazo_api_key: SecretStr | None = Field(None, description="Pixazo API key; the vendor is used when set.")
    pixazo_base_url: str = Field(VENDOR_DEFAULT_URLS["pixazo"], description="Pixazo base URL.")
    aimlapi_api_key: SecretStr | None = Field(
        None, description="AI/ML API API key; the vendor is used when set."
    )
    aimlapi_base_url: str = Field(VENDOR_DEFAULT_URLS["aimlapi"], description="AI/ML API base URL.")
    novita_api_key: SecretStr | None = Field(None, description="Novita API key; the vendor is used when set.")
    novita_base_url: str = Field(VENDOR_DEFAULT_URLS["novita"], description="Novita base URL.")
    runware_api_key: SecretStr | None = Field(
        None, description="Runware API key; the vendor is used when set."
    )
    runware_base_url: str = Field(VENDOR_DEFAULT_URLS["runware"], description="Runware base URL.")
    vendor_timeout: float = Field(
        180.0, gt=0, le=3600, description="Seconds for one vendor HTTP call (sync vendors are slow)."
    )
    routing: Literal["ordered", "cheapest"] = Field(
        "ordered",
        description="Route order: as ROUTE_ORDER says, or cheapest published price first.",
    )
    route_order: str = Field(
        "",
        description="Comma-separated vendor:model keys (or vendor names) in preference order; "
        "empty means the catalog's order.",
    )
    vendor_concurrency: int = Field(16, ge=1, le=1000, description="Concurrent jobs per vendor.")
    breaker_failures: int = Field(
        5, ge=1, le=1000, description="Consecutive failures that open a route's circuit."
    )
    breaker_reset_seconds: float = Field(
        30.0, gt=0, le=86400, description="Seconds before an open circuit is probed."
    )

    # --- credits -------------------------------------------------------------------------
    daily_allowance: int = Field(
        100, ge=0, le=1_000_000_000, description="Credits each member gets per day (tenants may change it)."
    )
    cost_image: int = Field(10, ge=0, le=1_000_000_000, description="Credits per generated image (/imagine).")
    cost_edit: int = Field(10, ge=0, le=1_000_000_000, description="Credits per edit.")
    cost_model3d: int = Field(30, ge=0, le=1_000_000_000, description="Credits per 3D model.")
    max_grant: int = Field(
        1_000_000, ge=1, le=1_000_000_000, description="Largest amount one moderator operation may move."
    )

    # --- engine --------------------------------------------------------------------------
    workers: int = Field(64, ge=1, le=10_000, description="Jobs followed at once across all users.")
    queue_size: int = Field(
        500, ge=1, le=1_000_000, description="Jobs waiting beyond that before new ones are refused."
    )
    max_jobs_per_user: int = Field(2, ge=1, le=1000, description="Unfinished jobs one member may have.")
    admissions: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Commands admitted at once (policy, input image, hold); a burst waits in line.",
    )
    progress_interval: float = Field(
        3.0, ge=0, le=3600, description="Minimum seconds between status edits of a job."
    )
    job_timeout: float = Field(
        900.0, gt=0, le=7 * 86400, description="Seconds before a vendor job is given up (and refunded)."
    )
    lease_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds a replica's claim on a job lasts unrenewed (renewed every third of "
        "it); a stalled replica's jobs are taken over after that, a dead one's at once (its "
        "liveness lock is gone).",
    )
    poll_initial: float = Field(1.0, gt=0, le=3600, description="First poll delay in seconds.")
    poll_max: float = Field(10.0, gt=0, le=3600, description="Longest poll delay in seconds.")
    submit_retries: int = Field(
        2, ge=0, le=20, description="Retries of a transient vendor error before failing over."
    )

    # --- media ---------------------------------------------------------------------------
    max_result_bytes: int = Field(50 * 1024 * 1024, ge=1, description="Largest result file downloaded.")
    max_input_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest input image accepted.")
    media_allow_private: bool = Field(
        False,
        description="Allow fetching input URLs on private/loopback addresses (tests, demo only).",
    )
    media_link_ttl: int = Field(
        3600, ge=1, le=7 * 86400, description="Seconds a signed media link stays valid."
    )

    # --- Discord -------------------------------------------------------------------------
    discord_token: SecretStr | None = Field(None, description="Discord bot token; enables Discord.")
    discord_api_base: str | None = Field(None, description="REST base, e.g. http://127.0.0.1:PORT/api/v10.")
    discord_gateway_url: str | None = Field(
        None, description="Gateway URL, e.g. ws://127.0.0.1:PORT/gateway."
    )
    discord_moderator_role: str | None = Field(None, description="Role name or id that counts as moderator.")
    discord_modlog_channel: str | None = Field(None, description="Channel id for the moderation log.")
    discord_dev_guild: str | None = Field(None, description="Guild id to sync commands to while developing.")
    discord_shard_count: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="Shards across all replicas (sharded client); 0: the count Discord recommends "
        "(one process only); unset: unsharded.",
    )
    discord_shard_ids: str = Field(
        "",
        description="Comma-separated shard ids this replica runs (each below DISCORD_SHARD_COUNT); "
        "empty: all of them.",
    )

    # --- Slack ---------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(None, description="Slack bot token (xoxb-…); enables Slack.")
    slack_signing_secret: SecretStr | None = Field(
        None, description="Slack signing secret: HTTP mode at /slack/events."
    )
    slack_app_token: SecretStr | None = Field(
        None, description="Slack app-level token (xapp-…): Socket Mode."
    )
    slack_api_base: str | None = Field(None, description="Web API base, e.g. http://127.0.0.1:PORT/api/.")
    slack_moderators: str = Field("", description="Comma-separated Slack user ids that are moderators.")
    slack_moderator_group: str | None = Field(None, description="Slack user group id whose members moderate.")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "public_base_url",
        "apiinone_base_url",
        "pixazo_base_url",
        "aimlapi_base_url",
        "novita_base_url",
        "runware_base_url",
        "slack_api_base",
    )  # DISCORD_API_BASE / DISCORD_GATEWAY_URL: checked by the Discord adapter when it starts
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The message never repeats the URL: it may carry a password.
        if value is None:
            return None
        url = value.get_secret_value()
        if url.startswith(_SQLITE_SCHEME):
            if not url.removeprefix(_SQLITE_SCHEME):
                raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///data/imagine-bot.sqlite3")
        elif not url.startswith(_POSTGRES_SCHEMES) or url.partition("://")[2] == "":
            raise ValueError("must be sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
        return value

    @field_validator("discord_shard_ids")
    @classmethod
    def _shard_ids(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError("must be comma-separated shard numbers, e.g. 0,1")
        ids = [int(p) for p in parts]
        if len(set(ids)) != len(ids):
            raise ValueError("names a shard twice")
        return ",".join(str(i) for i in ids)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.poll_max < self.poll_initial:
            raise ValueError("POLL_MAX must not be below POLL_INITIAL")
        if self.platform_give_up_seconds < self.platform_grace_seconds:
            raise ValueError("PLATFORM_GIVE_UP_SECONDS must not be below PLATFORM_GRACE_SECONDS")
        if self.database_url is not None and self.database_path is not None:
            raise ValueError(
                "DATABASE_PATH and DATABASE_URL are both set: keep one (DATABASE_URL=sqlite:///PATH "
                "names a SQLite file too)"
            )
        if self.database_kind == "postgresql":
            key = self.secret_key.get_secret_value() if self.secret_key else ""
            if len(key) < _MIN_SHARED_KEY:
                raise ValueError(
                    f"SECRET_KEY must be set, at least {_MIN_SHARED_KEY} characters and the same on every "
                    "replica, when DATABASE_URL is PostgreSQL (a generated key would differ per replica)"
                )
        ids = self.discord_shard_id_list
        if ids is not None:
            if not self.discord_shard_count:
                raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the total, at least 1)")
            if max(ids) >= self.discord_shard_count:
                raise ValueError(
                    f"DISCORD_SHARD_IDS must be below DISCORD_SHARD_COUNT ({self.discord_shard_count})"
                )
        return self

    @field_validator("route_order", "slack_moderators")
    @classmethod
    def _strip(cls, value: str) -> str:
        return ",".join(p.strip() for p in value.split(",") if p.strip())

    @property
    def database_kind(self) -> DatabaseKind:
        """Which database DATABASE_URL names: the embedded SQLite file or a PostgreSQL server."""
        url = self.database_url.get_secret_value() if self.database_url else ""
        return "postgresql" if url.startswith(_POSTGRES_SCHEMES) else "sqlite"

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL DSN (for asyncpg; it may hold a password: never log it), or None on SQLite."""
        if self.database_kind != "postgresql" or self.database_url is None:
            return None
        return self.database_url.get_secret_value()

    @property
    def db_path(self) -> Path:
        """The SQLite file: DATABASE_URL's path, else DATABASE_PATH, else under DATA_DIR.
        ConfigError when DATABASE_URL is PostgreSQL (there is no file)."""
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            if not url.startswith(_SQLITE_SCHEME):
                raise ConfigError(
                    "DATABASE_URL is PostgreSQL, but this needs the SQLite database (set DATABASE_URL="
                    "sqlite:///PATH or leave it unset)"
                )
            return Path(url.removeprefix(_SQLITE_SCHEME))
        return self.database_path or self.data_dir / "imagine-bot.sqlite3"

    @property
    def db_url(self) -> str:
        """What `bot.sql.open_database` opens: DATABASE_URL, else the SQLite file."""
        return self.postgres_url or f"sqlite:///{self.db_path}"

    @property
    def files_dir(self) -> Path:
        """Where result and input files live (MEDIA_ROOT)."""
        return self.media_root or self.data_dir / "output"

    @property
    def discord_shard_id_list(self) -> list[int] | None:
        """The shard ids this replica runs, or None for all of DISCORD_SHARD_COUNT."""
        return [int(p) for p in self.discord_shard_ids.split(",")] if self.discord_shard_ids else None

    @property
    def discord_sharded(self) -> bool:
        """Whether Discord runs a sharded client (DISCORD_SHARD_COUNT set)."""
        return self.discord_shard_count is not None

    def vendor_key(self, vendor: str) -> SecretStr | None:
        """The configured key of a vendor, or None."""
        return getattr(self, f"{vendor}_api_key", None)

    def vendor_url(self, vendor: str) -> str:
        """The configured base URL of a vendor."""
        return str(getattr(self, f"{vendor}_base_url"))


def settings_problems(exc: ValidationError) -> list[str]:
    """One line per invalid setting, naming its env var; a secret's value is never echoed."""
    lines = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc:  # a rule across settings: its message names them
            lines.append(f"setting {msg}")
            continue
        name = str(loc[0])
        field = Settings.model_fields.get(name)
        secret = field is not None and "SecretStr" in str(field.annotation)
        given = "" if secret or "input" not in err else f" (got {str(err['input'])[:40]!r})"
        lines.append(f"setting {name.upper()} is invalid{given}: {msg}")
    return lines
