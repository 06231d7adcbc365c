"""Replay speed: a rebuild of the `jobs` read model from sequence 1 of QG_EVENTS into a
scratch schema, run in the bench process because it measures the projector code path
itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import api as js_api
from nats.js.errors import NotFoundError

from infra import db
from infra import events as ev
from projections.jobs import JobsProjection
from projections.runner import ProjectionRunner
from tests.bench.measure import progress

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from infra import embedded

REPLAY_SCHEMA = "qg_replay"
REPLAY_DURABLE = "bench-replay"
JOB_EVENTS = "qg.evt.job.>"


@dataclass(frozen=True)
class ReplayFigures:
    """A rebuild of the `jobs` read model: job events applied per second."""

    rate: float
    events: int
    seconds: float
    rows: int


async def count_job_events(js: JetStreamContext) -> int:
    """How many messages QG_EVENTS holds on the job subjects (a throwaway consumer's
    pending count)."""
    info = await js.add_consumer(
        ev.EVENTS_STREAM,
        js_api.ConsumerConfig(
            filter_subject=JOB_EVENTS,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_policy=js_api.AckPolicy.NONE,
            inactive_threshold=10.0,
        ),
    )
    await js.delete_consumer(ev.EVENTS_STREAM, info.name)
    return info.num_pending or 0


async def replay_jobs(js: JetStreamContext, pool: db.Pool) -> float:
    """Rebuild `jobs` from sequence 1 into the pool's fresh schema; returns the seconds."""
    async with pool.acquire() as conn:
        await db.drop_schema(conn, REPLAY_SCHEMA)
        await db.migrate(conn, REPLAY_SCHEMA)
    runner = ProjectionRunner(js, pool, JobsProjection(), durable=REPLAY_DURABLE)
    started = time.perf_counter()
    await runner.run(asyncio.Event(), catch_up=True)
    return time.perf_counter() - started


async def measure_replay(servers: embedded.Servers, js: JetStreamContext) -> ReplayFigures:
    """Replay speed of the `jobs` read model over everything the earlier runs appended."""
    events = await count_job_events(js)
    progress(f"replay of {events:,} job events")
    pool = await db.create_pool(servers.database_url, schema=REPLAY_SCHEMA)
    try:
        seconds = await replay_jobs(js, pool)
        async with pool.acquire() as conn:
            rows = int(await conn.fetchval("SELECT count(*) FROM jobs") or 0)
            await db.drop_schema(conn, REPLAY_SCHEMA)
    finally:
        await pool.close()
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(ev.EVENTS_STREAM, REPLAY_DURABLE)
    return ReplayFigures(rate=events / seconds, events=events, seconds=seconds, rows=rows)
