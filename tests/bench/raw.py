"""The raw NATS figures: what the same nats-server does for a bare client, measured in
the same run so that qgjob's figures can be set beside them on a noisy machine."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import api as js_api

from tests.bench.measure import percentile, progress

if TYPE_CHECKING:
    from nats.js import JetStreamContext

RAW_STREAM = "BENCH_RAW"
RAW_SUBJECT = "bench.raw.msgs"
RAW_RTT_SUBJECT = "bench.raw.rtt"
RAW_DURABLE = "bench-raw"
PAYLOAD = b"x" * 300
RAW_IN_FLIGHT = 2000
"""Acknowledged publishes in flight at once: the JetStream context's
`publish_async_max_pending` the caller must set."""
FETCH_BATCH = 1000
RAW_ROUNDS = 3
RTT_SAMPLES = 500


@dataclass(frozen=True)
class RawFigures:
    """What the same nats-server does for a bare client: the yardsticks."""

    publish_rate: float
    pull_ack_rate: float
    rtt_p50_ms: float


async def raw_publish_rate(js: JetStreamContext, count: int) -> float:
    """Acknowledged publishes per second with up to RAW_IN_FLIGHT in flight (the limit is
    the JetStream context's `publish_async_max_pending`)."""
    started = time.perf_counter()
    futures = [await js.publish_async(RAW_SUBJECT, PAYLOAD) for _ in range(count)]
    await asyncio.gather(*futures)
    return count / (time.perf_counter() - started)


async def raw_consumer(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    """A durable pull consumer on the scratch stream, acknowledging each message."""
    await js.add_consumer(
        RAW_STREAM,
        js_api.ConsumerConfig(
            durable_name=RAW_DURABLE,
            filter_subject=RAW_SUBJECT,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            max_ack_pending=-1,
        ),
    )
    return await js.pull_subscribe_bind(RAW_DURABLE, RAW_STREAM)


async def raw_pull_ack_rate(sub: JetStreamContext.PullSubscription, count: int) -> float:
    """Messages per second through a pull consumer, fetched FETCH_BATCH at a time and
    acknowledged one by one."""
    received = 0
    started = time.perf_counter()
    while received < count:
        msgs = await sub.fetch(FETCH_BATCH, timeout=5.0)
        for msg in msgs:
            await msg.ack()
        received += len(msgs)
    await sub.consumer_info()  # a round trip after the last ack: every ack has arrived
    return received / (time.perf_counter() - started)


async def raw_publish_rtt_ms(js: JetStreamContext, samples: int) -> list[float]:
    """Round trips of single acknowledged publishes, one after another, in ms."""
    rtts: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        await js.publish(RAW_RTT_SUBJECT, PAYLOAD)
        rtts.append((time.perf_counter() - started) * 1000)
    return rtts


async def measure_raw(js: JetStreamContext, messages: int) -> RawFigures:
    """The raw NATS figures, on a scratch file stream deleted afterwards; the rates are
    the median of RAW_ROUNDS rounds of publishing and then pulling `messages`."""
    await js.add_stream(
        js_api.StreamConfig(
            name=RAW_STREAM, subjects=["bench.raw.>"], storage=js_api.StorageType.FILE
        )
    )
    publish: list[float] = []
    pull: list[float] = []
    try:
        sub = await raw_consumer(js)
        for _ in range(RAW_ROUNDS):
            progress(f"raw publish, then pull-and-ack, of {messages:,} messages")
            publish.append(await raw_publish_rate(js, messages))
            pull.append(await raw_pull_ack_rate(sub, messages))
        await sub.unsubscribe()
        progress("raw publish round trips")
        rtts = await raw_publish_rtt_ms(js, RTT_SAMPLES)
    finally:
        await js.delete_stream(RAW_STREAM)
    return RawFigures(
        publish_rate=statistics.median(publish),
        pull_ack_rate=statistics.median(pull),
        rtt_p50_ms=percentile(rtts, 50),
    )
