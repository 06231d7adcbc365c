"""The HTTP routes for operators: health, metrics, the API document, read-model replay
and verify, and API tokens."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import nats.errors
import structlog
from aiohttp import web

from infra import api, rpc, tokens
from infra import events as ev
from infra import nats as qnats
from infra.eventlog import EventLog
from orchestrator import metrics, openapi, queries
from orchestrator.appstate import NATS, OPENAPI, POOL, TOKENS, error_response, json_response
from orchestrator.openapi import Route

log = structlog.get_logger(__name__)

OPS_TIMEOUT_S = 900.0
_ops_body = msgspec.json.Decoder(api.OpsBody)
_token_body = msgspec.json.Decoder(api.TokenCreate)


async def get_health(request: web.Request) -> web.Response:
    nc = request.app[NATS]
    progress: qnats.ProjectorProgress | None = None
    try:
        progress = await qnats.projector_progress(nc.jetstream())
    except Exception:
        log.warning("health_nats_failed", exc_info=True)
    try:
        async with request.app[POOL].acquire() as conn:
            await conn.fetchval("SELECT 1")
        db_ok = True
    except Exception:  # noqa: BLE001
        db_ok = False
    nats_ok = nc.is_connected and progress is not None
    status: Literal["ok", "degraded"] = "ok" if nats_ok and db_ok else "degraded"
    health = api.Health(
        status=status,
        nats=nats_ok,
        database=db_ok,
        projector_lag=None if progress is None else progress.lag,
        projectors=None if progress is None else progress.following,
    )
    return json_response(health, 200 if status == "ok" else 503)


async def get_metrics(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        stats = await queries.stats(conn)
    progress = await qnats.projector_progress(request.app[NATS].jetstream())
    body = request.app[metrics.METRICS].render(stats, progress.lag)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=openapi.JSON)


async def _ops(request: web.Request, action: Literal["replay", "verify"]) -> web.Response:
    """Forward an ops request to the projectors, which own the read models."""
    body = await request.read()
    options = _ops_body.decode(body) if body.strip() else api.OpsBody()
    if action == "verify" and options.until is not None:
        return error_response(422, "`until` applies to replay only", "until")
    command = rpc.OpsRequest(action=action, projection=options.projection, until=options.until)
    try:
        reply = await request.app[NATS].request(
            rpc.OPS_SUBJECT, msgspec.json.encode(command), timeout=OPS_TIMEOUT_S
        )
    except nats.errors.NoRespondersError:
        return error_response(503, "no projector is running to rebuild the read models")
    response = msgspec.json.decode(reply.data, type=rpc.OpsResponse)
    if response.error is not None:
        return error_response(422, response.error, "projection")
    return json_response(response)


async def post_replay(request: web.Request) -> web.Response:
    return await _ops(request, "replay")


async def post_verify(request: web.Request) -> web.Response:
    return await _ops(request, "verify")


def _token_view(issued: ev.TokenIssued, revoked: bool) -> api.TokenView:
    return api.TokenView(
        token_id=issued.token_id,
        org_id=issued.org_id,
        role=issued.role,
        name=issued.name,
        created_at=issued.at,
        revoked=revoked,
    )


async def post_token(request: web.Request) -> web.Response:
    spec = _token_body.decode(await request.read())
    if spec.org_id is None and spec.role is not ev.Role.ADMIN:
        return error_response(422, f"a {spec.role} token needs an org", "org_id")
    text, issued = tokens.issue(spec.org_id, spec.role, spec.name, ev.utcnow())
    await EventLog(request.app[NATS]).append(issued)
    request.app[TOKENS].apply(issued)
    log.info("token_issued", token_id=issued.token_id, org_id=issued.org_id, role=issued.role)
    return json_response(api.TokenCreated(token=text, details=_token_view(issued, False)), 201)


async def get_tokens(request: web.Request) -> web.Response:
    listed = request.app[TOKENS].listed()
    return json_response(api.TokenPage(tokens=[_token_view(t, r) for t, r in listed]))


async def delete_token(request: web.Request) -> web.Response:
    token_id = request.match_info["token_id"]
    found = {t.token_id: (t, r) for t, r in request.app[TOKENS].listed()}.get(token_id)
    if found is None:
        return error_response(404, f"no token {token_id}")
    if found[1]:
        return json_response(_token_view(found[0], True))  # revoked already: nothing to add
    revoked = ev.TokenRevoked(at=ev.utcnow(), token_id=token_id)
    await EventLog(request.app[NATS]).append(revoked)
    request.app[TOKENS].apply(revoked)
    log.info("token_revoked", token_id=token_id)
    return json_response(_token_view(found[0], True))


ADMIN_ROUTES = (
    Route(
        method="POST",
        path="/ops/replay",
        handler=post_replay,
        summary="Rebuild read models from the event stream and swap them in atomically "
        "(or, with `until`, rebuild as of that sequence into a kept schema)",
        body=api.OpsBody,
        body_required=False,
        responses={200: rpc.OpsResponse},
        errors=(400, 422, 503),
        access=ev.Role.ADMIN,
    ),
    Route(
        method="POST",
        path="/ops/verify",
        handler=post_verify,
        summary="Rebuild read models into scratch tables and count the rows that differ "
        "from the live ones",
        body=api.OpsBody,
        body_required=False,
        responses={200: rpc.OpsResponse},
        errors=(400, 422, 503),
        access=ev.Role.ADMIN,
    ),
    Route(
        method="POST",
        path="/tokens",
        handler=post_token,
        summary="Create an API token for an org (or an admin token); the token is shown "
        "once, only its hash is recorded",
        body=api.TokenCreate,
        responses={201: api.TokenCreated},
        errors=(400, 422, 503),
        access=ev.Role.ADMIN,
    ),
    Route(
        method="GET",
        path="/tokens",
        handler=get_tokens,
        summary="Every API token (never the secrets), with whether it was revoked",
        responses={200: api.TokenPage},
        access=ev.Role.ADMIN,
    ),
    Route(
        method="DELETE",
        path="/tokens/{token_id}",
        handler=delete_token,
        summary="Revoke a token: every later request with it answers 401",
        responses={200: api.TokenView},
        errors=(404, 503),
        access=ev.Role.ADMIN,
    ),
    Route(
        method="GET",
        path="/health",
        handler=get_health,
        summary="Whether NATS and PostgreSQL answer, and the projectors' lag",
        responses={200: api.Health, 503: api.Health},
        access=None,
    ),
    Route(
        method="GET",
        path="/metrics",
        handler=get_metrics,
        summary="Prometheus metrics (aggregates only, no job or org data)",
        responses={200: str},
        media_type="text/plain",
        access=None,
    ),
    Route(
        method="GET",
        path="/openapi.json",
        handler=get_openapi,
        summary="This document",
        responses={200: dict[str, Any]},
        access=None,
    ),
)
