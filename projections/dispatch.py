"""The dispatch fold: which batches get tickets, in which band, in what order.

A pure fold of QG_EVENTS (time enters only as an event's `at`): jobs are folded into
batches keyed by (org, app version, target); a batch with jobs ready and no live ticket
waits for one (`projections.fairness` decides the order); its band is the highest
priority ready, raised by waiting (`projections.batchstate`), and its ticket goes to that
band's queue, or to the urgent queue above band 5 for a job submitted at priority 5
(`infra.bands`; "band" below means either). A job of a higher band
joining a batch whose live ticket sits lower re-raises it: ticket n+1 in the higher
band, n goes stale (its holder may still claim; spending it changes nothing). A ticket
is spent when a claim with it finds nothing (`BatchDrained`) or its agent gives the
batch back (`BatchYielded`), unless the agent only set the batch aside and returns to
it. Decisions that depend on the clock alone (a wait raised a band or ended, idle
agents should share a big batch: `projections.splits`) are proposed by `due(now)` as
events, and taken when the fold reads them back.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from infra import bands, settings
from infra import events as ev
from projections import splits
from projections.batchstate import BatchState, Pending
from projections.fairness import Fairness

if TYPE_CHECKING:
    from datetime import datetime


class Grouping:
    """The pure fold: events in, tickets to publish out; `due(now)` proposes the
    clock's decisions as events."""

    def __init__(self, policy: settings.Scheduling | None = None) -> None:
        self.policy = policy or settings.Scheduling()
        self.batches: dict[str, BatchState] = {}
        self._jobs: dict[str, tuple[BatchState, Pending]] = {}
        """Unfinished job id -> its batch and its wait (kept while it is assigned)."""
        self._wanting: dict[ev.Target, dict[str, BatchState]] = {t: {} for t in ev.Target}
        self._offering: dict[str, BatchState] = {}
        """Batches with tickets waiting in a queue."""
        self._reviews: dict[str, BatchState] = {}
        """Batches with a `review_at`."""
        self.working: dict[ev.AgentId, BatchState] = {}
        """Agent -> the batch it works (claimed, not yet drained or yielded)."""
        self.agents: dict[ev.AgentId, tuple[ev.Target, ...]] = {}
        """Registered agents and the targets they serve."""
        self.durations = splits.Durations()
        self._fairness = Fairness(self.policy)
        self._any_limit = bool(self.policy.org_max_busy_agents) or (
            self.policy.default_max_busy_agents is not None
        )

    # -- the fold ------------------------------------------------------------------------

    def apply(self, seq: int, event: ev.Event) -> list[ev.WorkTicket]:
        """Fold one event; returns the tickets to publish, in order."""
        match event:
            case ev.JobSubmitted():
                batch = self.batches.get(event.batch_id)
                if batch is None:
                    batch = self.batches[event.batch_id] = BatchState(
                        event.batch_id, event.org_id, event.app_version_id, event.target
                    )
                wait = Pending(event.priority, event.at)
                self._jobs[event.job_id] = (batch, wait)
                return self._pend(event.job_id, wait, seq, event.at)
            case ev.JobRetried() if event.job_id in self._jobs:
                batch, wait = self._jobs[event.job_id]
                start = event.not_before or event.at
                wait = Pending(wait.priority, start, event.not_before)
                self._jobs[event.job_id] = (batch, wait)
                return self._pend(event.job_id, wait, seq, event.at)
            case ev.JobReleased() if event.job_id in self._jobs:
                _, wait = self._jobs[event.job_id]
                return self._pend(event.job_id, wait, seq, event.at)
            case ev.JobAssigned() if event.job_id in self._jobs:
                return self._leave(event.job_id, event.at, finished=False)
            case ev.JobStarted():
                self.durations.started(event.agent_id)
            case ev.JobPassed() | ev.JobFailed() if event.job_id in self._jobs:
                batch = self._jobs[event.job_id][0]
                self.durations.tested(event.agent_id, batch.batch_id, batch.target, event.at)
                return self._leave(event.job_id, event.at, finished=True)
            case ev.JobDead() | ev.JobCancelled() if event.job_id in self._jobs:
                return self._leave(event.job_id, event.at, finished=True)
            case ev.BuildInstalled():
                self.durations.installed(event)
                if event.batch_id in self.batches:
                    self.batches[event.batch_id].installed(event.agent_id)
            case ev.BatchClaimed() if event.batch_id in self.batches:
                return self._claimed(self.batches[event.batch_id], event)
            case ev.BatchYielded(returns=True) if event.batch_id in self.batches:
                # Its ticket stays live: the agent comes back with it.
                return self._stop_working(
                    event.agent_id, event.at, only=self.batches[event.batch_id]
                )
            case ev.BatchDrained() | ev.BatchYielded() if event.batch_id in self.batches:
                return self._spent(self.batches[event.batch_id], event)
            case ev.BatchDue() if event.batch_id in self.batches:
                return self._review(self.batches[event.batch_id], event.at)
            case ev.BatchSplit() if event.batch_id in self.batches:
                return self._split(self.batches[event.batch_id], event)
            case ev.AgentRegistered():
                self.agents[event.agent_id] = event.targets
                stopped = self._stop_working(event.agent_id, event.at)
                return stopped or self._dispatch(event.at)  # one more agent to offer to
            case ev.AgentStopped() | ev.AgentLost():
                self.agents.pop(event.agent_id, None)
                return self._stop_working(event.agent_id, event.at)
        return []

    def _pend(self, job_id: str, wait: Pending, seq: int, at: datetime) -> list[ev.WorkTicket]:
        batch = self._jobs[job_id][0]
        batch.add(job_id, wait, at)
        batch.position = seq
        return self._review(batch, at)

    def _leave(self, job_id: str, at: datetime, *, finished: bool) -> list[ev.WorkTicket]:
        """The job is pending no more: assigned, or final (then forgotten)."""
        batch, _ = self._jobs.pop(job_id) if finished else self._jobs[job_id]
        if not batch.remove(job_id, assigned=not finished):
            return []
        return self._review(batch, at)  # a waiting batch left with nothing withdraws

    def _claimed(self, batch: BatchState, event: ev.BatchClaimed) -> list[ev.WorkTicket]:
        """An agent works the batch; a ticket it took from a queue leaves room there."""
        tickets = self._stop_working(event.agent_id, event.at, unless=batch)
        self.working[event.agent_id] = batch
        if event.ticket in batch.offered:
            batch.offered.discard(event.ticket)
            self._index(batch)
            tickets += self._review(batch, event.at)  # it ages no more while worked
            tickets += self._dispatch(event.at)
        return tickets

    def _spent(
        self, batch: BatchState, event: ev.BatchDrained | ev.BatchYielded
    ) -> list[ev.WorkTicket]:
        tickets = self._stop_working(event.agent_id, event.at, only=batch)
        if event.ticket in batch.live:
            del batch.live[event.ticket]
            batch.offered.discard(event.ticket)
            self._index(batch)
            tickets += self._review(batch, event.at)
            tickets += self._dispatch(event.at)
        return tickets

    def _stop_working(
        self,
        agent_id: ev.AgentId,
        at: datetime,
        unless: BatchState | None = None,
        only: BatchState | None = None,
    ) -> list[ev.WorkTicket]:
        """The agent no longer works its batch (`only` that one: it may work another
        since, having set this one aside): it occupies its org no more."""
        batch = self.working.get(agent_id)
        if batch is None or batch is unless or (only is not None and batch is not only):
            return []
        del self.working[agent_id]
        return self._dispatch(at) if self._limited(batch.org_id) else []

    def _split(self, batch: BatchState, event: ev.BatchSplit) -> list[ev.WorkTicket]:
        """Idle agents share the batch: more tickets in its band, within its org's limit."""
        if event.ticket != batch.ticket or not batch.live:
            return []  # decided on a state that has moved on
        parts = event.parts
        limit = self.policy.max_busy(batch.org_id)
        if limit is not None:
            parts = min(parts, limit - self._busy()[batch.org_id])
        # Sharing is for agents that come free: the urgent queue would interrupt
        # another batch for it.
        band = min(max(batch.live.values()), bands.TOP_BAND)
        return [self._issue(batch, band) for _ in range(max(0, parts))]

    # -- dispatch ------------------------------------------------------------------------

    def _review(self, batch: BatchState, at: datetime) -> list[ev.WorkTicket]:
        """Bring the batch's dispatch up to `at`: re-raise its live ticket, or wait for
        one in the band its jobs call for."""
        batch.settle(at)
        band = batch.band_at(at, self.policy.aging_interval_s)
        tickets: list[ev.WorkTicket] = []
        if band == 0:
            self._want(batch, False)
        elif batch.live:
            if band > max(batch.live.values()):
                batch.live.clear()  # stale now; their holders may still claim
                batch.offered.clear()
                tickets.append(self._issue(batch, band))
        elif not batch.wanting or band != batch.band:
            batch.band = band
            self._want(batch, True)
            tickets += self._dispatch(at)
        batch.review_at = batch.next_review(at, self.policy.aging_interval_s, band)
        if batch.review_at is None:
            self._reviews.pop(batch.batch_id, None)
        else:
            self._reviews[batch.batch_id] = batch
        return tickets

    def _want(self, batch: BatchState, wanting: bool) -> None:
        batch.wanting = wanting
        if wanting:
            self._wanting[batch.target][batch.batch_id] = batch
        else:
            self._wanting[batch.target].pop(batch.batch_id, None)

    def _dispatch(self, at: datetime) -> list[ev.WorkTicket]:
        """Tickets for waiting batches, as far as the fairness rules allow now."""
        tickets: list[ev.WorkTicket] = []
        for target, wanting in self._wanting.items():
            if not wanting:
                continue
            offered: Counter[tuple[str, int]] = Counter()
            for batch in self._offering.values():
                if batch.target is target:
                    offered.update((batch.org_id, batch.live[n]) for n in batch.offered)
            busy = self._busy() if self._any_limit else Counter[str]()
            spare = self._free(target) - sum(offered.values())
            chosen = self._fairness.choose(list(wanting.values()), offered, busy, at, spare)
            tickets += [self._issue(batch, batch.band) for batch in chosen]
        return tickets

    def _free(self, target: ev.Target) -> int:
        """Registered agents serving `target` that work no batch now."""
        return sum(
            target in targets and agent_id not in self.working
            for agent_id, targets in self.agents.items()
        )

    def _busy(self) -> Counter[str]:
        """Per org: agents working its batches, plus its tickets waiting for one."""
        busy = Counter(batch.org_id for batch in self.working.values())
        for batch in self._offering.values():
            busy[batch.org_id] += len(batch.offered)
        return busy

    def _limited(self, org_id: str) -> bool:
        return self.policy.max_busy(org_id) is not None

    def _issue(self, batch: BatchState, band: int) -> ev.WorkTicket:
        batch.ticket += 1
        batch.live[batch.ticket] = band
        batch.offered.add(batch.ticket)
        batch.band = band
        self._want(batch, False)
        self._index(batch)
        return self.ticket_of(batch, batch.ticket)

    def _index(self, batch: BatchState) -> None:
        if batch.offered:
            self._offering[batch.batch_id] = batch
        else:
            self._offering.pop(batch.batch_id, None)

    def ticket_of(self, batch: BatchState, number: int) -> ev.WorkTicket:
        return ev.WorkTicket(
            batch_id=batch.batch_id,
            org_id=batch.org_id,
            app_version_id=batch.app_version_id,
            target=batch.target,
            band=batch.live[number],
            ticket=number,
            as_of_seq=batch.position,
            installed_on=tuple(batch.installed_on),
            jobs=len(batch.pending),
        )

    def live_tickets(self) -> list[ev.WorkTicket]:
        """Tickets that should exist now: the live tickets of batches with pending jobs,
        and every ticket the fold counts as waiting in a queue. A rebuild may have issued
        one while replaying (a re-raise) for a batch whose jobs a stale ticket's claim
        then took: it must exist too, since a job that comes back to the batch (a retry)
        waits for it rather than for a new one."""
        return [
            self.ticket_of(b, number)
            for b in self.batches.values()
            for number in sorted(b.live)
            if b.pending or number in b.offered
        ]

    # -- the clock's decisions -----------------------------------------------------------

    def due(self, now: datetime) -> list[ev.BatchDue | ev.BatchSplit]:
        """What the clock calls for at `now`, as events to append (and fold back): batches
        whose wait raised their band or ended, and splits worth making."""
        decisions: list[ev.BatchDue | ev.BatchSplit] = []
        for batch in self._reviews.values():
            if batch.review_at is not None and batch.review_at <= now:
                band = batch.band_at(now, self.policy.aging_interval_s)
                reason = "aging" if batch.live or batch.wanting else "retry backoff over"
                decisions.append(
                    ev.BatchDue(at=now, batch_id=batch.batch_id, band=band, reason=reason)
                )
        return decisions + self._splits(now)

    def _splits(self, now: datetime) -> list[ev.BatchDue | ev.BatchSplit]:
        """Idle agents join the batches they make finish sooner (`projections.splits`);
        an agent serving several targets is counted for one of them."""
        workers: Counter[str] = Counter(batch.batch_id for batch in self.working.values())
        shared: defaultdict[ev.Target, dict[str, splits.Worked]] = defaultdict(dict)
        for batch in [*self._offering.values(), *self.working.values()]:
            if batch.live:
                shared[batch.target][batch.batch_id] = splits.Worked(
                    batch.batch_id,
                    batch.ready_count(now),
                    len(batch.held),
                    workers[batch.batch_id] + len(batch.offered),
                )
        idle = {a: targets for a, targets in self.agents.items() if a not in self.working}
        for target in ev.Target:  # a waiting ticket takes an idle agent first
            for agent_id in _serving(idle, target)[: self._waiting_tickets(target)]:
                del idle[agent_id]
        decisions: list[ev.BatchDue | ev.BatchSplit] = []
        for target in sorted(shared):
            free = _serving(idle, target)
            install_s = self.durations.install_s.get(target)
            test_s = self.durations.test_s.get(target)
            if not free or install_s is None or test_s is None:
                continue
            joined = splits.share(list(shared[target].values()), len(free), install_s, test_s)
            for agent_id in free[: sum(split.parts for split in joined.values())]:
                del idle[agent_id]
            decisions += [
                ev.BatchSplit(
                    at=now,
                    batch_id=self.batches[batch_id].batch_id,
                    ticket=self.batches[batch_id].ticket,
                    parts=split.parts,
                    reason=split.reason,
                )
                for batch_id, split in sorted(joined.items())
            ]
        return decisions

    def _waiting_tickets(self, target: ev.Target) -> int:
        """Tickets of the target in its queues, and batches waiting for one: each will
        soon take an idle agent."""
        offered = sum(len(b.offered) for b in self._offering.values() if b.target is target)
        return offered + len(self._wanting[target])


def _serving(idle: dict[ev.AgentId, tuple[ev.Target, ...]], target: ev.Target) -> list[ev.AgentId]:
    """The idle agents serving `target`, those serving it alone first."""
    return sorted(
        (a for a, targets in idle.items() if target in targets), key=lambda a: (len(idle[a]), a)
    )
