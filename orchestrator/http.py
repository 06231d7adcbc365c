"""The HTTP API (aiohttp): the route table, token checks, and the one middleware that
turns errors into JSON."""

from __future__ import annotations

import asyncio
import math
import re
from typing import TYPE_CHECKING

import msgspec
import structlog
from aiohttp import web

from orchestrator import auth, domain, metrics, openapi
from orchestrator.admin_routes import ADMIN_ROUTES
from orchestrator.appstate import (
    NATS,
    OPENAPI,
    POOL,
    SCHEDULING,
    SERVICE,
    STOPPING,
    TOKENS,
    error_response,
)
from orchestrator.job_routes import JOB_ROUTES
from orchestrator.ratelimit import RateLimited

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client

    from infra import db
    from infra.events import Role
    from infra.settings import Scheduling
    from orchestrator.ratelimit import RateLimiter
    from orchestrator.service import JobService

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 2 * 1024 * 1024
_FIELD_AT = re.compile(r"at `\$\.?([^`]*)`")
_FIELD_NAMED = re.compile(r"field `([^`]+)`")

ROUTES = (*JOB_ROUTES, *ADMIN_ROUTES)


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
        return error_response(422, str(exc), _field_of(str(exc)))
    except msgspec.DecodeError as exc:
        return error_response(400, f"request body is not valid JSON: {exc}")
    except domain.JobNotFound as exc:
        return error_response(404, str(exc))
    except domain.DomainError as exc:
        return error_response(409, str(exc))
    except auth.AuthError as exc:
        response = error_response(exc.status, str(exc))
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="qgjob"'
        return response
    except RateLimited as exc:
        response = error_response(429, str(exc))
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (404 no route, 405, 413 too large) get the JSON body too.
        response = error_response(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except TimeoutError:
        log.warning("request_timed_out", path=request.path)
        return error_response(503, "the event log did not answer in time; retry the request")
    except Exception:
        log.exception("request_failed", path=request.path)
        return error_response(500, "internal error; the request may be retried safely")


def _access(routes: tuple[openapi.Route, ...]) -> Callable[[web.Request], Role | None]:
    """The role each request needs, from the route it matched; a request that matched no
    route needs none (it gets its 404 or 405 either way)."""
    needed = {(route.method, route.path): route.access for route in routes}

    def access(request: web.Request) -> Role | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None
        return needed.get((request.method, resource.canonical))

    return access


async def _stop_long_answers(app: web.Application) -> None:
    app[STOPPING].set()


def create_app(
    service: JobService,
    pool: db.Pool,
    nc: Client,
    tokens: auth.TokenRegistry,
    limiter: RateLimiter,
    scheduling: Scheduling,
) -> web.Application:
    """The API app: every route of `ROUTES`, behind the latency, error and token
    middlewares."""
    app = web.Application(
        middlewares=[
            metrics.record_latency,
            errors,
            auth.authenticate(tokens, limiter, _access(ROUTES)),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[SERVICE] = service
    app[POOL] = pool
    app[NATS] = nc
    app[TOKENS] = tokens
    app[SCHEDULING] = scheduling
    app[STOPPING] = asyncio.Event()
    app.on_shutdown.append(_stop_long_answers)
    app[metrics.METRICS] = metrics.Metrics()
    app[OPENAPI] = msgspec.json.encode(openapi.document(ROUTES))
    app.add_routes(web.route(route.method, route.path, route.handler) for route in ROUTES)
    return app
