"""One test attempt's output: streamed live as the runner produces it, kept within a
size limit, and stored as the attempt's log object once the test ended."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import nats.errors
import structlog

from infra import logging as qlogging
from infra import logstore

if TYPE_CHECKING:
    from nats.aio.client import Client

    from infra.lifecycle import JobState

log = structlog.get_logger(__name__)

_HEAD_SHARE = 4
"""The first 1/_HEAD_SHARE of the limit keeps the start of the output; the rest its end."""


class AttemptOutput:
    """The `Output` a runner writes a test's output to."""

    def __init__(self, nc: Client, job: JobState, limit_bytes: int) -> None:
        self._nc = nc
        self._job = job
        self._subject = logstore.live_subject(job.job_id, job.attempt)
        self._head_limit = limit_bytes // _HEAD_SHARE
        self._tail_limit = limit_bytes - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0
        self._live_left = limit_bytes

    async def write(self, chunk: bytes) -> None:
        """Keep `chunk` (within the limit) and publish it to followers."""
        self._keep(chunk)
        if self._live_left > 0:
            live = chunk[: self._live_left]
            self._live_left -= len(live)
            if self._live_left <= 0:
                live += b"\n[live output stops here: the size limit is reached]\n"
            await self._publish(live)

    def _keep(self, chunk: bytes) -> None:
        room = self._head_limit - len(self._head)
        self._head += chunk[:room]
        self._tail += chunk[room:] if room > 0 else chunk
        if len(self._tail) > self._tail_limit:
            excess = len(self._tail) - self._tail_limit
            self._dropped += excess
            del self._tail[:excess]

    def text(self) -> bytes:
        """What was kept: the start and the end, with a note of what was dropped between."""
        if not self._dropped:
            return bytes(self._head + self._tail)
        note = f"\n[... {self._dropped} bytes of output dropped (size limit) ...]\n".encode()
        return bytes(self._head) + note + bytes(self._tail)

    async def finish(self) -> str | None:
        """Tell followers the test ended and store the output; the log reference for the
        attempt's final event, or None when there was none or it could not be stored
        (a verdict matters more than its log)."""
        await self._publish(b"", end=True)
        data = self.text()
        if not data:
            return None
        name = logstore.object_name(self._job.org_id, self._job.job_id, self._job.attempt)
        try:
            await logstore.store(self._nc.jetstream(), name, data)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("log_not_stored", **qlogging.job_keys(self._job), error=repr(exc))
            return None
        return name

    async def _publish(self, data: bytes, *, end: bool = False) -> None:
        """Live output is best effort: a follower misses it while NATS is away, but the
        stored log is still complete."""
        headers = {logstore.END_HEADER: "1"} if end else None
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(self._subject, data, headers=headers)
