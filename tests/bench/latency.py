"""Dispatch latency: milliseconds from a job's `submitted_at` to its `started_at` and
`finished_at`, for zero-duration jobs submitted at a steady pace to the orchestrator,
the projectors and simulated agents, each a separate process as in production."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.events import TERMINAL_STATUSES
from tests.bench import processes
from tests.bench.measure import BenchError, percentile, progress
from tests.bench.workload import job_specs, submit_paced

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js import JetStreamContext

    from infra import api, embedded
    from tests.stack import Stack

LATENCY_RATE_PER_S = 100.0
LATENCY_AGENTS = 4
"""Simulated agents (slots) in the one agent process."""
WAIT_TIMEOUT_S = 120.0
POLL_S = 0.05


@dataclass(frozen=True)
class LatencyFigures:
    """Milliseconds from a job's `submitted_at` to its `started_at` and `finished_at`."""

    start_p50_ms: float
    start_p99_ms: float
    finish_p50_ms: float
    finish_p99_ms: float


def latencies_ms(views: list[api.JobView]) -> LatencyFigures:
    """Submit-to-start and submit-to-finish percentiles of finished jobs."""
    to_start: list[float] = []
    to_finish: list[float] = []
    for view in views:
        if view.started_at is None or view.finished_at is None:
            raise BenchError(f"job {view.job_id} ended {view.status} without running")
        to_start.append((view.started_at - view.submitted_at).total_seconds() * 1000)
        to_finish.append((view.finished_at - view.submitted_at).total_seconds() * 1000)
    return LatencyFigures(
        start_p50_ms=percentile(to_start, 50),
        start_p99_ms=percentile(to_start, 99),
        finish_p50_ms=percentile(to_finish, 50),
        finish_p99_ms=percentile(to_finish, 99),
    )


async def measure_latency(
    servers: embedded.Servers, js: JetStreamContext, log_dir: Path, jobs: int
) -> LatencyFigures:
    """`jobs` zero-duration jobs at LATENCY_RATE_PER_S, after one warm-up job per agent
    (which also waits for the agent process to serve)."""
    agents = processes.emulator_agents(LATENCY_AGENTS)
    async with processes.running(servers, js, log_dir, "latency", agents=agents) as stack:
        warm = [await stack.submit(**spec) for spec in job_specs("warm-latency", LATENCY_AGENTS)]
        await stack.wait_all([view.job_id for view in warm], timeout_s=WAIT_TIMEOUT_S)
        progress(f"latency of {jobs} jobs at {LATENCY_RATE_PER_S:.0f}/s")
        ids = await submit_paced(stack, job_specs("latency", jobs), LATENCY_RATE_PER_S)
        await wait_for(stack, ids[-1])
        views = await stack.wait_all(ids, timeout_s=WAIT_TIMEOUT_S)
    return latencies_ms(views)


async def wait_for(stack: Stack, job_id: str) -> None:
    """Poll one job until it is terminal. Waiting for the last job first keeps the
    polling light while the tail still runs: every `GET /jobs/{id}` folds the job's events
    from NATS, and polling every job at once would slow the jobs it measures."""
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while True:
            if (await stack.job(job_id)).status in TERMINAL_STATUSES:
                return
            await asyncio.sleep(POLL_S)
