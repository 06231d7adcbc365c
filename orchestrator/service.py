"""The orchestrator's commands: submit, read and cancel, each a guarded append (claims:
`orchestrator.claims`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from infra import api, lifecycle
from infra import events as ev
from infra import logging as qlogging
from infra.eventlog import Append, ConcurrencyConflict, EventLog
from orchestrator import domain, queries

if TYPE_CHECKING:
    from infra import db

log = structlog.get_logger(__name__)

CATCH_UP_S = 5.0
"""How long a cancel of many jobs waits for the read model to reach the last job event."""
_CANCEL_ATTEMPTS = 5


class JobService:
    """Validated commands in, acknowledged events out."""

    def __init__(self, events: EventLog, pool: db.Pool) -> None:
        self._events = events
        self._pool = pool

    async def submit(self, spec: api.JobSpec) -> tuple[api.JobView, bool]:
        """Record one job; returns its view and whether it was newly created (False: the
        idempotency key named an existing job)."""
        [(view, created)] = await self._record([domain.submit(spec, ev.utcnow())])
        log.info(
            "job_submitted",
            job_id=view.job_id,
            batch_id=view.batch_id,
            org_id=view.org_id,
            created=created,
        )
        return view, created

    async def submit_many(self, specs: list[api.JobSpec]) -> list[api.JobView]:
        """Record several jobs with their appends in flight together, in request order."""
        now = ev.utcnow()
        recorded = await self._record([domain.submit(spec, now) for spec in specs])
        log.info("jobs_submitted", jobs=len(recorded))
        return [view for view, _ in recorded]

    async def _record(self, events: list[ev.JobSubmitted]) -> list[tuple[api.JobView, bool]]:
        # Msg-Id dedups a retried submit within the duplicate window; the empty-subject
        # guard (expected sequence 0) catches it after the window has passed. Either way
        # the idempotency key named an existing job, which is what the caller gets.
        results = await self._events.append_all(
            [Append(e, msg_id=f"submit:{e.job_id}", expected_seq=0) for e in events]
        )
        recorded: list[tuple[api.JobView, bool]] = []
        known: list[ev.JobId] = []
        for event, result in zip(events, results, strict=True):
            if isinstance(result, ConcurrencyConflict) or result.duplicate:
                known.append(event.job_id)
            else:
                state = lifecycle.start(event, result.seq)
                recorded.append((queries.job_view(state, [event]), True))
        # Jobs an idempotency key already named are read back together, not one by one.
        recorded += [(view, False) for view in await asyncio.gather(*map(self.get, known))]
        order = {event.job_id: index for index, event in enumerate(events)}
        return sorted(recorded, key=lambda pair: order[ev.JobId(pair[0].job_id)])

    async def _fold(self, job_id: str) -> tuple[lifecycle.JobState, list[ev.JobEvent]]:
        if not domain.is_job_id(job_id):
            raise domain.JobNotFound(job_id)
        pairs = await self._events.read_job(job_id)
        state = lifecycle.fold(pairs)
        if state is None:
            raise domain.JobNotFound(job_id)
        return state, [e for _, e in pairs]

    async def get(self, job_id: str) -> api.JobView:
        """The job as its own subject says now (strongly consistent)."""
        state, history = await self._fold(job_id)
        return queries.job_view(state, history)

    async def cancel(self, job_id: str) -> api.JobView:
        for _ in range(_CANCEL_ATTEMPTS):
            state, history = await self._fold(job_id)
            event = domain.cancel(state, ev.utcnow())
            try:
                appended = await self._events.append(event, expected_seq=state.version)
            except ConcurrencyConflict:
                continue  # the job moved on while we decided: decide again
            log.info("job_cancelled", **qlogging.job_keys(state), stream_seq=appended.seq)
            state = lifecycle.evolve(state, event, appended.seq)
            return queries.job_view(state, [*history, event])
        raise domain.DomainError(f"job {job_id} keeps changing; try again")

    async def cancel_many(self, match: api.CancelMany) -> api.CancelResult:
        """Cancel every unfinished job of a batch or of an app version. The read model is
        first brought up to the last job event, so a job submitted just before is found."""
        last = await self._events.last(ev.JOB_EVENT_SUBJECTS)
        caught_up = await queries.wait_for_checkpoint(
            self._pool, queries.JOBS_PROJECTION, last[0] if last else 0, CATCH_UP_S
        )
        if not caught_up:
            raise TimeoutError("the jobs read model is behind the event log")
        async with self._pool.acquire() as conn:
            job_ids = await queries.unfinished_jobs(conn, match)
        outcomes = await asyncio.gather(*map(self._cancel_if_open, job_ids))
        cancelled = [view for view in outcomes if view is not None]
        log.info("jobs_cancelled", jobs=len(cancelled), batch_id=match.batch_id)
        return api.CancelResult(
            cancelled=cancelled, already_finished=len(outcomes) - len(cancelled)
        )

    async def _cancel_if_open(self, job_id: str) -> api.JobView | None:
        try:
            return await self.cancel(job_id)
        except domain.JobFinished:
            return None
