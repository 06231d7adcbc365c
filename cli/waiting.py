"""Polling jobs until they finish, and what their outcome means as an exit code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import msgspec

from cli.client import ApiClient
from infra import api
from infra.events import TERMINAL_STATUSES, JobStatus

EXIT_PASSED = 0
EXIT_TEST_FAILED = 1
EXIT_ERROR = 2
"""Usage errors, API errors, timeouts, and jobs that ended without a test verdict."""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The last known state of each job, in the order asked for."""

    jobs: list[api.JobView]
    unfinished: int
    """Jobs not terminal (or never seen) when the wait ended: more than 0 means timed out."""


async def wait_for(
    client: ApiClient,
    job_ids: Sequence[str],
    *,
    timeout_s: float,
    poll_s: float,
    on_progress: Callable[[list[api.JobView]], None],
) -> Outcome:
    """Poll `GET /jobs/{id}` for every unfinished job until all are terminal or time runs out."""
    ids = list(dict.fromkeys(job_ids))
    latest: dict[str, api.JobView] = {}
    pending = ids
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while pending:
                views = await asyncio.gather(*(client.job(job_id) for job_id in pending))
                latest.update(zip(pending, views, strict=True))
                on_progress([latest[job_id] for job_id in ids if job_id in latest])
                pending = [
                    job_id for job_id in ids if latest[job_id].status not in TERMINAL_STATUSES
                ]
                if pending:
                    await asyncio.sleep(poll_s)
    jobs = [latest[job_id] for job_id in ids if job_id in latest]
    return Outcome(jobs=jobs, unfinished=len(pending))


def exit_code(jobs: Sequence[api.JobView]) -> int:
    """0 if every job passed, 1 if a test failed, 2 if a job was cancelled or dead.

    A cancelled or dead job gives no verdict on its test, so it outranks a failure.
    """
    statuses = {job.status for job in jobs}
    if statuses & {JobStatus.CANCELLED, JobStatus.DEAD}:
        return EXIT_ERROR
    if JobStatus.FAILED in statuses:
        return EXIT_TEST_FAILED
    return EXIT_PASSED
