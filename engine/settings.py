"""One settings object for every process (API, worker, CLI, migrations).

Read from environment variables with the ``PROGRESSION_`` prefix. Outside
development it refuses default secrets, SQLite and a missing authentication
configuration, so a production deployment cannot start half-configured.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.wire import REQUEST_MAX_BYTES, SPEC_MAX_BYTES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEV_SECRET = "dev-insecure-secret-change-me"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROGRESSION_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default is SQLite in the data directory"
    )
    policies_dir: Path = PROJECT_ROOT / "policies"
    features_file: Path = PROJECT_ROOT / "policies" / "features.yaml"

    temporal_address: str | None = Field(
        default=None, description="host:port of a Temporal frontend; when unset an embedded dev server runs"
    )
    temporal_namespace: str = "default"
    task_queue: str = "progression"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    secret_key: str = DEV_SECRET
    max_request_bytes: int = REQUEST_MAX_BYTES
    max_yaml_bytes: int = SPEC_MAX_BYTES

    # Promotion target for stage actions (deploy): "record" only records; "webhook" POSTs signed JSON.
    promotion_target: Literal["record", "webhook"] = "record"
    webhook_url: str | None = None
    webhook_secret: str | None = None

    # Bearer JWTs from the bank's SSO, accepted besides API tokens when jwt_issuer is set.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks: str | None = Field(default=None, description="path or URL of the JWKS")
    jwt_roles_claim: str = "roles"
    jwt_team_claim: str = "team"
    jwt_username_claim: str = "preferred_username"

    # Enrollment codes and address-change notices go by e-mail to the person (never to the admin). Without an
    # SMTP host, enrollments are refused (503 mail_unavailable): a code is never shown to anyone instead.
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "progression@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout: float = Field(default=10.0, gt=0)

    audit_chain: bool = Field(default=True, description="hash-chain audit events (off only for benchmarks)")
    # Production: people decide only from an SSO session (API tokens, whoever issued them, cannot decide).
    deciders_sso_only: bool = False
    # Database connections per process. Every API request may hold one while it reads and writes, and
    # decisions release theirs while the workflow works; a burst (e.g. 20 concurrent decisions) must
    # wait briefly for a connection or be refused (409), never time out into 500s.
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_max_overflow: int = Field(default=20, ge=0, le=500)
    db_pool_timeout: float = Field(default=30.0, gt=0)
    # Workflows a worker process keeps in memory (Temporal's sticky cache). What bounds its memory: beyond it
    # parked progressions are evicted and cost nothing until a message wakes them (a replay of their history).
    worker_max_cached_workflows: int = Field(default=1000, ge=0, le=100_000)
    # Load the workflow modules (``workflows``) once per process instead of once per workflow run in Temporal's
    # sandbox. A cache miss (an Update on an evicted, parked progression) then replays its history in ~46 ms
    # instead of ~478 ms on a loaded 2-core machine (``bench.replay_cost``): the re-import is most of a replay.
    # What the sandbox gave up there (intercepting a non-deterministic call at run time, as it never did for the
    # ``engine`` modules the workflows import) a lint rule gives on every code path, run or not
    # (``workflows/ruff.toml``, held by tests/unit/test_determinism_guard.py); the committed histories are still
    # replayed under the strict sandbox by ``tests/workflow/test_replay.py``. On by default; ``false`` restores
    # the per-run sandbox.
    worker_shared_workflow_modules: bool = True

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'progression.db').resolve()}"

    @property
    def evidence_dir(self) -> Path:
        return self.data_dir / "evidence"

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env != "production":
            return self
        problems = []
        if self.secret_key == DEV_SECRET or len(self.secret_key) < 32:
            problems.append("PROGRESSION_SECRET_KEY must be set to a random value of at least 32 characters")
        if self.database_url is None or self.database_url.startswith("sqlite"):
            problems.append("PROGRESSION_DATABASE_URL must point at PostgreSQL in production")
        if self.temporal_address is None:
            problems.append("PROGRESSION_TEMPORAL_ADDRESS must name the Temporal cluster in production")
        if self.promotion_target == "webhook" and not self.webhook_secret:
            problems.append("PROGRESSION_WEBHOOK_SECRET is required with the webhook promotion target")
        if problems:
            raise ValueError("; ".join(problems))
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
