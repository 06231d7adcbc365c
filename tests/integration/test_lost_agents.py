"""An agent killed in the middle of a test: its job is requeued and finishes elsewhere."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

import msgspec

from agent import app as agent_app
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from infra import embedded

FAST = {"agent_ttl_s": 1.0, "ticket_ack_wait_s": 2.0}


async def start_agent(
    servers: embedded.Servers, *, test_s: str, ttl_s: str
) -> asyncio.subprocess.Process:
    """`qgjob agent --name doomed` in its own process (agent id `doomed-1`), so that the
    test can kill it for real."""
    env = {
        **os.environ,
        "QG_NATS_URL": servers.nats_url,
        "QG_LOG_FORMAT": "json",
        "QG_AGENT_TTL_S": ttl_s,
        "QG_TICKET_ACK_WAIT_S": "2",
    }
    argv = ["agent", "--target", "emulator", "--name", "doomed", "--install-s", "0"]
    return await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "cli", *argv, "--test-s", test_s],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_an_agent_restarted_under_its_id_gets_back_the_job_its_old_self_held(
    qg_servers: embedded.Servers,
) -> None:
    # A long heartbeat TTL: the restarted process keeps the key alive, so only its new
    # registration can tell that the job's holder is gone. The dead process's ticket comes
    # back after the sweep (every 3 s) has requeued the job: claimed sooner, the job would
    # be errored by the claim's reconciliation instead, for another reason.
    async with running_stack(qg_servers, [], agent_ttl_s=6.0, ticket_ack_wait_s=6.0) as stack:
        first = await start_agent(qg_servers, test_s="600", ttl_s="6")
        try:
            job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
            await stack.reach(job.job_id, "running", timeout_s=30)
        finally:
            first.kill()
            await first.wait()
        second = await start_agent(qg_servers, test_s="0", ttl_s="6")
        try:
            [view] = await stack.wait_all([job.job_id], timeout_s=60)
        finally:
            second.terminate()
            await second.wait()
    assert (view.status, view.agent_id, view.attempt) == ("passed", "doomed-1", 2)
    assert [(a.outcome, a.reason) for a in view.attempts] == [
        ("errored", "agent restarted"),
        ("passed", None),
    ]


async def test_a_killed_agents_job_is_requeued_and_passes_on_another_agent(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, [], **FAST) as stack:
        doomed = await start_agent(qg_servers, test_s="600", ttl_s="1")
        try:
            job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
            running = await stack.reach(job.job_id, "running", timeout_s=30)
        finally:
            doomed.kill()  # SIGKILL mid-test: no goodbye, no AgentStopped
            await doomed.wait()
        assert running.agent_id == "doomed-1"
        [(config, runner)] = simulated_agents(1, prefix="healthy")
        healthy = msgspec.structs.replace(config, ticket_ack_wait_s=2.0, heartbeat_ttl_s=1.0)
        stop = asyncio.Event()
        agents = asyncio.create_task(agent_app.run(qg_servers, [(healthy, runner)], stop))
        try:
            [view] = await stack.wait_all([job.job_id], timeout_s=60)
        finally:
            stop.set()
            await agents
        _, listed = await stack.request("GET", "/agents")
    assert (view.status, view.agent_id, view.attempt) == ("passed", "healthy-0", 2)
    assert view.events.count("job.errored") == 1
    assert {a["agent_id"]: a["status"] for a in listed["agents"]}["doomed-1"] == "lost"
