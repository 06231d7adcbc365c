"""A job's test output as the API serves it: the stored log of a finished attempt, or
the live output of the attempt that is running."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from infra import logstore
from infra.events import TERMINAL_STATUSES
from orchestrator import domain

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from nats.js import JetStreamContext

    from infra import api
    from orchestrator.service import JobService


class LogQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Query parameters of `GET /jobs/{job_id}/logs`."""

    attempt: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Which attempt's output (default: the job's latest)."""
    follow: bool = False
    """Stream the output as the test produces it, until the attempt ends."""


def attempt_of(job: api.JobView, query: LogQuery) -> int:
    """The attempt asked for; JobNotFound when the job has no such attempt."""
    attempt = query.attempt or job.attempt
    if attempt > job.attempt:
        raise domain.JobNotFound(f"{job.job_id} has no attempt {attempt}")
    return attempt


async def read(js: JetStreamContext, job: api.JobView, attempt: int) -> bytes:
    """An attempt's stored log, or what it printed so far when it is still running."""
    stored = await logstore.fetch(js, logstore.object_name(job.org_id, job.job_id, attempt))
    if stored is not None:
        return stored
    return await logstore.so_far(js, job.job_id, attempt)


async def follow(
    js: JetStreamContext,
    service: JobService,
    job: api.JobView,
    attempt: int,
    listening: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """An attempt's output from its start until it ends: the stored log at once when the
    attempt is over, else live chunks, waiting while the attempt is queued, for as long
    as `listening()` (the client is still there and the server is not stopping)."""
    stored = await logstore.fetch(js, logstore.object_name(job.org_id, job.job_id, attempt))
    if stored is not None:
        yield stored
        return

    async def attempt_still_open() -> bool:
        if not listening():
            return False
        now = await service.get(job.job_id)
        return now.attempt == attempt and now.status not in TERMINAL_STATUSES

    async for chunk in logstore.follow(js, job.job_id, attempt, keep_waiting=attempt_still_open):
        yield chunk
