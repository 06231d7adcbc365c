"""Which waiting batches of one target get a dispatch ticket now.

Agents take the tickets of a (target, band) queue in the order they were published, so
publishing is where fairness is decided. The highest band goes first. Within a band,
orgs of an earlier tier go first, and a tier whose orgs still have batches waiting keeps
the later tiers out of that band; within a tier, orgs take turns, the one served longest
ago first, each with at most `offered_per_org` tickets waiting in the queue, so one org
flooding the queue cannot push another org's single batch back by more than a few
tickets. Beyond that share, an org gets tickets only for idle agents that no waiting
ticket is for: those are taken at once and hold no one back, and an idle fleet never
waits on a queue kept short on purpose. Within an org, the batch that has waited longest
goes first. An org never gets a ticket that would take it past its busy-agent limit.

Tiers would let a premium org that never stops submitting starve a standard one, since
aging lifts both alike. So a batch that has waited as long as aging takes to lift a
priority-1 job to the top band is ordered as if its org were of the first tier: no batch
waits for ever.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from datetime import timedelta
from typing import TYPE_CHECKING

from infra.bands import TOP_BAND

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from infra.settings import Scheduling
    from projections.batchstate import BatchState


class Fairness:
    """The publishing order; remembers whose turn it is (part of the pure fold)."""

    def __init__(self, policy: Scheduling) -> None:
        self._policy = policy
        self._served = 0
        self._last_served: dict[str, int] = {}
        """Org -> when it last got a ticket (a counter of tickets chosen)."""

    def choose(
        self,
        wanting: Iterable[BatchState],
        offered: Counter[tuple[str, int]],
        busy: Counter[str],
        now: datetime,
        spare: int = 0,
    ) -> list[BatchState]:
        """The batches to publish a ticket for, in publishing order. `offered` counts the
        tickets waiting in this target's queues per (org, band), `busy` the agents each
        org occupies or is about to (both updated as batches are chosen), `spare` the
        idle agents of the target that no waiting ticket is for."""
        bands: defaultdict[int, defaultdict[int, defaultdict[str, list[BatchState]]]]
        bands = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        for batch in wanting:
            bands[batch.band][self._tier(batch, now)][batch.org_id].append(batch)
        chosen: list[BatchState] = []
        for band in sorted(bands, reverse=True):
            for tier in sorted(bands[band]):
                orgs = bands[band][tier]
                blocked, spare = self._take_turns(band, orgs, offered, busy, spare, now, chosen)
                if blocked:
                    break  # later tiers of this band wait for this one
        return chosen

    def _tier(self, batch: BatchState, now: datetime) -> int:
        aging_s = self._policy.aging_interval_s
        oldest = batch.oldest(now)
        bound = None if aging_s is None else timedelta(seconds=aging_s * (TOP_BAND - 1))
        if bound is not None and oldest is not None and now - oldest >= bound:
            return 0
        return self._policy.tier_rank(batch.org_id)

    def _take_turns(
        self,
        band: int,
        orgs: dict[str, list[BatchState]],
        offered: Counter[tuple[str, int]],
        busy: Counter[str],
        spare: int,
        now: datetime,
        chosen: list[BatchState],
    ) -> tuple[bool, int]:
        """Round-robin over the orgs of one tier; whether an org still has batches
        waiting only because its share of the queue is full, and the spare agents left."""
        queues = {
            org: deque(sorted(batches, key=lambda b: (b.oldest(now) or now, b.batch_id)))
            for org, batches in orgs.items()
        }
        order = sorted(queues, key=lambda org: (self._last_served.get(org, 0), org))
        blocked = False
        while any(queues.values()):
            for org in order:
                queue = queues[org]
                if not queue:
                    continue
                limit = self._policy.max_busy(org)
                if offered[org, band] >= self._policy.offered_per_org and spare <= 0:
                    blocked = True
                    queue.clear()
                elif limit is not None and busy[org] >= limit:
                    queue.clear()
                else:
                    chosen.append(queue.popleft())
                    offered[org, band] += 1
                    busy[org] += 1
                    spare -= 1
                    self._served += 1
                    self._last_served[org] = self._served
        return blocked, spare
