"""The HTTP API (aiohttp): routes, and the one middleware that turns errors into JSON."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import nats.errors
import structlog
from aiohttp import web
from nats.aio.client import Client

from infra import api, db, rpc
from infra import nats as qnats
from orchestrator import domain, logs, metrics, openapi, queries
from orchestrator.service import JobService

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = structlog.get_logger(__name__)

SERVICE = web.AppKey("service", JobService)
POOL = web.AppKey("pool", db.Pool)
NATS = web.AppKey("nats", Client)
OPENAPI = web.AppKey("openapi", bytes)

MAX_BODY_BYTES = 2 * 1024 * 1024
_TEXT = "text/plain"
_FIELD_AT = re.compile(r"at `\$\.?([^`]*)`")
_FIELD_NAMED = re.compile(r"field `([^`]+)`")


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def _error(status: int, message: str, field: str | None = None) -> web.Response:
    return _json(api.ErrorBody(error=message, field=field), status)


def _field_of(message: str) -> str | None:
    """The offending field of a msgspec validation message (`$.jobs[0].priority`)."""
    at = _FIELD_AT.search(message)
    named = _FIELD_NAMED.search(message)
    path = at.group(1) if at else ""
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return path or None


@web.middleware
async def errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Domain and input errors become status codes with a JSON body; nothing else leaks."""
    try:
        return await handler(request)
    except msgspec.ValidationError as exc:
        return _error(422, str(exc), _field_of(str(exc)))
    except msgspec.DecodeError as exc:
        return _error(400, f"request body is not valid JSON: {exc}")
    except domain.JobNotFound as exc:
        return _error(404, str(exc))
    except domain.DomainError as exc:
        return _error(409, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (404 no route, 405, 413 too large) get the JSON body too.
        response = _error(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TimeoutError:
        log.warning("request_timed_out", path=request.path)
        return _error(503, "the event log did not answer in time; retry the request")
    except Exception:
        log.exception("request_failed", path=request.path)
        return _error(500, "internal error; the request may be retried safely")


_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_spec = msgspec.json.Decoder(api.JobSpec)
_bulk = msgspec.json.Decoder(api.BulkSubmit)


async def post_jobs(request: web.Request) -> web.Response:
    """One job (a JobSpec) or many (`{"jobs": [...]}`)."""
    body = await request.read()
    if not body:
        raise msgspec.ValidationError("request body is required")
    service = request.app[SERVICE]
    # A shallow look at the keys picks the type; then one typed decode validates it all.
    if "jobs" in _top_level.decode(body):
        bulk = _bulk.decode(body)
        return _json(api.SubmitResponse(jobs=await service.submit_many(bulk.jobs)), 201)
    view, created = await service.submit(_spec.decode(body))
    return _json(view, 201 if created else 200)


async def get_job(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].get(request.match_info["job_id"]))


async def get_job_logs(request: web.Request) -> web.StreamResponse:
    """Plain text: the attempt's stored log, its output so far, or (`follow`) a stream."""
    query = msgspec.convert(dict(request.query), logs.LogQuery, strict=False)
    service = request.app[SERVICE]
    job = await service.get(request.match_info["job_id"])
    attempt = logs.attempt_of(job, query)
    js = request.app[NATS].jetstream()
    headers = {"Qg-Attempt": str(attempt), "Qg-Job-Status": job.status.value}
    if not query.follow:
        body = await logs.read(js, job, attempt)
        return web.Response(body=body, headers=headers, content_type=_TEXT, charset="utf-8")
    response = web.StreamResponse(headers=headers)
    response.content_type, response.charset = _TEXT, "utf-8"
    await response.prepare(request)
    async for chunk in logs.follow(js, service, job, attempt):
        await response.write(chunk)
    await response.write_eof()
    return response


_cancel_many = msgspec.json.Decoder(api.CancelMany)


async def post_cancel(request: web.Request) -> web.Response:
    match = _cancel_many.decode(await request.read())
    if match.batch_id is None and (match.org_id is None or match.app_version_id is None):
        raise msgspec.ValidationError(
            "give `batch_id`, or `org_id` and `app_version_id` - at `$.batch_id`"
        )
    return _json(await request.app[SERVICE].cancel_many(match))


async def delete_job(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].cancel(request.match_info["job_id"]))


async def get_jobs(request: web.Request) -> web.Response:
    query = msgspec.convert(dict(request.query), queries.JobFilter, strict=False)
    async with request.app[POOL].acquire() as conn:
        return _json(await queries.list_jobs(conn, query))


async def get_batches(request: web.Request) -> web.Response:
    query = msgspec.convert(dict(request.query), queries.BatchFilter, strict=False)
    async with request.app[POOL].acquire() as conn:
        return _json(api.BatchPage(batches=await queries.list_batches(conn, query.limit)))


