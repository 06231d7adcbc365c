"""The claim service: answers agents' claim requests over NATS request/reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import structlog

from infra import events as ev
from infra import rpc
from infra.responder import Responder

if TYPE_CHECKING:
    from nats.aio.client import Client

    from orchestrator.service import JobService

log = structlog.get_logger(__name__)

_request_decoder = msgspec.json.Decoder(rpc.ClaimRequest)


def claim_server(nc: Client, service: JobService) -> Responder:
    """Serves `qg.rpc.claim` in a queue group, so orchestrator replicas share the load;
    a claim that waits for the read model to catch up does not hold up the others."""

    async def answer(data: bytes) -> bytes:
        try:
            response = await service.claim(_request_decoder.decode(data))
        except msgspec.DecodeError as exc:
            response = rpc.ClaimResponse(jobs=[], error=f"bad claim request: {exc}")
        except Exception as exc:
            log.exception("claim_failed")
            response = rpc.ClaimResponse(jobs=[], error=f"claim failed: {exc}")
        return msgspec.json.encode(response)

    return Responder(nc, ev.CLAIM_SUBJECT, "orchestrator", answer)
