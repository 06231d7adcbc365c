"""The grouping projector: runs the dispatch fold (`projections.dispatch`) over
QG_EVENTS, publishes its tickets to QG_WORK (and, once each is stored, a notice that
wakes the agents of its target: `infra.events.ticket_notice_subject`) and records the
clock's decisions.

The fold is kept in memory and rebuilt from the stream at start. Decisions that depend
on the clock alone (`BatchDue`, `BatchSplit`) are first appended as events and acted on
when the fold reads them back, so a rebuild makes exactly the decisions the live
projector made. Tickets carry deterministic message ids (`batch:ticket`), so rebuilding
never dispatches a ticket twice within the stream's duplicate window, and an agent that
receives a stale ticket finds nothing to claim and drops it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js import api

from infra import events as ev
from infra import nats as qnats
from infra import settings
from projections.dispatch import Grouping
from projections.runner import decode_batch

if TYPE_CHECKING:
    import asyncio
    from datetime import datetime

    from nats.aio.client import Client

__all__ = ["Grouping", "GroupingProjector", "decision_id"]
"""`Grouping`, the fold it runs, is named here too: where the projector's users look."""

log = structlog.get_logger(__name__)

TICK_S = 0.5
"""How often the timer looks for batches whose wait raised their band or ended."""


def decision_id(event: ev.BatchDue | ev.BatchSplit, review_at: datetime | None) -> str:
    """The `Nats-Msg-Id` of a clock decision: the same while the state it was made on
    lasts, so a timer that fires again before the fold has read it back (or a second
    projector) cannot record it twice."""
    match event:
        case ev.BatchDue():
            return f"due:{event.batch_id}:{review_at.isoformat() if review_at else ''}"
        case ev.BatchSplit():
            return f"split:{event.batch_id}:{event.ticket}"


class GroupingProjector:
    """Runs the fold over QG_EVENTS, publishes its tickets to QG_WORK (each followed by
    its notice once stored) and records the clock's decisions in QG_EVENTS."""

    def __init__(self, nc: Client, policy: settings.Scheduling) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.grouping = Grouping(policy)
        self.position = 0
        self._queued: dict[str, dict[int, int]] = {}
        """Batch -> ticket -> its QG_WORK sequence, for tickets this process published."""

    async def _publish(self, ticket: ev.WorkTicket) -> None:
        ack = await self._js.publish(
            ev.work_subject(ticket.target, ticket.band),
            msgspec.json.encode(ticket),
            stream=ev.WORK_STREAM,
            headers={api.Header.MSG_ID: f"{ticket.batch_id}:{ticket.ticket}"},
        )
        await self._nc.publish(ev.ticket_notice_subject(ticket.target, ticket.band), b"")
        log.info(
            "ticket_issued",
            batch_id=ticket.batch_id,
            ticket=ticket.ticket,
            band=ticket.band,
            stream_seq=ticket.as_of_seq,
        )
        queued = self._queued.setdefault(ticket.batch_id, {})
        queued[ticket.ticket] = ack.seq
        await self._withdraw_stale(ticket.batch_id, queued)

    def _still_live(self, issued: list[ev.WorkTicket]) -> list[ev.WorkTicket]:
        """Of the tickets a run of events issued, those no later event of the run made
        stale (a bulk submission re-raises a new batch's ticket job by job, and each
        ticket published on the way could send another agent to the batch), highest band
        first (an agent that takes a lower one a moment before would be preempted)."""
        live = [t for t in issued if t.ticket in self.grouping.batches[t.batch_id].live]
        return sorted(live, key=lambda t: -t.band)

    async def _withdraw_stale(self, batch_id: str, queued: dict[int, int]) -> None:
        """Delete the batch's tickets that are no longer live from QG_WORK: one a re-raise
        left behind in a lower band would otherwise send a second agent to the batch.
        Only an optimisation (a stale ticket is safe), so a refusal is ignored: spent
        tickets are gone already (acknowledged)."""
        live = self.grouping.batches[batch_id].live
        for number in [n for n in queued if n not in live]:
            seq = queued.pop(number)
            with contextlib.suppress(nats.js.errors.APIError, nats.errors.TimeoutError):
                await self._js.delete_msg(ev.WORK_STREAM, seq)

    async def _decide(self, now: datetime) -> None:
        for decision in self.grouping.due(now):
            batch = self.grouping.batches[decision.batch_id]
            await self._js.publish(
                ev.subject_of(decision),
                ev.encode(decision),
                stream=ev.EVENTS_STREAM,
                headers={api.Header.MSG_ID: decision_id(decision, batch.review_at)},
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Rebuild from the stream's start, re-offer live tickets, then follow new events
        and the clock."""
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
                    await self._decide(ev.utcnow())
                try:
                    msgs = await qnats.fetch_ready(sub, 1000, wait_s=TICK_S)
                except (TimeoutError, nats.errors.TimeoutError):
                    qnats.fetch_timed_out()  # raises if this task is being cancelled
                    continue
                events, self.position = decode_batch(msgs, self.position)
                issued = [t for seq, event in events for t in self.grouping.apply(seq, event)]
                if live:
                    for ticket in self._still_live(issued):
                        await self._publish(ticket)
        finally:
            await sub.unsubscribe()