async def get_queues(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return _json(await queries.queue(conn))


async def get_agents(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return _json(await queries.list_agents(conn))


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
    return _json(health, 200 if status == "ok" else 503)


async def get_metrics(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        stats = await queries.stats(conn)
    progress = await qnats.projector_progress(request.app[NATS].jetstream())
    body = request.app[metrics.METRICS].render(stats, progress.lag)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


_ops_body = msgspec.json.Decoder(api.OpsBody)
OPS_TIMEOUT_S = 900.0


async def _ops(request: web.Request, action: Literal["replay", "verify"]) -> web.Response:
    """Forward an ops request to the projectors, which own the read models."""
    body = await request.read()
    options = _ops_body.decode(body) if body.strip() else api.OpsBody()
    if action == "verify" and options.until is not None:
        raise msgspec.ValidationError("`until` applies to replay only - at `$.until`")
    command = rpc.OpsRequest(action=action, projection=options.projection, until=options.until)
    try:
        reply = await request.app[NATS].request(
            rpc.OPS_SUBJECT, msgspec.json.encode(command), timeout=OPS_TIMEOUT_S
        )
    except nats.errors.NoRespondersError:
        return _error(503, "no projector is running to rebuild the read models")
    response = msgspec.json.decode(reply.data, type=rpc.OpsResponse)
    if response.error is not None:
        return _error(422, response.error, "projection")
    return _json(response)


async def post_replay(request: web.Request) -> web.Response:
    return await _ops(request, "replay")


async def post_verify(request: web.Request) -> web.Response:
    return await _ops(request, "verify")


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type=openapi.JSON)


ROUTES = (
    openapi.Route(
        method="POST",
        path="/jobs",
        handler=post_jobs,
        summary='Submit one job, or several as {"jobs": [...]}; a known idempotency key '
        "answers 200 with the job it already made",
        body=(api.JobSpec, api.BulkSubmit),
        responses={201: (api.JobView, api.SubmitResponse), 200: api.JobView},
        errors=(400, 422, 503),
    ),
    openapi.Route(
        method="GET",
        path="/jobs",
        handler=get_jobs,
        summary="Jobs, newest first, filtered and paged (from the read model)",
        query=queries.JobFilter,
        responses={200: api.JobPage},
        errors=(422,),
    ),
    openapi.Route(
        method="GET",
        path="/jobs/{job_id}",
        handler=get_job,
        summary="One job, folded from its own events (strongly consistent)",
        responses={200: api.JobView},
        errors=(404, 503),
    ),
    openapi.Route(
        method="GET",
        path="/jobs/{job_id}/logs",
        handler=get_job_logs,
        summary="A job attempt's test output as plain text; `follow=true` streams it live "
        "until the attempt ends",
        query=logs.LogQuery,
        responses={200: str},
        media_type=_TEXT,
        errors=(404, 422, 503),
    ),
    openapi.Route(
        method="DELETE",
        path="/jobs/{job_id}",
        handler=delete_job,
        summary="Cancel a job that has not finished",
        responses={200: api.JobView},
        errors=(404, 409, 503),
    ),
    openapi.Route(
        method="POST",
        path="/jobs:cancel",
        handler=post_cancel,
        summary="Cancel every unfinished job of a batch, or of an org's app version "
        "(optionally on one target)",
        body=api.CancelMany,
        responses={200: api.CancelResult},
        errors=(400, 422, 503),
    ),
    openapi.Route(
        method="GET",
        path="/batches",
        handler=get_batches,
        summary="Batches, most recently active first",
        query=queries.BatchFilter,
        responses={200: api.BatchPage},
        errors=(422,),
    ),
    openapi.Route(
        method="GET",
        path="/queues",
        handler=get_queues,
        summary="Queued jobs per target and band, and the open batches",
        responses={200: api.QueueView},
    ),
    openapi.Route(
        method="GET",
        path="/agents",
        handler=get_agents,
        summary="Registered agents and what each is doing",
        responses={200: api.AgentPage},
    ),
    openapi.Route(
        method="GET",
        path="/health",
        handler=get_health,
        summary="Whether NATS and PostgreSQL answer, and the projectors' lag",
        responses={200: api.Health, 503: api.Health},
    ),
    openapi.Route(
        method="GET",
        path="/metrics",
        handler=get_metrics,
        summary="Prometheus metrics",
        responses={200: str},
        media_type="text/plain",
    ),
    openapi.Route(
        method="POST",
        path="/ops/replay",
        handler=post_replay,
        summary="Rebuild read models from the event stream and swap them in atomically "
        "(or, with `until`, rebuild as of that sequence into a kept schema)",
        body=api.OpsBody,
        responses={200: rpc.OpsResponse},
        errors=(400, 422, 503),
    ),
    openapi.Route(
        method="POST",
        path="/ops/verify",
        handler=post_verify,
        summary="Rebuild read models into scratch tables and count the rows that differ "
        "from the live ones",
        body=api.OpsBody,
        responses={200: rpc.OpsResponse},
        errors=(400, 422, 503),
    ),
    openapi.Route(
        method="GET",
        path="/openapi.json",
        handler=get_openapi,
        summary="This document",
        responses={200: dict[str, Any]},
    ),
)


def create_app(service: JobService, pool: db.Pool, nc: Client) -> web.Application:
    """The API app: every route of `ROUTES`, behind the latency and error middlewares."""
    app = web.Application(
        middlewares=[metrics.record_latency, errors], client_max_size=MAX_BODY_BYTES
    )
    app[SERVICE] = service
    app[POOL] = pool
    app[NATS] = nc
    app[metrics.METRICS] = metrics.Metrics()
    app[OPENAPI] = msgspec.json.encode(openapi.document(ROUTES))
    app.add_routes(web.route(route.method, route.path, route.handler) for route in ROUTES)
    return app
