"""The HTTP routes about jobs, batches, queues and agents, each scoped to the caller's
org: another org's job answers 404, exactly as a job that does not exist."""

from __future__ import annotations

import msgspec
from aiohttp import web

from infra import api
from infra.events import Role
from orchestrator import domain, logs, queries
from orchestrator.appstate import (
    NATS,
    POOL,
    SCHEDULING,
    SERVICE,
    STOPPING,
    TEXT,
    error_response,
    json_response,
)
from orchestrator.auth import AuthError, caller
from orchestrator.openapi import Route

_top_level = msgspec.json.Decoder(dict[str, msgspec.Raw])
_spec = msgspec.json.Decoder(api.JobSpec)
_bulk = msgspec.json.Decoder(api.BulkSubmit)
_cancel_many = msgspec.json.Decoder(api.CancelMany)


def _scope(request: web.Request, org_id: str | None) -> tuple[str | None, bool]:
    """The org filter a query runs with, and whether it can match anything: an org token
    asking about another org gets nothing, an admin gets what it asked for."""
    own = caller(request).org_id
    if own is None:
        return org_id, True
    return own, org_id in (None, own)


async def _visible_job(request: web.Request) -> api.JobView:
    """The job of the path, if the caller may see it; JobNotFound otherwise."""
    job = await request.app[SERVICE].get(request.match_info["job_id"])
    if not caller(request).sees(job.org_id):
        raise domain.JobNotFound(job.job_id)
    return job


async def post_jobs(request: web.Request) -> web.Response:
    """One job (a JobSpec) or many (`{"jobs": [...]}`)."""
    body = await request.read()
    if not body:
        raise msgspec.ValidationError("request body is required")
    service = request.app[SERVICE]
    # A shallow look at the keys picks the type; then one typed decode validates it all.
    bulk = "jobs" in _top_level.decode(body)
    specs = _bulk.decode(body).jobs if bulk else [_spec.decode(body)]
    principal = caller(request)
    for spec in specs:
        if not principal.sees(spec.org_id):
            raise AuthError(403, f"this token may submit jobs for {principal.org_id} only")
    if bulk:
        return json_response(api.SubmitResponse(jobs=await service.submit_many(specs)), 201)
    view, created = await service.submit(specs[0])
    return json_response(view, 201 if created else 200)


async def get_job(request: web.Request) -> web.Response:
    return json_response(await _visible_job(request))


async def get_job_logs(request: web.Request) -> web.StreamResponse:
    """Plain text: the attempt's stored log, its output so far, or (`follow`) a stream."""
    query = msgspec.convert(dict(request.query), logs.LogQuery, strict=False)
    job = await _visible_job(request)
    attempt = logs.attempt_of(job, query)
    js = request.app[NATS].jetstream()
    headers = {"Qg-Attempt": str(attempt), "Qg-Job-Status": job.status.value}
    if not query.follow:
        body = await logs.read(js, job, attempt)
        return web.Response(body=body, headers=headers, content_type=TEXT, charset="utf-8")
    response = web.StreamResponse(headers=headers)
    response.content_type, response.charset = TEXT, "utf-8"
    await response.prepare(request)

    def listening() -> bool:
        transport = request.transport
        open_ = transport is not None and not transport.is_closing()
        return open_ and not request.app[STOPPING].is_set()

    try:
        async for chunk in logs.follow(js, request.app[SERVICE], job, attempt, listening):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the follower went away: nothing is owed to anyone
    return response


async def delete_job(request: web.Request) -> web.Response:
    job = await _visible_job(request)
    return json_response(await request.app[SERVICE].cancel(job.job_id))


async def post_cancel(request: web.Request) -> web.Response:
    match = _cancel_many.decode(await request.read())
    org_id, possible = _scope(request, match.org_id)
    match = msgspec.structs.replace(match, org_id=org_id)
    if match.batch_id is None and (match.org_id is None or match.app_version_id is None):
        return error_response(422, "give `batch_id`, or `org_id` and `app_version_id`", "batch_id")
    if not possible:
        return json_response(api.CancelResult(cancelled=[], already_finished=0))
    return json_response(await request.app[SERVICE].cancel_many(match))


