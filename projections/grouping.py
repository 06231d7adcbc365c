"""The grouping projector: folds jobs into batches keyed by (org, app version, target) and
keeps exactly one dispatch ticket alive per batch that has jobs ready to run. A batch
whose pending jobs all wait out a retry backoff gets its ticket when the first wait ends.

Its state is a pure fold of QG_EVENTS kept in memory and rebuilt from the stream at start.
Tickets carry deterministic message ids (`batch:ticket`), so rebuilding never dispatches
a ticket twice within the stream's duplicate window, and an agent that receives a stale
ticket finds nothing to claim and drops it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import structlog
from nats.js import api

from infra import events as ev
from projections.runner import decode_batch

if TYPE_CHECKING:
    import asyncio
    from datetime import datetime

    from nats.js import JetStreamContext

log = structlog.get_logger(__name__)

TICK_S = 0.5
"""How often batches waiting out a retry backoff are looked at."""


@dataclass
class BatchState:
    """What the grouping projector knows about one batch."""

    batch_id: ev.BatchId
    org_id: str
    app_version_id: str
    target: ev.Target
    pending: dict[str, int] = field(default_factory=dict)
    """Pending job id -> priority."""
    backoff: dict[str, datetime] = field(default_factory=dict)
    """Pending job id -> when its retry backoff ends (only jobs still waiting)."""
    ticket: int = 0
    """Number of the batch's latest ticket."""
    ticket_live: bool = False

    @property
    def band(self) -> int:
        return max(self.pending.values())

    def ready(self, now: datetime) -> bool:
        """Whether a pending job may be claimed at `now`; forgets waits that are over."""
        for job_id, until in list(self.backoff.items()):
            if until <= now:
                del self.backoff[job_id]
        return len(self.pending) > len(self.backoff)

    def forget(self, job_id: str) -> None:
        self.pending.pop(job_id, None)
        self.backoff.pop(job_id, None)


