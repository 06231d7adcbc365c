"""Serving a NATS request/reply subject in a queue group, one task per request."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import nats.errors
import structlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = structlog.get_logger(__name__)


class Responder:
    """Answers requests on `subject` with `answer(request)`; replicas in the same queue
    group share the requests. A slow answer never holds up the others."""

    def __init__(
        self, nc: Client, subject: str, queue: str, answer: Callable[[Msg], Awaitable[bytes]]
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._queue = queue
        self._answer = answer
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subject, queue=self._queue, cb=self._on)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking requests, then let answers in flight finish within `grace_s`."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)

    async def _on(self, msg: Msg) -> None:
        task = asyncio.create_task(self._respond(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respond(self, msg: Msg) -> None:
        answer = await self._answer(msg)
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):  # the asker is gone: it asks again
                await msg.respond(answer)
