"""Reads from the PostgreSQL read models (eventually consistent)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated, Any

import msgspec

from infra import api, db, lifecycle
from infra import events as ev
from orchestrator import history, queueview

JOBS_PROJECTION = "jobs"
_JOB_FILTERS = ("org_id", "app_version_id", "status", "target", "batch_id")
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=500)]


class JobFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Query parameters of `GET /jobs`."""

    org_id: str | None = None
    app_version_id: str | None = None
    status: ev.JobStatus | None = None
    target: ev.Target | None = None
    batch_id: str | None = None
    limit: PageLimit = 50
    cursor: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$")] | None = None
    """Opaque to clients: the `next_cursor` of the previous page."""


class BatchFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Query parameters of `GET /batches`."""

    limit: PageLimit = 50


def job_view(state: lifecycle.JobState, events: list[ev.JobEvent] | None = None) -> api.JobView:
    """The API's view of a job; with its `events`, also its history and attempts."""
    fields = msgspec.structs.asdict(state)
    for private in ("test_failures", "version"):
        fields.pop(private)
    events = events or []
    return api.JobView(
        **fields, events=[ev.tag_of(e) for e in events], attempts=history.attempts(events)
    )


async def list_jobs(conn: db.Connection, query: JobFilter) -> api.JobPage:
    """Newest first; `cursor` continues where the previous page ended."""
    clauses: list[str] = []
    args: list[Any] = []
    for name in _JOB_FILTERS:
        value = getattr(query, name)
        if value is not None:
            args.append(str(value))
            clauses.append(f"{name} = ${len(args)}")
    if query.cursor is not None:
        args.append(int(query.cursor))
        clauses.append(f"submit_seq < ${len(args)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(query.limit + 1)
    rows = await conn.fetch(
        f"SELECT * FROM jobs {where} ORDER BY submit_seq DESC LIMIT ${len(args)}", *args
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    cursor = str(rows[-1]["submit_seq"]) if more and rows else None
    return api.JobPage(jobs=[job_view(lifecycle.from_row(r)) for r in rows], next_cursor=cursor)


async def pending_in_batch(
    conn: db.Connection, batch_id: str, limit: int
) -> tuple[list[lifecycle.JobState], int]:
    """The first `limit` queued jobs of a batch that may run now (their retry backoff is
    over), in run order: priority first, then submission order; and how many there are."""
    rows = await conn.fetch(
        "SELECT *, count(*) OVER () AS ready FROM jobs WHERE batch_id = $1 AND status = 'queued'"
        " AND (not_before IS NULL OR not_before <= $3)"
        " ORDER BY priority DESC, submit_seq LIMIT $2",
        batch_id,
        limit,
        ev.utcnow(),
    )
    return [lifecycle.from_row(r) for r in rows], rows[0]["ready"] if rows else 0


async def held_by(conn: db.Connection, agent_id: str) -> list[lifecycle.JobState]:
    """The jobs an agent holds (assigned to it, or running on it)."""
    rows = await conn.fetch(
        "SELECT * FROM jobs WHERE status IN ('assigned', 'running') AND agent_id = $1"
        " ORDER BY priority DESC, submit_seq",
        agent_id,
    )
    return [lifecycle.from_row(r) for r in rows]


async def unfinished_jobs(conn: db.Connection, match: api.CancelMany) -> list[str]:
    """Ids of the jobs not in a final state that match every field given."""
    clauses = ["status <> ALL($1)"]
    args: list[Any] = [[str(s) for s in ev.TERMINAL_STATUSES]]
    for name in ("batch_id", "org_id", "app_version_id", "target"):
        value = getattr(match, name)
        if value is not None:
            args.append(str(value))
            clauses.append(f"{name} = ${len(args)}")
    rows = await conn.fetch(f"SELECT job_id FROM jobs WHERE {' AND '.join(clauses)}", *args)
    return [row["job_id"] for row in rows]


async def wait_for_checkpoint(pool: db.Pool, projection: str, seq: int, timeout_s: float) -> bool:
    """Wait until `projection` has applied stream sequence `seq`; False on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.0005  # a projector applies an event within milliseconds: look again soon
    while True:
        async with pool.acquire() as conn:
            applied = await db.checkpoint(conn, projection)
        if applied >= seq:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


_BATCH_SELECT = """
SELECT b.batch_id, b.org_id, b.app_version_id, b.target, b.created_at, b.installs,
       b.last_agent_id,
       count(j.job_id) AS jobs,
       count(*) FILTER (WHERE j.status = 'queued') AS pending,
       count(*) FILTER (WHERE j.status IN ('assigned', 'running')) AS active,
       count(*) FILTER (WHERE j.status = 'passed') AS passed,
       count(*) FILTER (WHERE j.status = 'failed') AS failed,
       count(*) FILTER (WHERE j.status IN ('cancelled', 'dead', 'errored')) AS other,
       max(j.priority) FILTER (WHERE j.status = 'queued') AS top_priority
FROM batches b LEFT JOIN jobs j ON j.batch_id = b.batch_id
"""


async def _batch_rows(
    conn: db.Connection, limit: int, open_only: bool, org_id: str | None
) -> list[dict[str, Any]]:
    having = (
        "HAVING count(*) FILTER (WHERE j.status IN ('queued', 'assigned', 'running')) > 0"
        if open_only
        else ""
    )
    rows = await conn.fetch(
        f"{_BATCH_SELECT} WHERE ($2::text IS NULL OR b.org_id = $2)"
        f" GROUP BY b.batch_id {having} ORDER BY b.last_job_at DESC LIMIT $1",
        limit,
        org_id,
    )
    return [dict(row) for row in rows]


async def list_batches(
    conn: db.Connection, limit: int, org_id: str | None = None
) -> list[api.BatchView]:
    """The most recently active batches (of one org, when given)."""
    rows = await _batch_rows(conn, limit, open_only=False, org_id=org_id)
    return [msgspec.convert(row, api.BatchView) for row in rows]


class PriorityDepth(msgspec.Struct, frozen=True, kw_only=True):
    """Queued jobs of one target and priority, for `GET /metrics`."""

    target: ev.Target
    priority: int
    pending: int
    oldest_submitted_at: datetime | None = None


async def pending_by_priority(conn: db.Connection) -> list[PriorityDepth]:
    """Queued jobs per target and priority, with the oldest submission of each."""
    rows = await conn.fetch(
        "SELECT target, priority, count(*) AS pending, min(submitted_at) AS oldest_submitted_at"
        " FROM jobs WHERE status = 'queued' GROUP BY target, priority"
        " ORDER BY target, priority DESC"
    )
    return [msgspec.convert(dict(r), PriorityDepth) for r in rows]


async def queue(
    conn: db.Connection, aging_interval_s: float | None, org_id: str | None = None
) -> api.QueueView:
    """What waits, in which band, and what runs where (of one org, when given)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        now = ev.utcnow()
        waiting = await queueview.waiting(conn, now, org_id)
        workers = await queueview.workers(conn, org_id)
        rows = await _batch_rows(conn, limit=100, open_only=True, org_id=org_id)
        running = await conn.fetchval(
            "SELECT count(*) FROM jobs WHERE status IN ('assigned', 'running')"
            " AND ($1::text IS NULL OR org_id = $1)",
            org_id,
        )
    bands = queueview.bands_of(waiting, workers, now, aging_interval_s)
    return api.QueueView(
        bands=queueview.band_rows(waiting, bands),
        open_batches=queueview.open_batches(rows, bands, workers),
        running=running,
        aging_interval_s=aging_interval_s,
    )


_AGENTS = """
SELECT a.agent_id, a.targets, a.runner, a.hostname, a.status, a.registered_at,
       a.last_event_at, a.jobs_run, a.installs,
       CASE WHEN $1::text IS NULL OR b.org_id = $1 THEN a.batch_id END AS batch_id
FROM agents a LEFT JOIN batches b ON b.batch_id = a.batch_id
ORDER BY a.agent_id
"""


async def list_agents(conn: db.Connection, org_id: str | None = None) -> api.AgentPage:
    """The fleet; for one org's eyes, the batch an agent works on shows only if it is
    that org's."""
    rows = await conn.fetch(_AGENTS, org_id)
    return api.AgentPage(agents=[msgspec.convert(dict(r), api.AgentView) for r in rows])


class Installs(msgspec.Struct, frozen=True, kw_only=True):
    """Builds installed for one target, and the jobs that ran without an install of their own."""

    target: ev.Target
    installs: int
    saved: int


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """The read-model counts behind `GET /metrics`, read from one snapshot."""

    jobs: dict[ev.JobStatus, int]
    bands: list[PriorityDepth]
    open_batches: int
    installs: list[Installs]
    agents: dict[str, int]
    retries: int
    """Attempts beyond the first, over all jobs."""
    rejected_events: int
    """Messages on the event stream that were not events, parked by the projectors."""


# Per batch, the jobs that started beyond the installs done for it ran on a device that
# already had the build; summed per batch so that one batch's failed installs never
# cancel out another's savings.
_INSTALLS = """
SELECT target, sum(installs)::bigint AS installs,
       sum(GREATEST(started - installs, 0))::bigint AS saved
FROM (SELECT b.target, b.installs,
             count(j.job_id) FILTER (WHERE j.started_at IS NOT NULL) AS started
      FROM batches b LEFT JOIN jobs j ON j.batch_id = b.batch_id
      GROUP BY b.batch_id) AS per_batch
GROUP BY target
"""


async def stats(conn: db.Connection) -> Stats:
    """Counts of jobs, queues, installs and agents, consistent with one another."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        jobs = await conn.fetch("SELECT status, count(*) AS n FROM jobs GROUP BY status")
        agents = await conn.fetch("SELECT status, count(*) AS n FROM agents GROUP BY status")
        return Stats(
            jobs={ev.JobStatus(r["status"]): r["n"] for r in jobs},
            bands=await pending_by_priority(conn),
            open_batches=await conn.fetchval(
                "SELECT count(DISTINCT batch_id) FROM jobs"
                " WHERE status IN ('queued', 'assigned', 'running')"
            ),
            installs=[msgspec.convert(dict(r), Installs) for r in await conn.fetch(_INSTALLS)],
            agents={r["status"]: r["n"] for r in agents},
            retries=await conn.fetchval("SELECT coalesce(sum(attempt - 1), 0) FROM jobs"),
            rejected_events=await conn.fetchval("SELECT count(*) FROM rejected_events"),
        )


async def active_jobs(conn: db.Connection) -> list[lifecycle.JobState]:
    """Jobs an agent holds: assigned or running."""
    rows = await conn.fetch("SELECT * FROM jobs WHERE status IN ('assigned', 'running')")
    return [lifecycle.from_row(r) for r in rows]


async def errored_jobs(conn: db.Connection, before: datetime) -> list[lifecycle.JobState]:
    """Jobs left `errored` since before `before`: nobody decided what follows."""
    rows = await conn.fetch(
        "SELECT * FROM jobs WHERE status = 'errored' AND finished_at < $1", before
    )
    return [lifecycle.from_row(r) for r in rows]


async def registrations(conn: db.Connection) -> dict[str, int]:
    """Each agent's latest registration, as a stream sequence."""
    rows = await conn.fetch("SELECT agent_id, registered_seq FROM agents")
    return {row["agent_id"]: row["registered_seq"] for row in rows}
