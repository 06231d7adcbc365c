"""Every fact qgjob records: the event Structs, their wire codec and their subjects.

Events are frozen msgspec Structs tagged with an explicit string, so a class can be
renamed without changing the data on the wire. They only ever gain fields with
defaults; a changed meaning gets a new tag.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import NewType

import msgspec

JobId = NewType("JobId", str)
BatchId = NewType("BatchId", str)
AgentId = NewType("AgentId", str)

EVENTS_STREAM = "QG_EVENTS"
WORK_STREAM = "QG_WORK"
EVENT_SUBJECTS = "qg.evt.>"
JOB_EVENT_SUBJECTS = "qg.evt.job.>"
TOKEN_EVENT_SUBJECTS = "qg.evt.token.>"
WORK_SUBJECTS = "qg.work.>"
TICKET_NOTICES = "qg.ticket.>"
CLAIM_SUBJECT = "qg.rpc.claim"


class Target(enum.StrEnum):
    """Where a test runs."""

    EMULATOR = "emulator"
    DEVICE = "device"
    BROWSERSTACK = "browserstack"


class JobStatus(enum.StrEnum):
    """A job's lifecycle state, as stored in read models."""

    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    ERRORED = "errored"
    CANCELLED = "cancelled"
    DEAD = "dead"


TERMINAL_STATUSES = frozenset(
    {JobStatus.PASSED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DEAD}
)


def utcnow() -> datetime:
    """The current time, UTC-aware."""
    return datetime.now(UTC)


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    at: datetime


class JobSubmitted(_Event, frozen=True, tag="job.submitted"):
    job_id: JobId
    org_id: str
    app_version_id: str
    test_path: str
    target: Target
    priority: int
    batch_id: BatchId
    retries: int = 0
    timeout_s: float = 600.0
    idempotency_key: str | None = None


class JobAssigned(_Event, frozen=True, tag="job.assigned"):
    job_id: JobId
    batch_id: BatchId
    agent_id: AgentId
    attempt: int


class JobReleased(_Event, frozen=True, tag="job.released"):
    """An agent gave back an assigned job it had not started: queued again, no attempt
    counted (the agent is stopping, or is making room for more urgent work)."""

    job_id: JobId
    agent_id: AgentId
    reason: str


class JobStarted(_Event, frozen=True, tag="job.started"):
    job_id: JobId
    agent_id: AgentId
    attempt: int


class JobPassed(_Event, frozen=True, tag="job.passed"):
    job_id: JobId
    agent_id: AgentId
    attempt: int
    duration_s: float
    log_ref: str | None = None


class JobFailed(_Event, frozen=True, tag="job.failed"):
    """The test failed and the job has no flaky-test retry left: final."""

    job_id: JobId
    agent_id: AgentId
    attempt: int
    duration_s: float
    reason: str
    log_ref: str | None = None


class JobErrored(_Event, frozen=True, tag="job.errored"):
    """An infrastructure failure (install, device, runner), not the test's fault."""

    job_id: JobId
    agent_id: AgentId
    attempt: int
    reason: str
    log_ref: str | None = None


class JobRetried(_Event, frozen=True, tag="job.retried"):
    """The job is queued again in its batch for another attempt.

    Follows `JobErrored` (an infrastructure failure), or stands alone for a failed test
    that has flaky-test retries left (`test_failed`), so that a failure which will be
    retried never shows as a final `failed`.
    """

    job_id: JobId
    attempt: int
    reason: str
    test_failed: bool = False
    duration_s: float | None = None
    log_ref: str | None = None
    """The failed attempt's output, when `test_failed`."""
    not_before: datetime | None = None
    """After an infrastructure error: the job waits (backoff) until then to run again."""


class JobDead(_Event, frozen=True, tag="job.dead"):
    """Infrastructure retries are exhausted: the job's final state."""

    job_id: JobId
    reason: str


class JobCancelled(_Event, frozen=True, tag="job.cancelled"):
    job_id: JobId
    reason: str = "cancelled by user"


class BuildInstalled(_Event, frozen=True, tag="batch.installed"):
    """An agent installed a batch's build on its device."""

    batch_id: BatchId
    agent_id: AgentId
    app_version_id: str
    target: Target
    duration_s: float


class BatchDrained(_Event, frozen=True, tag="batch.drained"):
    """A claim for the batch's dispatch ticket found no pending job: the ticket is spent."""

    batch_id: BatchId
    ticket: int
    agent_id: AgentId


class BatchClaimed(_Event, frozen=True, tag="batch.claimed"):
    """A claim with dispatch ticket `ticket` assigned `jobs` of the batch's pending jobs
    to the agent, which works the batch until it drains or yields it."""

    batch_id: BatchId
    ticket: int
    agent_id: AgentId
    jobs: int


class BatchYielded(_Event, frozen=True, tag="batch.yielded"):
    """The agent stopped working the batch before it was drained and gave back the jobs
    it had not started (`JobReleased`): for more urgent work, because it is stopping, or
    because the install failed. Spends the ticket like `BatchDrained`, so the jobs left
    get a fresh one; unless the agent `returns`: it set the batch aside for urgent work
    shorter than an install, keeps the ticket and claims with it again once done, so
    that the build it has installed serves the jobs left."""

    batch_id: BatchId
    ticket: int
    agent_id: AgentId
    reason: str
    returns: bool = False


