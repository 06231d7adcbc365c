"""Configuration from the environment (`QG_*`), read once at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from infra import lifecycle

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_API_PORT = 8420


class Scheduling(msgspec.Struct, frozen=True, kw_only=True):
    """How the grouping projector shares the fleet: aging, org limits and org tiers."""

    aging_interval_s: float | None = 120.0
    """Waiting this long raises a queued batch one priority band; None: no aging."""
    org_max_busy_agents: dict[str, int] = {}
    """Per org: at most this many agents work its batches at once."""
    default_max_busy_agents: int | None = None
    """The limit of orgs not in `org_max_busy_agents`; None: unlimited."""
    org_tiers: dict[str, str] = {}
    """Org -> tier name; within a band, orgs of an earlier tier in `tier_order` go first."""
    tier_order: tuple[str, ...] = ("premium", "standard")
    default_tier: str = "standard"
    offered_per_org: int = 2
    """Tickets one org may have waiting in one (target, band) queue at a time: the rest
    of its batches wait in the projector, so orgs interleave instead of queueing FIFO."""

    def max_busy(self, org_id: str) -> int | None:
        return self.org_max_busy_agents.get(org_id, self.default_max_busy_agents)

    def tier_rank(self, org_id: str) -> int:
        """0 for the first tier of `tier_order`; unknown tiers after every known one."""
        tier = self.org_tiers.get(org_id, self.default_tier)
        return self.tier_order.index(tier) if tier in self.tier_order else len(self.tier_order)


def _pairs(text: str) -> dict[str, str]:
    """`a=1,b=2` -> {"a": "1", "b": "2"}; raises ValueError on an item without `=`."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"expected NAME=VALUE, not {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _names(text: str) -> tuple[str, ...]:
    """`a, b` -> ("a", "b")."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def scheduling_from_env(env: Mapping[str, str]) -> Scheduling:
    """`QG_AGING_INTERVAL_S` (0: no aging), `QG_ORG_MAX_BUSY_AGENTS` (`4` for every org,
    or `acme=4,initech=2,*=8`), `QG_ORG_TIERS` (`acme=premium,initech=standard`),
    `QG_TIER_ORDER` (`premium,standard`) and `QG_OFFERED_PER_ORG`."""
    defaults = Scheduling()
    aging = float(env.get("QG_AGING_INTERVAL_S", defaults.aging_interval_s or 0))
    limits_text = env.get("QG_ORG_MAX_BUSY_AGENTS", "").strip()
    limits = {} if "=" not in limits_text else _pairs(limits_text)
    default_limit = limits.pop("*", None) if limits else (limits_text or None)
    order = env.get("QG_TIER_ORDER")
    return Scheduling(
        aging_interval_s=aging if aging > 0 else None,
        org_max_busy_agents={org: int(n) for org, n in limits.items()},
        default_max_busy_agents=None if default_limit is None else int(default_limit),
        org_tiers=_pairs(env.get("QG_ORG_TIERS", "")),
        tier_order=defaults.tier_order if order is None else _names(order),
        offered_per_org=int(env.get("QG_OFFERED_PER_ORG", defaults.offered_per_org)),
    )


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the servers are and how qgjob behaves; every field has a `QG_` variable."""

    home: Path = Path(".qgjob")
    nats_url: str | None = None
    """None: start the embedded nats-server under `home`."""
    agent_nats_url: str | None = None
    """Where agents connect (with agent credentials: `nats://user:password@host:port`);
    None: at `nats_url`, or as the local agent user of the embedded server it names."""
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
    scheduling: Scheduling = Scheduling()
    rate_limit_rps: float = 200.0
    """API requests per second per token, on average (0: no limit)."""
    rate_limit_burst: float = 400.0
    """Requests a token may make at once before the average applies."""

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
        agent_nats_url=env.get("QG_AGENT_NATS_URL") or None,
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
        scheduling=scheduling_from_env(env),
        rate_limit_rps=float(env.get("QG_RATE_LIMIT_RPS", defaults.rate_limit_rps)),
        rate_limit_burst=float(env.get("QG_RATE_LIMIT_BURST", defaults.rate_limit_burst)),
    )
