"""The job lifecycle as a pure fold: `evolve(state, event) -> state`, plus the decisions
every writer shares (the orchestrator, agents and projections all fold the same way).

No I/O, no asyncio, no logging. Illegal transitions raise `IllegalTransition`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from infra import events as ev
from infra.events import JobStatus

if TYPE_CHECKING:
    from collections.abc import Iterable


class LifecycleError(Exception):
    """A job cannot make the requested transition."""


class IllegalTransition(LifecycleError):
    """The event does not apply to the job in its current state."""

    def __init__(self, job_id: str, status: str, event_type: str) -> None:
        super().__init__(f"job {job_id} is {status}: cannot apply {event_type}")
        self.job_id = job_id
        self.status = status
        self.event_type = event_type


class JobState(msgspec.Struct, kw_only=True):
    """Everything known about one job, folded from its subject's events."""

    job_id: ev.JobId
    org_id: str
    app_version_id: str
    test_path: str
    target: ev.Target
    priority: int
    batch_id: ev.BatchId
    retries: int
    timeout_s: float
    idempotency_key: str | None
    submitted_at: datetime
    status: JobStatus = JobStatus.QUEUED
    attempt: int = 1
    test_failures: int = 0
    agent_id: ev.AgentId | None = None
    assigned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    reason: str | None = None
    log_ref: str | None = None
    not_before: datetime | None = None
    """A requeued job is not claimed before this (retry backoff)."""
    version: int = 0
    """Stream sequence of the last event folded: the expected last subject sequence."""

    @property
    def terminal(self) -> bool:
        return self.status in ev.TERMINAL_STATUSES


_ACTIVE = frozenset({JobStatus.ASSIGNED, JobStatus.RUNNING})
_RUNNING = frozenset({JobStatus.RUNNING})


def _require(state: JobState, allowed: frozenset[JobStatus], event: ev.Event) -> None:
    if state.status not in allowed:
        raise IllegalTransition(state.job_id, state.status, ev.tag_of(event))


def _require_holder(
    state: JobState, allowed: frozenset[JobStatus], event: ev.JobEvent, agent_id: str
) -> None:
    """Only the agent the job is assigned to may start it, give it back or end its run."""
    _require(state, allowed, event)
    if agent_id != state.agent_id:
        raise IllegalTransition(
            state.job_id, f"{state.status} on {state.agent_id}", f"{ev.tag_of(event)} by {agent_id}"
        )


def start(event: ev.JobSubmitted, seq: int = 0) -> JobState:
    """The state of a freshly submitted job."""
    return JobState(
        job_id=event.job_id,
        org_id=event.org_id,
        app_version_id=event.app_version_id,
        test_path=event.test_path,
        target=event.target,
        priority=event.priority,
        batch_id=event.batch_id,
        retries=event.retries,
        timeout_s=event.timeout_s,
        idempotency_key=event.idempotency_key,
        submitted_at=event.at,
        version=seq,
    )


def evolve(state: JobState, event: ev.JobEvent, seq: int = 0) -> JobState:
    """Apply one job event; `seq` is the event's stream sequence (0 when not yet stored)."""
    s = msgspec.structs.replace(state, version=seq or state.version)
    match event:
        case ev.JobSubmitted():
            raise IllegalTransition(state.job_id, state.status, ev.tag_of(event))
        case ev.JobAssigned():
            _require(state, frozenset({JobStatus.QUEUED}), event)
            s.status, s.agent_id, s.assigned_at = JobStatus.ASSIGNED, event.agent_id, event.at
            s.not_before = None
            s.started_at = s.finished_at = s.duration_s = None
            s.reason = None
        case ev.JobReleased():
            _require_holder(state, frozenset({JobStatus.ASSIGNED}), event, event.agent_id)
            s.status, s.agent_id, s.assigned_at = JobStatus.QUEUED, None, None
        case ev.JobStarted():
            _require_holder(state, frozenset({JobStatus.ASSIGNED}), event, event.agent_id)
            s.status, s.started_at = JobStatus.RUNNING, event.at
        case ev.JobPassed():
            _require_holder(state, _RUNNING, event, event.agent_id)
            s.status, s.finished_at, s.duration_s = JobStatus.PASSED, event.at, event.duration_s
            s.log_ref = event.log_ref
        case ev.JobFailed():
            _require_holder(state, _RUNNING, event, event.agent_id)
            s.status, s.finished_at, s.duration_s = JobStatus.FAILED, event.at, event.duration_s
            s.reason, s.log_ref = event.reason, event.log_ref
            s.test_failures += 1
        case ev.JobErrored():
            _require_holder(state, _ACTIVE, event, event.agent_id)
            s.status, s.finished_at, s.reason = JobStatus.ERRORED, event.at, event.reason
            s.log_ref = event.log_ref
        case ev.JobRetried():
            _require(state, _ACTIVE | {JobStatus.ERRORED}, event)
            s.status, s.attempt, s.reason = JobStatus.QUEUED, event.attempt, event.reason
            s.test_failures += event.test_failed
            s.log_ref = event.log_ref or s.log_ref
            s.not_before = event.not_before
            s.agent_id = None
        case ev.JobDead():
            _require(state, frozenset({JobStatus.ERRORED}), event)
            s.status, s.reason = JobStatus.DEAD, event.reason
        case ev.JobCancelled():
            if state.terminal:
                raise IllegalTransition(state.job_id, state.status, ev.tag_of(event))
            s.status, s.finished_at, s.reason = JobStatus.CANCELLED, event.at, event.reason
    return s


