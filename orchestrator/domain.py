"""The write side's decisions: pure functions from state and command to events.

No I/O, no asyncio, no logging. The job lifecycle fold itself lives in
`infra.lifecycle`, because agents and projections fold jobs the same way.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import TYPE_CHECKING

from nats.nuid import NUID

from infra import api, lifecycle
from infra import events as ev

if TYPE_CHECKING:
    from datetime import datetime

_JOB_ID = re.compile(r"^j[0-9A-Za-z]{20,22}$")
_nuid = NUID()  # fast unique ids, no system call per id


class DomainError(Exception):
    """A command cannot be carried out."""


class JobNotFound(DomainError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobFinished(DomainError):
    """The job already has its final verdict."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} is already {status}")
        self.job_id = job_id
        self.status = status


def _digest(*parts: str, size: int = 10) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=size).hexdigest()


@functools.lru_cache(maxsize=4096)
def batch_id_of(org_id: str, app_version_id: str, target: ev.Target) -> ev.BatchId:
    """Jobs of one org, app build and target share one batch, whatever their arrival."""
    return ev.BatchId("b" + _digest(org_id, app_version_id, target.value))


def new_job_id(org_id: str, idempotency_key: str | None) -> ev.JobId:
    """A fresh id, or, with an idempotency key, the same id every time for that key."""
    if idempotency_key is None:
        return ev.JobId("j" + _nuid.next().decode())
    return ev.JobId("j" + _digest(org_id, idempotency_key))


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


def submit(spec: api.JobSpec, now: datetime) -> ev.JobSubmitted:
    """The event that records a validated job submission."""
    priority = api.parse_priority(spec.priority)
    return ev.JobSubmitted(
        at=now,
        job_id=new_job_id(spec.org_id, spec.idempotency_key),
        org_id=spec.org_id,
        app_version_id=spec.app_version_id,
        test_path=spec.test_path,
        target=spec.target,
        priority=priority,
        batch_id=batch_id_of(spec.org_id, spec.app_version_id, spec.target),
        retries=spec.retries,
        timeout_s=spec.timeout_s,
        idempotency_key=spec.idempotency_key,
    )


def cancel(state: lifecycle.JobState, now: datetime) -> ev.JobCancelled:
    if state.terminal:
        raise JobFinished(state.job_id, state.status)
    return ev.JobCancelled(at=now, job_id=state.job_id)


def assign(state: lifecycle.JobState, agent_id: ev.AgentId, now: datetime) -> ev.JobAssigned:
    """Hand a queued job to an agent."""
    return ev.JobAssigned(
        at=now,
        job_id=state.job_id,
        batch_id=state.batch_id,
        agent_id=agent_id,
        attempt=state.attempt,
    )
