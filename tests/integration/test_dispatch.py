"""Dispatch through real streams and agents: grouping, run order, late joiners."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from agent.runners.simulated import SimulatedConfig
from infra import events as ev
from infra import nats as qnats
from infra import rpc
from orchestrator.claims import CLAIM_LIMIT
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from nats.aio.client import Client

    from infra import embedded


async def test_a_batch_runs_in_priority_then_submission_order(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, []) as stack:
        jobs = [
            await stack.submit(app_version_id="v1", test_path=f"tests/t{i}.spec.js", priority=p)
            for i, p in enumerate([1, 3, 5, 3, 1])
        ]
        await stack.settled()
    # The agent starts only now, so it finds all five pending in one batch.
    async with running_stack(qg_servers, simulated_agents(1)) as stack:
        views = await stack.wait_all([j.job_id for j in jobs])
    started = sorted(views, key=lambda v: v.started_at or v.submitted_at)
    assert [v.test_path for v in started] == [
        "tests/t2.spec.js",
        "tests/t1.spec.js",
        "tests/t3.spec.js",
        "tests/t0.spec.js",
        "tests/t4.spec.js",
    ]


async def test_jobs_arriving_while_a_batch_runs_join_it_without_a_second_install(
    qg_servers: embedded.Servers,
) -> None:
    # An install of three tests' length: sharing three jobs with the idle agent would
    # not make them finish sooner (`projections.splits`), so that agent stays out.
    slow = SimulatedConfig(install_s=0.6, test_s=0.2, jitter=0, fail_rate=0, seed=1)
    async with running_stack(qg_servers, simulated_agents(2, runner=slow)) as stack:
        first = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        await stack.reach(first.job_id, "running")
        late = [
            await stack.submit(app_version_id="v1", test_path=f"tests/l{i}.spec.js")
            for i in range(3)
        ]
        views = await stack.wait_all([first.job_id, *(j.job_id for j in late)])
        await stack.settled()
        _, batches = await stack.request("GET", "/batches")
    assert {v.status for v in views} == {"passed"}
    assert {v.agent_id for v in views} == {views[0].agent_id}, "one device ran them all"
    assert [b["installs"] for b in batches["batches"]] == [1]


async def test_targets_never_share_a_batch_or_an_agent(qg_servers: embedded.Servers) -> None:
    agents = [
        *simulated_agents(1, (ev.Target.EMULATOR,), prefix="emu"),
        *simulated_agents(1, (ev.Target.DEVICE,), prefix="dev"),
    ]
    async with running_stack(qg_servers, agents) as stack:
        emu = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        dev = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js", target="device")
        views = await stack.wait_all([emu.job_id, dev.job_id])
    assert views[0].batch_id != views[1].batch_id
    assert (views[0].agent_id, views[1].agent_id) == ("emu-0", "dev-0")


async def test_a_failing_test_with_retries_runs_again_then_fails(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, simulated_agents(1)) as stack:
        job = await stack.submit(
            app_version_id="v1", test_path="tests/flaky_fail.spec.js", retries=2
        )
        [view] = await stack.wait_all([job.job_id])
    assert view.status == "failed"
    assert view.attempt == 3
    assert view.events.count("job.retried") == 2
    assert view.events.count("job.failed") == 1


async def test_install_failures_are_retried_until_the_job_is_dead(
    qg_servers: embedded.Servers,
) -> None:
    broken = SimulatedConfig(install_s=0, test_s=0, install_fail_rate=1.0, seed=3)
    async with running_stack(qg_servers, simulated_agents(1, runner=broken)) as stack:
        job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        [view] = await stack.wait_all([job.job_id])
    assert view.status == "dead"
    assert view.events.count("job.errored") == 3
    assert "install failed" in (view.reason or "")


async def test_an_install_that_hangs_is_an_infrastructure_error(
    qg_servers: embedded.Servers,
) -> None:
    hangs = SimulatedConfig(install_s=60, test_s=0, jitter=0, seed=5)
    [(config, runner)] = simulated_agents(1, runner=hangs)
    agent = msgspec.structs.replace(config, install_timeout_s=0.2, max_attempts=1)
    async with running_stack(qg_servers, [(agent, runner)]) as stack:
        job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        [view] = await stack.wait_all([job.job_id])
    assert view.status == "dead"
    assert "install timed out after 0.2 s" in (view.reason or "")


async def test_cancelling_a_running_job_stops_its_test_and_the_agent_moves_on(
    qg_servers: embedded.Servers,
) -> None:
    long_tests = SimulatedConfig(install_s=0, test_s=60, jitter=0, fail_rate=0, seed=2)
    async with running_stack(qg_servers, simulated_agents(1, runner=long_tests)) as stack:
        job = await stack.submit(app_version_id="v1", test_path="tests/long.spec.js")
        await stack.reach(job.job_id, "running")
        status, body = await stack.request("DELETE", f"/jobs/{job.job_id}")
        assert (status, body["status"]) == (200, "cancelled")
        await stack.settled()
        _, agents = await stack.request("GET", "/agents")
        # The 60 s test was stopped: the only agent takes the next job at once.
        nxt = await stack.submit(app_version_id="v2", test_path="tests/next.spec.js")
        await stack.reach(nxt.job_id, "running")
        await stack.request("DELETE", f"/jobs/{nxt.job_id}")
    assert agents["agents"][0]["jobs_run"] == 0, "the cancelled test never got a verdict"
    assert body["events"][-1] == "job.cancelled"


async def test_a_malformed_ticket_is_dropped_and_the_agent_keeps_working(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, simulated_agents(1)) as stack:
        nc = await qnats.connect(qg_servers.nats_url, "test")
        try:
            await nc.jetstream().publish(ev.work_subject(ev.Target.EMULATOR, 5), b"not a ticket")
        finally:
            await nc.close()
        job = await stack.submit(app_version_id="v1", test_path="tests/a.spec.js")
        [view] = await stack.wait_all([job.job_id])
    assert view.status == "passed"


async def test_agents_claiming_one_batch_at_the_same_moment_each_get_its_jobs(
    qg_servers: embedded.Servers,
) -> None:
    """Agents sharing a batch choose the same first jobs; the claim that loses those
    races takes the next ones instead of finding the batch drained."""
    async with running_stack(qg_servers, []) as stack:
        jobs = [
            await stack.submit(app_version_id="v1", test_path=f"tests/t{i}.spec.js")
            for i in range(3 * CLAIM_LIMIT)
        ]
        await stack.settled()
        batch_id = (await stack.job(jobs[0].job_id)).batch_id
        nc = await qnats.connect(qg_servers.nats_url, "test")
        try:
            answers = await asyncio.gather(
                *(claim(nc, batch_id, ev.AgentId(f"agent-{n}")) for n in range(3))
            )
        finally:
            await nc.close()
    assert [len(a.jobs) for a in answers] == [CLAIM_LIMIT] * 3
    claimed = {job.state.job_id for answer in answers for job in answer.jobs}
    assert claimed == {job.job_id for job in jobs}, "no job was handed out twice"


async def claim(nc: Client, batch_id: str, agent_id: ev.AgentId) -> rpc.ClaimResponse:
    request = rpc.ClaimRequest(
        agent_id=agent_id, batch_id=ev.BatchId(batch_id), ticket=1, as_of_seq=0
    )
    reply = await nc.request(ev.CLAIM_SUBJECT, msgspec.json.encode(request), timeout=10)
    return msgspec.json.decode(reply.data, type=rpc.ClaimResponse)