def fold(events: Iterable[tuple[int, ev.JobEvent]]) -> JobState | None:
    """Fold a job's (sequence, event) pairs, oldest first; None when there are none."""
    state: JobState | None = None
    for seq, event in events:
        if state is None:
            if not isinstance(event, ev.JobSubmitted):
                raise IllegalTransition(event.job_id, "unknown", ev.tag_of(event))
            state = start(event, seq)
        else:
            state = evolve(state, event, seq)
    return state


def on_test_failure(
    state: JobState,
    agent_id: ev.AgentId,
    reason: str,
    duration_s: float,
    now: datetime,
    log_ref: str | None = None,
) -> ev.JobFailed | ev.JobRetried:
    """A running job's test failed: retry it while its flaky-test retries last, else fail it."""
    if state.test_failures < state.retries:
        return ev.JobRetried(
            at=now,
            job_id=state.job_id,
            attempt=state.attempt + 1,
            reason=f"test failed ({reason}); retry {state.test_failures + 1} of {state.retries}",
            test_failed=True,
            duration_s=duration_s,
            log_ref=log_ref,
        )
    return ev.JobFailed(
        at=now,
        job_id=state.job_id,
        agent_id=agent_id,
        attempt=state.attempt,
        duration_s=duration_s,
        reason=reason,
        log_ref=log_ref,
    )


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """How long a job waits after an infrastructure error before it runs again:
    exponential in the attempt, capped, with jitter so a fleet-wide failure (NATS away,
    a bad device image) does not retry everything at the same instant."""

    base_s: float = 1.0
    cap_s: float = 60.0

    def delay_s(self, job_id: str, attempt: int) -> float:
        """The wait after failed attempt `attempt`: half of `base * 2^(attempt-1)` (capped),
        plus up to the other half. The jitter is a hash of the job and attempt rather than
        a random draw, so the decision is the same wherever and whenever it is made."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(0, attempt - 1))
        digest = hashlib.blake2b(f"{job_id}:{attempt}".encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        return ceiling / 2 + ceiling / 2 * fraction


NO_BACKOFF = Backoff(base_s=0.0)


def after_infra_error(
    state: JobState, max_attempts: int, now: datetime, backoff: Backoff = NO_BACKOFF
) -> ev.JobEvent:
    """What follows a `JobErrored` already folded into `state`: another attempt after
    the backoff while attempts remain, else `JobDead` with the last reason."""
    reason = state.reason or "infrastructure error"
    # Runs that ended in a test failure (flaky-test retries) are not infrastructure's.
    if state.attempt - state.test_failures >= max_attempts:
        return ev.JobDead(at=now, job_id=state.job_id, reason=f"{reason} (attempt limit)")
    delay = backoff.delay_s(state.job_id, state.attempt)
    return ev.JobRetried(
        at=now,
        job_id=state.job_id,
        attempt=state.attempt + 1,
        reason=reason,
        not_before=now + timedelta(seconds=delay) if delay > 0 else None,
    )


class Row(Protocol):
    def __getitem__(self, index: str) -> Any: ...


def from_row(row: Row) -> JobState:
    """A JobState from any mapping holding its fields (a read-model row, say)."""
    return msgspec.convert({name: row[name] for name in JobState.__struct_fields__}, JobState)
