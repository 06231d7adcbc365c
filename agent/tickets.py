"""Where an agent finds work: the highest non-empty priority band of its targets.

Asking JetStream about every band of every target on each wake-up, and between every two
tests to see whether something more urgent came in, would cost a request per band per
agent per test. So an agent keeps hints instead: a band is looked at only once a ticket
was stored there (the grouping projector's notice, `infra.events.ticket_notice_subject`,
sent once QG_WORK acknowledged the ticket: a subscription on the work subjects could see
a ticket before it can be pulled, and every agent that looked at once would find the band
empty), an agent gave one back there, or a second has passed (a ticket whose holder died
comes back after AckWait without announcing itself). A cold band costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

import nats.errors

from infra import bands
from infra import events as ev
from infra import nats as qnats

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

IDLE_RECHECK_S = 1.0
"""How often every band is looked at again, hinted or not."""
PREEMPT_GRACE_S = 0.005
"""How long a busy agent leaves a new urgent ticket to idle agents before it interrupts
its batch for it: an idle agent pulls it within a round trip of its publication."""
CHOICES = 6
"""Tickets of one band an agent looks at to choose the one it should take."""
_GIVEN_BACK = "qg.hint.work"
"""Core-NATS subject prefix on which an agent says it gave tickets back to a queue: a
ticket given back counts as held, not pending, until it is delivered again."""

Key = tuple[ev.Target, int]


class TicketSource:
    """Pulls dispatch tickets from the shared per-(target, band) work consumers."""

    def __init__(self, nc: Client, targets: tuple[ev.Target, ...]) -> None:
        self._nc = nc
        self._targets = targets
        self._puller = qnats.ReadyPuller(nc, ev.WORK_STREAM)
        self._wakers: list[Subscription] = []
        self._wake = asyncio.Event()
        self._published: dict[Key, float] = {}
        """Bands a ticket was published to since they were last found empty, and when
        the first of those tickets was seen."""
        self._given_back: set[Key] = set()
        """Bands where a ticket may wait for redelivery."""
        self._hints: Counter[Key] = Counter()
        """Hints seen per band: a look that finds a band empty forgets its hints only
        when none came meanwhile (a ticket stored just after the server answered)."""
        self._rechecked = float("-inf")

    async def open(self) -> None:
        await self._puller.open()
        for target in self._targets:
            for subject in (ev.ticket_notices(target), f"{_GIVEN_BACK}.{target.value}.>"):
                self._wakers.append(await self._nc.subscribe(subject, cb=self._on_hint))

    async def close(self) -> None:
        for waker in self._wakers:
            await waker.unsubscribe()
        await self._puller.close()

    async def _on_hint(self, msg: Msg) -> None:
        *prefix, target, band = msg.subject.split(".")
        key = (ev.Target(target), int(band.removeprefix("p")))
        if key[0] in self._targets and key[1] in bands.QUEUES:
            self._hints[key] += 1
            if prefix[1] == "hint":
                self._given_back.add(key)
            else:
                self._published.setdefault(key, time.monotonic())
            self._wake.set()

    async def take(
        self,
        rank: Callable[[Msg], int],
        above: int = 0,
        *,
        recheck: bool = False,
        grace_s: float = PREEMPT_GRACE_S,
    ) -> Msg | None:
        """A ticket of the highest hinted band above `above` (0: any): of a few tickets
        of that band, the first that `rank` rates best; of several targets, the one with
        most tickets waiting first. None when there is none now. `recheck` looks at
        every band, and for tickets due for redelivery too. Looking above a band (a busy
        agent between tests) skips tickets published in the last `grace_s`: an idle
        agent takes those without a batch given back."""
        settled = time.monotonic() - (grace_s if above else 0.0)
        for band in bands.QUEUES:
            if band <= above:
                return None
            keys = []
            for target in self._targets:
                key = (target, band)
                seen = self._published.get(key)
                published = seen is not None and seen <= settled
                if recheck or published or key in self._given_back:
                    keys.append(key)
            msg = await self._take_from(keys, rank)
            if msg is not None:
                return msg
        return None

    def settling_s(self, above: int, grace_s: float = PREEMPT_GRACE_S) -> float:
        """How long until the newest ticket hinted above band `above` is `grace_s` old:
        0 when none is younger. A busy agent between two tests waits that long rather
        than run a whole test more before it looks again."""
        seen = [
            at
            for (target, band), at in self._published.items()
            if band > above and target in self._targets
        ]
        return max(0.0, max(seen, default=float("-inf")) + grace_s - time.monotonic())

    async def _take_from(self, keys: list[Key], rank: Callable[[Msg], int]) -> Msg | None:
        """The best ticket of a band's queues: from the queue with most tickets waiting,
        the best of up to CHOICES; the others go back at once. A queue found empty is
        hinted no more, unless a hint came while it was looked at."""
        firsts: list[tuple[Msg, Key]] = []
        for key in keys:
            hints = self._hints[key]
            found = await self._pull(key, 1)
            if found:
                firsts.append((found[0], key))
            elif self._hints[key] == hints:
                self._published.pop(key, None)
                self._given_back.discard(key)
            elif key in self._published:
                self._published[key] = time.monotonic()  # the first since it was empty
        if not firsts:
            return None
        first, key = max(firsts, key=lambda found: found[0].metadata.num_pending)
        waiting = first.metadata.num_pending
        choices = [first, *(await self._pull(key, min(waiting, CHOICES - 1)) if waiting else [])]
        chosen = min(choices, key=rank)
        await self._give_back(
            [(m, key) for m in choices if m is not chosen]
            + [(m, k) for m, k in firsts if m is not first]
        )
        return chosen

    async def put_back(self, msg: Msg) -> None:
        """Give a ticket taken back to its queue, for another agent."""
        target = ev.Target(msg.subject.split(".")[-2])
        await self._give_back([(msg, (target, band_of(msg)))])

    async def _pull(self, key: Key, batch: int) -> list[Msg]:
        try:
            return await self._puller.pull(qnats.work_consumer_name(*key), batch)
        except (TimeoutError, nats.errors.TimeoutError):
            return []  # NATS is in trouble: the next look tries again

    async def _give_back(self, tickets: list[tuple[Msg, Key]]) -> None:
        """Put tickets back in their queues at once, and say so to the agents that wait
        on them: a ticket given back is held, not pending, until it is delivered again."""
        for msg, _ in tickets:
            await msg.nak()
        for target, band in {key for _, key in tickets}:
            await self._nc.publish(f"{_GIVEN_BACK}.{target.value}.p{band}", b"")

    async def next(self, stop: asyncio.Event, rank: Callable[[Msg], int]) -> Msg | None:
        """The next ticket, highest band first; None once `stop` is set."""
        while not stop.is_set():
            self._wake.clear()
            now = time.monotonic()
            recheck = now - self._rechecked >= IDLE_RECHECK_S
            if recheck:
                self._rechecked = now
            msg = await self.take(rank, recheck=recheck)
            if msg is not None:
                return msg
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=IDLE_RECHECK_S, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()
        return None


def band_of(msg: Msg) -> int:
    """The band of a ticket message, from its subject (`qg.work.<target>.p<band>`)."""
    return int(msg.subject.rpartition(".p")[2])
