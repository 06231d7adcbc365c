"""`agent.tickets.TicketSource` hints against a real nats-server: a busy agent between
two tests waits out the grace of an urgent ticket published a moment ago, instead of
running a whole test more before it looks again."""

from __future__ import annotations

import asyncio

from agent.tickets import PREEMPT_GRACE_S, TicketSource
from infra import bands
from infra import events as ev
from infra import nats as qnats


async def test_a_fresh_urgent_ticket_is_waited_for_only_until_its_grace_is_over(
    nats_url: str,
) -> None:
    nc = await qnats.connect(nats_url, "test-ticket-hints")
    source = TicketSource(nc, (ev.Target.EMULATOR,))
    await source.open()
    try:
        above = bands.URGENT - 1
        assert source.settling_s(above) == 0.0, "no ticket seen: nothing to wait for"
        await nc.publish(ev.work_subject(ev.Target.DEVICE, bands.URGENT), b"")
        await nc.publish(ev.work_subject(ev.Target.EMULATOR, 3), b"")
        await nc.flush()
        await asyncio.sleep(0.001)  # the hint callbacks run
        assert source.settling_s(above) == 0.0, "another target's, or a lower band's"
        await nc.publish(ev.work_subject(ev.Target.EMULATOR, bands.URGENT), b"")
        await nc.flush()
        await asyncio.sleep(0.001)
        assert 0.0 < source.settling_s(above) <= PREEMPT_GRACE_S
        await asyncio.sleep(PREEMPT_GRACE_S)
        assert source.settling_s(above) == 0.0, "its grace is over: look now"
    finally:
        await source.close()
        await qnats.close(nc)
