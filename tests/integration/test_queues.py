"""`GET /queues` as a user reads it: per target and dispatch band (priority raised by
aging, the dispatcher's own rule), what waits, in how many batches, for which orgs and
since when; the open batches with their band and the agents working on them; each org's
token sees only its own."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from agent.runners.simulated import SimulatedConfig
from infra import api, settings
from tests.stack import running_stack, simulated_agents

if TYPE_CHECKING:
    from infra import embedded
    from tests.stack import Stack

AGING_S = 0.5
SLOW_TEST = SimulatedConfig(install_s=0.05, test_s=3.0, jitter=0, fail_rate=0, seed=1)
"""An agent's first test outlasts the test's look at the queue."""


async def queue_of(stack: Stack, token: str | None = None) -> api.QueueView:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with stack.session.get(stack.api_url + "/queues", headers=headers) as response:
        assert response.status == 200, await response.text()
        return msgspec.json.decode(await response.read(), type=api.QueueView)


def batch_of(queue: api.QueueView, app_version_id: str) -> api.QueueBatch:
    [batch] = [b for b in queue.open_batches if b.app_version_id == app_version_id]
    return batch


def rows(queue: api.QueueView) -> list[tuple[str, int, int, int, list[str]]]:
    return [(b.target.value, b.band, b.pending, b.batches, b.orgs) for b in queue.bands]


async def submit(stack: Stack, count: int, **fields: Any) -> list[api.JobView]:
    return [await stack.submit(test_path=f"tests/t{n}.spec.js", **fields) for n in range(count)]


async def test_waiting_raises_a_batchs_band_and_the_queue_shows_it(
    qg_servers: embedded.Servers,
) -> None:
    policy = settings.Scheduling(aging_interval_s=AGING_S)
    async with running_stack(qg_servers, [], scheduling=policy) as stack:
        await submit(stack, 2, org_id="acme", app_version_id="old", priority=1)
        await submit(stack, 3, org_id="acme", app_version_id="dev", priority=2, target="device")
        await asyncio.sleep(AGING_S)
        await submit(stack, 1, org_id="initech", app_version_id="fresh", priority=1)
        await stack.settled()
        queue = await queue_of(stack)

    assert queue.aging_interval_s == AGING_S
    old, dev, fresh = (batch_of(queue, name) for name in ("old", "dev", "fresh"))
    assert (old.top_priority, dev.top_priority, fresh.top_priority) == (1, 2, 1)
    assert old.band is not None
    assert dev.band is not None
    assert fresh.band is not None
    assert old.band >= 2, "an interval of waiting lifted the priority-1 batch a band"
    assert dev.band >= 3
    assert old.band > fresh.band, "it waited an interval longer than the fresh one"
    assert rows(queue) == sorted(
        [
            ("device", dev.band, 3, 1, ["acme"]),
            ("emulator", old.band, 2, 1, ["acme"]),
            ("emulator", fresh.band, 1, 1, ["initech"]),
        ],
        key=lambda row: (-row[1], row[0]),
    ), "per target and band, highest band first"
    emulator = [b.oldest_queued_at for b in queue.bands if b.target.value == "emulator"]
    assert None not in emulator
    assert emulator == sorted(filter(None, emulator)), "the higher band waited longer"
    assert all(b.agents == [] for b in queue.open_batches)


async def test_an_agent_mid_batch_appears_against_its_batch_which_ages_no_more(
    qg_servers: embedded.Servers,
) -> None:
    policy = settings.Scheduling(aging_interval_s=AGING_S)
    async with running_stack(qg_servers, [], scheduling=policy) as stack:
        worked = await submit(stack, 10, app_version_id="worked", priority=2)
    # The agent starts only now: its first claim finds all ten jobs.
    agents = simulated_agents(1, runner=SLOW_TEST)
    async with running_stack(qg_servers, agents, scheduling=policy) as stack:
        await stack.reach(worked[0].job_id, "running")
        await submit(stack, 2, app_version_id="waiting", priority=2)
        await asyncio.sleep(AGING_S)
        await stack.settled()
        queue = await queue_of(stack)

    busy, waiting = batch_of(queue, "worked"), batch_of(queue, "waiting")
    assert busy.agents == ["agent-0"]
    assert busy.pending == 2, "one claim took eight of its ten jobs"
    assert busy.active + busy.passed == 8
    assert busy.band == 2, "its queued jobs wait for the agent's next claim, not for dispatch"
    assert waiting.agents == []
    assert waiting.band is not None
    assert waiting.band >= 3, "a batch nobody works ages"
    assert queue.running == busy.active
    assert rows(queue) == [
        ("emulator", waiting.band, 2, 1, ["qualgent"]),
        ("emulator", 2, 2, 1, ["qualgent"]),
    ]


async def test_an_org_token_sees_only_its_orgs_bands_batches_and_agents(
    qg_servers: embedded.Servers,
) -> None:
    async with running_stack(qg_servers, []) as stack:
        mine = await submit(stack, 10, org_id="acme", app_version_id="a1")
    async with running_stack(qg_servers, simulated_agents(1, runner=SLOW_TEST)) as stack:
        await stack.reach(mine[0].job_id, "running")
        await submit(stack, 2, org_id="initech", app_version_id="i1")
        await stack.settled()
        status, body = await stack.request(
            "POST", "/tokens", {"org_id": "initech", "role": "read", "name": "dashboards"}
        )
        assert status == 201, body
        theirs = await queue_of(stack, body["token"])
        everyone = await queue_of(stack)

    assert rows(everyone) == [("emulator", 3, 4, 2, ["acme", "initech"])]
    assert batch_of(everyone, "a1").agents == ["agent-0"]
    assert rows(theirs) == [("emulator", 3, 2, 1, ["initech"])]
    assert [(b.app_version_id, b.agents) for b in theirs.open_batches] == [("i1", [])]
    assert theirs.running == 0, "acme's running jobs are not initech's business"
