"""The files `qgjob wait --junit/--summary` leaves for CI: a JUnit report with each
failure's log tail, and a Markdown table in the GitHub step summary."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cli import junit
from cli.client import CliError
from infra.events import JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cli.client import ApiClient
    from infra import api

LOG_TAIL_LINES = 40
_PASSED_OR_NEVER_RAN = frozenset({JobStatus.PASSED, JobStatus.QUEUED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class Reports:
    junit: Path | None = None
    summary: bool = False
    """Append to the file `$GITHUB_STEP_SUMMARY` names (nothing when it is unset)."""

    async def write(self, client: ApiClient, jobs: Sequence[api.JobView]) -> None:
        if self.junit is not None:
            tails = await log_tails(client, jobs)
            try:
                junit.write_junit(self.junit, jobs, tails)
            except OSError as exc:
                raise CliError(f"cannot write the JUnit report {self.junit}: {exc}") from exc
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if self.summary and step_summary:
            junit.append_summary(Path(step_summary), jobs)


async def log_tails(client: ApiClient, jobs: Sequence[api.JobView]) -> dict[str, str]:
    """The last lines of output of every job that did not pass, by job id: the text of its
    failure in the report. A log that cannot be read is left out, never fatal."""
    wanted = [job.job_id for job in jobs if job.status not in _PASSED_OR_NEVER_RAN]

    async def tail(job_id: str) -> str | None:
        try:
            data = await client.logs(job_id)
        except CliError:
            return None
        lines = data.decode(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:]) or None

    found = await asyncio.gather(*map(tail, wanted))
    return {job_id: text for job_id, text in zip(wanted, found, strict=True) if text}
