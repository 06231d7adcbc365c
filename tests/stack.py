"""An in-process qgjob stack for tests and benchmarks: orchestrator, projectors and
simulated agents as tasks on the test's event loop, against real servers."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec

from agent import app as agent_app
from agent.runners.simulated import SimulatedConfig
from agent.worker import AgentConfig
from infra import api, embedded, settings, tokens
from infra import events as ev
from infra import nats as qnats
from infra.eventlog import EventLog
from infra.events import TERMINAL_STATUSES
from orchestrator import app as orchestrator_app
from projections import app as projections_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from agent.runners import Runner


JOB = {
    "org_id": "qualgent",
    "app_version_id": "xyz123",
    "test_path": "tests/a.spec.js",
    "target": "emulator",
}
"""A valid `POST /jobs` body for tests to vary."""


READ_MODELS = len(projections_app.read_models())


class Stack:
    """A running stack and a small HTTP client for it."""

    def __init__(self, api_url: str, session: aiohttp.ClientSession) -> None:
        self.api_url = api_url
        self.session = session

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else msgspec.json.encode(body)
        async with self.session.request(
            method, self.api_url + path, data=data, headers={"Content-Type": "application/json"}
        ) as response:
            return response.status, msgspec.json.decode(await response.read())

    async def submit(self, **fields: Any) -> api.JobView:
        spec = {"org_id": "qualgent", "target": "emulator", **fields}
        status, body = await self.request("POST", "/jobs", spec)
        assert status in (200, 201), body
        return msgspec.convert(body, api.JobView)

    async def job(self, job_id: str) -> api.JobView:
        """The job's view; a test polling many jobs for long may meet the rate limit,
        and then tries again a second later (its `Retry-After`)."""
        status, body = await self.request("GET", f"/jobs/{job_id}")
        while status == 429:
            await asyncio.sleep(1.0)
            status, body = await self.request("GET", f"/jobs/{job_id}")
        assert status == 200, body
        return msgspec.convert(body, api.JobView)

    async def wait_all(self, job_ids: list[str], timeout_s: float = 60.0) -> list[api.JobView]:
        """Poll until every job is terminal; fails the test after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while True:
                views = [await self.job(job_id) for job_id in job_ids]
                if all(v.status in TERMINAL_STATUSES for v in views):
                    return views
                await asyncio.sleep(0.05)

    async def wait_healthy(self, check: Callable[[], None]) -> None:
        """Until `GET /health` answers 200; `check` raises when a component died first."""
        while True:
            check()
            with contextlib.suppress(aiohttp.ClientError):
                status, _ = await self.request("GET", "/health")
                if status == 200:
                    return
            await asyncio.sleep(0.05)

    async def reach(self, job_id: str, status: str, timeout_s: float = 10.0) -> api.JobView:
        """Poll until the job has `status`."""
        async with asyncio.timeout(timeout_s):
            while True:
                view = await self.job(job_id)
                if view.status == status:
                    return view
                await asyncio.sleep(0.02)

    async def settled(self, timeout_s: float = 10.0) -> None:
        """Wait until every read-model projector has applied every stored event."""
        async with asyncio.timeout(timeout_s):
            while True:
                _, health = await self.request("GET", "/health")
                # All three read models follow the stream, and none trails it.
                if health["projectors"] == READ_MODELS and health["projector_lag"] == 0:
                    return
                await asyncio.sleep(0.05)


async def admin_token(servers: embedded.Servers) -> str:
    """A new admin token for the stack on `servers` (streams declared first)."""
    nc = await qnats.connect(servers.nats_url, name="qgjob-test")
    try:
        await qnats.declare_streams(nc.jetstream())
        return await tokens.new_admin(EventLog(nc), "tests")
    finally:
        await qnats.close(nc)


def _raise_if_died(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done():
            task.result()


def simulated_agents(
    count: int,
    targets: tuple[ev.Target, ...] = (ev.Target.EMULATOR,),
    runner: SimulatedConfig | None = None,
    prefix: str = "agent",
) -> list[tuple[AgentConfig, Runner]]:
    config = runner or SimulatedConfig(install_s=0.05, test_s=0.01, fail_rate=0.0, seed=7)
    return [
        (
            AgentConfig(agent_id=ev.AgentId(f"{prefix}-{i}"), targets=targets),
            agent_app.simulated_runner(config, i),
        )
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def running_stack(
    servers: embedded.Servers,
    agents: list[tuple[AgentConfig, Runner]],
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Start the components (with `overrides` of their Settings), wait for the API,
    yield; on exit stop the agents, then the rest (the agents record their goodbyes
    through the orchestrator's append gate)."""
    port = embedded.free_port()
    config = msgspec.structs.replace(settings.Settings(), api_port=port, **overrides)
    stop, stop_agents = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(orchestrator_app.run(config, servers, stop)),
        asyncio.create_task(projections_app.run(config, servers, stop)),
    ]
    token = await admin_token(servers)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        stack = Stack(f"http://127.0.0.1:{port}", session)
        async with asyncio.timeout(30):
            await stack.wait_healthy(partial(_raise_if_died, tasks))
        agent_tasks: list[asyncio.Task[None]] = []
        if agents:
            agent_tasks.append(asyncio.create_task(agent_app.run(servers, agents, stop_agents)))
        try:
            yield stack
        finally:
            stop_agents.set()
            try:
                await asyncio.gather(*agent_tasks)
            finally:
                stop.set()
                await asyncio.gather(*tasks)
