"""HTTP request and response bodies, shared by the orchestrator and the CLI."""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from infra.events import JobStatus, Role, Target

PRIORITY_NAMES: dict[str, int] = {
    "low": 1,
    "normal": 3,
    "medium": 3,
    "high": 4,
    "urgent": 5,
    "critical": 5,
}
DEFAULT_PRIORITY = 3
MAX_JOBS_PER_REQUEST = 1000

Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")]
# A path, never an option: it may not start with "-" (it becomes a runner's argument).
TestPath = Annotated[
    str, Meta(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9_./@+][A-Za-z0-9_./@+ -]*$")
]
PriorityNumber = Annotated[int, Meta(ge=1, le=5)]
PriorityName = Literal["low", "normal", "medium", "high", "urgent", "critical"]


def parse_priority(value: int | str) -> int:
    """A priority 1-5 from a number or a name (`low`, `normal`/`medium`, `high`,
    `urgent`/`critical`); raises ValueError otherwise."""
    if isinstance(value, int):
        number = value
    elif value.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[value.strip().lower()]
    elif value.strip().isdigit():
        number = int(value)
    else:
        names = ", ".join(PRIORITY_NAMES)
        raise ValueError(f"priority must be 1-5 or one of {names}, not {value!r}")
    if not 1 <= number <= 5:
        raise ValueError(f"priority must be between 1 and 5, not {number}")
    return number


class JobSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One test to run: the body of `POST /jobs` (or one item of `jobs`)."""

    org_id: Name
    app_version_id: Name
    test_path: TestPath
    target: Target
    priority: PriorityNumber | PriorityName = DEFAULT_PRIORITY
    retries: Annotated[int, Meta(ge=0, le=10)] = 0
    timeout_s: Annotated[float, Meta(gt=0, le=86_400)] = 600.0
    idempotency_key: Name | None = None


class CancelMany(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /jobs:cancel`: every unfinished job of one batch, or of one app
    version of an org (optionally on one target)."""

    batch_id: Name | None = None
    org_id: Name | None = None
    app_version_id: Name | None = None
    target: Target | None = None


class BulkSubmit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Several jobs in one `POST /jobs`: `{"jobs": [...]}`."""

    jobs: Annotated[list[JobSpec], Meta(min_length=1, max_length=MAX_JOBS_PER_REQUEST)]


class AttemptView(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a job on an agent, from assignment to how it ended."""

    attempt: int
    agent_id: str
    outcome: Literal[
        "assigned", "running", "passed", "failed", "retried", "errored", "released", "cancelled"
    ]
    """`retried`: the test failed and a flaky-test retry followed; `released`: the agent
    gave the job back unstarted (no attempt counted)."""
    assigned_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    reason: str | None = None
    log_ref: str | None = None


class JobView(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the API shows it."""

    job_id: str
    org_id: str
    app_version_id: str
    test_path: str
    target: Target
    priority: int
    status: JobStatus
    batch_id: str
    attempt: int
    retries: int
    timeout_s: float
    submitted_at: datetime
    idempotency_key: str | None = None
    agent_id: str | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    reason: str | None = None
    log_ref: str | None = None
    not_before: datetime | None = None
    """A job requeued after an infrastructure error waits (backoff) until then."""
    events: list[str] = []
    """Event types on the job's subject, oldest first (only from `GET /jobs/{id}`)."""
    attempts: list[AttemptView] = []
    """Every run on an agent, oldest first (only from `GET /jobs/{id}`)."""


class CancelResult(msgspec.Struct, frozen=True, kw_only=True):
    cancelled: list[JobView]
    already_finished: int
    """Jobs that matched but reached a final state first."""


class SubmitResponse(msgspec.Struct, frozen=True, kw_only=True):
    jobs: list[JobView]


class JobPage(msgspec.Struct, frozen=True, kw_only=True):
    jobs: list[JobView]
    next_cursor: str | None = None


class BatchView(msgspec.Struct, frozen=True, kw_only=True):
    batch_id: str
    org_id: str
    app_version_id: str
    target: Target
    created_at: datetime
    installs: int
    jobs: int
    pending: int
    active: int
    passed: int
    failed: int
    other: int
    """Cancelled, dead or errored jobs."""
    top_priority: int | None = None
    """Highest priority among pending jobs."""
    last_agent_id: str | None = None


class BatchPage(msgspec.Struct, frozen=True, kw_only=True):
    batches: list[BatchView]


BACKOFF_BAND = 0
"""The band of a batch whose queued jobs all wait for their retry backoff to end."""


class QueueBand(msgspec.Struct, frozen=True, kw_only=True):
    """What waits in one dispatch band of one target: the batches an agent taking from
    that band would be given, and their queued jobs."""

    target: Target
    band: int
    """A batch's highest priority among jobs that may run now, raised one band per aging
    interval they have waited (up to 5); not raised while an agent works the batch.
    `BACKOFF_BAND` (0): none of its queued jobs may run yet."""
    pending: int
    """Queued jobs of the band's batches (their jobs of every priority)."""
    batches: int
    """Open batches dispatched in this band."""
    orgs: list[str]
    """Orgs with batches in this band."""
    oldest_queued_at: datetime | None = None
    """When the longest-waiting of those jobs started waiting."""


class QueueBatch(BatchView, frozen=True, kw_only=True):
    """An open batch as the queue shows it: the band it is dispatched in and the agents
    working on it."""

    band: int | None = None
    """As in `QueueBand`; None when none of its jobs is queued."""
    agents: list[str] = []
    """Agents holding its jobs (assigned or running)."""


class QueueView(msgspec.Struct, frozen=True, kw_only=True):
    bands: list[QueueBand]
    """Highest band first; per band, targets in name order."""
    open_batches: list[QueueBatch]
    """Highest band first, then those only being worked on; oldest first within."""
    running: int
    aging_interval_s: float | None = None
    """Waiting this long raises a batch one band; None: no aging."""


class AgentView(msgspec.Struct, frozen=True, kw_only=True):
    agent_id: str
    targets: list[Target]
    runner: str
    hostname: str
    status: str
    registered_at: datetime
    last_event_at: datetime
    batch_id: str | None
    jobs_run: int
    installs: int


class AgentPage(msgspec.Struct, frozen=True, kw_only=True):
    agents: list[AgentView]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["ok", "degraded"]
    nats: bool
    database: bool
    projector_lag: int | None = None
    projectors: int | None = None
    """Read-model projectors following the stream (0: none is running)."""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Every non-2xx answer: what went wrong and, for bad input, which field."""

    error: str
    field: str | None = None


ReadModel = Literal["jobs", "batches", "agents"]
READ_MODELS: tuple[ReadModel, ...] = typing.get_args(ReadModel)


class OpsBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /ops/replay` and `POST /ops/verify` (may be empty)."""

    projection: ReadModel | None = None
    """One read model; default all."""
    until: Annotated[int, Meta(ge=0)] | None = None
    """Replay only: rebuild as of this stream sequence into a kept schema, no swap."""


class TokenCreate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /tokens`."""

    org_id: Name | None = None
    """Required unless the role is `admin`."""
    role: Role = Role.SUBMIT
    name: Annotated[str, Meta(max_length=200)] = ""
    """What the token is for, e.g. `github-actions`."""


class TokenView(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    org_id: str | None
    role: Role
    name: str
    created_at: datetime
    revoked: bool = False


class TokenCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A new token: `token` is shown this once and never stored."""

    token: str
    details: TokenView


class TokenPage(msgspec.Struct, frozen=True, kw_only=True):
    tokens: list[TokenView]
