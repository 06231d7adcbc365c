"""The claim service: hands an agent holding a dispatch ticket its batch's next jobs,
over NATS request/reply.

A claim is also the agent's word that it holds nothing but the jobs of its last claim,
which it names (`holding`): it claims between batches, once it has run every job of its
last claim, or while it runs the last of them. So the service first reconciles what the
log says the agent holds with that word. A job it holds in the batch it asks for comes
back to it (the answer of an earlier claim was lost: the request timed out, or NATS
restarted, after the jobs were assigned); a job it holds elsewhere is released
(`JobReleased`, no attempt counted); a job whose start it recorded but never heard back
about is an infrastructure error (`JobErrored`, then a retry or `dead`). The agent asks
again with the same ticket until it gets an answer, so a lost answer strands no job for
longer than the agent's next try.

A claim does not wait for the read model to show the agent's own last writes. A job the
agent names that the read model shows running has ended since, or is the one the agent
runs while it claims: not one it lost track of. Every other action is an append guarded
by the job's version, so a row read before its job moved on changes nothing (a job
handed back that the agent ran already is refused when it records the start, and
skipped). An agent thus claims its next jobs as soon as its last test ends, or before.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
import structlog

from infra import events as ev
from infra import lifecycle, requeue, rpc
from infra import logging as qlogging
from infra.eventlog import ConcurrencyConflict
from infra.responder import Responder
from orchestrator import domain, queries

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from infra import db
    from infra.eventlog import EventLog

log = structlog.get_logger(__name__)

CLAIM_LIMIT = 8
"""Jobs one claim assigns. The agent claims again once it has run them, so a job of
higher priority that joined the batch meanwhile runs next, agents sharing a split batch
take its jobs in turns, and an agent preempted between tests has little to give back."""
CLAIM_CATCH_UP_S = 5.0
CLAIM_ROUNDS = 5
"""Looks at a batch's pending jobs in one claim, while claims racing it take jobs it
chose."""
LOST_TRACK = "its agent lost track of the test (the start was recorded, the agent was not told)"
LEFT_BEHIND = "its agent claimed other work without it (the claim's answer was lost)"

_request_decoder = msgspec.json.Decoder(rpc.ClaimRequest)


class ClaimService:
    """Claims as guarded appends: assigning a job races cancels and other claims, and
    the loser of a race changes nothing."""

    def __init__(
        self, events: EventLog, pool: db.Pool, max_attempts: int, backoff: lifecycle.Backoff
    ) -> None:
        self._events = events
        self._pool = pool
        self._max_attempts = max_attempts
        self._backoff = backoff

    async def claim(self, request: rpc.ClaimRequest) -> rpc.ClaimResponse:
        """Reconcile what the agent holds, assign the batch's next pending jobs to it and
        record that it works the batch (`BatchClaimed`); when there are none, record that
        its ticket is spent (`BatchDrained`) so the grouping projector can issue the next."""
        caught_up = await queries.wait_for_checkpoint(
            self._pool, queries.JOBS_PROJECTION, request.as_of_seq, CLAIM_CATCH_UP_S
        )
        if not caught_up:
            return rpc.ClaimResponse(jobs=[], error="read model is behind; try again")
        async with self._pool.acquire() as conn:
            held = await queries.held_by(conn, request.agent_id)
            pending, ready = await queries.pending_in_batch(conn, request.batch_id, CLAIM_LIMIT)
        kept = await self._reconcile(request, held)
        limit = max(0, CLAIM_LIMIT - len(kept))
        assigned = await self._assign_next(request, pending[:limit], limit)
        jobs = kept + assigned
        await self._events.append(outcome(request, len(jobs)))
        log.info(
            "batch_claimed",
            batch_id=request.batch_id,
            agent_id=request.agent_id,
            jobs=len(jobs),
            kept=len(kept),
            ticket=request.ticket,
        )
        return rpc.ClaimResponse(jobs=jobs, queued_after=max(0, ready - len(assigned)))

    async def _reconcile(
        self, request: rpc.ClaimRequest, held: list[lifecycle.JobState]
    ) -> list[rpc.ClaimedJob]:
        """The jobs the agent holds in the batch it asks for (it gets them again); the
        ones it holds elsewhere are released or, if started, errored."""
        kept: list[rpc.ClaimedJob] = []
        for state in held:
            if state.status is ev.JobStatus.RUNNING and state.job_id in request.holding:
                continue  # ended since the read model saw it, or runs while it claims
            if state.status is ev.JobStatus.RUNNING:
                acted = await requeue.error_job(
                    self._events,
                    state,
                    request.agent_id,
                    LOST_TRACK,
                    self._max_attempts,
                    backoff=self._backoff,
                )
            elif state.batch_id == request.batch_id:
                kept.append(rpc.ClaimedJob(state=state))
                acted = True
            else:
                acted = await self._release(state, request.agent_id)
            if acted:
                log.warning(
                    "held_job_reconciled", **qlogging.job_keys(state), status=str(state.status)
                )
        return kept

    async def _release(self, state: lifecycle.JobState, agent_id: ev.AgentId) -> bool:
        """Give the job back; False when it moved on meanwhile (cancelled, say, or its
        row was read before the agent's own last write), and nothing is left to do."""
        event = ev.JobReleased(
            at=ev.utcnow(), job_id=state.job_id, agent_id=agent_id, reason=LEFT_BEHIND
        )
        try:
            await self._events.append(event, expected_seq=state.version)
        except ConcurrencyConflict:
            return False
        return True

    async def _assign_next(
        self, request: rpc.ClaimRequest, pending: list[lifecycle.JobState], limit: int
    ) -> list[rpc.ClaimedJob]:
        """The `pending` jobs (up to `limit` of the batch's), assigned to the agent as far
        as they still can be. Agents sharing a batch claim at the same moment and choose
        the same first jobs: a claim that lost some of them to a racing claim looks again
        once the read model shows where they went, and takes the next ones, instead of
        coming back short (or taking the batch for drained while it still has jobs)."""
        assigned: list[rpc.ClaimedJob] = []
        for _ in range(CLAIM_ROUNDS):
            tries = await asyncio.gather(*(self._assign(s, request.agent_id) for s in pending))
            assigned += [t for t in tries if isinstance(t, rpc.ClaimedJob)]
            moved_to = [t for t in tries if isinstance(t, int)]
            if len(assigned) >= limit or not moved_to:
                return assigned
            # Where the lost jobs went, and this claim's own: those are pending no more.
            seen = max(moved_to + [job.state.version for job in assigned])
            caught_up = await queries.wait_for_checkpoint(
                self._pool, queries.JOBS_PROJECTION, seen, CLAIM_CATCH_UP_S
            )
            if not caught_up:
                break
            async with self._pool.acquire() as conn:
                pending, _ = await queries.pending_in_batch(
                    conn, request.batch_id, limit - len(assigned)
                )
        return assigned

    async def _assign(
        self, state: lifecycle.JobState, agent_id: ev.AgentId
    ) -> rpc.ClaimedJob | int:
        """The job, assigned to the agent; else the sequence of the event that moved it
        on since the read model saw it."""
        event = domain.assign(state, agent_id, ev.utcnow())
        try:
            appended = await self._events.append(event, expected_seq=state.version)
        except ConcurrencyConflict:
            return await self._if_already_theirs(state.job_id, agent_id)
        return rpc.ClaimedJob(state=lifecycle.evolve(state, event, appended.seq))

    async def _if_already_theirs(
        self, job_id: ev.JobId, agent_id: ev.AgentId
    ) -> rpc.ClaimedJob | int:
        """A job that moved on since the read model saw it: the agent's still, if an
        earlier claim of the same agent, answered meanwhile, assigned it (its answer may be
        the one that was lost); else cancelled or taken by another agent, and then the
        sequence of its last event."""
        state = lifecycle.fold(await self._events.read_job(job_id))
        if state is None:
            return 0
        if state.status is ev.JobStatus.ASSIGNED and state.agent_id == agent_id:
            return rpc.ClaimedJob(state=state)
        return state.version


def outcome(request: rpc.ClaimRequest, jobs: int) -> ev.BatchClaimed | ev.BatchDrained:
    """What a claim that found `jobs` jobs records about the agent's ticket."""
    if jobs:
        return ev.BatchClaimed(
            at=ev.utcnow(),
            batch_id=request.batch_id,
            ticket=request.ticket,
            agent_id=request.agent_id,
            jobs=jobs,
        )
    return ev.BatchDrained(
        at=ev.utcnow(),
        batch_id=request.batch_id,
        ticket=request.ticket,
        agent_id=request.agent_id,
    )


def claim_server(nc: Client, claims: ClaimService) -> Responder:
    """Serves `qg.rpc.claim` in a queue group, so orchestrator replicas share the load;
    a claim that waits for the read model to catch up does not hold up the others."""

    async def answer(request: Msg) -> bytes:
        try:
            response = await claims.claim(_request_decoder.decode(request.data))
        except msgspec.DecodeError as exc:
            response = rpc.ClaimResponse(jobs=[], error=f"bad claim request: {exc}")
        except Exception as exc:
            log.exception("claim_failed")
            response = rpc.ClaimResponse(jobs=[], error=f"claim failed: {exc}")
        return msgspec.json.encode(response)

    return Responder(nc, ev.CLAIM_SUBJECT, "orchestrator", answer)
