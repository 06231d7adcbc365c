"""The HTTP API (aiohttp): routes, and the one middleware that turns errors into JSON."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

import msgspec
import structlog
from aiohttp import web
from nats.aio.client import Client

from infra import api, db
from infra import nats as qnats
from orchestrator import domain, queries
from orchestrator.service import JobService

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = structlog.get_logger(__name__)

SERVICE = web.AppKey("service", JobService)
POOL = web.AppKey("pool", db.Pool)
NATS = web.AppKey("nats", Client)

MAX_BODY_BYTES = 2 * 1024 * 1024
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
    except web.HTTPException:
        raise
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


async def delete_job(request: web.Request) -> web.Response:
    return _json(await request.app[SERVICE].cancel(request.match_info["job_id"]))


async def get_jobs(request: web.Request) -> web.Response:
    query = msgspec.convert(dict(request.query), queries.JobFilter, strict=False)
    async with request.app[POOL].acquire() as conn:
        return _json(await queries.list_jobs(conn, query))


async def get_batches(request: web.Request) -> web.Response:
    limit = msgspec.convert(request.query.get("limit", "50"), int, strict=False)
    async with request.app[POOL].acquire() as conn:
        return _json(api.BatchPage(batches=await queries.list_batches(conn, min(limit, 500))))


async def get_queues(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return _json(await queries.queue(conn))


async def get_agents(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn:
        return _json(await queries.list_agents(conn))


async def get_health(request: web.Request) -> web.Response:
    nc = request.app[NATS]
    lag: int | None = None
    try:
        lag = await qnats.projector_lag(nc.jetstream())
    except Exception:
        log.warning("health_nats_failed", exc_info=True)
    try:
        async with request.app[POOL].acquire() as conn:
            await conn.fetchval("SELECT 1")
        db_ok = True
    except Exception:  # noqa: BLE001
        db_ok = False
    nats_ok = nc.is_connected and lag is not None
    status: Literal["ok", "degraded"] = "ok" if nats_ok and db_ok else "degraded"
    health = api.Health(status=status, nats=nats_ok, database=db_ok, projector_lag=lag)
    return _json(health, 200 if status == "ok" else 503)


def create_app(service: JobService, pool: db.Pool, nc: Client) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICE] = service
    app[POOL] = pool
    app[NATS] = nc
    app.router.add_post("/jobs", post_jobs)
    app.router.add_get("/jobs", get_jobs)
    app.router.add_get("/jobs/{job_id}", get_job)
    app.router.add_delete("/jobs/{job_id}", delete_job)
    app.router.add_get("/batches", get_batches)
    app.router.add_get("/queues", get_queues)
    app.router.add_get("/agents", get_agents)
    app.router.add_get("/health", get_health)
    return app
