"""Settings: the one typed config object, read once from TIDEGATE_* variables.

The CLI builds it and passes it explicitly; nothing else reads the environment.
Defaults run the embedded mode with zero external services.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Region = Literal["eu", "us"]
REGIONS: tuple[str, ...] = get_args(Region)


class Settings(BaseSettings):
    """Every knob, documented here (README "Settings" mirrors this class)."""

    model_config = SettingsConfigDict(env_prefix="TIDEGATE_", frozen=True, extra="ignore")

    data_dir: Path = Field(
        default=Path(".tidegate"), description="Where the embedded engines keep their files."
    )
    log_url: str = Field(default="", description="Event log URL; default sqlite in data_dir.")
    store_url: str = Field(default="", description="Store URL; default sqlite in data_dir.")
    key_file: Path | None = Field(
        default=None, description="Master key file (created 0600 on first run)."
    )
    region: Region = Field(default="eu", description="The region (cell) this process serves.")
    region_endpoints: dict[str, str] = Field(
        default_factory=lambda: {
            "eu": "https://eu.tidegate.example",
            "us": "https://us.tidegate.example",
        },
        description="Public endpoint of each region, named in 421 answers.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    roles: Annotated[frozenset[Literal["api", "worker"]], NoDecode] = Field(
        default=frozenset({"api", "worker"}), description="Comma-separated: api, worker."
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="`serve` processes: 1 runs the api and worker roles in one; N > 1 runs"
        " the worker in the first and starts N-1 api processes on the port, each appending"
        " to a log partition of its own on the embedded engine.",
    )
    worker_nice: int = Field(
        default=5,
        ge=0,
        le=19,
        description="With processes > 1: process 0's storage threads (routing and delivery"
        " bookkeeping) run this much lower in CPU priority (nice), so that on a busy machine"
        " the api processes' acknowledgements come first and routing catches up after the"
        " burst. Idle CPU still goes to them. 0 turns it off.",
    )
    process_index: int = Field(
        default=0,
        ge=0,
        description="This process's place among `processes` (set by `serve` for the"
        " processes it starts; not for operators).",
    )
    dedupe_window_s: float = Field(default=24 * 3600, gt=0, description="messageId dedupe window.")
    keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="An idle keep-alive connection is closed after this many seconds: longer"
        " than a load balancer's idle timeout (AWS ALB: 60 s) and an SDK's pooled connection,"
        " so the server does not close a connection the client is about to reuse.",
    )
    delivery_timeout_s: float = Field(default=15.0, gt=0, le=300)
    delivery_concurrency: int = Field(
        default=256, ge=1, description="Deliveries in flight per worker process."
    )
    destination_concurrency: int = Field(
        default=16,
        ge=1,
        description="Deliveries in flight per destination to begin with, and the fewest a"
        " destination is cut back to (see `destination_concurrency_max`).",
    )
    destination_concurrency_max: int = Field(
        default=64,
        ge=1,
        description="The most deliveries in flight per destination: a webhook destination's"
        " lane grows towards it while deliveries queue for it and it answers, and halves (not"
        " below `destination_concurrency`) on a 429, a 5xx, a timeout or a connection error."
        " At or below `destination_concurrency`, the lane stays at that.",
    )
    lane_backlog: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Deliveries queued in memory per destination; beyond that they wait in"
        " the store, and the destination's deliveries go out from there, oldest first.",
    )
    snowflake_batch_rows: int = Field(
        default=500, ge=1, le=100_000, description="Rows per Snowflake load batch (at most)."
    )
    snowflake_flush_interval_s: float = Field(
        default=1.0, gt=0, le=300, description="Longest a row waits for its Snowflake batch."
    )
    snowflake_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Snowflake login and network timeout."
    )
    ssrf_allow_cidrs: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="CIDRs exempt from SSRF checks (development and tests only)."
    )
    https_only: bool = Field(
        default=True,
        description="Refuse http:// destinations. On by default; `serve --demo` and local"
        " development turn it off.",
    )
    kms_url: str | None = Field(
        default=None, description="AWS KMS key (kms://ARN); when unset, the local key file."
    )
    breaker_failures: int = Field(
        default=5, ge=1, description="Consecutive failures that open a breaker."
    )
    breaker_cooldown_s: float = Field(
        default=5.0, gt=0, description="First wait before a breaker probe."
    )
    event_retention_days: float = Field(
        default=30, gt=0, description="Events (and their delivery history) kept this long."
    )
    audit_retention_days: float = Field(
        default=400,
        ge=90,
        description="Audit records are kept this long; SOC 2 needs at least 90 days, so"
        " a lower value is refused at start-up.",
    )
    housekeeping_interval_s: float = Field(default=60, gt=0)
    oidc_issuers: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Trusted identity providers, a JSON list of objects: issuer, audience,"
        " tenant_claim (tenant_id), require_typ (true), mfa_acr, jwks_uri.",
    )
    dev_tokens: bool = Field(
        default=False,
        description="Trust the local development token issuer (`tidegate dev token`)."
        " Embedded default only: refused with PostgreSQL, Kafka or a real identity provider.",
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    demo: bool = Field(default=False, description="Mount the demo webhook receiver.")

    @field_validator("ssrf_allow_cidrs", "roles", mode="before")
    @classmethod
    def _split_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _process_index_in_range(self) -> Settings:
        if self.process_index >= self.processes:
            raise ValueError(
                f"TIDEGATE_PROCESS_INDEX {self.process_index} is not below"
                f" TIDEGATE_PROCESSES {self.processes}"
            )
        return self

    @model_validator(mode="after")
    def _dev_tokens_only_when_embedded(self) -> Settings:
        production = [
            name
            for name, on in (
                (
                    "TIDEGATE_STORE_URL (not SQLite)",
                    not self.resolved_store_url.startswith("sqlite"),
                ),
                ("TIDEGATE_LOG_URL (not SQLite)", not self.resolved_log_url.startswith("sqlite")),
                ("TIDEGATE_OIDC_ISSUERS", bool(self.oidc_issuers)),
            )
            if on
        ]
        if self.dev_tokens and production:
            raise ValueError(
                "TIDEGATE_DEV_TOKENS is for the embedded default only; it cannot be on with "
                + ", ".join(production)
            )
        return self

    @property
    def resolved_log_url(self) -> str:
        return self.log_url or f"sqlite:///{self.data_dir / 'log.db'}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'store.db'}"

    @property
    def resolved_key_file(self) -> Path:
        return self.key_file or self.data_dir / "master.key"

    def endpoint_for(self, region: str) -> str:
        return self.region_endpoints.get(region, f"https://{region}.tidegate.example")
