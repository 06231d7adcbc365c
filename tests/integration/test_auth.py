"""Org isolation and tokens, endpoint by endpoint: each org's token sees and touches only
its own jobs (another org's job answers 404, as a missing one does), no token or a
revoked one gets 401, an admin token sees everything; plus roles and the rate limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from tests.stack import JOB, running_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from infra import embedded
    from tests.stack import Stack

ORG_A = {**JOB, "org_id": "acme"}
ORG_B = {**JOB, "org_id": "initech"}


@dataclass
class World:
    stack: Stack
    tokens: dict[str, str | None]
    """Caller name -> bearer token (None: no Authorization header)."""
    job: dict[str, Any]
    """A job of org A."""

    async def call(
        self, who: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        token = self.tokens[who]
        headers = {"Content-Type": "application/json"}
        headers["Authorization"] = f"Bearer {token}" if token else ""
        data = None if body is None else msgspec.json.encode(body)
        session = self.stack.session
        async with session.request(
            method, self.stack.api_url + path, data=data, headers=headers
        ) as response:
            raw = await response.read()
            parsed = (
                msgspec.json.decode(raw) if response.content_type == "application/json" else raw
            )
            return response.status, parsed, dict(response.headers)


async def token(stack: Stack, **spec: Any) -> str:
    status, body = await stack.request("POST", "/tokens", spec)
    assert status == 201, body
    return str(body["token"])


@pytest.fixture
async def world(qg_servers: embedded.Servers) -> AsyncIterator[World]:
    async with running_stack(qg_servers, []) as stack:
        tokens: dict[str, str | None] = {
            "own": await token(stack, org_id="acme", role="submit", name="ci"),
            "other": await token(stack, org_id="initech", role="submit"),
            "reader": await token(stack, org_id="acme", role="read"),
            "revoked": await token(stack, org_id="acme", role="submit"),
            "admin": await token(stack, role="admin"),
            "none": None,
        }
        _, listed = await stack.request("GET", "/tokens")
        [revoked] = [t for t in listed["tokens"] if t["token_id"] in str(tokens["revoked"])]
        status, _ = await stack.request("DELETE", f"/tokens/{revoked['token_id']}")
        assert status == 200
        world = World(stack=stack, tokens=tokens, job={})
        status, world.job, _ = await world.call("own", "POST", "/jobs", ORG_A)
        assert status == 201
        assert (await world.call("other", "POST", "/jobs", ORG_B))[0] == 201
        await stack.settled()
        yield world


DENIED = {"none": 401, "revoked": 401}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/jobs/{job}", {"own": 200, "reader": 200, "other": 404, "admin": 200}),
        ("GET", "/jobs/{job}/logs", {"own": 200, "reader": 200, "other": 404, "admin": 200}),
        ("DELETE", "/jobs/{job}", {"reader": 403, "other": 404, "admin": 200}),
        ("GET", "/jobs", {"own": 200, "reader": 200, "other": 200, "admin": 200}),
        ("GET", "/batches", {"own": 200, "other": 200, "admin": 200}),
        ("GET", "/queues", {"own": 200, "other": 200, "admin": 200}),
        ("GET", "/agents", {"own": 200, "other": 200, "admin": 200}),
        ("POST", "/ops/verify", {"own": 403, "reader": 403, "admin": 200}),
        ("GET", "/tokens", {"own": 403, "other": 403, "admin": 200}),
        ("GET", "/health", {"none": 200, "revoked": 200, "own": 200}),
        ("GET", "/openapi.json", {"none": 200, "own": 200}),
        ("GET", "/metrics", {"none": 200}),
    ],
)
async def test_every_endpoint_answers_each_caller_as_its_org_and_role_allow(
    world: World, method: str, path: str, expected: dict[str, int]
) -> None:
    if path.startswith("/jobs") or path.startswith("/ops") or path == "/tokens":
        expected = {**DENIED, **expected}
    for who, status in expected.items():
        got, body, headers = await world.call(who, method, path.format(job=world.job["job_id"]))
        assert got == status, (who, body)
        if got == 401:
            assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_lists_show_only_the_callers_org(world: World) -> None:
    a_job, a_batch = world.job["job_id"], world.job["batch_id"]
    for who, sees_a, sees_b in [
        ("own", True, False),
        ("other", False, True),
        ("admin", True, True),
    ]:
        _, page, _ = await world.call(who, "GET", "/jobs")
        orgs = {job["org_id"] for job in page["jobs"]}
        assert ("acme" in orgs, "initech" in orgs) == (sees_a, sees_b), who
        _, batches, _ = await world.call(who, "GET", "/batches")
        assert (a_batch in {b["batch_id"] for b in batches["batches"]}) == sees_a, who
        _, queue, _ = await world.call(who, "GET", "/queues")
        assert sum(band["pending"] for band in queue["bands"]) == sees_a + sees_b, who
    _, asked, _ = await world.call("other", "GET", "/jobs?org_id=acme")
    assert asked["jobs"] == [], "asking for another org's jobs finds none"
    assert a_job


async def test_an_org_token_cannot_submit_or_cancel_for_another_org(world: World) -> None:
    status, body, _ = await world.call("other", "POST", "/jobs", ORG_A)
    assert (status, body["error"]) == (403, "this token may submit jobs for initech only")
    bulk = {"jobs": [ORG_B, ORG_A]}
    assert (await world.call("other", "POST", "/jobs", bulk))[0] == 403
    batch = {"batch_id": world.job["batch_id"]}
    _, cancelled, _ = await world.call("other", "POST", "/jobs:cancel", batch)
    assert cancelled["cancelled"] == []
    _, job, _ = await world.call("own", "GET", f"/jobs/{world.job['job_id']}")
    assert job["status"] == "queued", "the other org's cancel touched nothing"
    assert (await world.call("reader", "POST", "/jobs", ORG_A))[0] == 403
    _, cancelled, _ = await world.call("own", "POST", "/jobs:cancel", {"app_version_id": "xyz123"})
    assert [j["job_id"] for j in cancelled["cancelled"]] == [world.job["job_id"]]


async def test_tokens_are_shown_once_and_only_their_hash_is_kept(world: World) -> None:
    _, listed, _ = await world.call("admin", "GET", "/tokens")
    text = msgspec.json.encode(listed).decode()
    for secret in world.tokens.values():
        if secret:
            # qgt_<id>_<secret>: the secret itself may contain "_".
            assert secret.split("_", 2)[2] not in text
    assert {t["role"] for t in listed["tokens"]} >= {"submit", "read", "admin"}
    status, body, _ = await world.call("admin", "POST", "/tokens", {"role": "submit"})
    assert (status, body["field"]) == (422, "org_id")


async def test_a_token_over_its_rate_limit_gets_429_and_nothing_accepted_is_lost(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, [], rate_limit_rps=1.0, rate_limit_burst=3.0) as stack:
        answers = [
            await stack.request("POST", "/jobs", {**JOB, "test_path": f"t{i}.js"}) for i in range(5)
        ]
        accepted = [body["job_id"] for status, body in answers if status == 201]
        limited = [body for status, body in answers if status == 429]
        assert len(accepted) >= 3
        assert limited
        assert "retry after" in limited[0]["error"]
        async with stack.session.post(stack.api_url + "/jobs", json=JOB) as response:
            if response.status == 429:
                assert int(response.headers["Retry-After"]) >= 1
    async with running_stack(qg_servers, []) as stack:
        for job_id in accepted:
            assert (await stack.job(job_id)).status == "queued"