class BatchDue(_Event, frozen=True, tag="batch.due"):
    """The grouping projector's timer found the batch due for a new dispatch decision at
    `at`: waiting raised its band to `band` (aging), or a retry backoff ended. Recorded so
    that a rebuilt projector makes the same decisions in the same order."""

    batch_id: BatchId
    band: int
    """Its dispatch queue (as `WorkTicket.band`)."""
    reason: str


class BatchSplit(_Event, frozen=True, tag="batch.split"):
    """The grouping projector gave the batch `parts` more tickets beside ticket `ticket`,
    so that idle agents share its jobs (each installing the build once), because the
    batch is expected to finish sooner that way by more than the installs cost."""

    batch_id: BatchId
    ticket: int
    parts: int
    reason: str


class AgentRegistered(_Event, frozen=True, tag="agent.registered"):
    agent_id: AgentId
    targets: tuple[Target, ...]
    runner: str
    hostname: str = ""


class AgentStopped(_Event, frozen=True, tag="agent.stopped"):
    agent_id: AgentId


class AgentLost(_Event, frozen=True, tag="agent.lost"):
    """The agent's heartbeat expired; its unfinished jobs are requeued."""

    agent_id: AgentId


class Role(enum.StrEnum):
    """What an API token may do."""

    READ = "read"
    """Read and list its org's jobs, batches and queues."""
    SUBMIT = "submit"
    """Also submit and cancel its org's jobs."""
    ADMIN = "admin"
    """Everything, for every org, including tokens and ops."""


class TokenIssued(_Event, frozen=True, tag="token.issued"):
    """An API token was created; only a hash of its secret is recorded."""

    token_id: str
    org_id: str | None
    """None for an admin token, which is not tied to one org."""
    role: Role
    secret_sha256: str
    name: str = ""


class TokenRevoked(_Event, frozen=True, tag="token.revoked"):
    token_id: str


JobEvent = (
    JobSubmitted
    | JobAssigned
    | JobReleased
    | JobStarted
    | JobPassed
    | JobFailed
    | JobErrored
    | JobRetried
    | JobDead
    | JobCancelled
)
BatchEvent = BuildInstalled | BatchDrained | BatchClaimed | BatchYielded | BatchDue | BatchSplit
AgentEvent = AgentRegistered | AgentStopped | AgentLost
TokenEvent = TokenIssued | TokenRevoked
Event = JobEvent | BatchEvent | AgentEvent | TokenEvent

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def tag_of(event: Event) -> str:
    """An event's wire tag, e.g. `job.submitted`."""
    tag: str = type(event).__struct_config__.tag  # type: ignore[assignment]
    return tag


def encode(event: Event) -> bytes:
    """Serialise an event for the stream."""
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    """Parse an event from the stream; raises msgspec.DecodeError on malformed data."""
    return _decoder.decode(data)


def subject_of(event: Event) -> str:
    """The subject of the aggregate an event belongs to."""
    match event:
        case (
            BuildInstalled()
            | BatchDrained()
            | BatchClaimed()
            | BatchYielded()
            | BatchDue()
            | BatchSplit()
        ):
            return batch_subject(event.batch_id)
        case AgentRegistered() | AgentStopped() | AgentLost():
            return agent_subject(event.agent_id)
        case TokenIssued() | TokenRevoked():
            return token_subject(event.token_id)
        case _:
            return job_subject(event.job_id)


def job_subject(job_id: str) -> str:
    return f"qg.evt.job.{job_id}"


def batch_subject(batch_id: str) -> str:
    return f"qg.evt.batch.{batch_id}"


def token_subject(token_id: str) -> str:
    return f"qg.evt.token.{token_id}"


def agent_subject(agent_id: str) -> str:
    return f"qg.evt.agent.{agent_id}"


def work_subject(target: Target, queue: int) -> str:
    """The QG_WORK subject of a dispatch ticket for one target and dispatch queue (a
    priority band, or `infra.bands.URGENT`)."""
    return f"qg.work.{target.value}.p{queue}"


def ticket_notice_subject(target: Target, queue: int) -> str:
    """The core-NATS subject on which the grouping projector says that a ticket of one
    target and dispatch queue is stored in QG_WORK, once its publish was acknowledged:
    agents wake on these, not on the work subjects themselves, where a subscriber may see
    a ticket before the stream has stored it (a pull made at once then finds nothing)."""
    return f"qg.ticket.{target.value}.p{queue}"


def ticket_notices(target: Target) -> str:
    """Every dispatch queue's ticket notices of one target."""
    return f"qg.ticket.{target.value}.>"


class WorkTicket(msgspec.Struct, frozen=True, kw_only=True):
    """A dispatch ticket: "batch B has pending jobs", published by the grouping projector.

    `ticket` numbers the batch's tickets; `as_of_seq` is the QG_EVENTS sequence the
    projector had folded when it issued the ticket, so a claim can wait until the read
    model has caught up with it.
    """

    batch_id: BatchId
    org_id: str
    app_version_id: str
    target: Target
    band: int
    """Its dispatch queue: the batch's band (1-5), or 6 (`infra.bands.URGENT`) for band 5
    with a job submitted at priority 5."""
    ticket: int
    as_of_seq: int
    installed_on: tuple[AgentId, ...] = ()
    """Agents that installed the batch's build lately: an agent without it leaves the
    ticket to them while it has other work to take."""
    jobs: int = 0
    """Jobs the batch had waiting when the ticket was issued."""


ticket_decoder = msgspec.json.Decoder(WorkTicket)
