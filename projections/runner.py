"""The durable consumer loop every read model shares: fetch a batch of events, apply it
and move the checkpoint in one transaction, then ack.

The checkpoint in PostgreSQL is the truth: at start the consumer is (re)created to begin
right after it, and events at or below it are skipped, so a crash between commit and
ack neither loses nor double-applies an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec
import nats.errors
import structlog
from nats.js import api
from nats.js.errors import NotFoundError

from infra import db
from infra import events as ev
from infra import nats as qnats

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = structlog.get_logger(__name__)

Batch = Sequence[tuple[int, ev.Event]]


class Projection(Protocol):
    """A read model: folds events into its tables."""

    name: str
    filter_subject: str
    tables: tuple[str, ...]
    """The tables it owns, which a replay rebuilds and swaps."""

    async def apply(self, conn: db.Connection, events: Batch) -> None:
        """Apply events (oldest first, all above the checkpoint) inside the caller's
        transaction."""


class Rejected(msgspec.Struct, frozen=True):
    """A message on the event stream that is not an event: parked, never applied."""

    stream_seq: int
    subject: str
    error: str
    data: bytes


_PARK = (
    "INSERT INTO rejected_events (stream_seq, subject, error, data) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (stream_seq) DO NOTHING"
)


def decode_batch(
    msgs: Sequence[Msg],
    after: int,
    until: int | None = None,
    rejected: list[Rejected] | None = None,
) -> tuple[list[tuple[int, ev.Event]], int]:
    """Decode messages above sequence `after` (and not above `until`); returns the events
    and the sequence they take the projection to. A malformed message is logged, added
    to `rejected` and skipped, so that it never stops a projector."""
    events: list[tuple[int, ev.Event]] = []
    last = after
    for msg in msgs:
        seq = msg.metadata.sequence.stream
        if seq <= after:
            continue
        if until is not None and seq > until:
            # Everything up to `until` that this projection follows has been seen.
            return events, max(last, until)
        last = max(last, seq)
        try:
            events.append((seq, ev.decode(msg.data)))
        except msgspec.DecodeError as exc:
            log.warning("event_rejected", stream_seq=seq, subject=msg.subject, error=str(exc))
            if rejected is not None:
                rejected.append(Rejected(seq, msg.subject, str(exc), msg.data))
    return events, last


class ProjectionRunner:
    """Keeps one projection up to date with QG_EVENTS."""

    def __init__(
        self,
        js: JetStreamContext,
        pool: db.Pool,
        projection: Projection,
        *,
        durable: str | None = None,
        batch_size: int = 1000,
        on_applied: Callable[[int], None] | None = None,
        until: int | None = None,
    ) -> None:
        self._js = js
        self._pool = pool
        self._projection = projection
        self._durable = durable or qnats.projection_consumer_name(projection.name)
        self._batch_size = batch_size
        self._on_applied = on_applied
        self._until = until
        """Stop applying after this stream sequence (a replay as of a point in time)."""
        self.position = 0
        """The last stream sequence applied (the checkpoint)."""

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        async with self._pool.acquire() as conn:
            self.position = await db.checkpoint(conn, self._projection.name)
        with contextlib.suppress(NotFoundError):
            await self._js.delete_consumer(ev.EVENTS_STREAM, self._durable)
        config = api.ConsumerConfig(
            durable_name=self._durable,
            filter_subject=self._projection.filter_subject,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.position + 1,
            ack_policy=api.AckPolicy.ALL,
            ack_wait=60,
            max_ack_pending=-1,
        )
        await self._js.add_consumer(ev.EVENTS_STREAM, config)
        return await self._js.pull_subscribe_bind(self._durable, ev.EVENTS_STREAM)

    async def _apply(self, msgs: Sequence[Msg]) -> None:
        name = self._projection.name
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT last_seq FROM checkpoints WHERE projection = $1 FOR UPDATE", name
            )
            rejected: list[Rejected] = []
            events, last = decode_batch(msgs, current or 0, self._until, rejected)
            if last > (current or 0):
                await self._projection.apply(conn, events)
                await conn.executemany(_PARK, [msgspec.structs.astuple(r) for r in rejected])
                await conn.execute(
                    "INSERT INTO checkpoints VALUES ($1, $2) ON CONFLICT (projection)"
                    " DO UPDATE SET last_seq = EXCLUDED.last_seq",
                    name,
                    last,
                )
            self.position = max(last, current or 0)
        if self._on_applied is not None:
            self._on_applied(self.position)

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await qnats.fetch_ready(sub, self._batch_size, wait_s=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            return qnats.fetch_timed_out()

    async def run(self, stop: asyncio.Event, *, catch_up: bool = False) -> None:
        """Apply events until `stop` is set; with `catch_up`, return once every event
        stored when the call began has been applied (a replay).

        After a full batch (catching up), the next one is fetched while the current one
        is written to PostgreSQL. Following the stream live, the next fetch waits for the
        write instead, so the events that arrive meanwhile make one transaction, not one
        each: a busy stream gets bigger batches, not a longer queue. A fetch in flight is
        awaited, never cancelled: it ends by itself within its timeout.
        """
        sub = await self._subscribe()
        if catch_up and (await sub.consumer_info()).num_pending == 0:
            await sub.unsubscribe()
            return
        fetching: asyncio.Future[list[Msg]] | None = asyncio.ensure_future(self._fetch(sub))
        try:
            while fetching is not None:
                msgs = await fetching
                done = stop.is_set() or bool(
                    catch_up and msgs and msgs[-1].metadata.num_pending == 0
                )
                if self._until is not None and msgs:
                    done = done or msgs[-1].metadata.sequence.stream >= self._until
                full = len(msgs) >= self._batch_size
                fetching = asyncio.ensure_future(self._fetch(sub)) if full and not done else None
                if msgs:
                    await self._apply(msgs)
                    await msgs[-1].ack()
                if fetching is None and not done:
                    fetching = asyncio.ensure_future(self._fetch(sub))
        finally:
            if fetching is not None:
                await asyncio.wait([fetching])
            await sub.unsubscribe()
