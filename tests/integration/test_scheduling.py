"""Scheduling through real streams, projectors and agents (simulated runner, durations
scaled down): band order, aging, preemption between tests, install affinity, late
joiners, org limits, target isolation and splits. Assertions are on order and counts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import TYPE_CHECKING

from agent.runners.simulated import SimulatedConfig
from infra import events as ev
from infra import nats as qnats
from infra import settings
from infra.eventlog import EventLog
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import pytest

    from agent.runners import Runner
    from agent.worker import AgentConfig
    from infra import api, embedded
    from tests.stack import Stack


@contextlib.asynccontextmanager
async def scheduled_stack(
    servers: embedded.Servers,
    agents: list[tuple[AgentConfig, Runner]],
    monkeypatch: pytest.MonkeyPatch,
    **variables: str,
) -> AsyncIterator[Stack]:
    """`running_stack` with scheduling settings given as `QG_*` variables, which the
    grouping projector reads, and as the `scheduling` setting they make."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    policy = settings.scheduling_from_env(variables)
    async with running_stack(servers, agents, scheduling=policy) as stack:
        yield stack


def runner(install_s: float, test_s: float) -> SimulatedConfig:
    return SimulatedConfig(install_s=install_s, test_s=test_s, jitter=0, fail_rate=0, seed=1)


def run_order(views: list[api.JobView]) -> list[str]:
    started = sorted(views, key=lambda v: v.started_at or v.submitted_at)
    return [v.test_path for v in started]


async def installs(stack: Stack) -> dict[str, int]:
    """Installs per app version, from `GET /batches`."""
    await stack.settled()
    _, body = await stack.request("GET", "/batches")
    return {b["app_version_id"]: b["installs"] for b in body["batches"]}


async def newcomer_while_running(
    stack: Stack, priority: int
) -> tuple[list[api.JobView], dict[str, int]]:
    """Five priority-1 tests of build `run`; once the first runs, one test of build `new`
    at `priority`. Every job's view (submission order) and the installs per build."""
    running = [
        await stack.submit(app_version_id="run", test_path=f"tests/r{i}.spec.js", priority=1)
        for i in range(5)
    ]
    await stack.reach(running[0].job_id, "running")
    new = await stack.submit(app_version_id="new", test_path="tests/new.spec.js", priority=priority)
    views = await stack.wait_all([j.job_id for j in [*running, new]])
    return views, await installs(stack)


def assert_ran_to_its_end_first(views: list[api.JobView], per_build: dict[str, int]) -> None:
    """`newcomer_while_running`'s batch ran to its end, then the newcomer: nothing was
    given back, and each build was installed once."""
    assert run_order(views) == [*(f"tests/r{i}.spec.js" for i in range(5)), "tests/new.spec.js"]
    assert not any("job.released" in v.events for v in views), "a batch was given back"
    assert per_build == {"run": 1, "new": 1}


