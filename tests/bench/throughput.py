"""Submission throughput: jobs per second through `POST /jobs`, one job per request
from many clients and a thousand per request from a few, against the orchestrator and
the projectors running as separate processes (the bench process is only the HTTP load
client), and how long the projectors then need to catch up."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra import events as ev
from tests.bench import processes
from tests.bench.measure import progress
from tests.bench.workload import chunks, job_specs, post_all

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js import JetStreamContext

    from infra import embedded

SINGLE_CONCURRENCY = 64
BULK_PER_REQUEST = 1000
BULK_CONCURRENCY = 4
SETTLE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class SubmitFigures:
    """Jobs per second through `POST /jobs`."""

    single_rate: float
    bulk_rate: float
    single_catch_up_s: float
    """How long the projectors needed, after the last single submit, to catch up."""
    bulk_catch_up_s: float


async def projectors_idle(js: JetStreamContext) -> bool:
    """Whether every durable consumer of QG_EVENTS (the read-model projectors) has applied
    and acknowledged everything in the stream."""
    consumers = await js.consumers_info(ev.EVENTS_STREAM)
    return all(
        c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers if c.config.durable_name
    )


async def wait_for_projectors(js: JetStreamContext) -> float:
    """Wait until the projectors have caught up; returns the seconds it took."""
    started = time.perf_counter()
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            if await projectors_idle(js):
                break
            await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def measure_submit(
    servers: embedded.Servers,
    js: JetStreamContext,
    log_dir: Path,
    single_jobs: int,
    bulk_jobs: int,
) -> SubmitFigures:
    """Single-job and bulk submission to `qgjob serve` and `qgjob project` processes with
    no agents, after a warm-up of one job per client."""
    async with processes.running(servers, js, log_dir, "submit") as stack:
        await wait_for_projectors(js)
        await post_all(stack, job_specs("warm-submit", SINGLE_CONCURRENCY), SINGLE_CONCURRENCY)
        await wait_for_projectors(js)
        progress(f"single-job submit of {single_jobs:,} jobs")
        single_s = await post_all(stack, job_specs("single", single_jobs), SINGLE_CONCURRENCY)
        single_catch_up = await wait_for_projectors(js)
        progress(f"bulk submit of {bulk_jobs:,} jobs")
        bodies = chunks(job_specs("bulk", bulk_jobs), BULK_PER_REQUEST)
        bulk_s = await post_all(stack, bodies, BULK_CONCURRENCY)
        bulk_catch_up = await wait_for_projectors(js)
    return SubmitFigures(
        single_rate=single_jobs / single_s,
        bulk_rate=bulk_jobs / bulk_s,
        single_catch_up_s=single_catch_up,
        bulk_catch_up_s=bulk_catch_up,
    )
