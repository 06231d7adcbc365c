"""NATS connection and the JetStream streams and consumers qgjob declares."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from infra import bands, logstore
from infra import events as ev

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

DUPLICATE_WINDOW_S = 120.0
DRAIN_TIMEOUT_S = 2.0
"""How long closing a connection waits for in-flight messages before it just closes."""


def inbox_prefix(user: str | None) -> str:
    """Where a NATS user's replies arrive: under its own name, so that a user allowed to
    subscribe to its own inbox only (an agent) gets them and sees no one else's."""
    return "_INBOX" if user is None else f"_INBOX.{user}"


class CredentialsRefused(nats.errors.Error):
    """nats-server refused the credentials: retrying cannot help."""


async def connect(url: str, name: str) -> Client:
    """Connect, as the user `url` names if any, with reconnects that outlast a
    nats-server restart; raises CredentialsRefused at once when the server refuses the
    credentials (an unreachable server is waited for)."""
    nc = Client()

    async def on_error(exc: Exception) -> None:
        if nc.is_connecting and "authorization violation" in str(exc).lower():
            raise CredentialsRefused(f"nats-server refused the credentials of {name}: {exc}")
        log.warning("nats_error", connection=name, error=str(exc))

    # As a dict: nats-py annotates reconnect_time_wait as int, though it takes seconds.
    options: dict[str, Any] = {
        "name": name,
        "error_cb": on_error,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 5,
        "allow_reconnect": True,
        # A drain waits for every subscription's queue to be worked off, and nats-py's
        # fetch never marks the messages it takes as done: a pull subscription still
        # open at shutdown would hold the drain for its whole timeout (30 s by default)
        # while the process, stopping, serves nothing.
        "drain_timeout": DRAIN_TIMEOUT_S,
        "inbox_prefix": inbox_prefix(urlsplit(url).username),
    }
    try:
        await nc.connect(url, **options)
    except CredentialsRefused:
        await nc.close()
        raise
    return nc


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


def work_consumer_name(target: ev.Target, queue: int) -> str:
    return f"work-{target.value}-p{queue}"


async def declare_work_consumers(js: JetStreamContext, ack_wait_s: float) -> None:
    """One durable pull consumer per target and dispatch queue (`infra.bands.QUEUES`),
    shared by every agent serving it."""
    for target in ev.Target:
        for queue in bands.QUEUES:
            await js.add_consumer(
                ev.WORK_STREAM,
                api.ConsumerConfig(
                    durable_name=work_consumer_name(target, queue),
                    filter_subject=ev.work_subject(target, queue),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=ack_wait_s,
                    max_deliver=-1,
                    max_ack_pending=-1,
                ),
            )


async def fetch_ready(
    sub: JetStreamContext.PullSubscription, limit: int, wait_s: float
) -> list[Msg]:
    """Up to `limit` messages as soon as there is one: waits up to `wait_s` for the
    first, then takes the ones the consumer already has for us. A plain
    `fetch(limit, timeout)` returns only once `limit` messages came or its pull request
    expired (nats-py collects until then), so a consumer following a quiet stream would
    see each event up to `wait_s` late. Raises TimeoutError when nothing came."""
    msgs = await sub.fetch(1, timeout=wait_s)
    ready = min(msgs[-1].metadata.num_pending, limit - len(msgs))
    if ready > 0:
        try:
            msgs += await sub.fetch(ready, timeout=wait_s)
        except (TimeoutError, nats.errors.TimeoutError):
            msgs += fetch_timed_out()  # taken meanwhile (a purge, another consumer)
    return msgs


def fetch_timed_out() -> list[Msg]:
    """What a fetch that timed out gives: nothing, unless the task is being cancelled.
    nats-py's `fetch` can turn a cancellation into a TimeoutError; a loop that shrugged
    it off would never stop (a projector that hangs instead of exiting)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return []


class _PullRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A JetStream pull request that the server answers at once, with what is ready."""

    batch: int
    no_wait: bool = True


class ReadyPuller:
    """Takes from a pull consumer the messages it has ready now, never waiting for more.

    nats-py's `fetch` asks for what is ready, and when nothing is, waits out its timeout
    for a message to come: a caller looking through several consumers for the first that
    has something (an agent through its bands) would pay that wait on every empty one,
    and on every message another consumer took first. This sends the pull request alone
    (`no_wait`): the server answers at once with what it has, then a status."""

    PULL_TIMEOUT_S = 2.0
    """For the server's answer, which comes at once unless the connection is in trouble."""

    def __init__(self, nc: Client, stream: str) -> None:
        self._nc = nc
        self._stream = stream
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def pull(self, consumer: str, batch: int) -> list[Msg]:
        """Up to `batch` messages the consumer has ready; raises TimeoutError when the
        server does not answer."""
        sub = self._sub
        assert sub is not None, "open() the puller first"
        async with self._lock:
            await self._give_back_late(sub)
            request = msgspec.json.encode(_PullRequest(batch=batch))
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
            await self._nc.publish(subject, request, reply=self._inbox)
            msgs: list[Msg] = []
            while len(msgs) < batch:
                msg = await sub.next_msg(timeout=self.PULL_TIMEOUT_S)
                if JetStreamContext.is_status_msg(msg):
                    break  # nothing more ready (404), or the request expired (408)
                msgs.append(msg)
            return msgs

    @staticmethod
    async def _give_back_late(sub: Subscription) -> None:
        """Messages of an earlier pull whose answer came after it timed out go back to
        their consumer at once; its status messages are dropped."""
        while sub.pending_msgs:
            late = await sub.next_msg()
            if not JetStreamContext.is_status_msg(late):
                with contextlib.suppress(nats.errors.Error):
                    await late.nak()
