"""The sweep that finds stranded jobs and requeues them: jobs held by an agent whose
heartbeat expired, jobs an agent held before it restarted under the same id, and jobs
whose writer died between recording an infrastructure error and deciding what follows."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from nats.js.errors import KeyNotFoundError

from infra import events as ev
from infra import lifecycle, requeue
from infra import logging as qlogging
from infra.stopping import stopped_within
from orchestrator import queries

if TYPE_CHECKING:
    import asyncio

    from nats.js.kv import KeyValue

    from infra import db
    from infra.eventlog import EventLog

log = structlog.get_logger(__name__)


class LostAgentSweeper:
    """Every `interval_s`: for each agent holding assigned or running jobs, is its
    registry key still there? If not, record `AgentLost` and requeue its jobs (attempt
    counted). Guarded appends make a second sweeper, or a late agent, harmless."""

    def __init__(
        self,
        events: EventLog,
        pool: db.Pool,
        registry: KeyValue,
        max_attempts: int,
        interval_s: float,
        backoff: lifecycle.Backoff = lifecycle.NO_BACKOFF,
    ) -> None:
        self._events = events
        self._pool = pool
        self._registry = registry
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not await stopped_within(stop, self._interval_s):
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep_failed")

    async def _alive(self, agent_id: str) -> bool:
        try:
            await self._registry.get(agent_id)
        except KeyNotFoundError:
            return False
        return True

    async def sweep(self) -> int:
        """One pass; returns how many jobs it requeued."""
        stale_before = ev.utcnow() - timedelta(seconds=self._interval_s)
        async with self._pool.acquire() as conn:
            active = await queries.active_jobs(conn)
            registered = await queries.registrations(conn)
            errored = await queries.errored_jobs(conn, stale_before)
        held: dict[str, list[lifecycle.JobState]] = defaultdict(list)
        for job in active:
            if job.agent_id is not None:
                held[job.agent_id].append(job)
        requeued = 0
        for agent_id, jobs in held.items():
            if await self._alive(agent_id):
                # Held from before the agent's latest start: that process is gone.
                orphans = [j for j in jobs if j.version < registered.get(agent_id, 0)]
                requeued += await self._requeue(agent_id, orphans, "agent restarted")
                continue
            await self._events.append(
                ev.AgentLost(at=ev.utcnow(), agent_id=ev.AgentId(agent_id)),
                msg_id=f"lost:{agent_id}:{max(j.version for j in jobs)}",
            )
            log.warning("agent_lost", agent_id=agent_id, jobs=len(jobs))
            requeued += await self._requeue(agent_id, jobs, "agent lost")
        for job in errored:
            # Its writer recorded the error but died before deciding what follows.
            requeued += await requeue.follow_up(
                self._events, job, self._max_attempts, self._backoff
            )
        return requeued

    async def _requeue(self, agent_id: str, jobs: list[lifecycle.JobState], reason: str) -> int:
        requeued = 0
        for job in jobs:
            log.warning(
                "job_requeued", **qlogging.job_keys(job), stream_seq=job.version, reason=reason
            )
            requeued += await requeue.error_job(
                self._events,
                job,
                ev.AgentId(agent_id),
                reason,
                self._max_attempts,
                backoff=self._backoff,
            )
        return requeued
