"""The queue as `GET /queues` shows it: the band each open batch is dispatched in, by the
dispatcher's own aging rule (`infra.bands`), what waits in each band, and the agents
working on each batch.

A job's wait starts when it became claimable: its submission, or for a retried job its
retry backoff's end, else the end of its failed run. A job given back by a preempted
agent keeps its wait. The `jobs` read model has these moments but one: the grouping
projector counts from the retry event itself, which the read model does not keep, so for
a flaky-test retry the view counts from the failed test's start (a test's duration
early), and for a retried job given back later from its submission.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from infra import api, bands
from infra import events as ev

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from infra import db

_WAITING = """
SELECT batch_id, target, org_id, priority, count(*) AS queued,
       min(COALESCE(not_before, finished_at, started_at, submitted_at))
           FILTER (WHERE not_before IS NULL OR not_before <= $2) AS ready_since
FROM jobs
WHERE status = 'queued' AND ($1::text IS NULL OR org_id = $1)
GROUP BY batch_id, target, org_id, priority
"""
_WORKERS = """
SELECT batch_id, array_agg(DISTINCT agent_id ORDER BY agent_id) AS agents
FROM jobs
WHERE status IN ('assigned', 'running') AND ($1::text IS NULL OR org_id = $1)
GROUP BY batch_id
"""


@dataclass
class Waiting:
    """One batch's queued jobs."""

    target: ev.Target
    org_id: str
    queued: int = 0
    ready: dict[int, datetime] = field(default_factory=dict)
    """Priority -> when its longest-waiting job that may run now started waiting."""

    def band(self, now: datetime, step: timedelta | None) -> int:
        """The dispatcher's band for these jobs at `now`; BACKOFF_BAND when none may run."""
        aged = (bands.aged(p, since, now, step) for p, since in self.ready.items())
        return max(aged, default=api.BACKOFF_BAND)


async def waiting(conn: db.Connection, now: datetime, org_id: str | None) -> dict[str, Waiting]:
    """Batch id -> its queued jobs, for the batches with any."""
    found: dict[str, Waiting] = {}
    for row in await conn.fetch(_WAITING, org_id, now):
        batch = found.setdefault(row["batch_id"], Waiting(ev.Target(row["target"]), row["org_id"]))
        batch.queued += row["queued"]
        if row["ready_since"] is not None:
            batch.ready[row["priority"]] = row["ready_since"]
    return found


async def workers(conn: db.Connection, org_id: str | None) -> dict[str, list[str]]:
    """Batch id -> the agents holding its jobs (assigned or running)."""
    return {row["batch_id"]: row["agents"] for row in await conn.fetch(_WORKERS, org_id)}


def bands_of(
    batches: dict[str, Waiting],
    working: dict[str, list[str]],
    now: datetime,
    aging_interval_s: float | None,
) -> dict[str, int]:
    """Batch id -> its band now. Waiting raises a batch's band only while no agent works
    it: its queued jobs then wait for that agent's next claim, not for dispatch."""
    step = bands.aging_step(aging_interval_s)
    return {
        batch_id: batch.band(now, None if batch_id in working else step)
        for batch_id, batch in batches.items()
    }


def band_rows(batches: dict[str, Waiting], band_of: dict[str, int]) -> list[api.QueueBand]:
    """Depth, batches, orgs and oldest wait per (target, band): highest band first."""
    grouped: defaultdict[tuple[int, ev.Target], list[Waiting]] = defaultdict(list)
    for batch_id, batch in batches.items():
        grouped[band_of[batch_id], batch.target].append(batch)
    return [
        api.QueueBand(
            target=target,
            band=band,
            pending=sum(b.queued for b in members),
            batches=len(members),
            orgs=sorted({b.org_id for b in members}),
            oldest_queued_at=min((t for b in members for t in b.ready.values()), default=None),
        )
        for (band, target), members in sorted(grouped.items(), key=lambda g: (-g[0][0], g[0][1]))
    ]


def open_batches(
    rows: list[dict[str, Any]], band_of: dict[str, int], working: dict[str, list[str]]
) -> list[api.QueueBatch]:
    """The open batches with their band and agents: highest band first, then those only
    being worked on; the oldest first within."""
    batches = [
        msgspec.convert(
            {
                **row,
                "band": band_of.get(row["batch_id"]),
                "agents": working.get(row["batch_id"], []),
            },
            api.QueueBatch,
        )
        for row in rows
    ]
    return sorted(batches, key=lambda b: (1 if b.band is None else -b.band, b.created_at))
