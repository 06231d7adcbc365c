"""Where an agent finds work: the highest non-empty priority band of its targets."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors

from infra import events as ev
from infra import nats as qnats

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

IDLE_RECHECK_S = 1.0


class TicketSource:
    """Pulls dispatch tickets from the shared per-(target, band) work consumers.

    A core-NATS subscription on the targets' work subjects wakes the agent the moment a
    ticket is published, so an idle agent neither polls hard nor sleeps through work.
    """

    def __init__(self, nc: Client, targets: tuple[ev.Target, ...]) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._targets = targets
        self._subs: dict[tuple[ev.Target, int], JetStreamContext.PullSubscription] = {}
        self._wakers: list[Subscription] = []
        self._wake = asyncio.Event()

    async def open(self) -> None:
        for target in self._targets:
            self._wakers.append(
                await self._nc.subscribe(ev.work_subjects(target), cb=self._on_ticket)
            )
            for band in qnats.BANDS:
                self._subs[(target, band)] = await self._js.pull_subscribe_bind(
                    qnats.work_consumer_name(target, band), ev.WORK_STREAM
                )

    async def close(self) -> None:
        for waker in self._wakers:
            await waker.unsubscribe()
        for sub in self._subs.values():
            await sub.unsubscribe()

    async def _on_ticket(self, _: Msg) -> None:
        self._wake.set()

    async def _take(self) -> Msg | None:
        for band in qnats.BANDS:
            for target in self._targets:
                sub = self._subs[(target, band)]
                info = await sub.consumer_info()
                if info.num_pending:
                    timeout = 0.5
                elif info.num_ack_pending:
                    # Tickets held by agents: one whose holder died is redelivered after
                    # AckWait, and counts as pending no more; a short fetch finds it.
                    timeout = 0.05
                else:
                    continue
                try:
                    msgs = await sub.fetch(1, timeout=timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue  # another agent took it first, or nothing is due yet
                if msgs:
                    return msgs[0]
        return None

    async def next(self, stop: asyncio.Event) -> Msg | None:
        """The next ticket, highest band first; None once `stop` is set."""
        while not stop.is_set():
            self._wake.clear()
            msg = await self._take()
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
