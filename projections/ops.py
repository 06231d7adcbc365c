"""The ops service of the projector processes: `qg.rpc.ops` requests to replay or
verify read models, answered over NATS request/reply."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import structlog

from infra import rpc
from infra.responder import Responder
from projections.rebuild import RebuildError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from projections.rebuild import Rebuilder

log = structlog.get_logger(__name__)

_request_decoder = msgspec.json.Decoder(rpc.OpsRequest)


def ops_server(nc: Client, rebuilder: Rebuilder) -> Responder:
    """Serves `qg.rpc.ops` in the projectors' queue group: one process takes each request."""

    async def answer(request: Msg) -> bytes:
        try:
            response = await rebuilder.handle(_request_decoder.decode(request.data))
        except (msgspec.DecodeError, RebuildError) as exc:
            response = rpc.OpsResponse(error=str(exc))
        except Exception as exc:
            log.exception("ops_request_failed")
            response = rpc.OpsResponse(error=f"rebuild failed: {exc!r}")
        return msgspec.json.encode(response)

    return Responder(nc, rpc.OPS_SUBJECT, "projectors", answer)
