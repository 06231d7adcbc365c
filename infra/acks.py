"""Acknowledged JetStream publishes with many in flight over one reply subscription.

nats-py's `publish_async` costs a semaphore, a timer and a random token per message, and
raises a refused publish's error inside its reply handler, leaving the caller's future
unresolved. This pipeline decodes each acknowledgement with msgspec and resolves every
future, refusals included.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription


class AckError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class Ack(msgspec.Struct, frozen=True):
    """JetStream's answer to a publish: a sequence, or an error."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: AckError | None = None


_NO_STREAM = Ack(error=AckError(code=503, description="no stream answered the publish"))
_decoder = msgspec.json.Decoder(Ack)


class AckPipeline:
    """Publishes whose acknowledgements arrive on one wildcard inbox."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Ack]] = {}
        self._sub: Subscription | None = None

    async def _ensure_started(self) -> None:
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            # An empty reply is a status message: nothing listens on the subject.
            future.set_result(_decoder.decode(msg.data) if msg.data else _NO_STREAM)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[Ack]:
        """Send one message; the returned future resolves with its acknowledgement."""
        await self._ensure_started()
        token = str(next(self._tokens))
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
        except BaseException:
            del self._waiting[token]
            raise
        return future

    def forget(self, futures: list[asyncio.Future[Ack]]) -> None:
        """Stop waiting for these acknowledgements (after a timeout)."""
        doomed = {id(f) for f in futures}
        for token in [t for t, f in self._waiting.items() if id(f) in doomed]:
            del self._waiting[token]
