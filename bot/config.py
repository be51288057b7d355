"""Settings: environment variables (and an optional `.env`), with defaults that run the demo.

Every vendor base URL and the Discord/Slack API bases are settings, so the same code runs
against production, a proxy or a loopback fake. Secrets are `SecretStr` and never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["LOG_LEVELS", "VENDOR_DEFAULT_URLS", "Settings", "settings_problems"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

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
    )

    # --- storage and process ------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Where the SQLite database and files live.")
    database_path: Path | None = Field(None, description="SQLite file; default DATA_DIR/imagine-bot.sqlite3.")
    database_url: str | None = Field(
        None, description="postgresql://… to keep the database in PostgreSQL; unset: SQLite at DATABASE_PATH."
    )
    output_dir: Path | None = Field(None, description="Delivered files; default DATA_DIR/output.")
    log_level: LogLevel = Field("INFO", description="Logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line (json)."
    )
    secret_key: SecretStr | None = Field(
        None,
        description="HMAC key for webhook tokens and media links; default: generated once "
        "and kept in DATA_DIR/secret.key.",
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
    progress_interval: float = Field(
        3.0, ge=0, le=3600, description="Minimum seconds between status edits of a job."
    )
    job_timeout: float = Field(
        900.0, gt=0, le=7 * 86400, description="Seconds before a vendor job is given up (and refunded)."
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

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.poll_max < self.poll_initial:
            raise ValueError("POLL_MAX must not be below POLL_INITIAL")
        if self.platform_give_up_seconds < self.platform_grace_seconds:
            raise ValueError("PLATFORM_GIVE_UP_SECONDS must not be below PLATFORM_GRACE_SECONDS")
        return self

    @field_validator("route_order", "slack_moderators")
    @classmethod
    def _strip(cls, value: str) -> str:
        return ",".join(p.strip() for p in value.split(",") if p.strip())

    @property
    def db_path(self) -> Path:
        """The SQLite file."""
        return self.database_path or self.data_dir / "imagine-bot.sqlite3"

    @property
    def db_url(self) -> str:
        """What `bot.sql.open_database` opens: DATABASE_URL, else the SQLite file."""
        return self.database_url or f"sqlite:///{self.db_path}"

    @property
    def files_dir(self) -> Path:
        """Where delivered files are written."""
        return self.output_dir or self.data_dir / "output"

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