class Grouping:
    """The pure fold: events in, tickets to issue out."""

    def __init__(self) -> None:
        self.batches: dict[str, BatchState] = {}
        self._open_jobs: dict[str, tuple[BatchState, int]] = {}
        """Unfinished job id -> (its batch, its priority)."""
        self.job_position = 0
        """Sequence of the last job event folded: a ticket's `as_of_seq`, because the
        `jobs` read model (which claims read) only ever advances on job events."""
        self._waiting: dict[str, BatchState] = {}
        """Batches without a ticket whose pending jobs all wait out a backoff."""

    def _issue(self, batch: BatchState) -> ev.WorkTicket:
        batch.ticket += 1
        batch.ticket_live = True
        return self.ticket_of(batch)

    def ticket_of(self, batch: BatchState) -> ev.WorkTicket:
        return ev.WorkTicket(
            batch_id=batch.batch_id,
            org_id=batch.org_id,
            app_version_id=batch.app_version_id,
            target=batch.target,
            band=batch.band,
            ticket=batch.ticket,
            as_of_seq=self.job_position,
        )

    def _pend(
        self, job_id: str, at: datetime, not_before: datetime | None = None
    ) -> ev.WorkTicket | None:
        batch, priority = self._open_jobs[job_id]
        batch.pending[job_id] = priority
        if not_before is not None and not_before > at:
            batch.backoff[job_id] = not_before
        return None if batch.ticket_live else self._offer(batch, at)

    def _offer(self, batch: BatchState, now: datetime) -> ev.WorkTicket | None:
        """A ticket for a batch without one, if a pending job may run now; else the batch
        waits for `tick`."""
        if batch.ready(now):
            self._waiting.pop(batch.batch_id, None)
            return self._issue(batch)
        if batch.pending:
            self._waiting[batch.batch_id] = batch
        return None

    def tick(self, now: datetime) -> list[ev.WorkTicket]:
        """Tickets for waiting batches whose first retry backoff has ended by `now`."""
        tickets: list[ev.WorkTicket] = []
        for batch in list(self._waiting.values()):
            if batch.ticket_live or not batch.pending:
                del self._waiting[batch.batch_id]
            elif batch.ready(now):
                del self._waiting[batch.batch_id]
                tickets.append(self._issue(batch))
        return tickets

    def apply(self, seq: int, event: ev.Event) -> ev.WorkTicket | None:
        """Fold one event; returns the ticket to publish, if the event calls for one."""
        if isinstance(event, ev.JobEvent):
            self.job_position = seq
        match event:
            case ev.JobSubmitted():
                batch = self.batches.get(event.batch_id)
                if batch is None:
                    batch = self.batches[event.batch_id] = BatchState(
                        event.batch_id, event.org_id, event.app_version_id, event.target
                    )
                self._open_jobs[event.job_id] = (batch, event.priority)
                return self._pend(event.job_id, event.at)
            case ev.JobRetried():
                if event.job_id in self._open_jobs:
                    return self._pend(event.job_id, event.at, event.not_before)
            case ev.JobReleased():
                if event.job_id in self._open_jobs:
                    return self._pend(event.job_id, event.at)
            case ev.JobAssigned():
                if event.job_id in self._open_jobs:
                    self._open_jobs[event.job_id][0].forget(event.job_id)
            case ev.JobPassed() | ev.JobFailed() | ev.JobDead() | ev.JobCancelled():
                if event.job_id in self._open_jobs:
                    batch, _ = self._open_jobs.pop(event.job_id)
                    batch.forget(event.job_id)
            case ev.BatchDrained():
                batch = self.batches.get(event.batch_id)
                if batch is None or event.ticket != batch.ticket:
                    return None  # a stale ticket was spent: the live one is untouched
                batch.ticket_live = False
                return self._offer(batch, event.at)
        return None

    def live_tickets(self) -> list[ev.WorkTicket]:
        """Tickets that should exist now for batches with pending jobs."""
        return [self.ticket_of(b) for b in self.batches.values() if b.ticket_live and b.pending]


class GroupingProjector:
    """Runs the fold over QG_EVENTS and publishes its tickets to QG_WORK."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.grouping = Grouping()
        self.position = 0

    async def _publish(self, ticket: ev.WorkTicket) -> None:
        await self._js.publish(
            ev.work_subject(ticket.target, ticket.band),
            msgspec.json.encode(ticket),
            stream=ev.WORK_STREAM,
            headers={api.Header.MSG_ID: f"{ticket.batch_id}:{ticket.ticket}"},
        )
        log.info(
            "ticket_issued",
            batch_id=ticket.batch_id,
            ticket=ticket.ticket,
            band=ticket.band,
            stream_seq=ticket.as_of_seq,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Rebuild from the stream's start, re-offer live tickets, then follow new events."""
        info = await self._js.stream_info(ev.EVENTS_STREAM)
        caught_up_at = info.state.last_seq
        sub = await self._js.pull_subscribe(
            ev.EVENT_SUBJECTS,
            stream=ev.EVENTS_STREAM,
            config=api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.NONE,
                inactive_threshold=30,
            ),
        )
        live = caught_up_at == 0
        try:
            while not stop.is_set():
                if not live and self.position >= caught_up_at:
                    live = True
                    for ticket in self.grouping.live_tickets():
                        await self._publish(ticket)
                    log.info("grouping_rebuilt", stream_seq=self.position)
                if live:
                    for due in self.grouping.tick(ev.utcnow()):
                        await self._publish(due)
                try:
                    msgs = await sub.fetch(1000, timeout=TICK_S)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                events, self.position = decode_batch(msgs, self.position)
                for seq, event in events:
                    issued = self.grouping.apply(seq, event)
                    if issued is not None and live:
                        await self._publish(issued)
        finally:
            await sub.unsubscribe()