async def test_a_free_agent_takes_the_highest_band_first(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with scheduled_stack(qg_servers, [], monkeypatch) as stack:
        jobs = [
            await stack.submit(app_version_id=f"v{p}", test_path=f"tests/p{p}.spec.js", priority=p)
            for p in (1, 3, 5, 2, 4)
        ]
        await stack.settled()
    # The agent starts only now, so it finds all five bands waiting.
    async with scheduled_stack(qg_servers, simulated_agents(1), monkeypatch) as stack:
        views = await stack.wait_all([j.job_id for j in jobs])
    assert run_order(views) == [f"tests/p{p}.spec.js" for p in (5, 4, 3, 2, 1)]


async def test_a_priority_1_batch_still_runs_under_a_constant_stream_of_priority_4_work(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(1, runner=runner(install_s=0.05, test_s=0.05))
    async with scheduled_stack(qg_servers, agents, monkeypatch, QG_AGING_INTERVAL_S="0.4") as stack:
        low = await stack.submit(
            org_id="small", app_version_id="low", test_path="tests/low.spec.js", priority=1
        )
        stream: list[api.JobView] = []
        async with asyncio.timeout(30):
            # Faster than the one agent can run them: the priority-4 work never runs out.
            while (await stack.job(low.job_id)).status != "passed":
                stream.append(
                    await stack.submit(
                        org_id="big",
                        app_version_id=f"b{len(stream)}",
                        test_path="tests/urgent.spec.js",
                        priority=4,
                    )
                )
                await asyncio.sleep(0.04)
        low_view = await stack.job(low.job_id)
        views = [await stack.job(j.job_id) for j in stream]
    assert low_view.started_at is not None
    overtaken = [
        v
        for v in views
        if v.submitted_at < low_view.started_at
        and (v.started_at is None or v.started_at > low_view.started_at)
    ]
    assert overtaken, "waiting lifted the priority-1 batch above priority-4 work queued before"
    assert any(v.status == "queued" for v in views), "the stream had not run dry"


async def test_an_urgent_job_starts_when_the_current_test_ends_not_the_whole_batch(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(1, runner=runner(install_s=0.05, test_s=0.3))
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        views, per_build = await newcomer_while_running(stack, priority=5)
    assert run_order(views) == [
        "tests/r0.spec.js",
        "tests/new.spec.js",
        *(f"tests/r{i}.spec.js" for i in range(1, 5)),
    ]
    waited = views[1:5]  # given back unstarted, or still queued when the claim was made
    assert any("job.released" in v.events for v in waited), "nothing was given back"
    assert all(v.attempt == 1 for v in waited), "a job given back had an attempt counted"
    assert {v.status for v in views} == {"passed"}
    assert per_build == {"run": 1, "new": 1}, "the agent came back to the build it had"


async def test_a_batch_set_aside_for_short_urgent_work_resumes_on_the_same_device(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An urgent test takes less time than an install: the agent sets its batch aside
    (the jobs it had not started go back), runs the urgent test, and comes back to the
    batch with its ticket: no second ticket, no second install."""
    agents = simulated_agents(1, runner=runner(install_s=0.8, test_s=0.1))
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        views, per_build = await newcomer_while_running(stack, priority=5)
    nc = await qnats.connect(qg_servers.nats_url, "test")
    try:
        batch_events = [e for _, e in await EventLog(nc).read(ev.batch_subject(views[0].batch_id))]
    finally:
        await qnats.close(nc)
    assert run_order(views) == [
        "tests/r0.spec.js",
        "tests/new.spec.js",
        *(f"tests/r{i}.spec.js" for i in range(1, 5)),
    ]
    assert all("job.released" in v.events and v.attempt == 1 for v in views[1:5])
    assert per_build == {"run": 1, "new": 1}
    [set_aside] = [e for e in batch_events if isinstance(e, ev.BatchYielded)]
    assert set_aside.returns
    tickets = {e.ticket for e in batch_events if isinstance(e, ev.BatchClaimed | ev.BatchDrained)}
    assert tickets == {1}, "the agent came back with the ticket it had"


async def test_the_last_few_jobs_of_a_batch_run_before_long_urgent_work_not_install_again(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests left take less time than the install another agent would make for
    them, and the urgent batch (ten jobs when its ticket was issued) more than an
    install: the agent runs its own first."""
    agents = simulated_agents(1, runner=runner(install_s=0.8, test_s=0.1))
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        running = [
            await stack.submit(app_version_id="run", test_path=f"tests/r{i}.spec.js", priority=1)
            for i in range(5)
        ]
        await stack.reach(running[0].job_id, "running")
        new = [
            await stack.submit(
                app_version_id="new", test_path=f"tests/n{i}.spec.js", priority=5 if i == 9 else 1
            )
            for i in range(10)
        ]
        views = await stack.wait_all([j.job_id for j in [*running, *new]])
        per_build = await installs(stack)
    assert run_order(views)[:5] == [f"tests/r{i}.spec.js" for i in range(5)]
    assert not any("job.released" in v.events for v in views), "a batch was given back"
    assert per_build == {"run": 1, "new": 1}


async def test_a_batch_aged_to_band_5_waits_for_the_running_batch_to_end(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only urgent work interrupts a batch: one that waited its way to band 5 goes to the
    next agent that comes free, and the running batch keeps its install."""
    agents = simulated_agents(1, runner=runner(install_s=0.05, test_s=0.3))
    aging_s = 0.1
    async with scheduled_stack(
        qg_servers, agents, monkeypatch, QG_AGING_INTERVAL_S=str(aging_s)
    ) as stack:
        views, per_build = await newcomer_while_running(stack, priority=1)
    last_started = views[4].started_at
    assert last_started is not None
    assert (last_started - views[5].submitted_at).total_seconds() > 4 * aging_s, (
        "the waiting batch had reached band 5 while the other ran"
    )
    assert_ran_to_its_end_first(views, per_build)


async def test_an_urgent_job_interrupts_an_install_and_each_build_still_installs_once(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(1, runner=runner(install_s=1.0, test_s=0.05))
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        low = [
            await stack.submit(app_version_id="low", test_path=f"tests/l{i}.spec.js", priority=1)
            for i in range(3)
        ]
        await stack.reach(low[0].job_id, "assigned")  # claimed: the install has begun
        urgent = await stack.submit(app_version_id="hot", test_path="tests/hot.spec.js", priority=5)
        views = await stack.wait_all([j.job_id for j in [*low, urgent]])
        per_build = await installs(stack)
    assert run_order(views)[0] == "tests/hot.spec.js"
    assert all("job.released" in v.events and v.attempt == 1 for v in views[:3])
    assert per_build == {"low": 1, "hot": 1}, "the interrupted install is not counted"


async def test_a_more_urgent_job_joining_a_running_batch_runs_next_on_the_same_device(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(2, runner=runner(install_s=0.3, test_s=0.2))
    async with scheduled_stack(qg_servers, agents[:1], monkeypatch) as stack:
        batch = [
            await stack.submit(app_version_id="v1", test_path=f"tests/t{i}.spec.js", priority=1)
            for i in range(4)
        ]
        await stack.reach(batch[0].job_id, "running")
        late = await stack.submit(app_version_id="v1", test_path="tests/late.spec.js", priority=5)
        views = await stack.wait_all([j.job_id for j in [*batch, late]])
        per_build = await installs(stack)
    assert run_order(views)[:2] == ["tests/t0.spec.js", "tests/late.spec.js"]
    assert {v.agent_id for v in views} == {"agent-0"}
    assert per_build == {"v1": 1}


async def test_an_agent_prefers_a_batch_whose_build_it_has_installed(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(1, runner=runner(install_s=0.2, test_s=0.3))
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        warm = await stack.submit(app_version_id="v1", test_path="tests/warm.spec.js")
        await stack.wait_all([warm.job_id])
        blocker = await stack.submit(app_version_id="v0", test_path="tests/block.spec.js")
        await stack.reach(blocker.job_id, "running")
        # Both wait in band 3; the older one needs an install, the newer one does not.
        other = await stack.submit(app_version_id="v2", test_path="tests/other.spec.js")
        again = await stack.submit(app_version_id="v1", test_path="tests/again.spec.js")
        views = await stack.wait_all([blocker.job_id, other.job_id, again.job_id])
        per_build = await installs(stack)
    assert run_order(views) == ["tests/block.spec.js", "tests/again.spec.js", "tests/other.spec.js"]
    assert per_build == {"v0": 1, "v1": 1, "v2": 1}


async def test_an_org_never_has_more_busy_agents_than_its_limit(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(3, runner=runner(install_s=0.05, test_s=0.1))
    async with scheduled_stack(
        qg_servers, agents, monkeypatch, QG_ORG_MAX_BUSY_AGENTS="acme=1"
    ) as stack:
        limited = [
            await stack.submit(org_id="acme", app_version_id=f"v{b}", test_path=f"tests/{t}.js")
            for b in range(3)
            for t in range(2)
        ]
        free = await stack.submit(org_id="initech", app_version_id="w", test_path="tests/w.js")
        views = await stack.wait_all([j.job_id for j in [*limited, free]])
    acme = sorted(views[:-1], key=lambda v: v.started_at or v.submitted_at)
    for before, after in itertools.pairwise(acme):
        assert before.finished_at is not None
        assert after.started_at is not None
        assert after.started_at >= before.finished_at, "two acme jobs ran at once"
    other = views[-1]
    assert other.started_at is not None
    assert other.started_at < (acme[-1].started_at or other.started_at), (
        "the other org's job did not wait for acme's"
    )


async def test_an_agent_only_ever_receives_work_for_the_targets_it_serves(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = [
        *simulated_agents(1, (ev.Target.EMULATOR, ev.Target.BROWSERSTACK), prefix="multi"),
        *simulated_agents(1, (ev.Target.DEVICE,), prefix="dev"),
    ]
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        jobs = [
            await stack.submit(app_version_id=f"v{n}", test_path="tests/a.spec.js", target=target)
            for n in range(2)
            for target in ("emulator", "device", "browserstack")
        ]
        views = await stack.wait_all([j.job_id for j in jobs])
    served = {(v.target, v.agent_id) for v in views}
    assert served == {
        ("emulator", "multi-0"),
        ("browserstack", "multi-0"),
        ("device", "dev-0"),
    }


async def test_a_large_batch_is_shared_by_idle_agents_each_installing_once(
    qg_servers: embedded.Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = simulated_agents(3, runner=runner(install_s=0.2, test_s=0.03))
    async with scheduled_stack(qg_servers, agents, monkeypatch) as stack:
        warm = await stack.submit(app_version_id="warm", test_path="tests/warm.spec.js")
        await stack.wait_all([warm.job_id])  # install and test durations observed
        big = [
            await stack.submit(app_version_id="big", test_path=f"tests/b{i}.spec.js")
            for i in range(80)
        ]
        views = await stack.wait_all([j.job_id for j in big])
        per_build = await installs(stack)
    devices = {v.agent_id for v in views}
    assert len(devices) >= 2, "idle agents shared the batch"
    assert per_build["big"] == len(devices), "each of them installed it once"
    assert {v.status for v in views} == {"passed"}
