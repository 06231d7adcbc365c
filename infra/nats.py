"""NATS connection and the JetStream streams and consumers qgjob declares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
import nats.errors
from nats.js import api

from infra import events as ev
from infra import logstore

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

DUPLICATE_WINDOW_S = 120.0
BANDS = (5, 4, 3, 2, 1)


async def connect(url: str, name: str) -> Client:
    """Connect with reconnects that outlast a nats-server restart."""
    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=5,
        allow_reconnect=True,
    )


async def close(nc: Client) -> None:
    """Drain the connection (finish in-flight messages), or just close it when the server
    is gone: shutting down must not fail because NATS already did."""
    try:
        await nc.drain()
    except (nats.errors.Error, TimeoutError):
        await nc.close()


async def declare_streams(js: JetStreamContext) -> None:
    """Create or update QG_EVENTS (the log), QG_WORK (dispatch tickets) and the test
    output stores."""
    events = api.StreamConfig(
        name=ev.EVENTS_STREAM,
        subjects=[ev.EVENT_SUBJECTS],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        duplicate_window=DUPLICATE_WINDOW_S,
        allow_direct=True,
    )
    work = api.StreamConfig(
        name=ev.WORK_STREAM,
        subjects=[ev.WORK_SUBJECTS],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,
        duplicate_window=DUPLICATE_WINDOW_S,
    )
    for config in (events, work):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
    await logstore.declare(js)


PROJECTION_CONSUMER_PREFIX = "proj-"


def projection_consumer_name(projection: str) -> str:
    """The durable consumer of a read-model projector on QG_EVENTS."""
    return f"{PROJECTION_CONSUMER_PREFIX}{projection}"


@dataclass(frozen=True)
class ProjectorProgress:
    following: int
    """Read-model projectors whose durable consumer exists."""
    lag: int
    """Events stored but not yet applied by the slowest of them."""


async def projector_progress(js: JetStreamContext) -> ProjectorProgress:
    """How many read-model projectors follow QG_EVENTS, and how far the slowest trails."""
    following = lag = 0
    for info in await js.consumers_info(ev.EVENTS_STREAM):
        if info.name.startswith(PROJECTION_CONSUMER_PREFIX):
            following += 1
            lag = max(lag, (info.num_pending or 0) + (info.num_ack_pending or 0))
    return ProjectorProgress(following=following, lag=lag)


REGISTRY_BUCKET = "QG_AGENTS"


async def registry(js: JetStreamContext, ttl_s: float) -> KeyValue:
    """The agents' heartbeat bucket: a key lives `ttl_s` after its agent's last beat."""
    try:
        return await js.create_key_value(bucket=REGISTRY_BUCKET, ttl=ttl_s)
    except nats.js.errors.BadRequestError:
        return await js.key_value(REGISTRY_BUCKET)  # made already, perhaps with another TTL


def work_consumer_name(target: ev.Target, band: int) -> str:
    return f"work-{target.value}-p{band}"


async def declare_work_consumers(js: JetStreamContext, ack_wait_s: float) -> None:
    """One durable pull consumer per target and band, shared by every agent serving it."""
    for target in ev.Target:
        for band in BANDS:
            await js.add_consumer(
                ev.WORK_STREAM,
                api.ConsumerConfig(
                    durable_name=work_consumer_name(target, band),
                    filter_subject=ev.work_subject(target, band),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=ack_wait_s,
                    max_deliver=-1,
                    max_ack_pending=-1,
                ),
            )
