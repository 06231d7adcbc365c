"""The CLI's API client tries again after a transient failure, only when that is safe."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest
from aiohttp import web

from cli.client import ApiClient, ApiError
from infra import api
from infra.events import JobStatus, Target
from tests.unit.factories import T0

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

SPEC = api.JobSpec(org_id="o", app_version_id="v1", test_path="t.js", target=Target.EMULATOR)


class Flaky:
    """A server that answers 429 (with Retry-After) `failures` times, then 201."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts = 0

    async def post(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.posts <= self.failures:
            body = msgspec.json.encode(api.ErrorBody(error="too many requests"))
            return web.Response(status=429, body=body, headers={"Retry-After": "0"})
        spec = msgspec.json.decode(await request.read(), type=api.JobSpec)
        view = api.JobView(
            job_id="j1", org_id=spec.org_id, app_version_id=spec.app_version_id,
            test_path=spec.test_path, target=spec.target, priority=3, status=JobStatus.QUEUED,
            batch_id="b1", attempt=1, retries=0, timeout_s=600, submitted_at=T0,
            idempotency_key=spec.idempotency_key,
        )  # fmt: skip
        return web.Response(status=201, body=msgspec.json.encode(view))


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Flaky]]:
    flaky = Flaky(failures=2)
    app = web.Application()
    app.router.add_post("/jobs", flaky.post)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", flaky
    finally:
        await runner.cleanup()


async def test_a_keyed_submit_is_retried_after_429(server: tuple[str, Flaky]) -> None:
    url, flaky = server
    async with ApiClient(url) as client:
        view = await client.submit(msgspec.structs.replace(SPEC, idempotency_key="k1"))
    assert (view.job_id, flaky.posts) == ("j1", 3)


async def test_a_submit_without_a_key_is_never_repeated(server: tuple[str, Flaky]) -> None:
    url, flaky = server
    async with ApiClient(url) as client:
        with pytest.raises(ApiError) as caught:
            await client.submit(SPEC)
    assert (caught.value.status, caught.value.retry_after_s, flaky.posts) == (429, 0.0, 1)
