"""Where test output lives: live chunks on a stream while a test runs, then one object
per job attempt in the `QG_LOGS` object store, named by the job's final event.

The live stream lets `qgjob logs --follow` show output as it is produced; the object is
the record kept after the attempt ended. Both expire (`LIVE_RETENTION_S`,
`RETENTION_S`): logs are evidence for people, not state the system needs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.js import api

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from nats.js import JetStreamContext

LIVE_STREAM = "QG_LOGS_LIVE"
LIVE_SUBJECTS = "qg.log.>"
BUCKET = "QG_LOGS"
END_HEADER = "Qg-Log-End"
"""Set on the last live message of an attempt: the test process has ended."""
RETENTION_S = 7 * 86_400.0
LIVE_RETENTION_S = 86_400.0
DEFAULT_LIMIT_BYTES = 1 << 20
"""How much output of one attempt is kept; the middle is dropped, with a note, beyond it."""


def live_subject(job_id: str, attempt: int) -> str:
    """The subject of one attempt's live output chunks."""
    return f"qg.log.{job_id}.{attempt}"


def object_name(org_id: str, job_id: str, attempt: int) -> str:
    """The object holding one attempt's output, prefixed by org so a bucket lists by org."""
    return f"{org_id}/{job_id}/{attempt}"


async def declare(js: JetStreamContext) -> None:
    """Create or update the live stream and the object store bucket."""
    live = api.StreamConfig(
        name=LIVE_STREAM,
        subjects=[LIVE_SUBJECTS],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=LIVE_RETENTION_S,
        discard=api.DiscardPolicy.OLD,
    )
    try:
        await js.add_stream(live)
    except nats.js.errors.BadRequestError:
        await js.update_stream(live)
    await js.create_object_store(
        BUCKET, api.ObjectStoreConfig(ttl=RETENTION_S, storage=api.StorageType.FILE)
    )


async def store(js: JetStreamContext, name: str, data: bytes) -> None:
    """Keep an attempt's output under `name`."""
    bucket = await js.object_store(BUCKET)
    await bucket.put(name, data)


async def fetch(js: JetStreamContext, name: str) -> bytes | None:
    """An attempt's stored output, or None when there is none (yet, or any more)."""
    bucket = await js.object_store(BUCKET)
    try:
        result = await bucket.get(name)
    except nats.js.errors.ObjectNotFoundError:
        return None
    return bytes(result.data or b"")


async def follow(
    js: JetStreamContext,
    job_id: str,
    attempt: int,
    *,
    keep_waiting: Callable[[], Awaitable[bool]],
    idle_s: float = 1.0,
) -> AsyncIterator[bytes]:
    """Yield an attempt's live output from its first chunk on, until the test process
    ended. After `idle_s` without output, `keep_waiting()` decides whether to go on
    (False when the attempt ended without its end marker: an agent that died, say)."""
    subscription = await js.subscribe(
        live_subject(job_id, attempt),
        stream=LIVE_STREAM,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=idle_s)
            except nats.errors.TimeoutError:
                if await keep_waiting():
                    continue
                return
            if msg.data:
                yield msg.data
            if msg.headers and END_HEADER in msg.headers:
                return
    finally:
        await subscription.unsubscribe()


async def so_far(js: JetStreamContext, job_id: str, attempt: int) -> bytes:
    """The live output an attempt has produced until now (for a test still running)."""
    subject = live_subject(job_id, attempt)
    try:
        last = await js.get_last_msg(LIVE_STREAM, subject)
    except nats.js.errors.NotFoundError:
        return b""
    chunks = bytearray()
    subscription = await js.subscribe(
        subject, stream=LIVE_STREAM, ordered_consumer=True, deliver_policy=api.DeliverPolicy.ALL
    )
    try:
        async with asyncio.timeout(10):
            while True:
                msg = await subscription.next_msg(timeout=5)
                chunks += msg.data
                if msg.metadata.sequence.stream >= (last.seq or 0):
                    return bytes(chunks)
    finally:
        await subscription.unsubscribe()
