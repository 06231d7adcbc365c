"""What the grouping projector knows about one batch: its pending jobs and how long they
have waited, its dispatch tickets, and the band it is dispatched in.

A batch's band at a moment is the highest priority among its pending jobs that may run
(their retry backoff is over), each raised one band per `aging interval` it has waited,
up to 5; its dispatch queue is that band, or `bands.URGENT` with a priority-5 job ready.
Aging stops while an agent works the batch: its pending jobs then wait for that agent's
next claim, not for dispatch. Since the longest-waiting job of each priority is
the most aged one, the band needs only those: ready jobs sit in one heap per priority,
oldest wait on top, so a submission or an assignment costs a heap operation, not a pass
over the batch. Jobs in a retry backoff wait aside until an event at or after its end
settles them. Time is an argument everywhere, so the fold that owns these states stays
pure. The aging rule itself is `infra.bands`, shared with the queue view.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from infra import bands

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from infra import events as ev

INSTALLED_ON = 3
"""Agents named as holding a batch's build: the hint need not be long to be useful."""


@dataclass
class Pending:
    """A job waiting to be claimed."""

    priority: int
    queued_at: datetime
    """When it started waiting: submitted, or its retry backoff ended. Giving a job back
    (`JobReleased`) keeps its wait."""
    not_before: datetime | None = None
    """A retry backoff: not claimable before this."""

    def ready(self, now: datetime) -> bool:
        return self.not_before is None or self.not_before <= now


@dataclass
class BatchState:
    """One batch: jobs of one org, app version and target."""

    batch_id: ev.BatchId
    org_id: str
    app_version_id: str
    target: ev.Target
    pending: dict[str, Pending] = field(default_factory=dict)
    """Pending job id -> its wait."""
    held: set[str] = field(default_factory=set)
    """Jobs assigned to an agent and not finished: the batch's work in agents' hands."""
    ticket: int = 0
    """Number of the batch's latest ticket."""
    live: dict[int, int] = field(default_factory=dict)
    """Live ticket number -> its dispatch queue. Several while the batch is split; a ticket left
    behind by a re-raise is stale, no longer live, yet its holder may still claim."""
    offered: set[int] = field(default_factory=set)
    """Live tickets no agent has claimed with yet: they wait in a QG_WORK queue."""
    band: int = 0
    """The dispatch queue (`infra.bands.QUEUES`) of its latest ticket, or the one it
    waits for a ticket in."""
    wanting: bool = False
    """It has jobs ready and no live ticket, and waits for the fairness rules to let it
    have one."""
    review_at: datetime | None = None
    """When a retry backoff ends or waiting raises its band next: the timer's cue."""
    installed_on: list[ev.AgentId] = field(default_factory=list)
    """The agents that installed its build last, latest last."""
    position: int = 0
    """Stream sequence of the last event that made one of its jobs pending: a ticket's
    `as_of_seq`. A claim reads the `jobs` read model, which must show the batch's
    pending jobs; waiting for every later job event too would make each claim wait for
    the read model to catch up with the whole stream."""
    _ready: dict[int, list[tuple[datetime, str]]] = field(default_factory=dict)
    """Priority -> heap of (queued_at, job id) of ready jobs; entries of jobs that left
    are dropped when they reach the top."""
    _backoff: dict[str, Pending] = field(default_factory=dict)
    """Pending jobs not yet settled out of their retry backoff."""

    @property
    def ticket_live(self) -> bool:
        return bool(self.live)

    @property
    def worked(self) -> bool:
        """An agent claimed with a live ticket and works the batch."""
        return any(number not in self.offered for number in self.live)

    def add(self, job_id: str, wait: Pending, at: datetime) -> None:
        self.held.discard(job_id)
        self.pending[job_id] = wait
        if wait.ready(at):
            heapq.heappush(self._ready.setdefault(wait.priority, []), (wait.queued_at, job_id))
        else:
            self._backoff[job_id] = wait

    def remove(self, job_id: str, *, assigned: bool) -> bool:
        """The job is pending no more: assigned to an agent, or final. Whether it was
        pending."""
        if assigned:
            self.held.add(job_id)
        else:
            self.held.discard(job_id)
        self._backoff.pop(job_id, None)
        return self.pending.pop(job_id, None) is not None

    def settle(self, at: datetime) -> None:
        """Jobs whose retry backoff is over by `at` join the ready ones."""
        for job_id, wait in list(self._backoff.items()):
            if wait.ready(at):
                del self._backoff[job_id]
                heapq.heappush(self._ready.setdefault(wait.priority, []), (wait.queued_at, job_id))

    def _oldest(self) -> dict[int, datetime]:
        """Priority -> the longest wait among settled ready jobs of that priority."""
        oldest: dict[int, datetime] = {}
        for priority, heap in self._ready.items():
            while heap:
                queued_at, job_id = heap[0]
                wait = self.pending.get(job_id)
                if wait is not None and wait.queued_at == queued_at and job_id not in self._backoff:
                    oldest[priority] = queued_at
                    break
                heapq.heappop(heap)
        return oldest

    def _waits(self, now: datetime) -> list[tuple[int, datetime]]:
        """(priority, longest wait) of each priority with jobs ready at `now`."""
        oldest = self._oldest()
        for wait in self._backoff.values():  # unsettled, yet perhaps over by `now`
            if wait.ready(now):
                seen = oldest.get(wait.priority, wait.queued_at)
                oldest[wait.priority] = min(seen, wait.queued_at)
        return list(oldest.items())

    def oldest(self, now: datetime) -> datetime | None:
        """When the longest-waiting ready job started waiting."""
        return min((queued_at for _, queued_at in self._waits(now)), default=None)

    def ready_count(self, now: datetime) -> int:
        return len(self.pending) - sum(not w.ready(now) for w in self._backoff.values())

    def band_at(self, now: datetime, aging_s: float | None) -> int:
        """The dispatch queue its ready jobs call for at `now`; 0 when none may run."""
        interval = _interval(aging_s, self.worked)
        return max((bands.queue_of(p, q, now, interval) for p, q in self._waits(now)), default=0)

    def next_review(self, now: datetime, aging_s: float | None, band: int) -> datetime | None:
        """The first moment after `now` at which a retry backoff ends or waiting raises
        the batch above `band` (its band at `now`); None when neither can happen."""
        interval = _interval(aging_s, self.worked)
        moments = [
            w.not_before for w in self._backoff.values() if w.not_before and not w.ready(now)
        ]
        if interval is not None and band < bands.TOP_BAND:
            # A job's aged priority reaches band + 1 after band + 1 - priority intervals.
            moments += [q + interval * (band + 1 - p) for p, q in self._waits(now)]
        return min(moments, default=None)

    def installed(self, agent_id: ev.AgentId) -> None:
        if agent_id in self.installed_on:
            self.installed_on.remove(agent_id)
        self.installed_on = [*self.installed_on, agent_id][-INSTALLED_ON:]


def _interval(aging_s: float | None, worked: bool) -> timedelta | None:
    return None if worked else bands.aging_step(aging_s)
