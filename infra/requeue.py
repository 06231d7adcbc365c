"""Recording an infrastructure failure of an active job, and what follows it: another
attempt while attempts remain, else `dead`. Shared by agents (install failed, test timed
out) and the orchestrator (agent lost)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra import events as ev
from infra import lifecycle
from infra.eventlog import ConcurrencyConflict

if TYPE_CHECKING:
    from infra.eventlog import EventLog


async def error_job(
    events: EventLog,
    job: lifecycle.JobState,
    agent_id: ev.AgentId,
    reason: str,
    max_attempts: int,
    log_ref: str | None = None,
    backoff: lifecycle.Backoff = lifecycle.NO_BACKOFF,
) -> bool:
    """Append `JobErrored` and its follow-up, each guarded by the job's version; False
    when someone else moved the job first (it is theirs then, and nothing is written)."""
    errored = ev.JobErrored(
        at=ev.utcnow(),
        job_id=job.job_id,
        agent_id=agent_id,
        attempt=job.attempt,
        reason=reason,
        log_ref=log_ref,
    )
    try:
        appended = await events.append(errored, expected_seq=job.version)
    except ConcurrencyConflict:
        return False
    return await follow_up(
        events, lifecycle.evolve(job, errored, appended.seq), max_attempts, backoff
    )


async def follow_up(
    events: EventLog,
    errored: lifecycle.JobState,
    max_attempts: int,
    backoff: lifecycle.Backoff = lifecycle.NO_BACKOFF,
) -> bool:
    """Append what follows an errored job (another attempt, or dead), guarded by its
    version; False when someone else did first. The orchestrator's sweep calls this too,
    for a job whose writer died between the two appends."""
    event = lifecycle.after_infra_error(errored, max_attempts, ev.utcnow(), backoff)
    try:
        await events.append(event, expected_seq=errored.version)
    except ConcurrencyConflict:
        return False
    return True
