"""Where an agent finds work: the highest non-empty priority band of its targets.

Asking JetStream about every band of every target on each wake-up, and between every two
tests to see whether something more urgent came in, would cost a request per band per
agent per test. So an agent keeps hints instead: a band is looked at only once a ticket
was published to it (a core-NATS subscription on the work subjects sees every one), an
agent gave one back there, or a second has passed (a ticket whose holder died comes back
after AckWait without announcing itself). A cold band costs nothing.
"""

from __future__ import annotations

import asyncio
import time
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
    from nats.js import JetStreamContext

IDLE_RECHECK_S = 1.0
"""How often every band is looked at again, hinted or not."""
FETCH_S = 0.05
"""How long to wait for a ticket JetStream just said is there (another agent may win)."""
PREEMPT_GRACE_S = 0.015
"""How long a busy agent leaves a new urgent ticket to idle agents before it interrupts
its batch for it."""
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
        self._js: JetStreamContext = nc.jetstream()
        self._targets = targets
        self._subs: dict[Key, JetStreamContext.PullSubscription] = {}
        self._wakers: list[Subscription] = []
        self._wake = asyncio.Event()
        self._published: dict[Key, float] = {}
        """Bands a ticket was published to since they were last found empty, and when
        the first of those tickets was seen."""
        self._given_back: set[Key] = set()
        """Bands where a ticket may wait for redelivery."""
        self._rechecked = float("-inf")

    async def open(self) -> None:
        for target in self._targets:
            for subject in (ev.work_subjects(target), f"{_GIVEN_BACK}.{target.value}.>"):
                self._wakers.append(await self._nc.subscribe(subject, cb=self._on_hint))
            for band in bands.QUEUES:
                self._subs[(target, band)] = await self._js.pull_subscribe_bind(
                    qnats.work_consumer_name(target, band), ev.WORK_STREAM
                )

    async def close(self) -> None:
        for waker in self._wakers:
            await waker.unsubscribe()
        for sub in self._subs.values():
            await sub.unsubscribe()

    async def _on_hint(self, msg: Msg) -> None:
        *prefix, target, band = msg.subject.split(".")
        key = (ev.Target(target), int(band.removeprefix("p")))
        if key in self._subs:
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
            looks = []
            for target in self._targets:
                key = (target, band)
                seen = self._published.get(key)
                published = seen is not None and seen <= settled
                if recheck or published or key in self._given_back:
                    looks.append((await self._look(key, recheck), key))
            for waiting, key in sorted(looks, key=lambda look: -look[0]):
                msg = await self._fetch(key, waiting, rank) if waiting else None
                if msg is not None:
                    return msg
        return None

    async def _look(self, key: Key, recheck: bool) -> int:
        """Tickets worth fetching from one queue (1 for one maybe due for redelivery);
        a queue found empty is hinted no more."""
        info = await self._subs[key].consumer_info()
        pending, held = info.num_pending or 0, info.num_ack_pending or 0
        if not pending:
            self._published.pop(key, None)
        if pending:
            return pending
        if held and (recheck or key in self._given_back):
            return 1
        self._given_back.discard(key)
        return 0

    async def _fetch(self, key: Key, waiting: int, rank: Callable[[Msg], int]) -> Msg | None:
        """The best of up to CHOICES tickets of one queue; the others go back at once."""
        try:
            msgs = await qnats.fetch_ready(self._subs[key], min(waiting, CHOICES), FETCH_S)
        except (TimeoutError, nats.errors.TimeoutError):
            # Another agent was faster, or nothing was due for redelivery yet.
            self._given_back.discard(key)
            return None
        chosen = min(msgs, key=rank)
        others = [m for m in msgs if m is not chosen]
        for other in others:
            await other.nak()
        if others:
            await self._nc.publish(f"{_GIVEN_BACK}.{key[0].value}.p{key[1]}", b"")
        return chosen

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
