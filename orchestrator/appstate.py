"""What every HTTP handler reaches: the app's typed state and the JSON answer helpers."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from nats.aio.client import Client

from infra import api, db, settings
from orchestrator.auth import TokenRegistry
from orchestrator.service import JobService

SERVICE = web.AppKey("service", JobService)
POOL = web.AppKey("pool", db.Pool)
NATS = web.AppKey("nats", Client)
OPENAPI = web.AppKey("openapi", bytes)
TOKENS = web.AppKey("tokens", TokenRegistry)
SCHEDULING = web.AppKey("scheduling", settings.Scheduling)
"""The grouping projector's policy: `GET /queues` shows bands by its aging interval."""
STOPPING = web.AppKey("stopping", asyncio.Event)
"""Set when the server shuts down, so that long answers (a followed log) end."""
TEXT = "text/plain"


def json_response(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


def error_response(status: int, message: str, field: str | None = None) -> web.Response:
    return json_response(api.ErrorBody(error=message, field=field), status)
