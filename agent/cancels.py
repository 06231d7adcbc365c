"""Noticing that a running job was cancelled, so its test can be stopped at once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from infra import events as ev

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from infra.eventlog import EventLog
    from infra.lifecycle import JobState

T = TypeVar("T")


@contextlib.asynccontextmanager
async def watch(nc: Client, events: EventLog, job: JobState) -> AsyncIterator[asyncio.Event]:
    """An event set once `job` is cancelled, for the length of the block.

    Appends to the job's subject reach core-NATS subscribers too; one made before the
    subscription is caught by reading the subject once after subscribing.
    """
    cancelled = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError):
            if isinstance(ev.decode(msg.data), ev.JobCancelled):
                cancelled.set()

    sub = await nc.subscribe(ev.job_subject(job.job_id), cb=on_event)
    try:
        latest = await events.last(ev.job_subject(job.job_id))
        if latest is not None and latest[0] > job.version:
            cancelled.set()  # someone moved the running job on (a cancel): stop the test
        yield cancelled
    finally:
        await sub.unsubscribe()


async def unless_cancelled(work: asyncio.Future[T], cancelled: asyncio.Event) -> T | None:
    """The result of `work`, or None when `cancelled` is set first (`work` is then
    cancelled and awaited, so whatever it started has been stopped)."""
    waiter = asyncio.ensure_future(cancelled.wait())
    racing: list[asyncio.Future[Any]] = [work, waiter]
    try:
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return None
