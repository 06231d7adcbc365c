"""The OpenAPI 3.1 document of the HTTP API, generated from the route table that the router
also serves and from the msgspec Structs the routes exchange, so the two cannot drift."""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from importlib import metadata
from typing import TYPE_CHECKING, Any

import msgspec

from infra import api
from infra.events import Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from aiohttp import web

JSON = "application/json"
_PATH_PARAMETER = re.compile(r"{(\w+)}")

Body = type[Any] | tuple[type[Any], ...]
"""A body's type, or a tuple of Structs of which every body is exactly one."""


@dataclass(frozen=True, kw_only=True)
class Route:
    """One operation: how the router serves it and how the document describes it."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    responses: dict[int, Body]
    """Answers other than errors, by status."""
    errors: tuple[int, ...] = ()
    """Statuses answered with an `ErrorBody`."""
    body: Body | None = None
    body_required: bool = True
    query: type[msgspec.Struct] | None = None
    """A Struct whose fields are the query parameters."""
    media_type: str = JSON
    """Of the answers in `responses`; errors are always JSON."""
    access: Role | None = Role.READ
    """The least token role that may call it; None: no token needed."""


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI document of `routes`, with every Struct they use as a component."""
    types: list[type[Any]] = [api.ErrorBody, *(t for r in routes for t in _types_of(r))]
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    schema_of = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, schema_of, components)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "qgjob",
            "version": metadata.version("qgjob"),
            "description": "Submit AppWright test jobs, follow them, and watch the queues.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _alternatives(body: Body) -> tuple[type[Any], ...]:
    return body if isinstance(body, tuple) else (body,)


def _types_of(route: Route) -> list[type[Any]]:
    bodies = [*route.responses.values(), *(b for b in (route.body, route.query) if b is not None)]
    return [t for body in bodies for t in _alternatives(body)]


def _schema(body: Body, schema_of: dict[type[Any], Any]) -> Any:
    if isinstance(body, tuple):
        # Structs that forbid each other's required fields: exactly one matches.
        return {"oneOf": [schema_of[t] for t in body]}
    return schema_of[body]


def _operation(
    route: Route, schema_of: dict[type[Any], Any], components: dict[str, Any]
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.handler.__name__, "summary": route.summary}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAMETER.findall(route.path)
    ]
    if route.query is not None:
        name = schema_of[route.query]["$ref"].rsplit("/", 1)[-1]
        parameters += _query_parameters(components[name])
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        content = {JSON: {"schema": _schema(route.body, schema_of)}}
        operation["requestBody"] = {"required": route.body_required, "content": content}
    answers = [(status, body, route.media_type) for status, body in route.responses.items()]
    errors = route.errors if route.access is None else (*route.errors, 401, 403, 429)
    answers += [(status, api.ErrorBody, JSON) for status in sorted(set(errors))]
    if route.access is None:
        operation["security"] = []
    operation["responses"] = {
        str(status): {
            "description": HTTPStatus(status).phrase,
            "content": {media_type: {"schema": _schema(body, schema_of)}},
        }
        for status, body, media_type in answers
    }
    return operation


def _query_parameters(struct_schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(struct_schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _not_null(schema)}
        for name, schema in struct_schema["properties"].items()
    ]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its `null`: a query string has no nulls."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf" and value is not None}
    return {**rest, **options[0]}
