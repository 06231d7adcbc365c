"""What operators see against real servers: `/metrics` after a workload, and
`/openapi.json` agreeing with the router and with the API's validation."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from infra import api
from infra import events as ev
from tests.stack import JOB, Stack, running_stack, simulated_agents

if TYPE_CHECKING:
    from infra import embedded

ENDPOINTS = {
    "/jobs": {"get", "post"},
    "/jobs/{job_id}": {"get", "delete"},
    "/jobs/{job_id}/logs": {"get"},
    "/jobs:cancel": {"post"},
    "/ops/replay": {"post"},
    "/ops/verify": {"post"},
    "/tokens": {"get", "post"},
    "/tokens/{token_id}": {"delete"},
    "/batches": {"get"},
    "/queues": {"get"},
    "/agents": {"get"},
    "/health": {"get"},
    "/metrics": {"get"},
    "/openapi.json": {"get"},
}
REJECTED_CHANGES: list[dict[str, object]] = [
    {"target": "phone"},
    {"priority": 9},
    {"priority": "soon"},
    {"test_path": "a.js; rm -rf /"},
    {"test_path": "--config=evil.js"},
    {"org_id": ""},
    {"org_id": None},
    {"retries": -1},
    {"timeout_s": 0},
    {"colour": "red"},
]
LATENCY = "qgjob_http_request_duration_seconds"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(stack: Stack) -> Samples:
    async with stack.session.get(f"{stack.api_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def label_values(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in samples.items() if n == name}


async def openapi(stack: Stack) -> dict[str, Any]:
    status, doc = await stack.request("GET", "/openapi.json")
    assert status == 200
    assert isinstance(doc, dict)
    return doc


def resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def conforms(schema: dict[str, Any], value: Any, doc: dict[str, Any]) -> bool:
    """Whether `value` meets `schema`, for the JSON Schema keywords msgspec emits."""
    schema = resolve(schema, doc)
    if "anyOf" in schema:
        return any(conforms(s, value, doc) for s in schema["anyOf"])
    if "oneOf" in schema:
        return sum(conforms(s, value, doc) for s in schema["oneOf"]) == 1
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "null":
        return value is None
    if kind == "string":
        return (
            isinstance(value, str)
            and schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
            and re.search(schema.get("pattern", ""), value) is not None
        )
    if kind in ("integer", "number"):
        return (
            isinstance(value, int if kind == "integer" else int | float)
            and not isinstance(value, bool)
            and schema.get("minimum", value) <= value <= schema.get("maximum", value)
            and value > schema.get("exclusiveMinimum", float("-inf"))
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
            and all(conforms(schema["items"], item, doc) for item in value)
        )
    assert kind == "object", schema
    fields = schema.get("properties", {})
    return (
        isinstance(value, dict)
        and set(schema.get("required", ())) <= value.keys()
        and (schema.get("additionalProperties", True) or value.keys() <= fields.keys())
        and all(conforms(fields[k], v, doc) for k, v in value.items() if k in fields)
    )


async def test_metrics_count_what_a_workload_did(qg_servers: embedded.Servers) -> None:
    async with running_stack(qg_servers, simulated_agents(1)) as stack:
        tests = [("tests/a.spec.js", 0), ("tests/b.spec.js", 0), ("tests/fail.spec.js", 1)]
        jobs = [
            await stack.submit(app_version_id="v1", test_path=path, retries=retries)
            for path, retries in tests
        ]
        await stack.wait_all([job.job_id for job in jobs])
        # No agent serves devices: this one stays queued in band 4.
        await stack.submit(
            app_version_id="v2", test_path="tests/c.spec.js", target="device", priority=4
        )
        assert (await stack.request("GET", "/jobs/j00000000000000000000"))[0] == 404
        async with stack.session.get(f"{stack.api_url}/nothing/{jobs[0].job_id}") as response:
            assert response.status == 404
        await stack.settled()
        samples = await scrape(stack)
        doc = await openapi(stack)

    jobs_by_status = label_values(samples, "qgjob_jobs", "status")
    assert jobs_by_status == {s.value: 0 for s in ev.JobStatus} | {
        "passed": 2,
        "failed": 1,
        "queued": 1,
    }
    assert value(samples, "qgjob_job_retries") == 1  # the failing test's flaky retry
    assert label_values(samples, "qgjob_installs", "target") == {
        "emulator": 1,
        "device": 0,
        "browserstack": 0,
    }
    assert value(samples, "qgjob_installs_saved", target="emulator") == 2
    assert value(samples, "qgjob_pending_jobs", target="device", band="4") == 1
    assert total(samples, "qgjob_pending_jobs") == 1
    assert value(samples, "qgjob_oldest_pending_wait_seconds", target="device") > 0
    assert value(samples, "qgjob_oldest_pending_wait_seconds", target="emulator") == 0
    assert value(samples, "qgjob_batches_open") == 1
    assert total(samples, "qgjob_agents") == 1

    job_reads = value(
        samples, f"{LATENCY}_count", method="GET", route="/jobs/{job_id}", status="200"
    )
    assert job_reads >= len(jobs)
    assert (
        value(samples, f"{LATENCY}_count", method="GET", route="/jobs/{job_id}", status="404") == 1
    )
    # Routes are templates: ids and unknown paths never become series of their own.
    routes = set(label_values(samples, f"{LATENCY}_count", "route"))
    assert routes <= {*doc["paths"], "unmatched"}
    assert "unmatched" in routes


async def test_metrics_show_the_projectors_caught_up(stack: Stack) -> None:
    await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
    await stack.settled()
    samples = await scrape(stack)
    assert value(samples, "qgjob_projector_lag") == 0
    assert value(samples, "qgjob_jobs", status="queued") == 1
    assert label_values(samples, "qgjob_agents", "status") == {}


async def test_openapi_documents_every_endpoint_as_the_router_serves_it(stack: Stack) -> None:
    doc = await openapi(stack)
    assert doc["openapi"] == "3.1.0"
    assert {path: set(operations) for path, operations in doc["paths"].items()} == ENDPOINTS
    for path, operations in doc["paths"].items():
        async with stack.session.patch(stack.api_url + re.sub(r"{\w+}", "j1", path)) as response:
            assert response.status == 405, path
            allowed = {m.strip().lower() for m in response.headers["Allow"].split(",")}
            # aiohttp answers HEAD wherever it answers GET.
            served = set(operations) | ({"head"} if "get" in operations else set())
            assert allowed == served, path


@pytest.mark.parametrize("path", ["/jobs", "/batches"])
async def test_documented_query_parameters_are_accepted_and_others_refused(
    stack: Stack, path: str
) -> None:
    doc = await openapi(stack)
    for parameter in doc["paths"][path]["get"]["parameters"]:
        schema = resolve(parameter["schema"], doc)
        example = schema["enum"][0] if "enum" in schema else schema.get("minimum", 1)
        status, body = await stack.request("GET", f"{path}?{parameter['name']}={example}")
        assert status == 200, (parameter, body)
    status, body = await stack.request("GET", f"{path}?colour=red")
    assert (status, body["field"]) == (422, "colour")


async def test_the_documented_job_schema_rejects_what_the_api_rejects(stack: Stack) -> None:
    doc = await openapi(stack)
    job_spec = doc["components"]["schemas"]["JobSpec"]
    assert set(resolve(job_spec["properties"]["target"], doc)["enum"]) == set(ev.Target)
    priority_names = job_spec["properties"]["priority"]["anyOf"][1]["enum"]
    assert set(priority_names) == set(api.PRIORITY_NAMES)

    submit = doc["paths"]["/jobs"]["post"]
    request_schema = submit["requestBody"]["content"]["application/json"]["schema"]
    rejected = [
        *({**JOB, **change} for change in REJECTED_CHANGES),
        {k: v for k, v in JOB.items() if k != "target"},
        {"jobs": []},
        {"jobs": [JOB, {**JOB, "priority": 0}]},
        {"jobs": [JOB], "org_id": "qualgent"},
    ]
    for body in rejected:
        status, answer = await stack.request("POST", "/jobs", body)
        assert status == 422, (body, answer)
        assert not conforms(request_schema, body, doc), body
    for body in ({**JOB, "priority": "urgent", "retries": 2}, {"jobs": [JOB]}):
        assert conforms(request_schema, body, doc), body
        status, answer = await stack.request("POST", "/jobs", body)
        assert status in (200, 201), answer
        response_schema = submit["responses"][str(status)]["content"]["application/json"]
        assert conforms(response_schema["schema"], answer, doc), answer
