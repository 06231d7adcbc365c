"""`infra.nats.ReadyPuller` against a real nats-server: it returns what a pull consumer
has ready, nothing when it has nothing, and never hands one message to two pullers."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from nats.js import api

from infra import nats as qnats

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client
    from nats.aio.msg import Msg


@pytest.fixture
async def queue(nats_url: str) -> AsyncIterator[tuple[Client, str, str]]:
    """A work-queue stream with one pull consumer, on the test's own nats-server:
    (connection, stream, subject)."""
    nc = await qnats.connect(nats_url, "test-ready-puller")
    js = nc.jetstream()
    name, subject = "TEST_PULL", "test.pull"
    await js.add_stream(name=name, subjects=[subject], retention=api.RetentionPolicy.WORK_QUEUE)
    await js.add_consumer(
        name,
        api.ConsumerConfig(durable_name="work", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30),
    )
    try:
        yield nc, name, subject
    finally:
        await qnats.close(nc)


async def test_a_pull_takes_what_is_ready_and_an_empty_queue_gives_nothing(
    queue: tuple[Client, str, str],
) -> None:
    nc, stream, subject = queue
    js = nc.jetstream()
    for n in range(2):
        await js.publish(subject, f"ticket {n}".encode())
    first, second = qnats.ReadyPuller(nc, stream), qnats.ReadyPuller(nc, stream)
    await first.open()
    await second.open()
    try:
        taken = await first.pull("work", 3)
        assert [m.data for m in taken] == [b"ticket 0", b"ticket 1"], "both, though 3 asked"
        assert await second.pull("work", 1) == [], "nothing left for the other puller"
        await taken[1].nak()
        [again] = await pulled_again(second)
        assert again.data == b"ticket 1", "a message given back is ready again"
        await taken[0].ack_sync()
        await again.ack_sync()
        assert await first.pull("work", 1) == []
    finally:
        await first.close()
        await second.close()


async def pulled_again(puller: qnats.ReadyPuller) -> list[Msg]:
    """What a puller gets once the server has processed a give-back (a nak is a plain
    publish: the server may see a pull sent after it first); up to 2 s."""
    for _ in range(200):
        found = await puller.pull("work", 1)
        if found:
            return found
        await asyncio.sleep(0.01)
    return []
