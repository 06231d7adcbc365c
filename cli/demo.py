"""The demo workload `qgjob up` runs: several builds, both targets, mixed priorities,
shown live as batches fill up, install once and report verdicts."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli import render
from infra import api
from infra.events import TERMINAL_STATUSES, JobStatus

if TYPE_CHECKING:
    from cli.client import ApiClient

DEMO_ORG = "qualgent"
DEMO_BUILDS = ("xyz123", "xyz124", "abc777")
DEMO_TESTS = (
    "tests/onboarding.spec.js",
    "tests/login.spec.js",
    "tests/checkout.spec.js",
    "tests/search_fail.spec.js",
)
DEMO_TARGETS = ("emulator", "device")


def demo_specs() -> list[api.JobSpec]:
    """Every demo test on every demo build and target, priorities cycling 1-5."""
    specs = []
    for b, build in enumerate(DEMO_BUILDS):
        for t, target in enumerate(DEMO_TARGETS):
            for i, test in enumerate(DEMO_TESTS):
                specs.append(
                    api.JobSpec(
                        org_id=DEMO_ORG,
                        app_version_id=build,
                        test_path=test,
                        target=target,  # type: ignore[arg-type]
                        priority=1 + (b + t + i) % 5,
                    )
                )
    return specs


def _board(batches: list[api.BatchView], jobs: list[api.JobView]) -> Group:
    table = Table(title="batches: one per (org, app build, target)", title_justify="left")
    for header in (
        "app build",
        "target",
        "jobs",
        "queued",
        "running",
        "passed",
        "failed",
        "installs",
    ):
        table.add_column(header)
    for b in sorted(batches, key=lambda b: (b.app_version_id, b.target)):
        table.add_row(
            b.app_version_id,
            b.target,
            str(b.jobs),
            str(b.pending),
            str(b.active),
            str(b.passed),
            str(b.failed),
            str(b.installs),
        )
    done = [j for j in jobs if j.status in TERMINAL_STATUSES]
    done.sort(key=lambda j: j.finished_at or j.submitted_at, reverse=True)
    verdicts = Text()
    for job in done[:6]:
        colour = "green" if job.status is JobStatus.PASSED else "red"
        verdicts.append(f"  {job.status:<7}", style=colour)
        verdicts.append(f" {job.app_version_id} {job.target:<8} p{job.priority} {job.test_path}\n")
    progress = render.progress_line(jobs)
    return Group(table, Text("latest verdicts:"), verdicts, progress)


async def run_demo(client: ApiClient, console: Console) -> list[api.JobView]:
    """Submit the demo workload and show it live until every job has its verdict."""
    # Batches outlive a run (same org, build and target): count this run's installs only.
    before = {b.batch_id: b.installs for b in (await client.batches(500)).batches}
    submitted = await client.submit_many(demo_specs())
    ids = {job.job_id for job in submitted}
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while True:
            batches = [b for b in (await client.batches(50)).batches if b.org_id == DEMO_ORG]
            jobs = await asyncio.gather(*(client.job(job_id) for job_id in ids))
            live.update(_board(batches, list(jobs)))
            finished = all(job.status in TERMINAL_STATUSES for job in jobs)
            # Batch counts come from the read model: wait until it shows the verdicts too.
            if finished and all(b.pending == b.active == 0 for b in batches):
                break
            await asyncio.sleep(0.25)
    installs = sum(b.installs - before.get(b.batch_id, 0) for b in batches)
    console.print(
        f"\n{len(jobs)} jobs ran in {len(batches)} batches with {installs} installs "
        f"(one job per install would have taken {len(jobs)})."
    )
    return list(jobs)
