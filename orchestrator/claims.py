"""The claim service: answers agents' claim requests over NATS request/reply."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec
import structlog

from infra import events as ev
from infra import rpc

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from orchestrator.service import JobService

log = structlog.get_logger(__name__)

_request_decoder = msgspec.json.Decoder(rpc.ClaimRequest)


class ClaimServer:
    """Serves `qg.rpc.claim` in a queue group, so orchestrator replicas share the load.

    Each request runs in its own task: a claim that waits for the read model to catch up
    must not hold up the others.
    """

    def __init__(self, nc: Client, service: JobService) -> None:
        self._nc = nc
        self._service = service
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(
            ev.CLAIM_SUBJECT, queue="orchestrator", cb=self._on_request
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking requests, then let in-flight claims finish within `grace_s`."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        try:
            request = _request_decoder.decode(msg.data)
            response = await self._service.claim(request)
        except msgspec.DecodeError as exc:
            response = rpc.ClaimResponse(jobs=[], error=f"bad claim request: {exc}")
        except Exception as exc:
            log.exception("claim_failed")
            response = rpc.ClaimResponse(jobs=[], error=f"claim failed: {exc}")
        await msg.respond(msgspec.json.encode(response))
