"""`agent.tickets.TicketSource` hints against a real nats-server: a busy agent between
two tests waits out the grace of an urgent ticket published a moment ago, instead of
running a whole test more before it looks again; a hint that comes while its band is
being looked at is kept."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.tickets import PREEMPT_GRACE_S, Key, TicketSource
from infra import bands
from infra import events as ev
from infra import nats as qnats

if TYPE_CHECKING:
    import pytest
    from nats.aio.msg import Msg


async def test_a_fresh_urgent_ticket_is_waited_for_only_until_its_grace_is_over(
    nats_url: str,
) -> None:
    nc = await qnats.connect(nats_url, "test-ticket-hints")
    source = TicketSource(nc, (ev.Target.EMULATOR,))
    await source.open()
    try:
        above = bands.URGENT - 1
        assert source.settling_s(above) == 0.0, "no ticket seen: nothing to wait for"
        await nc.publish(ev.ticket_notice_subject(ev.Target.DEVICE, bands.URGENT), b"")
        await nc.publish(ev.ticket_notice_subject(ev.Target.EMULATOR, 3), b"")
        await nc.flush()
        await asyncio.sleep(0.001)  # the hint callbacks run
        assert source.settling_s(above) == 0.0, "another target's, or a lower band's"
        await nc.publish(ev.ticket_notice_subject(ev.Target.EMULATOR, bands.URGENT), b"")
        await nc.flush()
        await asyncio.sleep(0.001)
        assert 0.0 < source.settling_s(above) <= PREEMPT_GRACE_S
        await asyncio.sleep(PREEMPT_GRACE_S)
        assert source.settling_s(above) == 0.0, "its grace is over: look now"
    finally:
        await source.close()
        await qnats.close(nc)


async def test_a_ticket_published_while_its_band_is_found_empty_is_still_taken(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another agent took the band's last ticket, and a new one is published while this
    agent's look finds the band empty: the new ticket's hint survives the empty look, so
    the agent takes it at once, not at its next look at every band a second later."""
    nc = await qnats.connect(nats_url, "test-ticket-hints")
    js = nc.jetstream()
    await qnats.declare_streams(js)
    await qnats.declare_work_consumers(js, ack_wait_s=30)
    source = TicketSource(nc, (ev.Target.EMULATOR,))
    await source.open()
    looked = source._pull

    async def publish(ticket: bytes) -> None:
        """As the grouping projector does: the ticket, then once stored its notice."""
        await js.publish(ev.work_subject(ev.Target.EMULATOR, 3), ticket)
        await nc.publish(ev.ticket_notice_subject(ev.Target.EMULATOR, 3), b"")
        await asyncio.sleep(0.05)  # the notice is seen

    async def found_empty_as_a_ticket_comes(key: Key, batch: int) -> list[Msg]:
        found = await looked(key, batch)
        assert found == [], "the band is empty when this agent looks"
        await publish(b"the new ticket")  # before the look ends
        return found

    try:
        await publish(b"a ticket another agent takes")
        rival = qnats.ReadyPuller(nc, ev.WORK_STREAM)
        await rival.open()
        [taken] = await rival.pull(qnats.work_consumer_name(ev.Target.EMULATOR, 3), 1)
        await taken.ack_sync()
        await rival.close()
        with monkeypatch.context() as patch:
            patch.setattr(source, "_pull", found_empty_as_a_ticket_comes)
            assert await source.take(lambda _: 0) is None
        ticket = await source.take(lambda _: 0)
        assert ticket is not None, "the hint of the ticket published during the look was lost"
        assert ticket.data == b"the new ticket"
    finally:
        await source.close()
        await qnats.close(nc)