async def get_jobs(request: web.Request) -> web.Response:
    query = msgspec.convert(dict(request.query), queries.JobFilter, strict=False)
    org_id, possible = _scope(request, query.org_id)
    if not possible:
        return json_response(api.JobPage(jobs=[]))
    async with request.app[POOL].acquire() as conn:
        page = await queries.list_jobs(conn, msgspec.structs.replace(query, org_id=org_id))
    return json_response(page)


async def get_batches(request: web.Request) -> web.Response:
    query = msgspec.convert(dict(request.query), queries.BatchFilter, strict=False)
    org_id, _ = _scope(request, None)
    async with request.app[POOL].acquire() as conn:
        batches = await queries.list_batches(conn, query.limit, org_id=org_id)
    return json_response(api.BatchPage(batches=batches))


async def get_queues(request: web.Request) -> web.Response:
    org_id, _ = _scope(request, None)
    aging_s = request.app[SCHEDULING].aging_interval_s
    async with request.app[POOL].acquire() as conn:
        return json_response(await queries.queue(conn, aging_s, org_id))


async def get_agents(request: web.Request) -> web.Response:
    org_id, _ = _scope(request, None)
    async with request.app[POOL].acquire() as conn:
        return json_response(await queries.list_agents(conn, org_id))


JOB_ROUTES = (
    Route(
        method="POST",
        path="/jobs",
        handler=post_jobs,
        summary='Submit one job, or several as {"jobs": [...]}; a known idempotency key '
        "answers 200 with the job it already made",
        body=(api.JobSpec, api.BulkSubmit),
        responses={201: (api.JobView, api.SubmitResponse), 200: api.JobView},
        errors=(400, 413, 422, 503),
        access=Role.SUBMIT,
    ),
    Route(
        method="GET",
        path="/jobs",
        handler=get_jobs,
        summary="Jobs, newest first, filtered and paged (from the read model)",
        query=queries.JobFilter,
        responses={200: api.JobPage},
        errors=(422,),
    ),
    Route(
        method="GET",
        path="/jobs/{job_id}",
        handler=get_job,
        summary="One job, folded from its own events (strongly consistent)",
        responses={200: api.JobView},
        errors=(404, 503),
    ),
    Route(
        method="GET",
        path="/jobs/{job_id}/logs",
        handler=get_job_logs,
        summary="A job attempt's test output as plain text; `follow=true` streams it live "
        "until the attempt ends",
        query=logs.LogQuery,
        responses={200: str},
        media_type=TEXT,
        errors=(404, 422, 503),
    ),
    Route(
        method="DELETE",
        path="/jobs/{job_id}",
        handler=delete_job,
        summary="Cancel a job that has not finished",
        responses={200: api.JobView},
        errors=(404, 409, 503),
        access=Role.SUBMIT,
    ),
    Route(
        method="POST",
        path="/jobs:cancel",
        handler=post_cancel,
        summary="Cancel every unfinished job of a batch, or of an org's app version "
        "(optionally on one target)",
        body=api.CancelMany,
        responses={200: api.CancelResult},
        errors=(400, 422, 503),
        access=Role.SUBMIT,
    ),
    Route(
        method="GET",
        path="/batches",
        handler=get_batches,
        summary="Batches, most recently active first",
        query=queries.BatchFilter,
        responses={200: api.BatchPage},
        errors=(422,),
    ),
    Route(
        method="GET",
        path="/queues",
        handler=get_queues,
        summary="Queued jobs per target and dispatch band (priority raised by aging), and "
        "the open batches with their band and the agents working on them",
        responses={200: api.QueueView},
    ),
    Route(
        method="GET",
        path="/agents",
        handler=get_agents,
        summary="Registered agents and what each is doing",
        responses={200: api.AgentPage},
    ),
)
