"""Configuration from the environment (`QG_*`), read once at start-up."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from infra import lifecycle

DEFAULT_API_PORT = 8420


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the servers are and how qgjob behaves; every field has a `QG_` variable."""

    home: Path = Path(".qgjob")
    nats_url: str | None = None
    """None: start the embedded nats-server under `home`."""
    database_url: str | None = None
    """None: start the embedded PostgreSQL under `home`."""
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    api_url: str = f"http://127.0.0.1:{DEFAULT_API_PORT}"
    max_attempts: int = 3
    """Infrastructure attempts per job before it is dead."""
    retry_backoff_s: float = 1.0
    """The first wait before a job that hit an infrastructure error runs again; it
    doubles with each attempt, up to `retry_backoff_cap_s`, with jitter."""
    retry_backoff_cap_s: float = 60.0
    agent_ttl_s: float = 10.0
    """An agent whose heartbeat is older than this is lost and its jobs are requeued."""
    ticket_ack_wait_s: float = 30.0
    """How long an agent may hold a dispatch ticket without extending it."""
    log_format: str = "auto"
    """`json`, `console`, or `auto` (console on a terminal, JSON otherwise)."""

    @property
    def backoff(self) -> lifecycle.Backoff:
        return lifecycle.Backoff(base_s=self.retry_backoff_s, cap_s=self.retry_backoff_cap_s)


def from_env(environ: dict[str, str] | None = None) -> Settings:
    """Build settings from `QG_*` variables; unset ones keep their defaults."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    port = int(env.get("QG_API_PORT", defaults.api_port))
    return Settings(
        home=Path(env.get("QG_HOME", str(defaults.home))),
        nats_url=env.get("QG_NATS_URL") or None,
        database_url=env.get("QG_DATABASE_URL") or None,
        api_host=env.get("QG_API_HOST", defaults.api_host),
        api_port=port,
        api_url=env.get("QG_API_URL", f"http://127.0.0.1:{port}").rstrip("/"),
        max_attempts=int(env.get("QG_MAX_ATTEMPTS", defaults.max_attempts)),
        retry_backoff_s=float(env.get("QG_RETRY_BACKOFF_S", defaults.retry_backoff_s)),
        retry_backoff_cap_s=float(env.get("QG_RETRY_BACKOFF_CAP_S", defaults.retry_backoff_cap_s)),
        agent_ttl_s=float(env.get("QG_AGENT_TTL_S", defaults.agent_ttl_s)),
        ticket_ack_wait_s=float(env.get("QG_TICKET_ACK_WAIT_S", defaults.ticket_ack_wait_s)),
        log_format=env.get("QG_LOG_FORMAT", defaults.log_format),
    )
